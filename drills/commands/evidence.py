"""`drill verify-history` and `drill evidence`: the history of a report directory, for audits.

- `drill verify-history [REPORT_DIR] [--public-key P] [--head HASH]` checks the hash chain of
  `history.jsonl` and the run directories beside it; it names every record removed, altered
  or reordered, every run directory missing or changed, and every sealed run directory with
  no record. It prints the chain's head: note it, and a later `--head` proves nothing was cut
  from the end.
- `drill evidence --since D --until D [REPORT_DIR] [--out bundle.zip]` writes one signed zip
  of every run in the window, the chain excerpt and its verification, the summary page and
  the public key (`drills.report.bundle`, its page `drills.report.period`); `drill
  verify-report bundle.zip` checks it.

Exit codes: 0 whole; 1 a break in the history (the bundle is still written, and says so);
2 usage or configuration error (no signing key for a bundle).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from drills.config import load_config
from drills.config.errors import ConfigError
from drills.report import bundle, chain, evidence


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill verify-history` and `drill evidence` to the command's parser."""
    check = commands.add_parser(
        "verify-history", help="check the history's hash chain and the run directories"
    )
    _where(check)
    check.add_argument("--public-key", default=None, help="the signer's PATH.pub (recommended)")
    check.add_argument("--head", default=None, help="a chain head noted earlier: must still be in")
    check.add_argument(
        "--allow-unsigned", action="store_true", help="accept records made without a key"
    )
    check.set_defaults(func=verify_history_main)

    build = commands.add_parser("evidence", help="one signed bundle of every run in a window")
    _where(build)
    build.add_argument("--since", required=True, help="first day, YYYY-MM-DD (UTC)")
    build.add_argument("--until", required=True, help="last day, YYYY-MM-DD (UTC, included)")
    build.add_argument("--out", default=None, help="default: evidence-SINCE-UNTIL.zip")
    build.set_defaults(func=evidence_main)


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report_dir", nargs="?", metavar="REPORT_DIR", help="default: [report] dir")
    parser.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")


def _report_dir(args: argparse.Namespace, config) -> Path:
    report_dir = Path(args.report_dir or config.report.dir)
    if not report_dir.is_dir():
        raise ConfigError(f"{report_dir}: not a directory; give the report directory")
    return report_dir


def verify_history_main(args: argparse.Namespace) -> int:
    """Check the history; print every break; exit 1 if there is any."""
    config = load_config(args.config)
    report_dir = _report_dir(args, config)
    public_key = Path(args.public_key) if args.public_key else None
    check = chain.verify_history(
        report_dir, public_key, allow_unsigned=args.allow_unsigned, head=args.head
    )
    for note in check.notes:
        print(f"drill: note: {note}")
    for problem in check.problems:
        print(f"drill: {problem}")
    if check.problems:
        print(f"drill: BROKEN: {len(check.problems)} problem(s) in the history of {report_dir}")
        return 1
    keys = ", ".join(sorted(check.fingerprints)) or "none"
    print(
        f"drill: OK: {len(check.records)} chained record(s), whole; signed by {keys}"
        + ("" if public_key else " (keys embedded in the records: pass --public-key)")
    )
    print(f"drill: head {check.head} (note it; check later with --head)")
    return 0


def evidence_main(args: argparse.Namespace) -> int:
    """Build the bundle; say where it is, how long it took, and whether the history held."""
    config = load_config(args.config)
    report_dir = _report_dir(args, config)
    since, until = bundle.day(args.since), bundle.day(args.until, end=True)
    if until <= since:
        raise ConfigError(f"--until {args.until} is before --since {args.since}")
    key = evidence.signing_key(config.report, report_dir)
    if key is None:
        raise ConfigError(
            "a bundle is signed: configure [report] signing_key_path or signing_key_env "
            "(`drill keygen PATH` makes a key)"
        )
    out = Path(args.out or f"evidence-{since:%Y%m%d}-{until:%Y%m%d}.zip")
    kinds = [k for k in config.configured_drills() if k != "freshness"]
    started = time.monotonic()
    estate = config.estate.name if config.source else None
    built = bundle.build(report_dir, since, until, out, key, kinds, estate=estate)
    took = time.monotonic() - started
    print(
        f"drill: wrote {built.path}: {len(built.runs)} run(s) from {args.since} to "
        f"{args.until} in {took:.1f} s; key {evidence.fingerprint(key.public_key())}"
    )
    for run in built.missing:
        print(f"drill: run {run}: its directory is missing; its record is in the bundle")
    if not built.check.whole:
        for problem in built.check.problems:
            print(f"drill: {problem}")
        print("drill: BROKEN: the history has breaks; the bundle shows them")
        return 1
    return 0
