"""Prometheus metrics of a run, in the text exposition format.

Every metric is a gauge labelled with the estate and, per drill, its kind:

| metric | meaning |
|---|---|
| `drill_run_timestamp_seconds` | when the last run finished (Unix time) |
| `drill_run_success` | 1 when it passed, 0 when it failed, drilled nothing or did not complete |
| `drill_last_run_timestamp_seconds{kind}` | when the kind was last drilled |
| `drill_last_run_success{kind}` | 1 passed, 0 failed |
| `drill_rto_seconds{kind}`, `drill_rto_target_seconds{kind}` | recovery time measured, target |
| `drill_rpo_seconds{kind}`, `drill_rpo_target_seconds{kind}` | recovery point measured, target |
| `drill_backup_age_seconds{kind}` | age of the drilled backup when the drill started |
| `drill_checks_passed{kind}`, `drill_checks_failed{kind}` | the drill's checks |

A kind that was not run this time has no per-kind series: "absent" is the alert for it.

`drill status --notify` writes its own file beside the run's (`<name>-status.prom`) and pushes
its own group (job `<job>-status`), so that neither replaces the other:

| metric | meaning |
|---|---|
| `drill_status_timestamp_seconds` | when the status was taken |
| `drill_backup_newest_age_seconds{kind}` | age of the newest backup of the kind, then |
| `drill_backup_within_rpo{kind}` | 1 when that age is within the RPO target, else 0 |
| `drill_backup_rpo_target_seconds{kind}` | the RPO target |
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from drills.config.schema import redact_text
from drills.notify.webhook import ChannelError, request

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HELP = {
    "drill_run_timestamp_seconds": "When the last drill run finished (Unix time).",
    "drill_run_success": "1 when the last drill run passed, else 0.",
    "drill_last_run_timestamp_seconds": "When this kind was last drilled (Unix time).",
    "drill_last_run_success": "1 when the last drill of this kind passed, else 0.",
    "drill_rto_seconds": "Recovery time measured by the last drill.",
    "drill_rto_target_seconds": "Recovery time objective.",
    "drill_rpo_seconds": "Recovery point measured by the last drill.",
    "drill_rpo_target_seconds": "Recovery point objective.",
    "drill_backup_age_seconds": "Age of the drilled backup when the drill started.",
    "drill_checks_passed": "Checks of the last drill that passed.",
    "drill_checks_failed": "Checks of the last drill that failed.",
}


STATUS_HELP = {
    "drill_status_timestamp_seconds": "When drill status last looked at the storage.",
    "drill_backup_newest_age_seconds": "Age of the newest backup of this kind.",
    "drill_backup_within_rpo": "1 when the newest backup is within its RPO target, else 0.",
    "drill_backup_rpo_target_seconds": "Recovery point objective of this kind.",
}


def status_metrics(status: dict, estate: str, now: datetime) -> str:
    """The exposition text of `drill status`: each configured kind's newest backup's age."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {n: [] for n in STATUS_HELP}
    base = {"estate": estate}
    samples["drill_status_timestamp_seconds"].append((base, now.timestamp()))
    for kind, row in (status.get("kinds") or {}).items():
        if not row.get("configured", True):
            continue
        labels = base | {"kind": str(kind)}
        latest = row.get("latest") or {}
        _add(samples["drill_backup_newest_age_seconds"], labels, latest.get("age_s"))
        _add(samples["drill_backup_within_rpo"], labels, 1.0 if row.get("within_rpo") else 0.0)
        _add(samples["drill_backup_rpo_target_seconds"], labels, row.get("rpo_s"))
    return _exposition(samples, STATUS_HELP)


def status_textfile(path: Path) -> Path:
    """Where `drill status` writes its metrics: beside the run's file, never over it."""
    return path.with_name(f"{path.stem}-status.prom")


def run_metrics(document: dict | None, estate: str, finished: datetime, passed: bool) -> str:
    """The exposition text of a run; `document` None for a run that did not complete."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in HELP}
    base = {"estate": estate}
    samples["drill_run_timestamp_seconds"].append((base, finished.timestamp()))
    samples["drill_run_success"].append((base, 1.0 if passed else 0.0))
    for drill in (document or {}).get("drills", []):
        if drill.get("verdict") not in ("pass", "fail"):
            continue
        labels = base | {"kind": str(drill.get("kind"))}
        started = _time(drill.get("started_at"))
        samples["drill_last_run_timestamp_seconds"].append((labels, finished.timestamp()))
        samples["drill_last_run_success"].append((labels, 1.0 if drill["verdict"] == "pass" else 0))
        for name, key in (("rto", "measured_s"), ("rto_target", "target_s")):
            _add(samples[f"drill_{name}_seconds"], labels, (drill.get("rto") or {}).get(key))
        for name, key in (("rpo", "measured_s"), ("rpo_target", "target_s")):
            _add(samples[f"drill_{name}_seconds"], labels, (drill.get("rpo") or {}).get(key))
        taken = _time((drill.get("backup") or {}).get("taken_at"))
        if started and taken:
            _add(samples["drill_backup_age_seconds"], labels, (started - taken).total_seconds())
        checks = drill.get("checks") or []
        samples["drill_checks_passed"].append((labels, sum(1 for c in checks if c.get("passed"))))
        samples["drill_checks_failed"].append((labels, sum(1 for c in checks if not c["passed"])))
    return _exposition(samples, HELP)


def _exposition(samples: dict[str, list], helps: dict[str, str]) -> str:
    lines = []
    for name, rows in samples.items():
        if not rows:
            continue
        lines += [f"# HELP {name} {helps[name]}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{_labels(labels)}}} {_number(value)}" for labels, value in rows]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> str:
    """Replace `path` with `text` atomically (the collector never reads half a file)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ChannelError(f"{path}: {exc.strerror or exc}") from None
    return f"wrote {path}"


def push(url: str, job: str, estate: str, text: str, timeout: float) -> str:
    """PUT `text` to the pushgateway as the group job/<job>/estate/<estate> (replacing it)."""
    group = f"/metrics/job/{quote(job, safe='')}/estate/{quote(estate, safe='')}"
    target = url.rstrip("/") + group
    answer = request(target, timeout, data=text.encode(), kind=CONTENT_TYPE, method="PUT")
    return redact_text(f"pushed to {url.rstrip('/')}{group}: {answer}")


def _add(rows: list, labels: dict[str, str], value: float | None) -> None:
    if value is not None:
        rows.append((labels, float(value)))


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _labels(labels: dict[str, str]) -> str:
    escaped = {
        k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        for k, v in labels.items()
    }
    return ",".join(f'{k}="{v}"' for k, v in escaped.items())


def _number(value: float) -> str:
    return repr(float(value))
