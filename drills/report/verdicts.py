"""The last drills of a report directory: each kind's last verdict and cause, the drills a
backup failed or passed, and the newest other backup whose drills passed, for `drill
status` and `drill runbook`.

Read from `<report dir>/history.jsonl`; a line written before causes were kept there takes
its cause from the run's own drill.json when that is still there.

    >>> last_drills(Path("reports"), ["database", "system"])["system"].verdict  # doctest: +SKIP
    'fail'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from drills.report import evidence

# The kind of backup each drill restores (its `backup` in the record).
BACKUP_KIND = {"database": "database", "system": "database", "files": "files", "config": "config"}


@dataclass(frozen=True)
class LastDrill:
    """One drill of one run."""

    kind: str
    verdict: str
    run: str
    finished_at: str | None
    backup: str | None
    """The key of the backup it drilled."""
    cause: str | None = None


def drills(report_dir: Path) -> list[LastDrill]:
    """Every drill that ran (passed or failed) in the report directory, oldest first."""
    found = []
    for entry in evidence.read_history(report_dir):
        for kind, result in (entry.get("drills") or {}).items():
            if result.get("verdict") not in ("pass", "fail"):
                continue
            cause = result.get("cause")
            if result["verdict"] == "fail" and not cause:
                cause = _cause_in_run(report_dir / str(entry.get("run")), kind)
            found.append(
                LastDrill(
                    kind,
                    result["verdict"],
                    str(entry.get("run")),
                    entry.get("finished_at"),
                    (result.get("backup") or {}).get("key"),
                    cause,
                )
            )
    return found


def last_drills(report_dir: Path, kinds: Iterable[str]) -> dict[str, LastDrill | None]:
    """Each kind's last drill that ran (None: never drilled here)."""
    last: dict[str, LastDrill | None] = dict.fromkeys(kinds)
    for drill in drills(report_dir):
        if drill.kind in last:
            last[drill.kind] = drill
    return last


def last_good(report_dir: Path, backup_kind: str, other_than: str) -> LastDrill | None:
    """The last passing drill of the newest backup of `backup_kind` (e.g. "database"), other
    than `other_than`, whose last drill of every kind run on it passed."""
    last: dict[tuple[str, str], LastDrill] = {}
    for drill in drills(report_dir):
        if (
            drill.backup
            and drill.backup != other_than
            and BACKUP_KIND.get(drill.kind) == backup_kind
        ):
            last[(drill.backup, drill.kind)] = drill
    bad = {key for (key, _), d in last.items() if d.verdict == "fail"}
    good = [d for (key, _), d in last.items() if key not in bad]
    return max(good, key=lambda d: d.finished_at or "", default=None)


def passed_on(report_dir: Path, backup_key: str) -> list[LastDrill]:
    """The drills whose last run on `backup_key` passed, one per kind."""
    return [d for d in _last_on(report_dir, backup_key) if d.verdict == "pass"]


def failed_on(report_dir: Path, backup_key: str) -> list[LastDrill]:
    """The drills whose last run on `backup_key` failed, one per kind."""
    return [d for d in _last_on(report_dir, backup_key) if d.verdict == "fail"]


def _last_on(report_dir: Path, backup_key: str) -> list[LastDrill]:
    last: dict[str, LastDrill] = {}
    for drill in drills(report_dir):
        if drill.backup == backup_key:
            last[drill.kind] = drill
    return list(last.values())


def _cause_in_run(run_dir: Path, kind: str) -> str | None:
    try:
        document = json.loads((run_dir / evidence.DOCUMENT).read_text())
    except (OSError, ValueError):
        return None
    drill = next((d for d in document.get("drills", []) if d.get("kind") == kind), {})
    return drill.get("first_cause") or drill.get("error")
