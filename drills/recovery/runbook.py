"""The estate's recovery runbook as Markdown: where the backups are, the exact commands in
order, and what the last drill measured for each step.

Generated from three sources: drill.toml (storage, targets, sections, hooks), the catalog (the
backups there now) and ``<report dir>/latest/drill.json`` (the last drill's phase times). The
recovery drill (`scenarios/test_recovery.py`) runs these very commands, so its times are the
measured cost of each step; the database, files, config and system drills' times come next.

    >>> print(render(load_config("drill.toml"), report_dir=Path("reports")))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills.config import Config
from drills.config.clock import human
from drills.config.errors import DrillError
from drills.recovery.common import iso
from drills.report import verdicts
from drills.storage import catalog, open_storage

KINDS = ("database", "files", "config")
# How `drill restore <kind>` is told where to and which backup.
RESTORE_TO = {
    "database": "--to <DSN> --backup",
    "files": "--to <DIR> --snapshot",
    "config": "--to restored-config --archive",
}
# The recovery drill's phase for each command, and the drill whose phases stand in otherwise.
STEPS = {
    "database": ("restore_database", "database"),
    "files": ("restore_files", "files"),
    "config": ("restore_config", "config"),
}


def render(config: Config, *, report_dir: Path, now: datetime | None = None) -> str:
    """The runbook of `config`'s estate, as Markdown."""
    now = now or datetime.now(UTC)
    last = last_drill(report_dir)
    out: list[str] = [f"# Recovery runbook: {config.estate.name}", ""]
    source = f"`{config.source}`" if config.source else "the defaults (no drill.toml)"
    out += [
        f"Generated {iso(now)} by `drill runbook` from {source}. Regenerate it after every",
        "drill and keep a copy where you will find it when the server is gone.",
        "",
    ]
    newest = _newest(config)
    out += _backups(config, now, newest)
    out += _last_drill(last, report_dir)
    out += _steps(config, last, _warnings(config, newest, report_dir))
    return "\n".join(out).rstrip() + "\n"


def _newest(config: Config) -> dict[str, tuple[int, catalog.Backup] | str]:
    """Each kind's (number of backups, newest backup), or why it could not be listed."""
    storage = config.storage
    if storage.url is None:
        return {}
    opened = open_storage(storage.url, endpoint_url=storage.endpoint_url, region=storage.region)
    found: dict[str, tuple[int, catalog.Backup] | str] = {}
    for kind in [k for k in KINDS if getattr(config, k) is not None] or list(KINDS):
        try:
            backups = catalog.list_backups(
                opened, kind, getattr(storage.prefixes, kind), name_timezone=storage.name_timezone
            )
        except DrillError as exc:
            found[kind] = str(exc)
            continue
        found[kind] = (len(backups), catalog.latest(backups))
    return found


def _warnings(config: Config, newest: dict, report_dir: Path) -> list[str]:
    """A warning for each kind whose newest backup failed its last drill: the cause, and the
    newest other backup whose drills passed, with the command that restores it."""
    cfg = f" --config {shlex.quote(str(config.source))}" if config.source else ""
    out = []
    for kind, listed in newest.items():
        if isinstance(listed, str) or not verdicts.failed_on(report_dir, listed[1].key):
            continue
        key = listed[1].key
        for failed in verdicts.failed_on(report_dir, key):
            cause = (failed.cause or "no cause recorded").splitlines()[0]
            out += [
                f"> **WARNING: the newest {kind} backup, `{key}`, FAILED its last {failed.kind} "
                f"drill** ({_when(failed.finished_at)}, run `{failed.run}`): {_cell(cause)}",
                ">",
            ]
        passed = ", ".join(d.kind for d in verdicts.passed_on(report_dir, key))
        if passed:
            out += [f"> It passed its last {passed} drill.", ">"]
        good = verdicts.last_good(report_dir, kind, other_than=key)
        if good is None:
            out += [f"> No other {kind} backup has passed a drill in `{report_dir}`.", ""]
            continue
        out += [
            f"> The last {kind} backup that passed its drills: `{good.backup}` ({good.kind} drill, "
            f"{_when(good.finished_at)}). To restore it instead: "
            f"`drill restore {kind}{cfg} {RESTORE_TO[kind]} {good.backup}`.",
            "",
        ]
    return out


def _when(iso_time: str | None) -> str:
    return (iso_time or "?")[:19].replace("T", " ") + " UTC"


def last_drill(report_dir: Path) -> dict[str, Any] | None:
    """The last run's drill.json, None when there is none (or it does not parse)."""
    path = report_dir / "latest" / "drill.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    document["_path"] = str(path.resolve())
    return document


def _backups(config: Config, now: datetime, newest: dict) -> list[str]:
    storage = config.storage
    out = ["## Where the backups are", ""]
    if storage.url is None:
        return [*out, "No `[storage] url` is configured: the backups' location is unknown.", ""]
    where = f"`{storage.url}`"
    if storage.endpoint_url:
        where += f" (endpoint `{storage.endpoint_url}`)"
    out.append(
        f"Storage: {where}. S3 credentials come from the AWS chain (environment, profile), "
        "never from drill.toml."
    )
    if config.backup.local_dir:
        out.append(f"Local copies: `{config.backup.local_dir}` (laid out like the storage).")
    if config.config and config.config.passphrase_env:
        out.append(
            "Config archives are decrypted with the passphrase in "
            f"`${config.config.passphrase_env}` (keep the passphrase itself in your password "
            "manager, not on the server)."
        )
    out += ["", "| Kind | Prefix | Backups | Newest | Taken | Age | RPO target |", "|" + "---|" * 7]
    for kind, listed in newest.items():
        prefix = getattr(storage.prefixes, kind)
        rpo = human(getattr(config.targets.rpo, kind))
        if isinstance(listed, str):
            out.append(f"| {kind} | `{prefix}` | - | {_cell(listed)} | - | - | {rpo} |")
            continue
        count, backup = listed
        age = human(max(0.0, (now - backup.taken_at).total_seconds()))
        out.append(
            f"| {kind} | `{prefix}` | {count} | `{backup.key}` | "
            f"{iso(backup.taken_at)} | {age} | {rpo} |"
        )
    if config.pitr is not None:
        out.append(
            f"| point in time | `{storage.prefixes.base}` + `{storage.prefixes.wal}` | "
            "see `drill run --only pitr` | - | - | - | "
            f"{human(config.targets.rpo.database)} |"
        )
    return [*out, ""]


def _last_drill(last: dict[str, Any] | None, report_dir: Path) -> list[str]:
    out = ["## The last drill", ""]
    if last is None:
        return [
            *out,
            f"No drill report under `{report_dir}/latest`: run `drill run` first; the times",
            "of the steps below are unknown until then.",
            "",
        ]
    out += [
        f"`{last['_path']}`, finished {last.get('finished_at', '?')}: "
        f"**{str(last.get('verdict', '?')).upper()}**.",
        "",
        "| Drill | Verdict | Phases | Total | RTO target |",
        "|---|---|---|---|---|",
    ]
    for drill in last.get("drills", []):
        phases = ", ".join(f"{n} {human(s)}" for n, s in (drill.get("phases") or {}).items())
        rto = drill.get("rto") or {}
        total = human(rto.get("measured_s"))
        if drill.get("verdict") == "fail":
            total = f"not recovered ({total} spent)"
        out.append(
            f"| {drill.get('kind')} | {drill.get('verdict')} | {phases or '-'} | "
            f"{total} | {human(rto.get('target_s'))} |"
        )
    return [*out, ""]


def _steps(config: Config, last: dict[str, Any] | None, warnings: list[str]) -> list[str]:
    """The steps in order; only those of the configured kinds (all of them when none is),
    after the warnings about backups that failed their last drill."""
    cfg = f" --config {shlex.quote(str(config.source))}" if config.source else ""
    name = config.database.name if config.database else "DBNAME"
    kinds = [k for k in KINDS if getattr(config, k) is not None] or list(KINDS)
    steps = [("Check the backups", ["```", f"drill status{cfg}", "```"])]
    if "database" in kinds:
        steps.append(("Restore the database", _database_step(config, last, cfg, name)))
    if "files" in kinds:
        steps.append(("Restore the uploads", _files_step(config, last, cfg)))
    if "config" in kinds:
        steps.append(("Restore the config files", _config_step(config, last, cfg)))
    steps.append(("Start the application and check it", _app_step(config, last)))
    steps.append(("Afterwards", _afterwards(kinds, name)))
    out = [
        "## Recovery, step by step",
        "",
        "Each restore shows its plan before it changes anything, restores beside the original,",
        "verifies with the drills' checks and only then swaps; a failure leaves the original",
        "as it was. Exit codes: 0 done, 1 failed (nothing replaced), 2 usage, 3 environment.",
        "",
        *warnings,
    ]
    for number, (title, body) in enumerate(steps, start=1):
        out += [f"### {number}. {title}", "", *body, ""]
    return out


def _database_step(config: Config, last: dict[str, Any] | None, cfg: str, name: str) -> list[str]:
    database = config.database
    out = [
        "```",
        f"drill restore database{cfg} --to {shlex.quote(_dsn(config, name))}",
        "```",
        "",
        "To a point in time add `--at 2025-01-15T02:00:00Z`: base backup + WAL replayed to it",
        "when `[pitr]` is set up and reaches it, else the latest dump at or before it (the plan",
        "says which). A given backup: `--backup KEY`.",
        "",
        "It asks for the database name to be typed (`--yes` in scripts), writes a safety dump",
        f"of the current database to `{_safety_dir(config)}` first, and keeps the old",
        f"database as `{name}_before_<timestamp>` until you drop it.",
        "The password comes from `PGPASSWORD` or `~/.pgpass`, never the command line.",
        "",
    ]
    if database and (database.pre_restore or database.post_restore):
        out.append(
            f"Around the swap it runs `[database] pre_restore` ({_code(database.pre_restore)}) "
            f"and then `post_restore` ({_code(database.post_restore)})."
        )
    else:
        out.append(
            "Stop the application before the swap (or set `[database] pre_restore` and "
            "`post_restore` to have it done)."
        )
    return [*out, "", *_times(last, "database", config.targets.rto.database)]


def _files_step(config: Config, last: dict[str, Any] | None, cfg: str) -> list[str]:
    files = config.files
    uploads = files.source_dir if files and files.source_dir else "UPLOADS_DIR"
    return [
        "```",
        f"drill restore files{cfg} --to {shlex.quote(uploads)}",
        "```",
        "",
        "Restored beside the directory, checked against the snapshot on every fact it records",
        "(links as links, modes, owners, times; checksums when it has a manifest), then swapped",
        "in; the previous directory, if there is one, is kept as `<dir>.before_<timestamp>`.",
        "Restart whatever mounts it (a container's bind mount keeps seeing the old directory).",
        "",
        *_times(last, "files", config.targets.rto.files),
    ]


def _config_step(config: Config, last: dict[str, Any] | None, cfg: str) -> list[str]:
    out = [
        "```",
        f"drill restore config{cfg} --to restored-config",
        "```",
        "",
        "Into a new directory (mode 700), each file with its archived mode and time, links as",
        "links, never over existing files (unless `--overwrite`).",
        "Then compare each with what is there and copy it into place:",
        "",
    ]
    paths = config.config.paths if config.config else ()
    out += [f"- `{path}` from `restored-config/{path.lstrip('/')}`" for path in paths]
    return [*out, "", *_times(last, "config", config.targets.rto.config)]


def _app_step(config: Config, last: dict[str, Any] | None) -> list[str]:
    app = config.app
    if app is None:
        return ["Start the application; no `[app]` is configured to say how to check it."]
    how = (
        f"Bring it up with the restored `{app.compose_file}` (`docker compose up -d`)."
        if app.compose_file
        else "Start it with the restored config."
    )
    out = [how, ""]
    count = f", and `GET {app.count_path}` the restored count" if app.count_path else ""
    out += [
        f"`GET {app.health_path}` on port {app.port} must answer 200 and keep answering 200 "
        f"(the drill watches it for {human(app.soak)}){count}.",
        "",
    ]
    system = _drill(last, "system")
    app_s = (system.get("phases") or {}).get("app") if system else None
    if system is not None and system.get("verdict") == "fail":
        cause = system.get("first_cause") or system.get("error") or "no cause recorded"
        out.append(f"- Last drill: the system drill FAILED: {cause.splitlines()[0]}")
    elif system is not None and system.get("verdict") == "pass" and app_s is not None:
        out.append(
            f"- Last drill: the application came up and held after {human(app_s)} "
            "(system drill, passed)."
        )
    out.append(f"- RTO target: {human(config.targets.rto.application)}.")
    return out


def _afterwards(kinds: list[str], name: str) -> list[str]:
    out = []
    if "database" in kinds:
        out += [
            f'- Drop the kept database once you are sure: `DROP DATABASE "{name}_before_<ts>";`.',
            "- Keep the safety dump until the next good backup; it restores with `drill restore",
            "  database --storage-url file://<safety dir> --backup database/<file>`.",
        ]
    if "files" in kinds:
        out.append("- Remove the kept uploads directory: `rm -rf <dir>.before_<timestamp>`.")
    out.append("- Run `drill run` and `drill runbook` again.")
    return out


def _times(last: dict[str, Any] | None, step: str, target: float) -> list[str]:
    phase, kind = STEPS[step]
    lines = []
    recovery = _drill(last, "recovery")
    measured = (recovery.get("phases") or {}).get(phase) if recovery else None
    if measured is not None:
        lines.append(
            f"- Last drill: this command took {human(measured)} in the recovery drill "
            f"({recovery.get('started_at', '?')[:19]})."
        )
    drill = _drill(last, kind)
    if drill is not None and drill.get("phases"):
        phases = ", ".join(f"{n} {human(s)}" for n, s in drill["phases"].items())
        total = human((drill.get("rto") or {}).get("measured_s"))
        lines.append(f"- Last {kind} drill ({drill.get('verdict')}): {phases}; total {total}.")
    if not lines:
        lines.append("- Last drill: not measured (no drill of this step in the last run).")
    lines.append(f"- RTO target: {human(target)}.")
    return lines


def _drill(last: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    if last is None:
        return None
    return next((d for d in last.get("drills", []) if d.get("kind") == kind), None)


def _dsn(config: Config, name: str) -> str:
    """The production DSN without its password, else a placeholder to fill in."""
    dsn = config.database.dsn if config.database else None
    if dsn:
        try:
            params = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password"}
        except psycopg.ProgrammingError:
            params = {}
        if params:
            params.setdefault("dbname", name)
            return make_conninfo("", **params)
    return f"postgresql://USER@HOST:5432/{name}"


def _safety_dir(config: Config) -> str:
    local = config.backup.local_dir
    return f"{local.rstrip('/')}/safety-dumps/" if local else "./safety-dumps/"


def _code(commands: tuple[str, ...]) -> str:
    return ", ".join(f"`{c}`" for c in commands) or "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
