"""`drill heartbeat`: write one heartbeat row per interval into production
(`drills.backup.heartbeat`).

This is the only command of the product that writes to production, and it writes only its
own table, ``drill_heartbeat``. Run it as a service (systemd, a container) next to the
database; SIGTERM or Ctrl-C ends it cleanly with a summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills.backup.heartbeat import TABLE, run_heartbeat
from drills.config import Config, load_config, parse_duration, redact_text
from drills.config.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill heartbeat` to the command's parser."""
    parser = commands.add_parser(
        "heartbeat",
        help="write a heartbeat row per interval into production (its only write)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    parser.add_argument("--dsn", default=None, help="libpq DSN (default: [pitr] dsn, then PG*)")
    parser.add_argument("--interval", default=None, help="e.g. 60s (default: [pitr])")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, default=None, help="stop after N beats")
    stop.add_argument("--for", dest="duration", default=None, help="stop after e.g. 10m")
    parser.add_argument("--keep", default="7d", help="delete own rows older than this")
    parser.set_defaults(func=main)


def resolve_dsn(config: Config, dsn: str | None) -> str:
    """The production DSN: the option, [pitr] dsn, [database] dsn, then the PG* variables;
    a DSN without a database gets [pitr] database or [database] name."""
    pitr, database = config.pitr, config.database
    chosen = dsn or (pitr.dsn if pitr else None) or (database.dsn if database else None) or ""
    try:
        params = conninfo_to_dict(chosen)
    except psycopg.ProgrammingError as exc:
        cause = redact_text(str(exc).strip().splitlines()[0])
        raise ConfigError(f"dsn: not a libpq connection string or URI ({cause})") from None
    name = (pitr.database if pitr else None) or (database.name if database else None)
    if "dbname" not in params and not os.environ.get("PGDATABASE") and name:
        params["dbname"] = name
    return make_conninfo("", **params)


def main(args: argparse.Namespace) -> int:
    """Beat until --count, --for, SIGTERM or Ctrl-C; print a summary."""
    # Not a config override: a [pitr] key on the command line would turn the drill on, and
    # the drill's checks (a storage URL) do not concern the heartbeat.
    config = load_config(args.config)
    if args.interval is not None:
        interval = parse_duration(args.interval)
    else:
        interval = config.pitr.heartbeat_interval if config.pitr else DEFAULT_INTERVAL
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be 1 or more, got {args.count}")
    duration = parse_duration(args.duration) if args.duration else None
    dsn = resolve_dsn(config, args.dsn)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _SIGNALS}
    where = redact_text(dsn) or "the PG* environment"
    print(f"heartbeat: a row every {interval:g} s into {TABLE} ({where})", flush=True)
    try:
        result = run_heartbeat(
            dsn,
            interval=interval,
            count=args.count,
            duration=duration,
            keep=parse_duration(args.keep),
            stop=stop,
            on_beat=lambda seq, at: log.info("beat %d at %s", seq, at.isoformat()),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    last = result.beats[-1].isoformat() if result.beats else "none"
    print(
        f"heartbeat: {len(result.beats)} beats written (run {result.run_id}, last {last}), "
        f"{result.missed} missed, {result.pruned} old rows pruned",
        flush=True,
    )
    return 0 if result.beats else 1


_SIGNALS = (signal.SIGTERM, signal.SIGINT)
