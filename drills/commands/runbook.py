"""`drill runbook`: print the estate's recovery runbook as Markdown (see drills.recovery.runbook).

Generated from drill.toml, the backups in the storage now and the last drill's measured times
(``<report dir>/latest/drill.json``). Exit 0; 2 on a configuration error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drills.config import load_config


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill runbook` to the command's parser."""
    parser = commands.add_parser("runbook", help="print the estate's recovery runbook (Markdown)")
    parser.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    parser.add_argument(
        "--report-dir", default=None, help="where the drill runs are (default: [report] dir)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the runbook."""
    from drills.recovery.runbook import render

    config = load_config(args.config)
    report_dir = Path(args.report_dir or config.report.dir)
    print(render(config, report_dir=report_dir), end="")
    return 0
