"""Benchmark: the database producer against `pg_dump | gzip`, side by side, in one run.

    .venv/bin/python -m bench.producer --scale 2.2 --reps 3     # about 3 GB
    .venv/bin/python -m bench.producer --scale 0.02 --reps 1    # a smoke run (seconds)

Generates the reference estate (`bench/estate.py`) once in a throwaway Postgres 15 container
and dumps that same database with every method, repetition by repetition with the order
rotated, into a scratch directory emptied after each run; the container is removed at the
end. Methods:

- `pg_dump | gzip`: the original runbook's command (with pipefail), on the host;
- `pg_dump -Fd`: pg_dump writing a directory-format dump itself, on the host;
- `drill plain`: `drill backup database --format plain` into a file:// storage;
- `drill directory`: the same in directory format (the producer's default);
- `drill plain s3`: plain gzip into a bucket of the embedded S3 server (its own process),
  built in a staging directory first.

Each run records its wall time, the CPU seconds of its processes and of the database
container, how busy the rest of the machine was, the peak RSS of every process of its tree
(the producer's Python process apart) and the bytes written. Prints medians with ratios to
`pg_dump | gzip`, checks the targets (time within 1.2x, producer under 150 MB RSS) and writes
`bench/results/producer-<timestamp>.json`.
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.estate import DATABASE, generate, start_estate_server
from bench.methods import CpuMeter, rotations
from bench.restore import RESULTS, _machine
from drills.runtime import engine, labels
from drills.runtime.postgres import PostgresContainer
from drills.storage.s3server import EmbeddedS3

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 4 * 3600
BASELINE = "pg_dump | gzip"
TARGETS = {"time_vs_pg_dump_gzip": 1.2, "producer_rss_mb": 150.0}


@dataclass(frozen=True)
class Method:
    """A way to dump the estate: the command it runs, and whether it is the producer."""

    name: str
    producer: bool
    argv: Callable[[Path, PostgresContainer, EmbeddedS3 | None], list[str]]


def _pg_dump_gzip(out: Path, pg: PostgresContainer, s3: EmbeddedS3 | None) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", f"pg_dump {DATABASE} | gzip -c > {out}/dump.sql.gz"]


def _pg_dump_dir(out: Path, pg: PostgresContainer, s3: EmbeddedS3 | None) -> list[str]:
    return ["pg_dump", "--format=directory", f"--file={out}/dump.dir", DATABASE]


def _drill(dump_format: str, to_s3: bool = False):
    def argv(out: Path, pg: PostgresContainer, s3: EmbeddedS3 | None) -> list[str]:
        config = out / "drill.toml"
        if to_s3:
            assert s3 is not None
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            s3.client().create_bucket(Bucket=bucket)
            storage = f'url = "s3://{bucket}"\nendpoint_url = "{s3.endpoint_url}"\n'
            staging = out / "staging"
            staging.mkdir()
            backup = f'staging_dir = "{staging}"\n'
        else:
            (out / "store").mkdir()
            storage, backup = f'url = "{(out / "store").as_uri()}"\n', ""
        config.write_text(
            f'[storage]\n{storage}[database]\nname = "{DATABASE}"\n'
            f'format = "{dump_format}"\n[backup]\n{backup}'
        )
        return [sys.executable, "-m", "drills.cli", "backup", "database", "--config", str(config)]

    return argv


METHODS = {
    m.name: m
    for m in (
        Method(BASELINE, False, _pg_dump_gzip),
        Method("pg_dump -Fd", False, _pg_dump_dir),
        Method("drill plain", True, _drill("plain")),
        Method("drill directory", True, _drill("directory")),
        Method("drill plain s3", True, _drill("plain", to_s3=True)),
    )
}


class PeakRss:
    """Polls the peak RSS (VmHWM) of every process in a tree until it ends, by command."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """The largest peak of each command in MB ("python", "pg_dump", "gzip", ...)."""
        self._stop.set()
        self._thread.join()
        by_command: dict[str, float] = {}
        for command, kb in self.peaks.values():
            by_command[command] = max(by_command.get(command, 0.0), round(kb / 1024, 1))
        return by_command

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in _tree(self.root):
                found = _vm_hwm(pid)
                if found:
                    command, kb = found
                    if kb > self.peaks.get(pid, ("", 0))[1]:
                        self.peaks[pid] = (command, kb)
            self._stop.wait(self.interval)


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _vm_hwm(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    if "VmHWM" not in fields:
        return None
    return fields["Name"].strip(), int(fields["VmHWM"].split()[0])


def _run(method: Method, pg: PostgresContainer, s3: EmbeddedS3 | None, scratch: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="producer-", dir=scratch))
    try:
        argv = method.argv(out, pg, s3)
        env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg.port),
            "PGUSER": pg.user,
            "PGPASSWORD": pg.password,
        }
        if s3 is not None:
            env["AWS_ACCESS_KEY_ID"] = s3.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            cpu = CpuMeter(pg)
            started = time.monotonic()
            proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
            rss = PeakRss(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.monotonic() - started
            peaks = rss.stop()
            measured = cpu.stop()
            stdout.seek(0)
            stderr.seek(0)
            said, complaint = stdout.read().decode(errors="replace"), stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{method.name} failed: {complaint.decode(errors='replace')}")
        written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        return {
            "seconds": round(seconds, 3),
            **measured,
            "peak_rss_mb": peaks,
            "tree_max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "bytes_written_locally": written,
            "output": said.splitlines()[:1],
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran (whatever the targets say)."""
    args = _parser().parse_args(argv)
    methods = [METHODS[name] for name in args.methods.split(",")]
    client = engine.connect()
    session = labels.RunSession.begin()
    labels.sweep(client, keep=session.run_id)
    document: dict = {
        "benchmark": "producer",
        "started_at": datetime.now(UTC).isoformat(),
        "machine": _machine(),
        "reps": args.reps,
    }
    s3 = EmbeddedS3().start() if any("s3" in m.name for m in methods) else None
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    pg: PostgresContainer | None = None
    try:
        pg = start_estate_server(client, session)
        size, rows = generate(pg, args.scale, log=lambda line: print(line, file=sys.stderr))
        with pg.connect(DATABASE, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        document["estate"] = {"scale": args.scale, "database_bytes": size, "rows": rows}
        runs: dict[str, list[dict]] = {m.name: [] for m in methods}
        for rep, method in rotations(methods, args.reps):
            measured = _run(method, pg, s3, scratch)
            runs[method.name].append(measured)
            took = f"{measured['seconds']:.1f} s, others {measured['others_cores']}"
            print(f"  rep {rep + 1} {method.name}: {took}", file=sys.stderr)
        document["runs"] = runs
    finally:
        if pg is not None:
            pg.stop()
        if s3 is not None:
            s3.stop()
        session.end(client)
    document["summary"] = _summarise(document["runs"], methods)
    document["targets"] = _targets(document["summary"])
    print(_table(document))
    _write(document, Path(args.out))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.producer", description=__doc__)
    parser.add_argument("--scale", type=float, default=2.2, help="2.2 is about 3 GB on disk")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every method")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}"
    )
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON goes")
    parser.add_argument(
        "--scratch", default="/var/tmp/drill-bench", help="where dumps are written (a disk)"
    )
    return parser


def _summarise(runs: dict[str, list[dict]], methods: list[Method]) -> dict:
    summary: dict = {}
    for method in methods:
        ms = runs[method.name]
        rss = [m["peak_rss_mb"] for m in ms]
        commands = sorted({c for peaks in rss for c in peaks})
        summary[method.name] = {
            "producer": method.producer,
            "median_s": round(statistics.median(m["seconds"] for m in ms), 2),
            "min_s": min(m["seconds"] for m in ms),
            "max_s": max(m["seconds"] for m in ms),
            "cpu_median_s": round(statistics.median(m["cpu_s"] for m in ms), 1),
            "others_cores_median": statistics.median(m["others_cores"] or 0 for m in ms),
            "peak_rss_mb_max": {c: max(p.get(c, 0.0) for p in rss) for c in commands},
        }
    base = summary.get(BASELINE, {}).get("median_s")
    for entry in summary.values():
        entry["x_pg_dump_gzip"] = round(entry["median_s"] / base, 3) if base else None
    return summary


def _targets(summary: dict) -> dict:
    found = {}
    plain = summary.get("drill plain")
    if plain and plain["x_pg_dump_gzip"] is not None:
        ratio, bound = plain["x_pg_dump_gzip"], TARGETS["time_vs_pg_dump_gzip"]
        found["time_vs_pg_dump_gzip"] = {"value": ratio, "bound": bound, "met": ratio <= bound}
    producers = [e for e in summary.values() if e["producer"]]
    if producers:
        rss = max(e["peak_rss_mb_max"].get("python", 0.0) for e in producers)
        bound = TARGETS["producer_rss_mb"]
        found["producer_rss_mb"] = {"value": rss, "bound": bound, "met": rss <= bound}
    return found


def _table(document: dict) -> str:
    estate = document["estate"]
    lines = [
        "",
        f"database {estate['database_bytes'] / 1e9:.2f} GB ({estate['rows']['users']:,} users, "
        f"{estate['rows']['transactions']:,} transactions); {document['reps']} repetitions, "
        "medians; cpu: CPU seconds of the method's processes and the database container; "
        "others: cores busy with other people's work; RSS: peak per process",
        f"{'method':<18} {'median':>7} {'min':>7} {'max':>7} {'x pg_dump|gzip':>14} "
        f"{'cpu':>6} {'others':>6}  peak RSS MB",
    ]
    for name, entry in document["summary"].items():
        rss = ", ".join(f"{c} {mb:.0f}" for c, mb in entry["peak_rss_mb_max"].items())
        lines.append(
            f"{name:<18} {entry['median_s']:>7.1f} {entry['min_s']:>7.1f} {entry['max_s']:>7.1f} "
            f"{entry['x_pg_dump_gzip']:>13.2f}x {entry['cpu_median_s']:>6.0f} "
            f"{entry['others_cores_median']:>6.2f}  {rss}"
        )
    for name, judged in document["targets"].items():
        verdict = "met" if judged["met"] else "NOT MET"
        lines.append(f"target {name}: {judged['value']} (bound {judged['bound']}): {verdict}")
    return "\n".join(lines)


def _write(document: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    document["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out / f"producer-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    sys.exit(main())
