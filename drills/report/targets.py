"""How a drill's recovery time and recovery point read, the same in every report.

A drill that did not recover has no recovery time to hold against its target: its RTO
reads "not recovered" with the time spent, never "met" or a margin, in the HTML report,
pytest-html, Allure, the JUnit properties and the history chart. Its RPO reads as missed
when the backup was too old (a cause of its own), else as "not recovered" too: an age is a
recovery point only once the backup has been recovered.

    >>> rto_text("fail", 8 * 3600, 12.3)
    'not recovered (12.3 s spent; target 8h 00m)'
    >>> rto_text("pass", 8 * 3600, 12.3)
    'met: 12.3 s of the 8h 00m target'
"""

from __future__ import annotations

from typing import Any

from drills.report.charts import duration

NOT_RECOVERED = "not recovered"


def recovered(verdict: str | None) -> bool:
    """Whether a drill with this verdict recovered (only a pass did)."""
    return verdict == "pass"


def target_row(
    name: str, target_s: float | None, measured_s: float | None, verdict: str | None = "pass"
) -> dict[str, Any]:
    """One line of the RTO/RPO table: target, measured, margin, state and words."""
    row: dict[str, Any] = {"name": name, "target_s": target_s, "measured_s": measured_s}
    if verdict == "not_run":
        return row | {"state": "unknown", "margin": "-", "words": "not run"}
    if measured_s is None:
        words = "not measured" + (f": {NOT_RECOVERED}" if not recovered(verdict) else "")
        return row | {"state": "unknown", "margin": "-", "words": words}
    over = target_s is not None and measured_s > target_s
    if not recovered(verdict) and (name == "RTO" or not over):
        return row | _not_recovered(name, target_s, measured_s, verdict)
    if target_s is None:
        return row | {"state": "unknown", "margin": "-", "words": "no target set"}
    if not over:
        share = measured_s / target_s * 100 if target_s else float("inf")
        return row | {
            "state": "ok",
            "margin": f"{duration(target_s - measured_s)} to spare",
            "words": f"met: {share_text(share)} of the target used",
        }
    late = duration(measured_s - target_s)
    words = (
        f"missed: the recovery took {duration(measured_s)}, {late} over the "
        f"{duration(target_s)} target"
        if name == "RTO"
        else f"missed: the newest backup was {duration(measured_s)} old when the drill started, "
        f"{late} more data lost than the {duration(target_s)} target allows (stale or too "
        "infrequent backups)"
    )
    return row | {"state": "over", "margin": f"{late} over", "words": words}


def _not_recovered(
    name: str, target_s: float | None, measured_s: float, verdict: str | None
) -> dict[str, Any]:
    state = "over" if verdict == "fail" else "unknown"
    if name == "RTO":
        words = f"{NOT_RECOVERED}: the drill failed after {duration(measured_s)}"
        if target_s is not None:
            words += f"; nothing to hold against the {duration(target_s)} target"
        return {"state": state, "margin": NOT_RECOVERED, "words": words}
    return {
        "state": "unknown",
        "margin": "-",
        "words": f"{NOT_RECOVERED}: the backup was {duration(measured_s)} old at drill start, "
        "but a backup's age is a recovery point only once it is recovered",
    }


def rto_text(verdict: str | None, target_s: float | None, measured_s: float | None) -> str:
    """The RTO in one line: "met: …", "missed: …" or "not recovered (… spent; …)"."""
    return _text("RTO", verdict, target_s, measured_s)


def rpo_text(verdict: str | None, target_s: float | None, measured_s: float | None) -> str:
    """The RPO in one line, read as `rto_text` reads the RTO."""
    return _text("RPO", verdict, target_s, measured_s)


def _text(name: str, verdict: str | None, target_s: float | None, measured_s: float | None) -> str:
    row = target_row(name, target_s, measured_s, verdict)
    target = f"target {duration(target_s)}" if target_s is not None else "no target"
    if row["margin"] == NOT_RECOVERED or row["words"].startswith(NOT_RECOVERED):
        spent = "spent" if name == "RTO" else "old"
        shown = f"{duration(measured_s)} {spent}; " if measured_s is not None else ""
        return f"{NOT_RECOVERED} ({shown}{target})"
    if row["state"] == "ok":
        return f"met: {duration(measured_s)} of the {duration(target_s)} target"
    if row["state"] == "over":
        return f"missed: {duration(measured_s)}, {row['margin']} the {duration(target_s)} target"
    return f"{row['words']} ({target})"


def share_text(percent: float) -> str:
    """A share of a target in words: "12.5%", "under 0.1%"."""
    return "under 0.1%" if percent < 0.1 else f"{percent:.1f}%"
