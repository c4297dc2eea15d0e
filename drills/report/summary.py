"""The combined summary of many estates' runs: summary.json and summary.html.

Each estate's run keeps its own signed run directory; the summary reads them, checks each
one's evidence (its signature and every artefact's sha256) and records the sha256 of each
drill.json, so a part changed after the summary was made is named when it is made again
(`drill merge`). Its verdict is the worst of the parts: a part whose evidence does not
verify, or whose run wrote no drill.json, is a failure.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drills.report import evidence

SUMMARY = "summary.json"
PAGE = "summary.html"
VERDICTS = ("pass", "fail", "incomplete")


def part(run_dir: Path | None, *, estate: str, exit_code: int | None = None, **facts: Any) -> dict:
    """One estate's entry: its run's verdict and drills, its evidence checked."""
    entry: dict[str, Any] = {"estate": estate, "exit": exit_code, **facts}
    document_path = run_dir / evidence.DOCUMENT if run_dir else None
    if document_path is None or not document_path.exists():
        entry |= {"verdict": "incomplete", "run_dir": str(run_dir) if run_dir else None}
        entry["problems"] = [f"{estate}: the run wrote no drill.json"]
        return entry
    data = document_path.read_bytes()
    document = json.loads(data)
    problems = evidence.verify_run(run_dir, allow_unsigned=True)
    signed = (run_dir / evidence.SIGNATURE).exists()
    entry |= {
        "run_dir": str(run_dir),
        "verdict": document.get("verdict", "fail"),
        "drill_json_sha256": hashlib.sha256(data).hexdigest(),
        "evidence": "broken" if problems else ("signed" if signed else "unsigned, hashes intact"),
        "problems": problems,
        "drills": [
            {"kind": d["kind"], "verdict": d["verdict"], "error": d.get("error")}
            for d in document.get("drills", [])
        ],
    }
    return entry


def worst(parts: list[dict]) -> str:
    """The summary's verdict: pass only when every part passed with intact evidence."""
    if parts and all(p["verdict"] == "pass" and not p.get("problems") for p in parts):
        return "pass"
    return "fail"


def write_summary(directory: Path, parts: list[dict], **facts: Any) -> dict:
    """Write summary.json and summary.html into `directory`; return the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = {
        "verdict": worst(parts),
        "created_at": datetime.now(UTC).isoformat(),
        **facts,
        "estates": parts,
    }
    (directory / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    (directory / PAGE).write_text(render(summary, directory))
    return summary


def render(summary: dict, directory: Path) -> str:
    """The summary as one self-contained HTML page (no external request)."""
    rows = []
    for entry in summary["estates"]:
        drills = ", ".join(
            f"{d['kind']} {d['verdict'].upper()}" + (f" ({d['error']})" if d.get("error") else "")
            for d in entry.get("drills", [])
        )
        report = _report_link(entry, directory)
        problems = "; ".join(entry.get("problems") or [])
        rows.append(
            f'<tr class="{_e(entry["verdict"])}"><td>{_e(entry["estate"])}</td>'
            f"<td><b>{_e(entry['verdict'].upper())}</b></td><td>{_e(entry.get('exit'))}</td>"
            f"<td>{_e(_seconds(entry.get('seconds')))}</td><td>{_e(drills)}</td>"
            f"<td>{_e(entry.get('evidence', ''))} {_e(problems)}</td><td>{report}</td></tr>"
        )
    chosen = summary.get("jobs_reason", "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recovery drills: {len(rows)} estates</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222 }}
table {{ border-collapse: collapse; width: 100% }}
td, th {{ border: 1px solid #ccc; padding: .4em .6em; text-align: left; vertical-align: top }}
tr.pass td:nth-child(2) {{ color: #176f2c }} tr.fail td:nth-child(2),
tr.incomplete td:nth-child(2) {{ color: #b00020 }}
@media print {{ @page {{ size: A4 landscape; margin: 12mm }} }}
</style></head><body>
<h1>Recovery drills: {_e(summary["verdict"].upper())}</h1>
<p>{len(rows)} estates, made {_e(summary["created_at"])}. {_e(chosen)}</p>
<table><thead><tr><th>estate</th><th>verdict</th><th>exit</th><th>time</th><th>drills</th>
<th>evidence</th><th>report</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table></body></html>
"""


def _report_link(entry: dict, directory: Path) -> str:
    run_dir = entry.get("run_dir")
    if not run_dir or not Path(run_dir, "drill-report.html").exists():
        return ""
    href = os.path.relpath(Path(run_dir, "drill-report.html"), directory)
    return f'<a href="{_e(href)}">drill report</a>'


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))
