"""Which days of the promised window have ever been drilled, from `history.jsonl`.

A drill records the time of the backup it restored (history's ``backup.taken_at``); a day of
the window is drilled when a drill of that kind restored a backup taken that day (UTC). Over
months of `[drill] pick = "random"` the calendar fills; a window drilled only on its newest
day is a promise proven for one day.

    >>> coverage(read_history(Path("reports")), "database", 30, now)["calendar"]  # doctest: +SKIP
    "......#..................#....#"
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

PASSED, FAILED, NEVER = "#", "x", "."
"""The calendar's marks: a backup of that day passed a drill, only failed, never drilled."""


def coverage(
    history: Iterable[Mapping[str, Any]], kind: str, days: int, now: datetime
) -> dict[str, Any]:
    """The window's days (`days` back from `now`, oldest first) and which were drilled."""
    now = now.astimezone(UTC)
    first = (now - timedelta(days=days)).date()
    window = [first + timedelta(days=i) for i in range((now.date() - first).days + 1)]
    verdicts: dict[date, str] = {}
    for entry in history:
        drill = (entry.get("drills") or {}).get(kind) or {}
        taken = _when((drill.get("backup") or {}).get("taken_at"))
        if taken is None or drill.get("verdict") not in ("pass", "fail"):
            continue
        day = (taken if taken.tzinfo is None else taken.astimezone(UTC)).date()
        if first <= day <= now.date() and verdicts.get(day) != "pass":
            verdicts[day] = drill["verdict"]
    marks = {"pass": PASSED, "fail": FAILED}
    return {
        "window_days": days,
        "first_day": first.isoformat(),
        "last_day": now.date().isoformat(),
        "days_in_window": len(window),
        "days_drilled": len(verdicts),
        "days_passed": sum(v == "pass" for v in verdicts.values()),
        "drilled": {d.isoformat(): v for d, v in sorted(verdicts.items())},
        "calendar": "".join(marks.get(verdicts.get(d, ""), NEVER) for d in window),
    }


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
