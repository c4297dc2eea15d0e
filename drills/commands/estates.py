"""Many estates in one `drill run`: one `drill run` process per estate, `--jobs` at a time.

`drill run --config a.toml --config b.toml` or `drill run --estates DIR` (one TOML per
estate) drills every estate. Each estate runs as its own `drill run`: its own pytest session,
containers, lock, history and signed run directory, bounded by `--estate-timeout`, so an
estate that fails or hangs never blocks the others. A process per estate, rather than pytest
workers sharing one session: an estate's configuration, records and evidence are the
session's own, and a crash stays inside its process.

The combined summary (`<report-dir>/estates/<UTC timestamp>/summary.json` and `summary.html`)
gives every estate's verdict and checks each run's evidence; the exit code is the worst of
the estates'. `--jobs auto` fits the machine's cores and memory to the measured footprint of
a drill, and the summary says what it chose. Ctrl-C or SIGTERM stops every estate's run,
which removes its containers; a killed `drill run` takes its estates' runs with it, and the
next run's sweep removes what they left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drills.config import load_config
from drills.config.errors import ConfigError
from drills.report.summary import part, write_summary

# What one drill of a small estate holds at its peak: the restore target (Postgres tuned for
# restores), the app, the harness (bench/README.md, "Many estates").
FOOTPRINT_BYTES = 1536 * 2**20
DEFAULT_TIMEOUT_S = 4 * 3600.0
OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class Estate:
    """One estate of the run: its name, configuration file and report directory."""

    name: str
    config: Path
    report_dir: Path


def configs_of(configs: list[str], estates_dir: str | None) -> list[Path]:
    """The configuration files named by `--config` (repeated) and `--estates DIR`."""
    found = [Path(c) for c in configs]
    if estates_dir:
        directory = Path(estates_dir)
        if not directory.is_dir():
            raise ConfigError(f"--estates {estates_dir}: not a directory")
        tomls = sorted(directory.glob("*.toml"))
        if not tomls:
            raise ConfigError(f"--estates {estates_dir}: no *.toml file in it")
        found += tomls
    return found


def plan(paths: list[Path], report_dir: str | None, overrides: dict[str, str]) -> list[Estate]:
    """Load every estate's configuration first (a bad one exits 2, naming its file, before
    any estate starts); two estates may not share a name or a report directory."""
    estates = []
    for path in paths:
        config = load_config(path, overrides=overrides)
        name = config.estate.name
        directory = Path(report_dir, name) if report_dir else Path(config.report.dir)
        estates.append(Estate(name, path, directory.resolve()))
    for attribute in ("name", "report_dir"):
        seen: dict[object, Path] = {}
        for estate in estates:
            value = getattr(estate, attribute)
            if value in seen:
                what = "[estate] name" if attribute == "name" else "report directory"
                raise ConfigError(
                    f"{seen[value]} and {estate.config} share the {what} {value}: each estate "
                    "needs its own (its history and lock live there)"
                )
            seen[value] = estate.config
    return estates


def choose_jobs(value: str | None, count: int) -> tuple[int, str]:
    """How many estates run at once, and why."""
    if value in (None, "", "1"):
        return 1, "--jobs 1: one estate at a time"
    if value != "auto":
        try:
            jobs = int(value)
        except ValueError:
            raise ConfigError(f"--jobs {value}: a number or auto") from None
        if jobs < 1:
            raise ConfigError(f"--jobs {value}: at least 1")
        return min(jobs, count), f"--jobs {jobs}"
    cores = os.cpu_count() or 1
    available = _available_memory()
    by_memory = max(1, available // FOOTPRINT_BYTES) if available else cores
    jobs = max(1, min(cores, by_memory, count))
    return jobs, (
        f"--jobs auto chose {jobs}: {cores} cores, "
        + (f"{available / 2**30:.1f} GiB available" if available else "memory unknown")
        + f", {FOOTPRINT_BYTES / 2**30:.1f} GiB per drill, {count} estates"
    )


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_estates(
    estates: list[Estate],
    *,
    jobs: int,
    jobs_reason: str,
    extra: list[str],
    summary_root: Path,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Drill every estate, `jobs` at a time; write the combined summary; return the worst
    exit code."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    summary_dir = summary_root / "estates" / stamp
    summary_dir.mkdir(parents=True)
    runner = _Runner(extra, summary_dir, timeout)
    print(f"drill: {len(estates)} estates, {jobs_reason}", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="estate") as pool:
            parts = list(pool.map(runner.run, estates))
    except KeyboardInterrupt:
        runner.stop_all()
        raise
    summary = write_summary(summary_dir, parts, jobs=jobs, jobs_reason=jobs_reason)
    for entry in parts:
        print(f"drill: {entry['estate']}: {entry['verdict'].upper()} (exit {entry['exit']})")
    print(f"drill: ESTATES {summary['verdict'].upper()}; summary: {summary_dir / 'summary.html'}")
    return max((p["exit"] if p["exit"] is not None else 1) for p in parts)


class _Runner:
    """Runs one estate's `drill run` at a time per worker thread; stops them all on Ctrl-C."""

    def __init__(self, extra: list[str], summary_dir: Path, timeout: float) -> None:
        self.extra, self.summary_dir, self.timeout = extra, summary_dir, timeout
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, estate: Estate) -> dict:
        argv = [sys.executable, "-m", "drills.cli", "run", "--config", str(estate.config)]
        argv += ["--report-dir", str(estate.report_dir), *self.extra]
        log = self.summary_dir / f"{estate.name}.log"
        started = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            with self._lock:
                self._running.add(proc)
            timed_out = False
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = _stop(proc)
            finally:
                with self._lock:
                    self._running.discard(proc)
        seconds = time.monotonic() - started
        latest = estate.report_dir / "latest"
        run_dir = latest.resolve() if latest.exists() and _newer(latest, started) else None
        entry = part(
            run_dir,
            estate=estate.name,
            exit_code=1 if timed_out else code,
            config=str(estate.config),
            seconds=round(seconds, 3),
            log=log.name,
            pid=proc.pid,  # its containers carry it (io.recovery-drills.pid)
        )
        if timed_out:
            entry["verdict"] = "fail"
            entry["problems"] = [f"stopped after its bound of {self.timeout:.0f} s"]
        return entry

    def stop_all(self) -> None:
        with self._lock:
            running = list(self._running)
        for proc in running:
            _stop(proc)


def _newer(latest: Path, started_monotonic: float) -> bool:
    """Whether `latest` was made by this run (not a run of an earlier day)."""
    age = time.monotonic() - started_monotonic
    return latest.lstat().st_mtime >= time.time() - age - 1


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM (the run unwinds and removes its containers), then SIGKILL after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _die_with_parent() -> None:
    # Linux: the estate's run gets SIGTERM when this process dies, even by SIGKILL.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
