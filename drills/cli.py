"""The `drill` command: demo, images, and the commands of later drills.

Exit codes: 0 success; 1 a drill or command failed (named cause); 2 configuration or usage
error; 3 environment error (no Docker engine, an image cannot be built).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from drills import __version__
from drills.config.errors import DrillError


def _images(args: argparse.Namespace) -> int:
    from drills.runtime import engine, images

    client = engine.connect()
    for major in args.major or [15]:
        started = time.monotonic()
        tag = images.ensure_postgres_image(client, major)
        version = images.image_postgres_version(client, tag) or "?"
        print(
            f"postgres {major}: {tag} (PostgreSQL {version}) in {time.monotonic() - started:.1f} s"
        )
    if not args.no_app:
        started = time.monotonic()
        tag = images.ensure_app_image(client)
        print(f"app: {tag} in {time.monotonic() - started:.1f} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from drills.commands import demo

    only = [k.strip() for k in args.only.split(",")] if args.only else None
    return demo.main(
        scale=args.scale, report_dir=args.report_dir, only=only, progress=not args.no_progress
    )


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every cleanup in `finally` runs.
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `drill` command."""
    parser = argparse.ArgumentParser(prog="drill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"recovery-drills {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    images = commands.add_parser("images", help="ensure the offline images a drill needs")
    images.add_argument(
        "--major", type=int, action="append", help="Postgres major (repeatable; default 15)"
    )
    images.add_argument("--no-app", action="store_true", help="skip the sample application image")
    images.set_defaults(func=_images)

    from drills.commands import evidence as evidence_cmd
    from drills.commands import report as report_cmd
    from drills.commands import run as run_cmd
    from drills.commands import status as status_cmd

    run_cmd.register(commands)
    status_cmd.register(commands)
    report_cmd.register(commands)
    evidence_cmd.register(commands)

    from drills.commands import backup as backup_cmd

    backup_cmd.register(commands)

    from drills.commands import heartbeat as heartbeat_cmd

    heartbeat_cmd.register(commands)

    from drills.commands import restore as restore_cmd
    from drills.commands import runbook as runbook_cmd

    restore_cmd.register(commands)
    runbook_cmd.register(commands)

    from drills.commands import init as init_cmd
    from drills.commands import merge as merge_cmd

    init_cmd.register(commands)
    merge_cmd.register(commands)

    demo = commands.add_parser("demo", help="drill the embedded default estate end to end")
    demo.add_argument("--scale", type=int, default=1, help="size of the generated estate")
    demo.add_argument("--report-dir", default="reports", help="where the run is written")
    demo.add_argument("--only", default=None, help="comma-separated subset of the drills")
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on the terminal (also DRILL_PROGRESS=0); none off a terminal",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `drill` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args))
    except DrillError as exc:
        print(f"drill: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader of our output went away (`drill status | head`): nothing left to say.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
        return 1
    except KeyboardInterrupt:
        print("drill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
