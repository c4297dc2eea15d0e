"""`drill init`: look at a storage and write the drill configuration that drills it.

It recognises the original runbook's layout (dumps under ``database/``, their gpg copies under
``encrypted/``, dated ``files/`` snapshots or an ``aws s3 sync`` mirror, ``config/`` archives)
and the producers' (the same prefixes, with manifests), through the catalog the drills use
(`drills.storage.survey`), and writes, into a directory (default: here):

- ``drill.toml``: a section per kind found, the newest backup of each as a comment (key, time,
  age), the database name read from the dumps, the RTO/RPO targets to fill in;
- ``.github/workflows/recovery-drill.yml`` and ``.gitlab/recovery-drill.yml``: a monthly drill
  and a manual trigger, keeping the run directory as an artifact;
- ``schedule/recovery-drill.service``, ``.timer`` and ``.cron``: the same on a server;
- ``drills/test_custom_example.py``: an example check of your own.

The written drill.toml is loaded with `drills.config.load_config` before anything is written.
It never overwrites a file without ``--force``. Exit codes: 0 written; 1 no backup recognised
or the storage does not answer; 2 a file exists (without --force), or a bad option.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from drills.config import DEFAULT_FILE, Config, load_config
from drills.config.clock import human
from drills.config.errors import ConfigError, DrillError
from drills.config.schema import RpoTargets, RtoTargets
from drills.storage import open_storage
from drills.storage.survey import PREFIXES, Seen, Survey, survey

PASSPHRASE_ENV = "BACKUP_PASSPHRASE"
REPORT_DIR = "reports"
# Where each generated file goes, under --dir, and the template it is made from.
GENERATED = {
    ".github/workflows/recovery-drill.yml": "github-workflow.yml",
    ".gitlab/recovery-drill.yml": "gitlab-ci.yml",
    "schedule/recovery-drill.service": "recovery-drill.service",
    "schedule/recovery-drill.timer": "recovery-drill.timer",
    "schedule/recovery-drill.cron": "recovery-drill.cron",
    "drills/test_custom_example.py": "example_scenario.py",
}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill init` to the command's parser."""
    parser = commands.add_parser(
        "init", help="look at a storage; write drill.toml, CI and timer files for its drills"
    )
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="file:///abs/dir or s3://bucket/prefix (default: $DRILL_STORAGE_URL)",
    )
    parser.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (default: $DRILL_STORAGE_ENDPOINT_URL)"
    )
    parser.add_argument("--region", default=None, help="S3 region (default: $DRILL_STORAGE_REGION)")
    parser.add_argument(
        "--name-timezone",
        default=None,
        help="zone the times in backup names are written in (default: UTC)",
    )
    parser.add_argument(
        "--dir", default=".", help="where the CI, timer and example files go (default: here)"
    )
    parser.add_argument(
        "--output", default=None, help=f"the configuration to write (default: DIR/{DEFAULT_FILE})"
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Survey the storage and write the files; return the exit code."""
    url = args.storage or os.environ.get("DRILL_STORAGE_URL")
    if not url:
        raise ConfigError("init: no storage to look at: --storage URL (or DRILL_STORAGE_URL)")
    if os.path.isabs(url):
        url = Path(url).as_uri()  # drill.toml takes file:// URLs only
    endpoint = args.endpoint_url or os.environ.get("DRILL_STORAGE_ENDPOINT_URL") or None
    region = args.region or os.environ.get("DRILL_STORAGE_REGION") or None
    zone = args.name_timezone or os.environ.get("DRILL_STORAGE_NAME_TIMEZONE") or None
    directory = Path(args.dir).absolute()
    output = Path(args.output).absolute() if args.output else directory / DEFAULT_FILE
    targets = [output, *(directory / rel for rel in GENERATED)]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not args.force:
        names = ", ".join(_shown(t, directory) for t in existing)
        raise ConfigError(f"init: {names} already exist(s); --force overwrites")

    storage = open_storage(url, endpoint_url=endpoint, region=region)
    found = survey(storage, name_timezone=zone)
    if not found.kinds:
        looked = ", ".join(p for prefixes in PREFIXES.values() for p in prefixes)
        raise DrillError(f"init: no backups recognised under {storage.url} (looked under {looked})")
    settings = {"url": url, "endpoint_url": endpoint, "region": region, "name_timezone": zone}
    text = render_config(found, settings, datetime.now(UTC))
    config = _checked(text)

    drill = _drill_command()
    config_rel = _shown(output, directory)
    values = {
        "@CONFIG@": config_rel,
        "@CONFIG_PATH@": str(output),
        "@DIR@": str(directory),
        "@DRILL@": drill,
        "@REPORT_DIR@": config.report.dir,
        "@SECRETS@": "".join(f"          {n}: ${{{{ secrets.{n} }}}}\n" for n in _secrets(config)),
        "@SECRET_NAMES@": "".join(f", {n}" for n in _secrets(config)),
    }
    _write(output, text)
    for rel, template in GENERATED.items():
        body = resources.files("drills.commands").joinpath("templates", template).read_text()
        for token, value in values.items():
            body = body.replace(token, value)
        _write(directory / rel, body)
    print(summary(found, config_rel, directory))
    return 0


def render_config(found: Survey, storage: dict[str, str | None], now: datetime) -> str:
    """The commented drill.toml for what `found` holds; `storage` holds the [storage] keys
    given (url, endpoint_url, region, name_timezone)."""
    kinds = found.kinds
    database = kinds.get("database")
    name = database.newest.database if database else None
    layout = {
        "producer": "the producers' layout (backups with manifests)",
        "runbook": "the original runbook's layout (no manifests)",
    }[found.layout]
    out = [
        *_comment(
            f"drill.toml, written by `drill init` on {_iso(now)} from {found.url}: {layout}. "
            f"Found: {', '.join(_found_line(s) for s in kinds.values())}."
        ),
        "#",
        "# Check every value marked FILL IN, then drill with `drill run --config drill.toml`.",
        "# The reference of every key is docs/configuration.md of recovery-drills. Secrets never",
        "# go in this file: name the environment variable that holds them instead.",
        "",
        "[estate]",
        "# Name of the estate, shown in reports and evidence.",
        f"name = {_q(name or _basename(found.url))}",
        "",
        "[storage]",
        f"url = {_q(storage['url'])}",
    ]
    for key in ("endpoint_url", "region", "name_timezone"):
        if storage.get(key):
            out.append(f"{key} = {_q(storage[key])}")
    out += _zone_hint(kinds.values(), storage.get("name_timezone"))
    out += ["", "[storage.prefixes]"]
    out += [f"{kind} = {_q(seen.prefix)}" for kind, seen in kinds.items()]
    for other in found.others:
        out += _comment(
            f"Also found: {other.kind} backups under {other.prefix} ({_newest(other, now)}); "
            f'to drill them instead, set {other.kind} = "{other.prefix}"'
            + (f" and [{other.kind}] passphrase_env" if other.newest.encrypted else "")
            + "."
        )
    out += _targets(kinds, now)
    if database:
        out += _database_section(database, now)
    if "files" in kinds:
        out += _files_section(kinds["files"], now)
    if "config" in kinds:
        out += _config_section(kinds["config"], now)
    out += [
        "",
        "# The full-system drill (the application started on the restored data) needs [app]:",
        "# see docs/configuration.md.",
    ]
    if found.pitr:
        out += [
            "",
            f"# Point-in-time recovery: found objects under {', '.join(found.pitr)}. To drill",
            "# it, uncomment [pitr] (docs/pitr.md).",
            "# [pitr]",
        ]
    out += [
        "",
        "[run]",
        "# The team's own checks, plain pytest tests run with the drills on their restores",
        "# (docs/custom-checks.md); drills/test_custom_example.py is an example.",
        f"scenarios = [{_q('drills/')}]",
        "",
        "[report]",
        "# Directory of the run reports: <dir>/<UTC timestamp>/, with <dir>/latest (the CI",
        "# files keep it as an artifact).",
        f"dir = {_q(REPORT_DIR)}",
    ]
    return "\n".join(out) + "\n"


def _targets(kinds: dict[str, Seen], now: datetime) -> list[str]:
    rto, rpo = RtoTargets(), RpoTargets()
    out = [
        "",
        "[targets.rto]",
        "# FILL IN: the longest each recovery may take. The values are the original runbook's.",
    ]
    for kind in ("database", "files", "config"):
        if kind in kinds:
            out.append(f'{kind} = "{_duration(getattr(rto, kind))}"')
    out += [
        "",
        "[targets.rpo]",
        "# FILL IN: the most data each kind may lose, i.e. the oldest its newest backup may be",
        "# (the runbook's values). A drill fails when the newest backup is older: daily dumps",
        "# cannot meet 1h for the database, only WAL archiving ([pitr]) can.",
    ]
    for kind, seen in kinds.items():
        target = getattr(rpo, kind)
        age = (now - seen.newest.taken_at).total_seconds()
        every = f", about one every {human(seen.interval)}" if seen.interval else ""
        verdict = "within it" if age <= target else "OLDER: a drill fails until this is met"
        out.append(f"# {kind}: the newest is {human(age)} old ({verdict}){every}.")
        out.append(f'{kind} = "{_duration(target)}"')
    return out


def _database_section(seen: Seen, now: datetime) -> list[str]:
    newest = seen.newest
    out = ["", "[database]", *_comment(f"Newest: {_newest(seen, now)}.")]
    names = seen.databases
    if len(names) > 1:
        out += _comment(f"Dumps of several databases: {', '.join(names)}; the newest is drilled.")
    out += [
        "# The database's name, read from the dumps.",
        f"name = {_q(newest.database or 'FILL_IN')}",
        "# SQL invariants run on the restored database; each must return true. FILL IN.",
        "checks = [",
    ]
    manifest = newest.loaded_manifest
    tables = [t for t in (manifest.tables if manifest else ()) if t.rows]
    for table in sorted(tables, key=lambda t: -t.rows)[:3]:
        out.append(f'    # "SELECT count(*) > 0 FROM {table.name}",')
    if not tables:
        out.append('    # "SELECT count(*) > 0 FROM users",')
    out.append("]")
    if newest.format in ("plain", "custom", "directory"):
        out += [
            "# What the producer (`drill backup database`) writes, as the newest dump is.",
            f"format = {_q(newest.format)}",
            f"compression = {_q(newest.compression)}",
        ]
    if newest.encrypted:
        out += _passphrase("dumps")
    return out


def _files_section(seen: Seen, now: datetime) -> list[str]:
    return ["", "[files]", *_comment(f"Newest: {_newest(seen, now)}.")]


def _config_section(seen: Seen, now: datetime) -> list[str]:
    out = ["", "[config]", *_comment(f"Newest: {_newest(seen, now)}.")]
    manifest = seen.newest.loaded_manifest
    members = [m.path for m in manifest.members] if manifest else []
    out.append("# Names that must be in a restored archive. FILL IN.")
    if members:
        out += _comment(f"The newest archive holds: {', '.join(members[:8])}.")
    out.append("required = []")
    if seen.newest.encrypted:
        out += _passphrase("archives")
    return out


def _passphrase(what: str) -> list[str]:
    return [
        f"# The {what} are gpg-encrypted: the NAME of the environment variable that holds the",
        "# passphrase (set it where the drill runs: a CI secret, /etc/drill/drill.env).",
        f"passphrase_env = {_q(PASSPHRASE_ENV)}",
    ]


def _zone_hint(seens, zone: str | None) -> list[str]:
    noted = [b for s in seens for b in s.backups if b.time_note and "name_timezone" in b.time_note]
    if not noted or zone:
        return []
    return [
        "# The times in some backup names are hours after their bytes were written: the names",
        "# were made by a clock in another zone. Set it (e.g. Europe/Berlin) so that a drill",
        "# reads them right; until then the write time is taken.",
        '# name_timezone = "Europe/Berlin"',
    ]


def _newest(seen: Seen, now: datetime) -> str:
    newest = seen.newest
    age = human((now - newest.taken_at).total_seconds())
    return f"{newest.key}, taken {_iso(newest.taken_at)} ({newest.time_source}), {age} old"


def _found_line(seen: Seen) -> str:
    count = len(seen.backups)
    return (
        f"{seen.kind} ({count} under {seen.prefix}, {seen.with_manifest} of {count} with manifests)"
    )


def summary(found: Survey, config: str, directory: Path) -> str:
    """What `drill init` found and wrote, for people."""
    now = datetime.now(UTC)
    lines = [f"{found.url}: {found.layout} layout"]
    for kind, seen in found.kinds.items():
        lines.append(
            f"  {kind}: {len(seen.backups)} under {seen.prefix}; newest {_newest(seen, now)}"
        )
    lines.append(f"wrote {config} and, under {directory}:")
    lines += [f"  {rel}" for rel in GENERATED]
    lines.append(f"next: fill in the targets in {config}, then `drill run --config {config}`")
    return "\n".join(lines)


def _checked(text: str) -> Config:
    """The configuration `text` loads to (the project's own loader, no environment)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DEFAULT_FILE
        path.write_text(text)
        return load_config(path, env={})


def _secrets(config: Config) -> list[str]:
    names = {s.passphrase_env for s in (config.database, config.config) if s and s.passphrase_env}
    return sorted(names)


def _drill_command() -> str:
    """The `drill` of this installation, by its path (cron's and systemd's PATH are short)."""
    beside = Path(sys.executable).parent / "drill"
    if beside.is_file():
        return str(beside)
    return shutil.which("drill") or "drill"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _shown(path: Path, directory: Path) -> str:
    return os.path.relpath(path, directory) if path.is_relative_to(directory) else str(path)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g}h"


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] or "estate"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text,
        96,
        initial_indent="# ",
        subsequent_indent="# ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _q(text: str | None) -> str:
    return json.dumps(text)
