"""`drill status`: the original runbook's dashboard and overdue alerts as one command.

Per kind: backups in the last 7 days, the newest backup's time, age and size, whether that
age is within the kind's RPO, manifest coverage; and whether the storage answers. A newest
backup whose manifest marks it suspect (see `drills.backup.marks`) is not "ok". With
`[pitr]`, two more rows: base backups (against `[pitr] base_max_age`) and WAL (the newest
shipped segment against the database RPO, and the window's continuity). A kind whose section
is left out is "not configured": shown, never counted. Then each configured drill's last
verdict and cause, from the report directory.
Exit 0 when every configured kind is within its RPO, its newest backup is not suspect, the
WAL has no hole and no configured drill's last run failed; 1 when any is overdue, suspect or
holed, the storage is unreachable, or a configured drill last failed; 2 on a configuration
error (no configuration at all included). With `--notify`, what needs attention also goes
through `[notify]`'s webhook and e-mail (every time with `when = "always"`); the exit code
stays the same whatever the channels do.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drills.backup.common import human_size
from drills.backup.marks import suspect_causes
from drills.config import CONFIG_ENV, DEFAULT_FILE, Config, load_config
from drills.config.clock import human
from drills.config.errors import ConfigError, DrillError
from drills.report import evidence
from drills.report.coverage import coverage
from drills.report.verdicts import last_drills
from drills.storage import catalog, open_storage
from drills.storage.tiers import documented

KINDS = ("database", "files", "config")
PITR_KINDS = ("base", "wal")
NOT_CONFIGURED = {"configured": False, "latest": None, "within_rpo": True, "error": None}
WINDOW = timedelta(days=7)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill status` to the command's parser."""
    parser = commands.add_parser("status", help="backup freshness per kind, against the RPO")
    parser.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--report-dir", default=None, help="where the drill runs are (default: [report] dir)"
    )
    parser.add_argument(
        "--notify",
        action="store_true",
        help="send what needs attention through [notify]'s webhook and e-mail (for cron)",
    )
    parser.set_defaults(func=main)


def collect(config: Config, now: datetime | None = None) -> dict:
    """The status of every kind, as a JSON-able dict."""
    now = now or datetime.now(UTC)
    if config.storage.url is None:
        where = config.source or f"no {DEFAULT_FILE} here and no ${CONFIG_ENV}"
        raise ConfigError(
            f"{where}: [storage] url is not set: no backups to report on (--config drill.toml, "
            "or DRILL_STORAGE_URL)"
        )
    storage = open_storage(
        config.storage.url,
        endpoint_url=config.storage.endpoint_url,
        region=config.storage.region,
    )
    kinds = [k for k in KINDS if getattr(config, k) is not None]
    result: dict = {"storage": {"url": storage.url, "reachable": True, "error": None}}
    try:
        storage.check()
    except DrillError as exc:
        result["storage"].update(reachable=False, error=str(exc))
        result["kinds"] = {}
        result["ok"] = False
        return result
    rows = {
        k: _kind_status(storage, config, k, now) if k in kinds else NOT_CONFIGURED for k in KINDS
    }
    rows |= _pitr_rows(storage, config, now)
    result["kinds"] = rows
    result["ok"] = all(
        row["within_rpo"] and not row.get("suspect") and not row.get("holes")
        for row in rows.values()
    )
    return result


def _pitr_rows(storage, config: Config, now: datetime) -> dict:
    if config.pitr is None:
        return dict.fromkeys(PITR_KINDS, NOT_CONFIGURED)
    from drills.pitr import since
    from drills.pitr.freshness import pitr_freshness, status_rows

    prefixes = config.storage.prefixes
    found = pitr_freshness(
        storage, prefixes.base, prefixes.wal, since(config.pitr.accept_gaps_before)
    )
    return status_rows(found, now, config.targets.rpo.database, config.pitr.base_max_age)


def _kind_status(storage, config: Config, kind: str, now: datetime) -> dict:
    target = getattr(config.targets.rpo, kind)
    prefix = getattr(config.storage.prefixes, kind)
    try:
        backups = catalog.list_backups(
            storage, kind, prefix, name_timezone=config.storage.name_timezone
        )
    except DrillError as exc:
        return {"count_7d": 0, "latest": None, "within_rpo": False, "rpo_s": target,
                "error": str(exc)}  # fmt: skip
    newest = catalog.latest(backups)
    age = (now - newest.taken_at).total_seconds()
    with_manifest = sum(1 for b in backups if b.manifest_key)
    try:
        suspect = suspect_causes(newest.manifest) if newest.manifest is not None else []
    except DrillError as exc:  # an unreadable manifest: the newest backup is not good either
        suspect = [str(exc)]
    if newest.is_directory and not newest.objects:
        suspect.append(f"{newest.key} is empty: it holds no files")
    return {
        "count_7d": sum(1 for b in backups if now - b.taken_at <= WINDOW),
        "count": len(backups),
        "latest": {
            "key": newest.key,
            "taken_at": newest.taken_at.isoformat(),
            "time_source": newest.time_source,
            "age_s": round(age, 1),
            "bytes": newest.size,
        },
        "rpo_s": target,
        "within_rpo": age <= target,
        "suspect": suspect,
        "manifests": f"{with_manifest}/{len(backups)}",
        # Each backup's S3 storage class (none for local files): an archived one needs a thaw.
        "classes": dict(Counter(b.storage_class for b in backups if b.storage_class)),
        "error": None,
    }


def render(status: dict) -> str:
    """The status as a table for people."""
    lines = []
    store = status["storage"]
    state = "reachable" if store["reachable"] else f"UNREACHABLE: {store['error']}"
    lines.append(f"storage {store['url']}: {state}")
    header = ("kind", "7d", "latest", "age", "size", "RPO", "status", "manifests")
    table = [header]
    for kind, row in status["kinds"].items():
        latest = row["latest"]
        if row.get("configured") is False:
            table.append((kind, "-", "-", "-", "-", "-", "not configured", "-"))
            continue
        if latest is None:
            table.append((kind, "0", "-", "-", "-", human(row["rpo_s"]), "MISSING", "-"))
            continue
        table.append(
            (
                kind,
                str(row["count_7d"]),
                latest["taken_at"][:19].replace("T", " ") + f" ({latest['time_source']})",
                human(latest["age_s"]),
                "-" if latest["bytes"] is None else human_size(latest["bytes"]),
                human(row["rpo_s"]),
                _state(row),
                row["manifests"],
            )
        )
    if len(table) > 1:
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row in table:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for kind, row in status["kinds"].items():
        if row.get("error"):
            lines.append(f"{kind}: {row['error']}")
        if row.get("suspect"):
            lines.append(f"{kind}: newest backup is SUSPECT: {'; '.join(row['suspect'])}")
        if row.get("holes"):
            lines.append(f"{kind}: {'; '.join(row['holes'])}")
        archived = {c: n for c, n in (row.get("classes") or {}).items() if c != "STANDARD"}
        if archived:
            counts = ", ".join(f"{n} in {c} ({documented(c)})" for c, n in sorted(archived.items()))
            lines.append(f"{kind}: storage classes: {counts}")
    return "\n".join(lines)


def _state(row: dict) -> str:
    if not row["within_rpo"]:
        return "OVERDUE"
    if row.get("holes"):
        return "HOLES"
    return "SUSPECT" if row.get("suspect") else "ok"


def main(args: argparse.Namespace) -> int:
    """Print the status; exit 0 if every kind is within its RPO and no configured drill last
    failed, else 1."""
    config = load_config(args.config)
    status = collect(config)
    report_dir = Path(args.report_dir or config.report.dir)
    status["drills"] = drill_status(config, report_dir)
    status["window"] = window_status(config, report_dir, datetime.now(UTC))
    status["ok"] = status["ok"] and all(d["verdict"] != "fail" for d in status["drills"].values())
    shown = render(status) + render_drills(status) + render_window(status)
    print(json.dumps(status, indent=2) if args.json else shown)
    if args.notify:
        from drills.notify import announce_status

        announce_status(status, config)  # reported on stderr when a channel fails; never raises
    return 0 if status["ok"] else 1


# -- which days of the promised window each kind's drills have restored, from the history


def window_status(config: Config, report_dir: Path, now: datetime) -> dict[str, dict]:
    """Per configured kind, the promised window's days and which were ever drilled."""
    history = evidence.read_history(report_dir)
    days = config.promised_days()
    return {k: coverage(history, k, days, now) for k in KINDS if getattr(config, k) is not None}


def render_window(status: dict) -> str:
    """The window's calendars, for people: one mark a day, oldest first."""
    rows = status.get("window") or {}
    if not rows:
        return ""
    lines = ["", "days of the promised window drilled (# passed, x failed, . never):"]
    for kind, row in rows.items():
        lines.append(
            f"  {kind:<8} {row['first_day']} [{row['calendar']}] {row['last_day']}: "
            f"{row['days_drilled']} of {row['days_in_window']} days drilled, "
            f"{row['days_passed']} passed"
        )
    return "\n".join(lines)


# -- each configured drill's last verdict and cause, read from the report directory


def drill_status(config: Config, report_dir: Path) -> dict[str, dict]:
    """Each configured drill's last verdict and cause in the report directory."""
    rows = {}
    for kind, last in last_drills(report_dir, config.configured_drills()).items():
        if last is None:
            rows[kind] = {"verdict": None, "cause": None, "finished_at": None, "backup": None}
        else:
            rows[kind] = {
                k: getattr(last, k) for k in ("verdict", "cause", "finished_at", "backup")
            }
    return rows


def render_drills(status: dict) -> str:
    """The last drills, for people."""
    lines = ["", "last drills:"]
    for kind, row in status["drills"].items():
        if row["verdict"] is None:
            lines.append(f"  {kind}: not drilled yet in this report directory")
            continue
        when = (row["finished_at"] or "?")[:19].replace("T", " ")
        state = "FAILED" if row["verdict"] == "fail" else "passed"
        on = f" on {row['backup']}" if row["backup"] else ""
        lines.append(f"  {kind}: {state} {when}{on}")
        if row["cause"]:
            lines.append(f"    cause: {row['cause'].splitlines()[0]}")
    return "\n".join(lines)
