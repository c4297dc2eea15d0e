"""The summary page of an evidence bundle: every drill of an audit period on one page.

Drawn from the history records of the runs in the window (and the chain's verification):
drills per month and kind, pass and fail counts, RTO and RPO against their targets over
time, every failure with its cause and its follow-up (the next passing drill of that kind),
the gaps (months with no drill of a configured kind), the backups the drills restored
(oldest, newest, how many), and the controls the evidence serves. One self-contained page,
like the drill report: inline CSS and SVG, nothing loaded, prints on A4.

    >>> html = render_summary(view(records, since, until, kinds, check))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from drills.report import charts
from drills.report.chain import ChainCheck
from drills.report.controls import CONTROLS
from drills.report.html import environment, parse_time
from drills.report.verdicts import BACKUP_KIND

SUMMARY = "summary.html"
RAN = ("pass", "fail")


def months(since: datetime, until: datetime) -> list[str]:
    """The months ('2026-01') from `since` to before `until`."""
    found, moment = [], since.replace(day=1)
    while moment < until:
        found.append(moment.strftime("%Y-%m"))
        moment = (moment + timedelta(days=32)).replace(day=1)
    return found


def view(
    records: Sequence[dict[str, Any]],
    since: datetime,
    until: datetime,
    kinds: Sequence[str],
    check: ChainCheck,
    **facts: Any,
) -> dict[str, Any]:
    """What the summary page shows, from the window's records (oldest first)."""
    drills = [
        (record, kind, result)
        for record in records
        for kind, result in (record.get("drills") or {}).items()
        if result.get("verdict") in RAN
    ]
    seen = sorted({kind for _, kind, _ in drills} | set(kinds))
    calendar = months(since, until)
    grid = {m: {k: {"pass": 0, "fail": 0} for k in seen} for m in calendar}
    for record, kind, result in drills:
        month = _month(record)
        if month in grid:
            grid[month][kind][result["verdict"]] += 1
    totals = {k: {v: sum(grid[m][k][v] for m in calendar) for v in RAN} for k in seen}
    gaps = [
        {"kind": kind, "months": [m for m in calendar if not sum(grid[m][kind].values())]}
        for kind in kinds
    ]
    return {
        **facts,
        "since": since.isoformat(),
        "until": (until - timedelta(seconds=1)).isoformat(),
        "kinds": seen,
        "calendar": calendar,
        "grid": grid,
        "totals": totals,
        "runs": len(records),
        "failed_runs": sum(1 for r in records if r.get("verdict") != "pass"),
        "charts": _charts(drills, seen),
        "failures": _failures(drills),
        "incomplete": [r for r in records if r.get("verdict") == "incomplete"],
        "gaps": [g for g in gaps if g["months"]],
        "configured": list(kinds),
        "retention": _retention(drills),
        "check": check,
        "controls": CONTROLS,
        "records": [_run_row(r) for r in records],
    }


def render_summary(page: dict[str, Any]) -> str:
    """The summary page's HTML."""
    return environment().get_template("evidence-summary.html.j2").render(page=page)


def _month(record: dict[str, Any]) -> str:
    moment = parse_time(record.get("started_at"))
    return moment.strftime("%Y-%m") if moment else "?"


def _day(record: dict[str, Any]) -> str:
    moment = parse_time(record.get("started_at"))
    return moment.strftime("%Y-%m-%d") if moment else "?"


def _charts(drills: list[tuple[dict, str, dict]], kinds: list[str]) -> list[dict[str, Any]]:
    views = []
    for kind in kinds:
        runs = [(record, result) for record, k, result in drills if k == kind]
        if not runs:
            continue
        chart = {"kind": kind}
        for measure in ("rto", "rpo"):
            points = [
                charts.Point(_day(record), result.get(f"{measure}_measured_s"), result["verdict"])
                for record, result in runs
            ]
            key = f"{measure}_target_s"
            target = next((r[key] for _, r in reversed(runs) if r.get(key)), None)
            chart[measure] = charts.history_svg(kind, points, target, measure.upper())
        views.append(chart)
    return views


def _failures(drills: list[tuple[dict, str, dict]]) -> list[dict[str, Any]]:
    failures = []
    for index, (record, kind, result) in enumerate(drills):
        if result["verdict"] != "fail":
            continue
        follow = next(
            (r for r, k, res in drills[index + 1 :] if k == kind and res["verdict"] == "pass"),
            None,
        )
        after = None
        if follow is not None:
            first, then = parse_time(record.get("started_at")), parse_time(follow.get("started_at"))
            after = (then - first).total_seconds() if first and then else None
        failures.append(
            {
                "kind": kind,
                "run": record.get("run"),
                "started_at": record.get("started_at"),
                "cause": result.get("cause") or "no cause recorded (see the run's drill.json)",
                "backup": (result.get("backup") or {}).get("key"),
                "follow_up": follow.get("run") if follow else None,
                "follow_up_at": follow.get("started_at") if follow else None,
                "after_s": after,
            }
        )
    return failures


def _retention(drills: list[tuple[dict, str, dict]]) -> list[dict[str, Any]]:
    """Per kind of backup: the oldest and newest backup a drill restored, and how many.

    Only passing drills count: a backup a drill failed on was not restored.
    """
    picked: dict[str, dict[str, str | None]] = {}
    for _, kind, result in drills:
        backup = result.get("backup") or {}
        if backup.get("key") and result["verdict"] == "pass":
            picked.setdefault(BACKUP_KIND.get(kind, kind), {})[backup["key"]] = backup.get(
                "taken_at"
            )
    rows = []
    for kind, backups in sorted(picked.items()):
        by_time = sorted(backups.items(), key=lambda item: item[1] or "")
        rows.append(
            {
                "kind": kind,
                "picks": len(backups),
                "oldest": by_time[0],
                "newest": by_time[-1],
            }
        )
    return rows


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    chain = record.get("chain") or {}
    return {
        "run": record.get("run"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "verdict": record.get("verdict"),
        "drills": {k: r.get("verdict") for k, r in (record.get("drills") or {}).items()},
        "seq": chain.get("seq"),
        "sha": chain.get("drill_json_sha256"),
    }
