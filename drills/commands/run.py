"""`drill run`: run the drill scenarios against a configured estate, through pytest.

Each run writes into `<report-dir>/<UTC timestamp>/` (drill.json, junit.xml, the pytest-html
report, Allure results) and points `<report-dir>/latest` at it. Exit codes: 0 every configured
drill passed; 1 any drill failed; 2 configuration or usage error, and a run where every drill
was skipped (nothing was drilled: never a pass, not a failure of the backups either); 3
environment error.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from drills.config import Config, load_config
from drills.config.errors import ConfigError
from drills.notify import announce_incomplete, announce_run
from drills.report import finalize_run, record_incomplete

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
KINDS = ("database", "files", "config", "system", "pitr", "freshness", "recovery")
CONTAINER_DRILLS = {"database", "files", "system", "pitr", "recovery"}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill run` to the command's parser."""
    parser = commands.add_parser("run", help="run the drills against a configured estate")
    add_run_options(parser)
    parser.add_argument("--target-time", default=None, help="pitr: recover to this ISO time")
    parser.add_argument(
        "--accept-shrink",
        default=None,
        metavar="REASON",
        help="accept, for this run only, backups that shrank implausibly (a deliberate purge); "
        "the reason goes into the evidence",
    )
    parser.set_defaults(func=main)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by `drill run` and `drill demo`."""
    parser.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--report-dir", default=None, help="where runs are written")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="less pytest output")


def main(args: argparse.Namespace) -> int:
    """Run the configured drills; return the exit code."""
    overrides = _overrides(args.set)
    if args.report_dir:
        overrides["report.dir"] = args.report_dir
    if getattr(args, "target_time", None):
        overrides["pitr.target"] = args.target_time
    config = load_config(args.config, overrides=overrides)
    accept = getattr(args, "accept_shrink", None)
    if accept is not None and not accept.strip():
        raise ConfigError("--accept-shrink: give the reason (it goes into the evidence)")
    return run(
        config,
        args.config,
        overrides,
        only=_only(args.only),
        quiet=args.quiet,
        accept_shrink=accept,
    )


def run(
    config: Config,
    config_path: str | None,
    overrides: dict[str, str],
    *,
    only: list[str] | None = None,
    quiet: bool = False,
    accept_shrink: str | None = None,
    scenarios: Path = SCENARIOS,
) -> int:
    """Run the drills of `config` (the scenarios in `scenarios`) in a new run directory;
    return the exit code."""
    import pytest

    wanted = [k for k in config.configured_drills() if only is None or k in only]
    if not wanted:
        raise ConfigError(
            "nothing to drill: the configuration has no [database], [files], [config], [app], "
            "[pitr] or [recovery] section" + (f" among --only {','.join(only)}" if only else "")
        )
    if CONTAINER_DRILLS & set(wanted):
        from drills.runtime import engine

        engine.connect()  # exit 3 with advice, before any drill starts
    run_dir = new_run_dir(Path(config.report.dir))
    argv = [str(scenarios), "-p", "no:cacheprovider", "--drill-run-dir", str(run_dir)]
    argv += ["--rootdir", str(SCENARIOS.parent), "-o", "console_output_style=classic"]
    if config_path or config.source:
        argv += ["--drill-config", str(config_path or config.source)]
    for key, value in overrides.items():
        argv += ["--drill-set", f"{key}={value}"]
    argv += ["--drill-only", ",".join(wanted)]
    if accept_shrink:
        argv += ["--drill-accept-shrink", accept_shrink]
    if config.report.junit:
        argv += [f"--junitxml={run_dir / 'junit.xml'}"]
    if config.report.pytest_html:
        argv += [f"--html={run_dir / 'pytest-report.html'}", "--self-contained-html"]
    if config.report.allure:
        argv += [f"--alluredir={run_dir / 'allure-results'}"]
    # Short tracebacks: long ones print every frame's arguments, which may hold secrets.
    argv += ["--tb=short"]
    argv += ["-q"] if quiet else ["-v"]
    status = pytest.main(argv)
    document = run_dir / "drill.json"
    if int(status) in (2, 3, 4):
        # Interrupted, internal error or usage error: whatever drill.json says, the run is
        # incomplete, and an incomplete run is never a pass.
        reason = f"the run did not complete (pytest exit {int(status)})"
        print(f"drill: {reason}; report: {run_dir}")
        record_incomplete(run_dir, config, reason)
        announce_incomplete(run_dir, config, reason)
        return 2 if int(status) == 4 else 1
    if not document.exists():
        reason = f"the run wrote no drill.json (pytest exit {int(status)})"
        print(f"drill: {reason}")
        record_incomplete(run_dir, config, reason)
        announce_incomplete(run_dir, config, reason)
        return 2 if int(status) in (2, 3, 4) else 1
    finalize_run(run_dir, config, announce=lambda finished: announce_run(finished, run_dir, config))
    result = json.loads(document.read_text())
    if not any(d["verdict"] != "not_run" for d in result["drills"]):
        reasons = "; ".join(f"{d['kind']}: {d['error']}" for d in result["drills"])
        print(
            f"drill: NOTHING DRILLED: every drill was skipped ({reasons or 'no drill ran'}); "
            f"report: {run_dir}"
        )
        return 2
    verdict = result["verdict"]
    print(f"drill: {verdict.upper()}; report: {run_dir}")
    if verdict == "pass":
        return 0
    # A drill that could not run for the machine's sake (no engine, no image) is exit 3.
    failed = [d for d in result["drills"] if d["verdict"] == "fail"]
    if failed and all(d.get("error_type") == "EnvironmentProblem" for d in failed):
        return 3
    return 1


def new_run_dir(report_dir: Path) -> Path:
    """Create `<report_dir>/<UTC timestamp>/` and point `<report_dir>/latest` at it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    run_dir = report_dir / stamp
    run_dir.mkdir(parents=True)
    latest = report_dir / "latest"
    tmp = report_dir / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp)
    tmp.replace(latest)
    return run_dir.resolve()


def _overrides(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        result[key.strip()] = value
    return result


def _only(value: str | None) -> list[str] | None:
    if not value:
        return None
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"--only: unknown drill {', '.join(unknown)} (known: {', '.join(KINDS)})")
    return kinds
