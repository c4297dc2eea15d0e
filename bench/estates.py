"""Benchmark: estates per hour against `--jobs`, on this machine, in one run.

    .venv/bin/python -m bench.estates --estates 4 --jobs 1 2 4 --reps 1

Makes `--estates` copies of a small estate (the bench's plain gzip dump at `--scale`, with its
manifest; the database drill), then runs `drill run --estates DIR --jobs J` for each J, the
order rotated across repetitions, and measures the wall time, estates per hour, and the peak
memory of one worker: its `drill run` process (peak RSS, from /proc) plus its containers (the
peak of their memory cgroups). Prints medians and writes `bench/results/estates-<UTC>.json`.
Not a test: run it when the many-estates path changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.estate import ensure_dumps
from bench.methods import rotations
from bench.restore import RESULTS, _machine
from drills.runtime import engine, labels

CGROUP = Path("/sys/fs/cgroup/memory/docker")  # cgroup v1, the cgroupfs driver


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the results."""
    args = _parser().parse_args(argv)
    client = engine.connect()
    session = labels.RunSession.begin()
    try:
        dumps = ensure_dumps(client, session, args.scale)
    finally:
        session.end(client)
    work = Path(tempfile.mkdtemp(prefix="bench-estates-"))
    try:
        estates = _estates(work, dumps.storage_root("plain-gzip"), args.estates)
        runs: dict[int, list[dict]] = {j: [] for j in args.jobs}
        for rep, jobs in rotations(args.jobs, args.reps):
            result = _one_run(client, work, estates, jobs, rep)
            runs[jobs].append(result)
            print(
                f"  rep {rep + 1} --jobs {jobs}: {result['seconds']:.1f} s, "
                f"{result['estates_per_hour']:.0f} estates/h, worker peak "
                f"{result['worker_peak_mb']:.0f} MB, verdict {result['verdict']}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = {
        jobs: {
            "seconds": statistics.median(r["seconds"] for r in results),
            "estates_per_hour": statistics.median(r["estates_per_hour"] for r in results),
            "worker_peak_mb": statistics.median(r["worker_peak_mb"] for r in results),
            "runs": results,
        }
        for jobs, results in runs.items()
    }
    base = table[min(table)]["seconds"]
    print(f"\n{args.estates} estates (scale {args.scale:g}), medians of {args.reps}:")
    print("| --jobs | wall time | estates/hour | speed-up | peak memory per worker |")
    print("|---|---|---|---|---|")
    for jobs, row in table.items():
        print(
            f"| {jobs} | {row['seconds']:.1f} s | {row['estates_per_hour']:.0f} | "
            f"{base / row['seconds']:.2f}x | {row['worker_peak_mb']:.0f} MB |"
        )
    document = {
        "benchmark": "estates",
        "machine": _machine(),
        "scale": args.scale,
        "estates": args.estates,
        "reps": args.reps,
        "dump_bytes": dumps.dumps["plain-gzip"]["bytes"],
        "results": {str(k): v for k, v in table.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"estates-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {path}")
    return 0


def _estates(work: Path, store: Path, count: int) -> Path:
    directory = work / "estates"
    directory.mkdir()
    for n in range(count):
        name = f"estate-{n + 1}"
        shutil.copytree(store, work / name / "backups", symlinks=True)
        (directory / f"{name}.toml").write_text(
            f'[estate]\nname = "{name}"\n[storage]\nurl = "file://{work / name / "backups"}"\n'
            '[database]\nname = "drishti_production"\n'
            "[report]\nhtml = false\npytest_html = false\nallure = false\n"
        )
    return directory


def _one_run(client, work: Path, estates: Path, jobs: int, rep: int) -> dict:
    reports = work / f"reports-{jobs}-{rep}"
    sampler = _Sampler()
    sampler.start()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "run", "--estates", str(estates), "--jobs",
         str(jobs), "--report-dir", str(reports), "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    sampler.stop()
    (summary_dir,) = (reports / "estates").iterdir()
    summary = json.loads((summary_dir / "summary.json").read_text())
    count = len(summary["estates"])
    peaks = [sampler.worker_peak(entry["pid"]) for entry in summary["estates"]]
    return {
        "seconds": round(seconds, 3),
        "estates_per_hour": round(count * 3600 / seconds, 1),
        "worker_peak_mb": round(max(peaks) / 2**20, 1),
        "verdict": summary["verdict"],
        "exit": result.returncode,
    }


class _Sampler(threading.Thread):
    """Every 0.3 s: each `drill run` process's peak RSS and each container's memory peak,
    the containers mapped to the process that started them (their pid label)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.rss: dict[int, int] = {}
        self.container_peak: dict[str, int] = {}
        self.container_pid: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        client = engine.connect()
        while not self._done.wait(0.3):
            self._processes()
            self._containers(client)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def worker_peak(self, pid: int) -> int:
        mine = [cid for cid, owner in self.container_pid.items() if owner == pid]
        return self.rss.get(pid, 0) + sum(self.container_peak.get(cid, 0) for cid in mine)

    def _processes(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"drills.cli" not in argv or b"--config" not in argv:
                    continue
                status = (entry / "status").read_text()
            except OSError:
                continue
            peak = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
            if peak:
                kb = int(peak.split()[1])
                self.rss[int(entry.name)] = max(self.rss.get(int(entry.name), 0), kb * 1024)

    def _containers(self, client) -> None:
        try:
            found = client.containers.list(
                filters={"label": f"{labels.PROJECT}={labels.PROJECT_VALUE}"}
            )
        except Exception:
            return
        for container in found:
            pid = container.labels.get(labels.PID)
            if pid and pid.isdigit():
                self.container_pid[container.id] = int(pid)
            try:
                peak = int((CGROUP / container.id / "memory.max_usage_in_bytes").read_text())
            except (OSError, ValueError):
                continue
            self.container_peak[container.id] = max(self.container_peak.get(container.id, 0), peak)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.estates", description=__doc__)
    parser.add_argument("--estates", type=int, default=4, help="how many estates")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4], help="--jobs values")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each")
    parser.add_argument("--scale", type=float, default=0.05, help="the estate's size")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
