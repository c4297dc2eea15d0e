"""Load the drill configuration: command line > environment > drill.toml > defaults.

The schema (sections, keys, types, defaults, meaning) is `drills.config.schema`; this module
finds the file, reads each source, parses and checks every value and builds the frozen
`Config`. Sources, highest first:

- the command line: `overrides`, dotted keys such as {"storage.url": "file:///x"};
- the environment: `DRILL_<SECTION>_<KEY>`, e.g. DRILL_STORAGE_URL, DRILL_TARGETS_RTO_DATABASE;
- the file: `path`, else $DRILL_CONFIG, else ./drill.toml if it exists, else none;
- the defaults in the schema.

Environment and command-line values are strings parsed to the key's type: booleans
true/false/yes/no/on/off/1/0, integers, durations, lists as a TOML array (`["a", "b"]`) or a
single item, and "" to unset an optional value. A value for a key of a drill's section turns
that drill on, as the section in the file would.

    >>> cfg = load_config(env={"DRILL_STORAGE_URL": "file:///srv/backups"})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from drills.config.errors import ConfigError
from drills.config.schema import (
    AppSettings,
    BackupSettings,
    Check,
    Config,
    ConfigFilesSettings,
    DatabaseSettings,
    EstateSettings,
    FilesSettings,
    PitrSettings,
    ReportSettings,
    RpoTargets,
    RtoTargets,
    RunSettings,
    RuntimeSettings,
    StoragePrefixes,
    StorageSettings,
    TargetSettings,
    redact_text,
    show,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FILE",
    "AppSettings",
    "BackupSettings",
    "Config",
    "ConfigFilesSettings",
    "ConfigKey",
    "DatabaseSettings",
    "EstateSettings",
    "FilesSettings",
    "PitrSettings",
    "ReportSettings",
    "RpoTargets",
    "RtoTargets",
    "RunSettings",
    "RuntimeSettings",
    "StoragePrefixes",
    "StorageSettings",
    "TargetSettings",
    "config_keys",
    "load_config",
    "parse_duration",
    "redact_text",
]

DEFAULT_FILE = "drill.toml"
CONFIG_ENV = "DRILL_CONFIG"
ENV_PREFIX = "DRILL_"
COMMAND_LINE = "command line"

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile("".join(f"(?:(?P<{unit}>{_NUMBER}){unit})?" for unit in _UNITS))
_DRILL_SECTIONS = ("database", "files", "config", "app", "pitr", "posture")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

# Secrets users try to write into the file, and where they belong instead.
_FORBIDDEN = {
    ("config", "passphrase"): "a passphrase does not belong in the configuration; put it in an "
    "environment variable and set passphrase_env to that variable's name",
}
# Drills restore only into containers the harness creates; a key that would point a drill's
# restore at an existing server is refused, with the way to do a real recovery instead.
_NOT_A_DRILL_TARGET = (
    "drills restore only into throwaway containers the harness creates, never into an "
    "existing server; to restore into a real server on purpose, use "
    "`drill restore database --to <DSN>` (it asks for confirmation and keeps a safety dump)"
)
for _section in ("database", "runtime", "app"):
    for _key in ("restore_dsn", "restore_to", "target_dsn", "target_host", "restore_host"):
        _FORBIDDEN[(_section, _key)] = _NOT_A_DRILL_TARGET


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration: "90s", "15m", "2h", "1d", "1h30m", or a number of seconds (90)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
        raise ConfigError(f"bad duration {show(value)}: must be 0 or more seconds")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(_NUMBER, text):
            return float(text)
        match = _DURATION.fullmatch(text)
        if text and match:
            return sum(float(match[unit]) * size for unit, size in _UNITS.items() if match[unit])
    raise ConfigError(f"bad duration {show(value)} (use e.g. 90s, 15m, 2h)")


@dataclass(frozen=True)
class ConfigKey:
    """One setting as the command line, the environment and the reference docs see it."""

    path: tuple[str, ...]
    """Where it lives: ("targets", "rto", "database")."""
    kind: Any
    """Its type without None: str, int, bool, float (a duration), tuple[str, ...], a Literal,
    dict[str, str] (a table) or a tuple of a dataclass (an array of tables)."""
    optional: bool
    """Whether it may be unset (None)."""
    default: Any
    """Its default; dataclasses.MISSING when the key is required in its section."""
    doc: str
    """Its meaning, from the schema."""
    check: Check | None = None
    """The schema's check of a parsed value, if any."""

    @property
    def dotted(self) -> str:
        """The command-line name: "targets.rto.database"."""
        return ".".join(self.path)

    @property
    def env(self) -> str:
        """The environment variable: "DRILL_TARGETS_RTO_DATABASE"."""
        return ENV_PREFIX + "_".join(self.path).upper()

    @property
    def label(self) -> str:
        """The name in drill.toml terms, for messages: "[targets.rto] database"."""
        return _label(self.path)

    @property
    def required(self) -> bool:
        """Whether its section needs it (there is no default)."""
        return self.default is MISSING


def config_keys() -> list[ConfigKey]:
    """Every setting in schema order, e.g. to derive command-line options."""
    return list(_schema()[1].values())


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> Config:
    """Resolve the configuration: `overrides` > `env` (default os.environ) > file > defaults.

    `path` None means $DRILL_CONFIG if set, else ./drill.toml if it exists, else no file; a
    file named explicitly must exist. `overrides` values of None are ignored (options not
    given). Raises ConfigError naming the source, the key and the cause.
    """
    env = os.environ if env is None else env
    source, label = _locate(path, env)
    sources = _Sources()
    if source is not None:
        _read_table(_read_file(source, label), (), label, sources)
    for key in config_keys():
        if key.env in env:
            sources.set(key.path, env[key.env], key.env, text=True)
    for dotted, raw in (overrides or {}).items():
        if raw is not None:
            sources.set(_override_path(dotted), raw, COMMAND_LINE, text=isinstance(raw, str))

    keys = _schema()[1]
    values = {
        p: _parse(keys[p], raw, origin, text) for p, (raw, origin, text) in sources.raw.items()
    }
    config = _build(Config, (), values, sources)
    config = dataclasses.replace(config, source=source.absolute() if source else None)
    _validate(config, sources, label)
    return config


class _Sources:
    """Raw values by key path, each with where it came from; later sources replace earlier."""

    def __init__(self) -> None:
        self.raw: dict[tuple[str, ...], tuple[Any, str, bool]] = {}
        self.tables: dict[tuple[str, ...], str] = {}

    def set(self, path: tuple[str, ...], raw: Any, origin: str, *, text: bool) -> None:
        self.raw[path] = (raw, origin, text)
        for end in range(len(path)):
            self.tables.setdefault(path[:end], origin)

    def origin(self, *paths: tuple[str, ...]) -> str:
        found = dict.fromkeys(self.raw[p][1] for p in paths if p in self.raw)
        return ", ".join(found)


@cache
def _schema() -> tuple[dict[tuple[str, ...], tuple[type, bool]], dict[tuple[str, ...], ConfigKey]]:
    """The tables (path -> dataclass, optional) and the keys (path -> ConfigKey) of Config."""
    tables: dict[tuple[str, ...], tuple[type, bool]] = {(): (Config, False)}
    keys: dict[tuple[str, ...], ConfigKey] = {}

    def walk(cls: type, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind, optional = _without_none(hints[f.name])
            sub = (*path, f.name)
            if is_dataclass(kind):
                tables[sub] = (kind, optional)
                walk(kind, sub)
            elif path:  # Config.source is a fact of loading, not a setting
                doc, check = f.metadata["doc"], f.metadata["check"]
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                keys[sub] = ConfigKey(sub, kind, optional, default, doc, check)

    walk(Config, ())
    return tables, keys


def _without_none(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0], len(typing.get_args(hint)) > 1
    return hint, False


def _label(path: tuple[str, ...]) -> str:
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def _locate(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """The file to read (None: none) and its name for messages."""
    why = ""
    if path is not None:
        given = Path(path)
    elif env.get(CONFIG_ENV):
        given, why = Path(env[CONFIG_ENV]), f" (named by ${CONFIG_ENV})"
    elif Path(DEFAULT_FILE).is_file():
        given = Path(DEFAULT_FILE)
    else:
        return None, "configuration"
    label = os.fspath(path) if path is not None else str(given)
    if not given.exists():
        raise ConfigError(f"{label}: no such configuration file{why}")
    if not given.is_file():
        raise ConfigError(f"{label}: not a file{why}")
    return given, label


def _read_file(source: Path, label: str) -> dict[str, Any]:
    try:
        with source.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{label}: not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not valid TOML: not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"{label}: cannot read: {err.strerror}") from None


def _read_table(table: dict[str, Any], path: tuple[str, ...], origin: str, sources: _Sources):
    tables, keys = _schema()
    sources.tables.setdefault(path, origin)
    for name, value in table.items():
        sub = (*path, name)
        if sub in _FORBIDDEN:
            raise ConfigError(f"{origin}: {_label(sub)} is not allowed: {_FORBIDDEN[sub]}")
        if sub in tables:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: [{'.'.join(sub)}] must be a table, got {show(value)}")
            _read_table(value, sub, origin, sources)
        elif sub in keys:
            sources.set(sub, value, origin, text=False)
        else:
            siblings = [p[-1] for p in (*tables, *keys) if p and p[:-1] == path]
            hint = "".join(
                f" (did you mean {m}?)" for m in difflib.get_close_matches(name, siblings, 1)
            )
            if path:
                raise ConfigError(f"{origin}: unknown key {_label(sub)}{hint}")
            if isinstance(value, dict):
                raise ConfigError(f"{origin}: unknown section [{name}]{hint}")
            raise ConfigError(f"{origin}: unknown key {name} (settings belong in a [section])")


def _override_path(dotted: str) -> tuple[str, ...]:
    path = tuple(dotted.split("."))
    if path in _FORBIDDEN:
        raise ConfigError(f"{COMMAND_LINE}: {dotted} is not allowed: {_FORBIDDEN[path]}")
    if path not in _schema()[1]:
        names = [key.dotted for key in config_keys()]
        hint = "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(dotted, names, 1))
        raise ConfigError(f"{COMMAND_LINE}: unknown setting {dotted}{hint}")
    return path


def _parse(key: ConfigKey, raw: Any, origin: str, text: bool) -> Any:
    """The value of `raw` for `key`; `text` when it is a string to parse (environment, CLI)."""
    where = f"{origin}: {key.label}"
    if key.optional and isinstance(raw, str) and not raw.strip():
        return None
    if key.kind is float:
        try:
            value = parse_duration(raw)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        problem = None if value > 0 else f"must be longer than zero, got {show(raw)}"
    else:
        value, problem = _convert(key.kind, raw, text)
    if problem is None and key.check is not None:
        problem = key.check(value)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return value


def _convert(kind: Any, raw: Any, text: bool) -> tuple[Any, str | None]:
    """(value, None), or (None, what is wrong); TOML values are typed, text is parsed."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw, None
        word = raw.strip().lower() if text else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE, None
        return None, f"must be true or false, got {show(raw)}"
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw, None
        if text and re.fullmatch(r"[+-]?\d[\d_]*", raw.strip()):
            return int(raw), None
        return None, f"must be an integer, got {show(raw)}"
    if kind is str:
        if not isinstance(raw, str):
            return None, f"must be a string, got {show(raw)}"
        return (raw, None) if raw.strip() else (None, "must not be empty")
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if raw in choices:
            return raw, None
        return None, f"must be one of {', '.join(map(show, choices))}, got {show(raw)}"
    if typing.get_origin(kind) is dict:
        table = _toml_value(raw) if text else raw
        if isinstance(table, dict) and all(isinstance(v, str) for v in table.values()):
            return dict(table), None
        return None, f'must be a table of strings like {{ NAME = "value" }}, got {show(raw)}'
    if typing.get_origin(kind) is tuple:
        (item,) = typing.get_args(kind)[:1]
        items = _list_from_text(raw) if text else raw
        if is_dataclass(item):
            return _tables(item, items, raw)
        if item is int:
            if text and isinstance(items, list):  # a single item from the environment: "17"
                items = [int(i) if isinstance(i, str) and i.strip().isdigit() else i for i in items]
            if isinstance(items, list) and all(type(i) is int for i in items):
                return tuple(items), None
            return None, f"must be a list of integers like [17], got {show(raw)}"
        if isinstance(items, list) and all(isinstance(i, str) and i.strip() for i in items):
            return tuple(items), None
        return None, f'must be a list of non-empty strings like ["a", "b"], got {show(raw)}'
    raise TypeError(f"drills.config.schema: unsupported setting type {kind!r}")


def _tables(cls: Any, items: Any, raw: Any) -> tuple[Any, str | None]:
    """An array of tables, each one `cls` (typed fields, defaults, the schema's checks)."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None, f"must be a list of tables like [{{ ... }}, {{ ... }}], got {show(raw)}"
    hints = typing.get_type_hints(cls)
    built = []
    for number, table in enumerate(items, start=1):
        names = {f.name: f for f in fields(cls)}
        unknown = [name for name in table if name not in names]
        if unknown:
            known = ", ".join(names)
            return None, f"item {number}: unknown key {unknown[0]} (known: {known})"
        values = {}
        for name, f in names.items():
            if name not in table:
                if f.default is MISSING:
                    return None, f"item {number}: {name} is required"
                continue
            kind, _ = _without_none(hints[name])
            value, problem = _convert(kind, table[name], False)
            check = f.metadata.get("check")
            if problem is None and check is not None:
                problem = check(value)
            if problem:
                return None, f"item {number}: {name} {problem}"
            values[name] = value
        built.append(cls(**values))
    return tuple(built), None


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return None


def _list_from_text(raw: str) -> list[Any] | None:
    text = raw.strip()
    if not text:
        return []
    if not text.startswith("["):
        return [raw]
    return _toml_value(text)


def _build(cls: type, path: tuple[str, ...], values: dict[tuple[str, ...], Any], sources: _Sources):
    """The dataclass `cls` at `path`; a drill section no source mentions is None."""
    tables, keys = _schema()
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        sub = (*path, f.name)
        if sub in tables:
            table_cls, optional = tables[sub]
            mentioned = sub in sources.tables
            kwargs[f.name] = (
                _build(table_cls, sub, values, sources) if mentioned or not optional else None
            )
        elif sub in values:
            kwargs[f.name] = values[sub]
        elif sub in keys and keys[sub].required:
            origin = sources.tables.get(path, "configuration")
            doc = keys[sub].doc.rstrip(".")
            raise ConfigError(
                f"{origin}: {keys[sub].label} is required: {doc[:1].lower()}{doc[1:]}"
            )
    return cls(**kwargs)


def _validate(config: Config, sources: _Sources, label: str) -> None:
    """Checks that span keys."""
    drills = [f"[{name}]" for name in _DRILL_SECTIONS if getattr(config, name) is not None]
    if drills and config.storage.url is None:
        raise ConfigError(
            f"{label}: [storage] url is required when a drill is configured (here"
            f" {', '.join(drills)}): file:///abs/dir or s3://bucket/prefix, in the file,"
            " DRILL_STORAGE_URL or the command line"
        )
    posture = config.posture
    both = set(posture.required or ()) & set(posture.informative) if posture else set()
    if both:
        origin = sources.origin(("posture", "required"), ("posture", "informative"))
        listed = ", ".join(sorted(both))
        raise ConfigError(f"{origin}: [posture] {listed} is both required and informative")
    if config.config is not None:
        for name in config.config.optional:
            if name not in config.config.paths:
                origin = sources.origin(("config", "optional"))
                raise ConfigError(f"{origin}: [config] optional lists {show(name)}, not in paths")
    notify = config.notify
    if notify.smtp_host and not (notify.smtp_from and notify.smtp_to):
        origin = sources.origin(("notify", "smtp_host"))
        raise ConfigError(f"{origin}: [notify] smtp_host is set: smtp_from and smtp_to are needed")
    if not notify.smtp_host and (notify.smtp_from or notify.smtp_to):
        origin = sources.origin(("notify", "smtp_from"), ("notify", "smtp_to"))
        raise ConfigError(f"{origin}: [notify] smtp_from/smtp_to are set but smtp_host is not")
    if config.report.signing_key_env and config.report.signing_key_path:
        origin = sources.origin(("report", "signing_key_env"), ("report", "signing_key_path"))
        raise ConfigError(
            f"{origin}: [report] signing_key_env and signing_key_path are both set; set one"
        )
