"""`drill merge RUN_DIR... [--out DIR]`: one summary of many estates' runs, each verified.

For a CI matrix that drills one estate per job: the jobs' run directories (their artifacts)
become one combined summary (summary.json and summary.html, as `drill run --estates` writes),
and each part's evidence is checked (its signature and every artefact's sha256). Exit 0 when
every part passed with intact evidence; 1 when a part failed, wrote no drill.json or does not
verify (each named); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drills.config.errors import ConfigError
from drills.report.summary import part, write_summary


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill merge` to the command's parser."""
    parser = commands.add_parser("merge", help="one verified summary of many estates' runs")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="e.g. a/reports/latest")
    parser.add_argument("--out", default="summary", help="where summary.json/.html go")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Merge the runs; return the exit code."""
    parts = []
    for given in args.run_dirs:
        run_dir = Path(given).resolve()
        if not run_dir.is_dir():
            raise ConfigError(f"{given}: not a run directory")
        parts.append(part(run_dir, estate=_estate(run_dir)))
    summary = write_summary(Path(args.out), parts, merged=len(parts))
    for entry in parts:
        problems = "; ".join(entry.get("problems") or []) or entry.get("evidence", "")
        print(f"{entry['estate']}: {entry['verdict'].upper()} ({problems})")
    print(f"merge: {summary['verdict'].upper()}; summary: {Path(args.out) / 'summary.html'}")
    return 0 if summary["verdict"] == "pass" else 1


def _estate(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "drill.json").read_text()).get("estate") or run_dir.name
    except (OSError, ValueError):
        return run_dir.name
