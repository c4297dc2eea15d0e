"""The words of a notification: the verdict, the failed drills and their causes, the report.

Built from the finished drill.json (already redacted and scrubbed of the configuration's
secrets) or from `drill status`; nothing else goes in, so a notification holds no secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drills.config.clock import human
from drills.config.schema import Config, redact_text
from drills.report.html import REPORT

CAUSE_LENGTH = 400


@dataclass(frozen=True)
class Message:
    """What is sent: a subject line, the text, whether it is good news, and the report."""

    subject: str
    text: str
    passed: bool
    report: Path | None = None
    """The file the e-mail attaches (the HTML report, else drill.json), when there is one."""


def run_passed(document: dict) -> bool:
    """Whether a run passed: every drill that ran passed, and at least one ran."""
    ran = [d for d in document.get("drills", []) if d.get("verdict") != "not_run"]
    return bool(ran) and document.get("verdict") == "pass"


def run_message(document: dict, run_dir: Path, config: Config) -> Message:
    """The message of a finished run."""
    passed = run_passed(document)
    ran = [d for d in document.get("drills", []) if d.get("verdict") != "not_run"]
    state = "passed" if passed else "FAILED" if ran else "NOTHING DRILLED"
    subject = f"Recovery drill {state}: {config.estate.name}"
    lines = [f"{subject} (run {run_dir.name})"]
    for drill in document.get("drills", []):
        lines.append(_drill_line(drill))
    report = _report_file(run_dir)
    lines.append(f"Report: {where(run_dir, config)}")
    return Message(subject, "\n".join(lines), passed, report)


def incomplete_message(run_dir: Path, config: Config, reason: str) -> Message:
    """The message of a run that did not complete (no verdict: never a pass)."""
    subject = f"Recovery drill DID NOT COMPLETE: {config.estate.name}"
    text = f"{subject} (run {run_dir.name})\n{_short(reason)}\nReport: {where(run_dir, config)}"
    return Message(subject, text, False, None)


def status_message(status: dict, config: Config) -> Message:
    """The message of `drill status`: what is overdue, suspect or failed, else all fresh."""
    problems = []
    store = status.get("storage", {})
    if not store.get("reachable", True):
        problems.append(f"storage {store.get('url')}: UNREACHABLE: {_short(store.get('error'))}")
    for kind, row in status.get("kinds", {}).items():
        if row.get("configured") is False:
            continue
        latest = row.get("latest")
        if latest is None:
            problems.append(f"{kind}: no backup found ({_short(row.get('error') or 'none')})")
        elif not row.get("within_rpo", True):
            problems.append(
                f"{kind}: OVERDUE: newest {latest['key']} is {human(latest['age_s'])} old "
                f"(RPO {human(row.get('rpo_s'))})"
            )
        if row.get("suspect"):
            suspect = _short("; ".join(row["suspect"]))
            problems.append(f"{kind}: newest backup is SUSPECT: {suspect}")
        if row.get("holes"):
            problems.append(f"{kind}: {_short('; '.join(row['holes']))}")
    for kind, row in status.get("drills", {}).items():
        if row.get("verdict") == "fail":
            problems.append(f"{kind}: last drill FAILED: {_short(row.get('cause') or '')}")
    ok = bool(status.get("ok")) and not problems
    state = "fresh" if ok else "NEED ATTENTION"
    subject = f"Backups {state}: {config.estate.name}"
    text = "\n".join([subject, *problems]) if problems else f"{subject}: every kind within its RPO"
    return Message(subject, text, ok, None)


def where(run_dir: Path, config: Config) -> str:
    """Where people open the run's report: `[notify] report_url`, else its path here."""
    if config.notify.report_url:
        return config.notify.report_url.replace("{run}", run_dir.name)
    report = _report_file(run_dir)
    return str(report if report and report.name != "drill.json" else run_dir)


def _report_file(run_dir: Path) -> Path | None:
    for name in (REPORT, "drill.json"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def _drill_line(drill: dict) -> str:
    kind, verdict = drill.get("kind", "?"), drill.get("verdict")
    if verdict == "pass":
        rto, rpo = drill.get("rto") or {}, drill.get("rpo") or {}
        times = []
        if rto.get("measured_s") is not None:
            times.append(f"RTO {human(rto['measured_s'])} of {human(rto.get('target_s'))}")
        if rpo.get("measured_s") is not None:
            times.append(f"RPO {human(rpo['measured_s'])} of {human(rpo.get('target_s'))}")
        return f"- {kind}: pass" + (f" ({', '.join(times)})" if times else "")
    if verdict == "not_run":
        return f"- {kind}: not run: {_short(drill.get('error') or 'skipped')}"
    failed = [c["name"] for c in drill.get("checks", []) if not c.get("passed")]
    cause = drill.get("error") or ("failed checks: " + ", ".join(failed) if failed else "failed")
    return f"- {kind}: FAIL: {_short(cause)}"


def _short(text: str | None) -> str:
    """A cause on a few lines, cut to a readable length; passwords in it hidden."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()][:3]
    joined = " / ".join(line.strip() for line in lines)
    if len(joined) > CAUSE_LENGTH:
        joined = joined[: CAUSE_LENGTH - 3] + "..."
    return redact_text(joined)
