"""Benchmark: the drill's restore against the raw tools, side by side, in one run.

    .venv/bin/python -m bench.restore --scale 1 --reps 3
    .venv/bin/python -m bench.restore --scales 0.25,1,4 --reps 3

For each scale: generate (or reuse) the reference estate and its dumps, then, repetition by
repetition with the order of the methods rotated, restore with each method into a fresh
container. Prints a table of medians with ratios to the fastest raw tool and to the original
runbook, the harness's peak RSS and the containers' start-to-ready times, checks the issue's
targets, and writes `bench/results/<timestamp>.json` and `.svg` (time against size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.estate import VARIANTS, EstateDumps, ensure_dumps
from bench.methods import (
    DEFAULT_METHODS,
    METHODS,
    Measurement,
    in_process_rss_mb,
    rotations,
    stop_s3,
)
from bench.plot import series_of, time_against_size
from drills.restore import jobs
from drills.runtime import engine, images, labels
from drills.runtime.postgres import start_postgres

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    # name: (method, divided by, bound): the method's median over the other's
    "directory_vs_best_raw": ("drill-restore", "best raw", 1.0),
    "plain_vs_runbook": ("drill-restore-plain", "runbook", 0.7),
    "plain_vs_directory": ("drill-restore-plain", "drill-restore", 1.1),
    "drill_vs_its_restore": ("drill", "drill-restore", 1.15),
    "s3_vs_file_directory": ("drill-restore-s3", "drill-restore", 1.1),
    "s3_vs_file_plain": ("drill-restore-plain-s3", "drill-restore-plain", 1.1),
    # The progress line on a terminal must not slow the restore it shows (wall time: noisy
    # on a shared machine; CPU: see CPU_TARGETS).
    "progress_vs_none_plain": ("drill-restore-plain-progress", "drill-restore-plain", 1.05),
}
CPU_TARGETS = {
    # name: (method, divided by, bound): the method's median CPU seconds over the other's,
    # which other people's work on the machine does not change.
    "progress_cpu_vs_none_plain": ("drill-restore-plain-progress", "drill-restore-plain", 1.02),
}
RSS_MB = 150.0
START_S = 3.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran (whatever the targets say), 1 on an error."""
    args = _parser().parse_args(argv)
    scales = [float(s) for s in (args.scales or str(args.scale)).split(",")]
    methods = [METHODS[name] for name in args.methods.split(",")]
    client = engine.connect()
    session = labels.RunSession.begin()
    labels.sweep(client, keep=session.run_id)
    document: dict = {"started_at": datetime.now(UTC).isoformat(), "machine": _machine()}
    document["reps"], document["scales"] = args.reps, {}
    try:
        image = images.ensure_postgres_image(client, 15)
        # The first restore target makes the warm image; later ones start from it.
        start_postgres(image, session, tuning="restore", user="postgres").stop()
        for scale in scales:
            dumps = ensure_dumps(client, session, scale)
            runs = _measure(methods, args.reps, session, image, dumps)
            summary = _summarise(runs, methods)
            targets = _targets(summary)
            document["scales"][f"{scale:g}"] = {
                "estate": _estate(dumps),
                "runs": {name: [_plain(m) for m in ms] for name, ms in runs.items()},
                "summary": summary,
                "targets": targets,
            }
            print(_table(scale, dumps, summary, targets, args.reps), flush=True)
    finally:
        stop_s3()
        session.end(client)
    document["bench_process_peak_rss_mb"] = round(in_process_rss_mb(), 1)
    _write(document, Path(args.out))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 2M users, 6M transactions")
    parser.add_argument("--scales", default=None, help="comma-separated, e.g. 0.25,1,4")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every method")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)}",
    )
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON and SVG go")
    return parser


def _measure(methods, reps: int, session, image: str, dumps: EstateDumps) -> dict:
    """Every method `reps` times, the order rotated each repetition."""
    runs: dict[str, list[Measurement]] = {m.name: [] for m in methods}
    for rep, method in rotations(methods, reps):
        load = os.getloadavg()[0]
        measurement = method.run(session, image, dumps)
        measurement.extra["load_before"] = round(load, 2)
        runs[method.name].append(measurement)
        print(
            f"  scale {dumps.scale:g} rep {rep + 1}/{reps} {method.name}: "
            f"{measurement.seconds:.2f} s (load {load:.2f})",
            file=sys.stderr,
            flush=True,
        )
    return runs


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _summarise(runs: dict[str, list[Measurement]], methods) -> dict:
    summary: dict = {"methods": {}}
    for method in methods:
        ms = runs[method.name]
        entry = {
            "label": method.label,
            "raw": method.raw,
            "median_s": _median([m.seconds for m in ms]),
            "min_s": round(min(m.seconds for m in ms), 3),
            "max_s": round(max(m.seconds for m in ms), 3),
            "start_median_s": _median([m.start_seconds for m in ms]),
            "cpu_median_s": _median([m.extra.get("cpu_s") for m in ms]),
            "others_cores_median": _median([m.extra.get("others_cores") for m in ms]),
        }
        stages = [m.extra.get("stages") for m in ms if m.extra.get("stages")]
        if stages:
            entry["stages_median_s"] = {
                key: _median([s.get(key) for s in stages]) for key in stages[0]
            }
        shown = [m.extra["progress"] for m in ms if "progress" in m.extra]
        if shown:
            entry["progress_median"] = {
                "updates": _median([s["updates"] for s in shown]),
                "cpu_s": _median([s["cpu_s"] for s in shown]),
            }
        rss = [m.extra["peak_rss_mb"] for m in ms if "peak_rss_mb" in m.extra]
        if rss:
            entry["peak_rss_mb_max"] = max(rss)
            phases = [m.extra["phases"] for m in ms]
            entry["phases_median_s"] = {
                key: _median([p.get(key) for p in phases]) for key in phases[0]
            }
        summary["methods"][method.name] = entry
    raw = [e["median_s"] for e in summary["methods"].values() if e["raw"]]
    best_raw = min(raw) if raw else None
    runbook = summary["methods"].get("runbook", {}).get("median_s")
    summary["best_raw_s"], summary["runbook_s"] = best_raw, runbook
    for entry in summary["methods"].values():
        median = entry["median_s"]
        entry["x_best_raw"] = round(median / best_raw, 3) if best_raw else None
        entry["x_runbook"] = round(median / runbook, 3) if runbook else None
    starts = [
        m.start_seconds
        for name in ("drill-restore", "drill-restore-plain", "pg_restore-tuned")
        for m in runs.get(name, [])
    ]
    summary["restore_target_start_median_s"] = _median(starts)
    summary["restore_target_start_max_s"] = round(max(starts), 3) if starts else None
    cold = [
        m.start_seconds for name in ("runbook", "pg_restore-default") for m in runs.get(name, [])
    ]
    summary["default_container_start_median_s"] = _median(cold)
    return summary


def _targets(summary: dict) -> dict:
    """The issue's targets against this run's medians: (value, bound, met)."""
    methods = summary["methods"]
    found: dict = {}

    def judge(name: str, value: float | None, bound: float) -> None:
        if value is not None:
            found[name] = {"value": value, "bound": bound, "met": value <= bound}

    for name, (method, over, bound) in TARGETS.items():
        value = methods.get(method, {}).get("median_s")
        base = (
            summary["best_raw_s"] if over == "best raw" else methods.get(over, {}).get("median_s")
        )
        if value is not None and base:
            judge(name, round(value / base, 3), bound)
    for name, (method, over, bound) in CPU_TARGETS.items():
        value = methods.get(method, {}).get("cpu_median_s")
        base = methods.get(over, {}).get("cpu_median_s")
        if value is not None and base:
            judge(name, round(value / base, 3), bound)
    rss = [e["peak_rss_mb_max"] for e in methods.values() if "peak_rss_mb_max" in e]
    judge("rss_mb", max(rss) if rss else None, RSS_MB)
    judge("start_s", summary["restore_target_start_median_s"], START_S)
    return found


def _table(scale: float, dumps: EstateDumps, summary: dict, targets: dict, reps: int) -> str:
    sizes = ", ".join(f"{v} {d['bytes'] / 1e6:.0f} MB" for v, d in dumps.dumps.items())
    lines = [
        "",
        f"scale {scale:g}: database {dumps.database_bytes / 1e9:.2f} GB "
        f"({dumps.rows.get('users', 0):,} users, {dumps.rows.get('transactions', 0):,} "
        f"transactions); dumps: {sizes}",
        f"{reps} repetitions, medians; pg_restore --jobs {jobs()}; cpu: CPU seconds of the "
        "restore (its container and the harness), s/GB: per GB of database restored; others: "
        "cores busy with other people's work",
        f"{'method':<52} {'median':>7} {'min':>7} {'max':>7} {'x best raw':>10} "
        f"{'x runbook':>9} {'start':>6} {'cpu':>6} {'s/GB':>6} {'others':>6}",
    ]

    def per_gb(cpu: float | None) -> float | None:
        return None if cpu is None else cpu / (dumps.database_bytes / 1e9)

    for entry in summary["methods"].values():
        start = entry["start_median_s"]
        lines.append(
            f"{entry['label']:<52} {entry['median_s']:>7.2f} {entry['min_s']:>7.2f} "
            f"{entry['max_s']:>7.2f} {_ratio(entry['x_best_raw']):>10} "
            f"{_ratio(entry['x_runbook']):>9} {_num(start):>6} {_num(entry['cpu_median_s']):>6} "
            f"{_num(per_gb(entry['cpu_median_s'])):>6} {_num(entry['others_cores_median']):>6}"
        )
        if "stages_median_s" in entry:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in entry["stages_median_s"].items() if v)
            lines.append(f"{'':<4}stages: {stages}")
        if "progress_median" in entry:
            shown = entry["progress_median"]
            lines.append(
                f"{'':<4}progress: {shown['updates']:.0f} updates of the line, its thread's "
                f"CPU {shown['cpu_s'] * 1000:.1f} ms"
            )
        if "phases_median_s" in entry:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in entry["phases_median_s"].items() if v)
            lines.append(f"{'':<4}phases: {phases}; peak RSS {entry['peak_rss_mb_max']:.0f} MB")
    lines.append(
        f"restore target (tuned, warm) ready: median {summary['restore_target_start_median_s']} s,"
        f" max {summary['restore_target_start_max_s']} s; default container (cold): median "
        f"{summary['default_container_start_median_s']} s"
    )
    for name, judged in targets.items():
        verdict = "met" if judged["met"] else "NOT MET"
        lines.append(f"target {name}: {judged['value']} (bound {judged['bound']}): {verdict}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _estate(dumps: EstateDumps) -> dict:
    return {
        "scale": dumps.scale,
        "database_bytes": dumps.database_bytes,
        "rows": dumps.rows,
        "dumps": {v: dumps.dumps[v] for v in VARIANTS},
    }


def _plain(m: Measurement) -> dict:
    return {"seconds": round(m.seconds, 3), "start_seconds": m.start_seconds, **m.extra}


def _machine() -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": jobs(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _write(document: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    document["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / f"{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / f"{stamp}.svg").write_text(time_against_size(series_of([document])))
    print(f"\nwritten: {out / stamp}.json and .svg")


if __name__ == "__main__":
    sys.exit(main())
