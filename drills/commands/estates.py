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
a drill, and the summary says what it chose. With several Docker engines (`[runtime] engines`
or `DRILL_ENGINES`), the workers are spread over the engines that answer (each estate's run
gets its engine as DOCKER_HOST; its images are ensured there first); an engine that does not
answer is reported and its share goes to the others, and an estate whose engine stops
answering during its run is run again, once, on another. Ctrl-C or SIGTERM stops every estate's run,
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

import docker

from drills.config import load_config
from drills.config.errors import ConfigError, EnvironmentProblem
from drills.report.summary import part, write_summary

# What one drill of a small estate holds at its peak. Measured by bench/estates.py: 0.57 GB
# for a database drill at scale 0.1 (its `drill run` process and its restore target); the
# rest leaves room for the system drill's application and second Postgres.
FOOTPRINT_BYTES = 1536 * 2**20
DEFAULT_TIMEOUT_S = 4 * 3600.0
OUTPUT_TAIL = 4000


ENGINES_ENV = "DRILL_ENGINES"
IMAGES_TIMEOUT_S = 900.0


@dataclass
class Engine:
    """A Docker engine the estates may run on, and whether it answered."""

    url: str
    up: bool = True
    reason: str = ""
    images_s: float | None = None

    def describe(self) -> dict:
        """Its entry in the summary."""
        found = {"url": self.url, "up": self.up}
        return (
            found
            | ({"reason": self.reason} if self.reason else {})
            | ({"images_s": round(self.images_s, 1)} if self.images_s is not None else {})
        )


def engines_of(configs: list[Path], overrides: dict[str, str]) -> list[str]:
    """The engines to spread over: DRILL_ENGINES, else the estates' `[runtime] engines`."""
    given = os.environ.get(ENGINES_ENV, "")
    if given.strip():
        return list(dict.fromkeys(u.strip() for u in given.split(",") if u.strip()))
    found: list[str] = []
    for path in configs:
        found += load_config(path, overrides=overrides).runtime.engines
    return list(dict.fromkeys(found))


def prepare_engines(urls: list[str]) -> list[Engine]:
    """Ask each engine whether it answers, and ensure the Postgres image on each one that
    does (at once: a fresh engine imports it from the machine's cache)."""
    engines = [Engine(url) for url in urls]
    with ThreadPoolExecutor(max_workers=max(1, len(engines))) as pool:
        list(pool.map(_prepare, engines))
    if urls and not any(e.up for e in engines):
        reasons = "; ".join(f"{e.url}: {e.reason}" for e in engines)
        raise EnvironmentProblem(f"no Docker engine of the estates answers ({reasons})")
    return engines


def _prepare(engine: Engine) -> None:
    if not _answers(engine.url):
        engine.up, engine.reason = False, "does not answer"
        return
    started = time.monotonic()
    # `drill images` with the engine as DOCKER_HOST: the image steps run the docker CLI too.
    argv = [sys.executable, "-m", "drills.cli", "images", "--major", "15", "--no-app"]
    try:
        done = subprocess.run(
            argv, env=dict(os.environ) | {"DOCKER_HOST": engine.url}, capture_output=True,
            text=True, timeout=IMAGES_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        engine.up, engine.reason = False, f"its images took over {IMAGES_TIMEOUT_S:.0f} s"
        return
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        engine.up, engine.reason = False, f"cannot have the Postgres image ({last[0][:200]})"
        return
    engine.images_s = time.monotonic() - started


def _answers(url: str) -> bool:
    """Whether the engine at `url` answers a ping within 10 s."""
    try:
        client = docker.DockerClient(base_url=url, timeout=10)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


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
    engines: list[Engine] | None = None,
) -> int:
    """Drill every estate, `jobs` at a time (spread over `engines`, when given); write the
    combined summary; return the worst exit code."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    summary_dir = summary_root / "estates" / stamp
    summary_dir.mkdir(parents=True)
    runner = _Runner(extra, summary_dir, timeout, engines or [])
    print(f"drill: {len(estates)} estates, {jobs_reason}", flush=True)
    for engine in engines or []:
        state = f"images in {engine.images_s:.1f} s" if engine.up else f"DOWN: {engine.reason}"
        print(f"drill: engine {engine.url}: {state}", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="estate") as pool:
            parts = list(pool.map(runner.run, estates))
    except KeyboardInterrupt:
        runner.stop_all()
        raise
    facts = {"jobs": jobs, "jobs_reason": jobs_reason}
    if engines:
        facts["engines"] = [e.describe() for e in engines]
    summary = write_summary(summary_dir, parts, **facts)
    for entry in parts:
        print(f"drill: {entry['estate']}: {entry['verdict'].upper()} (exit {entry['exit']})")
    print(f"drill: ESTATES {summary['verdict'].upper()}; summary: {summary_dir / 'summary.html'}")
    return max((p["exit"] if p["exit"] is not None else 1) for p in parts)


class _Runner:
    """Runs one estate's `drill run` at a time per worker thread; stops them all on Ctrl-C."""

    def __init__(
        self, extra: list[str], summary_dir: Path, timeout: float, engines: list[Engine]
    ) -> None:
        self.extra, self.summary_dir, self.timeout = extra, summary_dir, timeout
        self.engines = engines
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._slots = threading.local()
        self._next = 0

    def run(self, estate: Estate) -> dict:
        engine = self._engine()
        entry = self._run_on(estate, engine)
        if entry["exit"] == 3 and engine is not None and not _answers(engine.url):
            # Its engine went away under it: once more, on another that answers.
            with self._lock:
                engine.up, engine.reason = False, "stopped answering during the run"
            other = self._engine(renew=True)
            if other is not None:
                entry = self._run_on(estate, other) | {"moved_from": engine.url}
        return entry

    def _engine(self, renew: bool = False) -> Engine | None:
        """This worker's engine: the workers are dealt over the engines that answer."""
        up = [e for e in self.engines if e.up]
        if not up:
            return None
        current = getattr(self._slots, "engine", None)
        if current is None or renew or not current.up:
            with self._lock:
                current = up[self._next % len(up)]
                self._next += 1
            self._slots.engine = current
        return current

    def _run_on(self, estate: Estate, engine: Engine | None) -> dict:
        argv = [sys.executable, "-m", "drills.cli", "run", "--config", str(estate.config)]
        argv += ["--report-dir", str(estate.report_dir), *self.extra]
        log = self.summary_dir / f"{estate.name}.log"
        env = dict(os.environ) | ({"DOCKER_HOST": engine.url} if engine else {})
        started = time.monotonic()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent, env=env,
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
            **({"engine": engine.url} if engine else {}),
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
