"""Benchmark: the uploads restore from the embedded S3 against file:// and a raw parallel boto3
download, side by side, in one run.

    .venv/bin/python -m bench.files --files 20000 --reps 3     # the issue's 20,000 uploads
    .venv/bin/python -m bench.files --files 500 --reps 1       # a smoke run (seconds)

Makes an uploads directory of small files (1 to 8 KB, in 100 folders), backs it up once with
`drill backup files` into a file:// storage (its snapshots in place) and into a bucket of the
embedded S3 server (moto in its own process, over HTTP), then measures, repetition by
repetition with the order rotated:

- `drill file://`: the files restore engine (`drills.restore.files.restore_files`: snapshot ->
  tar stream -> `tar -x` into a fresh volume, every file hashed) from the file:// storage;
- `drill s3`: the same from the bucket, many objects fetched at once (`S3_WORKERS`);
- `drill s3 1-worker`: the same with one fetch in flight (one object at a time, as before);
- `boto3 parallel`: the raw comparator, no harness: list the snapshot's objects, GET them with
  16 threads and write each to a directory on the host (nothing hashed, no volume).

Prints medians, the ratio of `drill s3` to `drill file://` against the target (3x) and writes
`bench/results/files-<timestamp>.json`. Not a test: run it when the files restore changes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.methods import CpuMeter, rotations
from bench.restore import RESULTS, _machine
from drills.backup import Destination, backup_files
from drills.restore import files as engine
from drills.runtime import engine as docker_engine
from drills.runtime import images, labels
from drills.storage import LocalStorage, Storage, catalog
from drills.storage.s3 import S3Storage
from drills.storage.s3server import EmbeddedS3

TARGET = 3.0
"""The S3 restore within this many times the file:// one."""
RAW_WORKERS = 16
TIMEOUT = 3600.0


def make_uploads(root: Path, count: int, seed: int = 7) -> int:
    """`count` small files in 100 folders; their total bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        path = root / f"folder{i % 100:03d}" / f"upload{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randint(1000, 8000))
        path.write_bytes(data)
        total += len(data)
    return total


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the results."""
    args = _parser().parse_args(argv)
    client = docker_engine.connect()
    session = labels.RunSession.begin()
    labels.sweep(client, keep=session.run_id)
    image = images.ensure_postgres_image(client, 15)
    server = EmbeddedS3().start()
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir))
    document: dict = {"started_at": datetime.now(UTC).isoformat(), "machine": _machine()}
    try:
        source = work / "uploads"
        total = make_uploads(source, args.files)
        local = LocalStorage(work / "store")
        local.root.mkdir()
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        server.client().create_bucket(Bucket=bucket)
        s3 = S3Storage(
            bucket,
            endpoint_url=server.endpoint_url,
            region=server.region,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
        )
        started = time.monotonic()
        backup_files(Destination("files/", storage=local, local_dir=local.root), source)
        backup_files(Destination("files/", storage=s3, local_dir=work / "local"), source)
        took = time.monotonic() - started
        print(f"{args.files} files, {total / 1e6:.1f} MB; backed up in {took:.0f} s")
        document["estate"] = {"files": args.files, "bytes": total}
        methods = _methods(client, session, image, local, s3, work)
        chosen = [m for m in methods if m in args.methods.split(",")]
        runs: dict[str, list[dict]] = {name: [] for name in chosen}
        for rep, name in rotations(chosen, args.reps):
            meter = CpuMeter()
            seconds = methods[name]()
            runs[name].append({"rep": rep, "seconds": round(seconds, 3), **meter.stop()})
            print(f"  rep {rep + 1}: {name}: {seconds:.1f} s", flush=True)
        document["runs"] = runs
        document["summary"] = _summary(runs)
        print(_table(document["summary"]))
        _write(document, args.out)
    finally:
        server.stop()
        session.end(client)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _methods(client, session, image: str, local: LocalStorage, s3: S3Storage, work: Path):
    def drill(storage: Storage, workers: int | None = None) -> Callable[[], float]:
        def run() -> float:
            backup = catalog.latest(catalog.list_backups(storage, "files"))
            saved = engine.S3_WORKERS
            engine.S3_WORKERS = workers or saved
            try:
                restored = engine.restore_files(
                    client, session, storage, backup, image=image, timeout=TIMEOUT
                )
            finally:
                engine.S3_WORKERS = saved
            restored.remove()
            return restored.seconds

        return run

    def raw() -> float:
        target = work / f"raw-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        backup = catalog.latest(catalog.list_backups(s3, "files"))
        keys = [info.key for info in s3.list(backup.key)]

        def get(key: str) -> None:
            body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            path = target / key[len(backup.key) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)

        with ThreadPoolExecutor(RAW_WORKERS) as pool:
            list(pool.map(get, keys))
        seconds = time.monotonic() - started
        shutil.rmtree(target, ignore_errors=True)
        return seconds

    return {
        "drill file://": drill(local),
        "drill s3": drill(s3),
        "drill s3 1-worker": drill(s3, workers=1),
        "boto3 parallel": raw,
    }


def _summary(runs: dict[str, list[dict]]) -> dict:
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items() if rs}
    base = medians.get("drill file://")
    s3 = medians.get("drill s3")
    ratio = s3 / base if s3 and base else None
    return {
        "medians_s": {k: round(v, 2) for k, v in medians.items()},
        "s3_vs_file": round(ratio, 2) if ratio else None,
        "target": TARGET,
        "met": ratio is not None and ratio <= TARGET,
    }


def _table(summary: dict) -> str:
    medians = summary["medians_s"]
    base = medians.get("drill file://")
    lines = ["", f"{'method':<28} {'median':>9} {'vs file://':>11}"]
    for name, seconds in medians.items():
        ratio = f"{seconds / base:.2f}x" if base else "-"
        lines.append(f"{name:<28} {seconds:>8.1f}s {ratio:>11}")
    verdict = "met" if summary["met"] else "NOT met"
    ratio = summary["s3_vs_file"]
    lines.append(f"\ntarget: drill s3 within {TARGET:.0f}x drill file://: {ratio}x, {verdict}")
    return "\n".join(lines)


def _write(document: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out / f"files-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {path}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__)
    parser.add_argument("--files", type=int, default=20_000, help="how many uploads")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each method")
    parser.add_argument(
        "--methods",
        default="drill file://,drill s3,drill s3 1-worker,boto3 parallel",
        help="comma-separated; default: all four",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--workdir", default=None, help="where the uploads are made")
    return parser


if __name__ == "__main__":
    sys.exit(main())
