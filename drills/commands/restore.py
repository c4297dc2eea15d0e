"""`drill restore database|files|config`: the real recovery, with the drills' own engines.

Each prints its plan first (what is restored, from which backup, what is replaced and kept),
then restores beside the original, verifies with the drills' checks, and only then swaps.
A failure before the swap leaves the original as it was. Exit codes: 0 restored; 1 the
restore or its verification failed, or the confirmation was not given, or `restore files
--skip-damaged` restored all but the damaged files it lists; 2 configuration or
usage error (an unknown backup key, no terminal to confirm at without --yes); 3 environment
error (no Docker engine, not enough free space).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from drills.config import Config, load_config
from drills.config.errors import ConfigError
from drills.restore import progress
from drills.storage import Storage, open_storage

SAFETY_DIR = "safety-dumps"


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill restore` and its kinds to the command's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    common.add_argument("--storage-url", default=None, help="restore from this storage URL")

    parser = commands.add_parser(
        "restore", help="restore into the real estate (plan, confirm, verify, swap)"
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    database = kinds.add_parser(
        "database", parents=[common], help="restore a dump into a server, then swap it in"
    )
    database.add_argument("--to", required=True, metavar="DSN", help="the server and database")
    which = database.add_mutually_exclusive_group()
    which.add_argument("--backup", default=None, metavar="KEY", help="this backup")
    which.add_argument("--at", default=None, metavar="TIME", help="latest at or before TIME")
    database.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    database.add_argument(
        "--no-safety-dump", action="store_true", help="skip the safety dump of the current db"
    )
    database.add_argument(
        "--safety-dump-dir",
        default=None,
        metavar="DIR",
        help=f"where the safety dump goes (default: [backup] local_dir/{SAFETY_DIR}, "
        f"else ./{SAFETY_DIR})",
    )

    files = kinds.add_parser(
        "files", parents=[common], help="restore an uploads snapshot beside DIR, then swap"
    )
    files.add_argument("--to", required=True, metavar="DIR", help="the uploads directory")
    files.add_argument("--snapshot", default=None, metavar="KEY", help="this snapshot")
    files.add_argument(
        "--skip-damaged",
        action="store_true",
        help="restore every file but the damaged ones, list those with the snapshot to take "
        "each from, and exit 1",
    )

    config = kinds.add_parser(
        "config", parents=[common], help="decrypt and extract config files into DIR"
    )
    config.add_argument("--to", required=True, metavar="DIR", help="a new directory")
    config.add_argument("--archive", default=None, metavar="KEY", help="this archive")
    config.add_argument("--overwrite", action="store_true", help="replace files that exist")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Plan, confirm where asked, restore; return the exit code."""
    overrides = {"storage.url": args.storage_url} if args.storage_url else {}
    config = load_config(args.config, overrides=overrides)
    if config.storage.url is None:
        raise ConfigError("[storage] url is not set (or --storage-url): where are the backups?")
    storage = open_storage(
        config.storage.url, endpoint_url=config.storage.endpoint_url, region=config.storage.region
    )
    now = datetime.now(UTC)
    return {"database": _database, "files": _files, "config": _config}[args.kind](
        args, config, storage, now
    )


def say(message: str) -> None:
    """One line of progress."""
    print(f"restore: {message}", flush=True)


@contextlib.contextmanager
def _saying() -> Iterator[Callable[[str], None]]:
    """`say` for a recovery; on a terminal (stderr) with the progress line below the last
    message (the bytes of the backup read, rate and ETA while it is read)."""
    if not progress.wanted(sys.stderr.fileno()):
        yield say
        return
    started = time.monotonic()
    display = progress.Display(sys.stderr.fileno(), lambda: ("restore", time.monotonic() - started))

    def said(message: str) -> None:
        with display.hold():
            say(message)

    display.start()
    try:
        yield said
    finally:
        display.stop()


def _show(title: str, lines: list[str]) -> None:
    print(title)
    for line in lines:
        print(line)
    print(flush=True)


def _database(args: argparse.Namespace, config: Config, storage: Storage, now: datetime) -> int:
    from drills.recovery import database
    from drills.recovery.common import Workspace, confirm, parse_time

    at = parse_time(args.at) if args.at else None
    safety_dir = None if args.no_safety_dump else _safety_dir(args.safety_dump_dir, config)
    with Workspace() as workspace:
        plan = database.plan_database(
            config, storage, args.to, key=args.backup, at=at, safety_dir=safety_dir, now=now,
            workspace=workspace,
        )  # fmt: skip
        _show("Restore plan (database):", plan.lines(now))
        what = (
            f"database {plan.database} on {plan.server.where} is replaced"
            if plan.existing
            else f"database {plan.database} is created on {plan.server.where}"
        )
        # Whatever stops here, the workspace removes what the plan started (a recovery
        # container of the point-in-time engine).
        confirm(plan.database, yes=args.yes, what=what)
        with _saying() as said:
            outcome = database.run_database(plan, config, storage, say=said, workspace=workspace)
    for line in database.summary(outcome):
        print(line)
    return 0


def _files(args: argparse.Namespace, config: Config, storage: Storage, now: datetime) -> int:
    from drills.recovery import files
    from drills.recovery.common import Workspace

    plan = files.plan_files(
        config, storage, args.to, key=args.snapshot, now=now, skip_damaged=args.skip_damaged
    )
    _show("Restore plan (files):", plan.lines(now))
    with Workspace() as workspace, _saying() as said:
        outcome = files.run_files(plan, config, storage, say=said, workspace=workspace)
    for line in files.summary(outcome):
        print(line)
    return 1 if outcome.skipped else 0


def _config(args: argparse.Namespace, config: Config, storage: Storage, now: datetime) -> int:
    from drills.recovery import config as config_recovery

    plan = config_recovery.plan_config(
        config, storage, args.to, key=args.archive, overwrite=args.overwrite
    )
    _show("Restore plan (config):", plan.lines(now))
    outcome = config_recovery.run_config(plan, config, storage, say=say)
    for line in config_recovery.summary(outcome):
        print(line)
    return 0


def _safety_dir(given: str | None, config: Config) -> Path:
    if given:
        return Path(given).absolute()
    if config.backup.local_dir:
        return Path(config.backup.local_dir) / SAFETY_DIR
    return Path(os.getcwd()) / SAFETY_DIR
