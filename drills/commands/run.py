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
from drills.suite import SCENARIOS

# The suite's own pytest settings: a run does not depend on the ini files of the directory it
# starts in, and the suite's fixtures are loaded by name.
SUITE_INI = SCENARIOS.parent / "pytest.ini"
SUITE_PLUGINS = ("drills.suite.fixtures", "drills.suite.public")
KINDS = ("database", "files", "config", "system", "pitr", "freshness", "storage", "recovery")
CONTAINER_DRILLS = {"database", "files", "system", "pitr", "recovery"}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill run` to the command's parser."""
    parser = commands.add_parser("run", help="run the drills against a configured estate")
    add_run_options(parser)
    parser.add_argument(
        "checks",
        nargs="*",
        metavar="PATH",
        help="the team's own checks (pytest files or directories), beside [run] scenarios",
    )
    parser.add_argument("--target-time", default=None, help="pitr: recover to this ISO time")
    parser.add_argument(
        "--pick",
        default=None,
        metavar="RULE",
        help="which backup to drill: latest, oldest, random, random:SEED, at:ISO-TIME "
        "([drill] pick)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="replay a random pick drawn with this seed"
    )
    parser.add_argument(
        "--accept-shrink",
        default=None,
        metavar="REASON",
        help="accept, for this run only, backups that shrank implausibly (a deliberate purge); "
        "the reason goes into the evidence",
    )
    parser.add_argument(
        "--estates", default=None, metavar="DIR", help="drill every estate: one *.toml each"
    )
    parser.add_argument(
        "--jobs",
        default=None,
        metavar="N|auto",
        help="with several estates: how many run at once (default 1; auto: fit the machine)",
    )
    parser.add_argument(
        "--estate-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with several estates: the bound on each estate's run (default 4 h)",
    )
    parser.set_defaults(func=main)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by `drill run` and `drill demo`."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="drill.toml (default: ./drill.toml); repeat it to drill several estates",
    )
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--report-dir", default=None, help="where runs are written")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on the terminal (also DRILL_PROGRESS=0); none off a terminal",
    )


def main(args: argparse.Namespace) -> int:
    """Run the configured drills; return the exit code."""
    overrides = _overrides(args.set)
    # Each estate of a many-estates run gets the pick too (and draws its own seed).
    overrides |= pick_override(getattr(args, "pick", None), getattr(args, "seed", None))
    configs = list(args.config or [])
    if len(configs) > 1 or getattr(args, "estates", None):
        return _many(args, configs, overrides)
    config_path = configs[0] if configs else None
    if args.report_dir:
        overrides["report.dir"] = args.report_dir
    if getattr(args, "target_time", None):
        overrides["pitr.target"] = args.target_time
    config = load_config(config_path, overrides=overrides)
    accept = getattr(args, "accept_shrink", None)
    if accept is not None and not accept.strip():
        raise ConfigError("--accept-shrink: give the reason (it goes into the evidence)")
    return run(
        config,
        config_path,
        overrides,
        only=_only(args.only),
        quiet=args.quiet,
        accept_shrink=accept,
        checks=[Path(p) for p in args.checks],
        progress=not args.no_progress,
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
    checks: list[Path] | None = None,
    progress: bool = True,
) -> int:
    """Run the drills of `config` (the scenarios in `scenarios`, then the team's own `checks`
    and `[run] scenarios`) in a new run directory; return the exit code."""
    import pytest

    wanted = [k for k in config.configured_drills() if only is None or k in only]
    if not wanted:
        raise ConfigError(
            "nothing to drill: the configuration has no [database], [files], [config], [app], "
            "[pitr], [posture] or [recovery] section"
            + (f" among --only {','.join(only)}" if only else "")
        )
    if CONTAINER_DRILLS & set(wanted):
        from drills.runtime import engine

        engine.connect()  # exit 3 with advice, before any drill starts
    own = team_checks(config, checks or [])
    run_dir = new_run_dir(Path(config.report.dir))
    argv = [str(scenarios), *map(str, own), "-p", "no:cacheprovider"]
    for plugin in SUITE_PLUGINS:
        argv += ["-p", plugin]
    argv += ["--drill-run-dir", str(run_dir), "-c", str(SUITE_INI)]
    argv += ["--rootdir", str(SCENARIOS.parent), "-o", "console_output_style=classic"]
    # The team's conftest.py files load from where its checks and configuration live.
    homes = [*own, *([config.source.parent] if own and config.source else [])]
    argv += ["--confcutdir", str(_common_dir(homes) if homes else scenarios)]
    if config_path or config.source:
        argv += ["--drill-config", str(config_path or config.source)]
    for key, value in overrides.items():
        argv += ["--drill-set", f"{key}={value}"]
    argv += ["--drill-only", ",".join(wanted)]
    if accept_shrink:
        argv += ["--drill-accept-shrink", accept_shrink]
    if not progress:
        argv += ["--drill-no-progress"]
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


def _many(args: argparse.Namespace, configs: list[str], overrides: dict[str, str]) -> int:
    """Several estates: each one's own `drill run`, `--jobs` at a time (drills.commands.estates)."""
    from drills.commands import estates

    paths = estates.configs_of(configs, args.estates)
    plan = estates.plan(paths, args.report_dir, overrides)
    jobs, reason = estates.choose_jobs(args.jobs, len(plan))
    engines = estates.prepare_engines(estates.engines_of(paths, overrides))
    extra = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    extra += ["--only", args.only] if args.only else []
    extra += ["--target-time", args.target_time] if args.target_time else []
    extra += ["--accept-shrink", args.accept_shrink] if args.accept_shrink else []
    extra += [*args.checks, *(["-q"] if args.quiet else [])]
    return estates.run_estates(
        plan,
        jobs=jobs,
        jobs_reason=reason,
        extra=extra,
        summary_root=Path(args.report_dir or "reports").resolve(),
        timeout=args.estate_timeout or estates.DEFAULT_TIMEOUT_S,
        engines=engines,
    )


def team_checks(config: Config, paths: list[Path]) -> list[Path]:
    """The team's own checks: `[run] scenarios` (relative to the configuration file), then
    the paths given on the command line; one that does not exist is a usage error."""
    base = config.source.parent if config.source else Path.cwd()
    found = [(base / p).resolve() for p in config.run.scenarios]
    found += [p.resolve() for p in paths]
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        raise ConfigError(f"the team's checks: no such file or directory: {', '.join(missing)}")
    return list(dict.fromkeys(found))


def _common_dir(paths: list[Path]) -> Path:
    dirs = [p if p.is_dir() else p.parent for p in paths]
    return Path(os.path.commonpath([str(d) for d in dirs]))


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


def pick_override(pick: str | None, seed: int | None) -> dict[str, str]:
    """`--pick` and `--seed` as the `drill.pick` key (a seed alone means a random pick)."""
    if seed is None:
        return {"drill.pick": pick} if pick else {}
    if pick not in (None, "random"):
        raise ConfigError(f"--seed replays a random pick; it cannot go with --pick {pick}")
    return {"drill.pick": f"random:{seed}"}


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
