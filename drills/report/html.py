"""The HTML drill report: one self-contained page rendered from drill.json and the history.

`render()` turns a drill.json document (and the report directory's history) into HTML;
`write_report()` does it for a run directory. The page carries its CSS and SVG inline, loads
nothing (a Content-Security-Policy forbids it), prints on A4, and passes every string through
the harness's redaction on its way out.

>>> write_report(Path("reports/latest"))  # doctest: +SKIP
PosixPath('reports/latest/drill-report.html')
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader
from markupsafe import Markup

from drills.config.schema import redact_text
from drills.report import charts, evidence
from drills.report.charts import duration
from drills.report.targets import recovered, share_text, target_row
from drills.report.window import window_svg

REPORT = "drill-report.html"
HISTORY_RUNS = 30
TEMPLATES = Path(__file__).parent / "templates"
# Keys of a drill record that have their own place on the page; others go under "more facts".
SHOWN = {
    "kind", "verdict", "started_at", "phases", "rto", "rpo", "checks", "error", "notes",
    "restore", "restore_target", "postgres_major", "containers", "logs", "failed_command",
    "profile", "plausibility", "first_cause", "culprit", "posture", "pick",
    "archive", "thaw", "rehearsal",
}  # fmt: skip
# Profile fields too large or too detailed for the comparison table (they stay in drill.json).
PROFILE_DETAIL = {"rows", "inventory", "estimated", "files"}
TIME_SOURCES = {
    "manifest": "the manifest's start time",
    "name": "the time in the file name (earlier than its write time)",
    "mtime": "the object's write time (no manifest; the name's time, if any, was later)",
}


def write_report(run_dir: Path) -> Path:
    """Render `<run_dir>/drill.json` into `<run_dir>/drill-report.html`; return its path."""
    path = run_dir / REPORT
    path.write_text(render_run(run_dir))
    return path


def render_run(run_dir: Path) -> str:
    """The report of a run directory: with the history its drill.json carries (runs since
    the history was embedded), else the history of its report directory."""
    document = json.loads((run_dir / evidence.DOCUMENT).read_text())
    return render(document, *run_history(run_dir, document))


def run_history(run_dir: Path, document: dict[str, Any]) -> tuple[list[dict] | None, str]:
    """The history a run's report draws, and why there is none when there is none."""
    if isinstance(document.get("history"), list):
        return document["history"], ""
    entries = evidence.read_history(run_dir.parent)
    if any(entry.get("run") == run_dir.name for entry in entries):
        return entries, ""
    path = run_dir.parent / evidence.HISTORY
    if not path.exists():
        return None, f"{path} is missing (a run directory copied without its report directory?)"
    return None, f"{path} does not list this run (a run directory copied from elsewhere?)"


def render(
    document: dict[str, Any], history: list[dict[str, Any]] | None = None, missing: str = ""
) -> str:
    """The HTML report of one drill.json document; `missing` says why there is no history.

    Only history entries that finished no later than this run are drawn, so that a report
    regenerated later is the same page as the one first written.
    """
    finished = document.get("finished_at") or ""
    past = [h for h in history or [] if (h.get("finished_at") or "") <= finished]
    template = environment().get_template("drill-report.html.j2")
    return template.render(
        doc={**dict.fromkeys(("host", "python", "harness_version", "finished_at")), **document},
        run=_run_view(document),
        drills=[_drill_view(d) for d in document.get("drills", [])],
        history=_history_view(past[-HISTORY_RUNS:]),
        history_missing=missing,
        evidence={"signed": False, "unsigned_reason": None, **(document.get("evidence") or {})},
        environment={"storage": None, "tools": {}, **(document.get("environment") or {})},
    )


def history_points(entries: list[dict[str, Any]], finished: str) -> list[dict[str, Any]]:
    """What the report draws of the history up to a run: per run, per drill, the verdict and
    RTO (drill.json carries these, so the page can be rendered again anywhere)."""
    points = []
    for entry in entries:
        if (entry.get("finished_at") or "") > finished:
            continue
        drills = {
            kind: {k: r.get(k) for k in ("verdict", "rto_target_s", "rto_measured_s")}
            for kind, r in (entry.get("drills") or {}).items()
        }
        points.append({"run": entry.get("run"), "finished_at": entry.get("finished_at"),
                       "drills": drills})  # fmt: skip
    return points[-HISTORY_RUNS:]


def environment() -> Environment:
    """The Jinja2 environment of the report pages: autoescape, redaction, the filters."""
    # drill.json is open: drills add fields as they grow, and a field a record lacks must
    # leave its line of the page empty, not fail the whole report.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=ChainableUndefined,
        finalize=_redact,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(human=duration, when=when, size=size, pretty=pretty)
    return env


def _redact(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, Markup):
        return redact_text(value)
    return value


# --- formatting ---------------------------------------------------------------------------


def when(iso: str | None) -> str:
    """'2025-01-15 02:00:00 UTC' from an ISO-8601 time; '-' when unknown."""
    moment = parse_time(iso)
    if moment is None:
        return iso or "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(count: int | None) -> str:
    """'292.0 MB' for people (powers of 1000, as disk vendors and S3 consoles count)."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def pretty(value: Any) -> str:
    """A value of an unknown drill.json field, as short readable text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def parse_time(iso: str | None) -> datetime | None:
    """An ISO-8601 time; None when absent or unreadable."""
    try:
        return datetime.fromisoformat(iso) if iso else None
    except ValueError:
        return None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    first, last = parse_time(start), parse_time(end)
    return None if first is None or last is None else (last - first).total_seconds()


# --- the view -----------------------------------------------------------------------------


def _run_view(document: dict) -> dict[str, Any]:
    drills = document.get("drills", [])
    started = (document.get("run") or {}).get("started_at") or min(
        (d.get("started_at") for d in drills if d.get("started_at")), default=None
    )
    counts = {v: sum(d.get("verdict") == v for d in drills) for v in ("pass", "fail", "not_run")}
    return {
        "verdict": document.get("verdict", "fail"),
        "estate": document.get("estate") or "(estate not named)",
        "started_at": started,
        "duration_s": _seconds_between(started, document.get("finished_at")),
        "counts": counts,
        "failed": [d for d in drills if d.get("verdict") == "fail"],
    }


def _drill_view(drill: dict) -> dict[str, Any]:
    rto, rpo = drill.get("rto") or {}, drill.get("rpo") or {}
    backups = {k: v for k, v in drill.items() if _is_backup(k, v)}
    restore = drill.get("restore") if isinstance(drill.get("restore"), dict) else None
    read_sha = (restore or {}).get("sha256")
    view = dict(drill)
    failure = _failure_view(drill) if drill.get("verdict") == "fail" else None
    view.update(
        rto_row=target_row("RTO", rto.get("target_s"), rto.get("measured_s"), drill.get("verdict")),
        rpo_row=target_row("RPO", rpo.get("target_s"), rpo.get("measured_s"), drill.get("verdict")),
        cause=_headline(failure) if failure else _cause(drill),
        timeline=charts.timeline_svg(
            drill.get("phases") or {}, rto.get("measured_s"), rto.get("target_s")
        ),
        window=window_svg(drill.get("pitr")),
        backups=[
            _backup_view(name, b, drill.get("started_at"), read_sha if name == "backup" else None)
            for name, b in backups.items()
        ],
        restore_rows=_restore_rows(restore),
        profile=_profile_view(drill),
        checks=drill.get("checks") or [],
        notes=drill.get("notes") or [],
        logs=drill.get("logs") or {},
        failure=failure,
        facts={
            k: v
            for k, v in drill.items()
            if k not in SHOWN and k not in backups and v not in (None, {}, [])
        },
    )
    return view


def _headline(failure: dict[str, Any]) -> str:
    """A failed drill's cause in one place: the first, without logs, and how many more."""
    first = failure["first"].split("; its last output:")[0]
    more = len(failure["also"])
    return first + (f" (and {more} more: see why it failed, above)" if more else "")


def _failure_view(drill: dict) -> dict[str, Any]:
    """The failure box: the first cause, what else failed, and the logs of the container
    that caused it (by role), not of every container the drill started."""
    first = drill.get("first_cause") or drill.get("error") or _cause(drill)
    failed = [c for c in drill.get("checks") or [] if not c.get("passed")]
    also = [c for c in failed if not first.endswith(f"{c.get('name')}: {c.get('detail')}")]
    logs = drill.get("logs") or {}
    culprit = drill.get("culprit")
    if culprit is not None:
        shown = {name: text for name, text in logs.items() if name == culprit}
    else:
        shown = logs if len(logs) == 1 else {}
    if shown:
        # The logs follow in their own block: the cause need not carry them twice.
        first = first.split("; its last output:")[0]
    return {
        "first": first,
        "also": also,
        "culprit": culprit,
        "logs": shown,
        "hidden_logs": sorted(set(logs) - set(shown)),
    }


def _profile_view(drill: dict) -> dict[str, Any] | None:
    """What the drill restored beside each baseline it was compared with: one row a measure
    (scalars, and each entry of a per-kind count such as objects per kind)."""
    profile = drill.get("profile")
    if not isinstance(profile, dict):
        return None
    plaus = drill.get("plausibility") or {}
    baselines = [b for b in plaus.get("baselines") or [] if isinstance(b, dict)]
    measures: dict[str, list[Any]] = {}

    def add(column: int, data: dict) -> None:
        for key, value in data.items():
            if key in PROFILE_DETAIL or key in ("source", "kind", "taken_at", "compared"):
                continue
            if isinstance(value, dict):
                for sub, count in value.items():
                    measures.setdefault(f"{key.replace('_', ' ')}: {sub}", [None] * width)
                    measures[f"{key.replace('_', ' ')}: {sub}"][column] = count
            elif isinstance(value, int | float | str) and not isinstance(value, bool):
                measures.setdefault(key.replace("_", " "), [None] * width)[column] = value

    width = 1 + len(baselines)
    add(0, profile)
    for index, baseline in enumerate(baselines, start=1):
        add(index, baseline)
    rows = [
        (name, [size(v) if "bytes" in name and isinstance(v, int) else v for v in values])
        for name, values in measures.items()
        if values[0] is not None or any(v is not None for v in values[1:])
    ]
    return {
        "columns": ["this drill"] + [b.get("source", "baseline") for b in baselines],
        "rows": rows,
        "findings": plaus.get("findings") or [],
        "accepted": plaus.get("accepted"),
    }


def _is_backup(key: str, value: Any) -> bool:
    # Drills add the other backups they used next to `backup`, e.g. `uploads_backup`.
    return key.endswith("backup") and isinstance(value, dict) and "key" in value


def _restore_rows(restore: dict | None) -> list[tuple[str, str]]:
    rows = []
    for key, value in (restore or {}).items():
        if key == "bytes_read":
            rows.append(("Read", size(value)))
        elif key == "seconds":
            rows.append(("Restore took", duration(value)))
        elif key == "sha256":
            rows.append(("sha256 of the bytes read", value))
        else:
            rows.append((key.replace("_", " ").capitalize(), pretty(value)))
    return rows


def _cause(drill: dict) -> str:
    verdict, error = drill.get("verdict"), drill.get("error")
    if verdict == "not_run":
        return f"not run: {error or 'no reason given'}"
    if verdict == "fail":
        return error or "failed without a named cause (see the pytest report)"
    return ""


def _backup_view(
    name: str, backup: dict, drill_started: str | None, read_sha: str | None
) -> dict[str, Any]:
    manifest_sha = backup.get("sha256")
    if backup.get("manifest"):
        integrity = (
            "A manifest was found: what the backup holds (sha256, sizes, counts) was written "
            "down when it was taken, and the drill's checks compare the restore with it."
        )
    else:
        integrity = (
            "No manifest: integrity rests on the compressor's end-of-stream check and on the "
            "restore itself. There is no sha256 or row count written at backup time to "
            "compare with, so a dump that was cut short cleanly cannot be told from a "
            "complete one. The producers of drill backup write manifests."
        )
    return {
        **backup,
        "title": name.replace("_", " ").capitalize(),
        "age_s": _seconds_between(backup.get("taken_at"), drill_started),
        "time_source_words": TIME_SOURCES.get(backup.get("time_source"), "unknown"),
        "sha256_shown": manifest_sha or read_sha,
        "sha256_origin": "from the manifest" if manifest_sha else "computed while restoring",
        "sha256_matches": (manifest_sha == read_sha) if manifest_sha and read_sha else None,
        "integrity": integrity,
    }


def _history_view(entries: list[dict]) -> list[dict[str, Any]]:
    kinds: dict[str, list[tuple[dict, dict]]] = {}
    for entry in entries:
        for kind, result in (entry.get("drills") or {}).items():
            if result.get("verdict") != "not_run":
                kinds.setdefault(kind, []).append((entry, result))
    views = []
    for kind, runs in kinds.items():
        points = [
            charts.Point(
                (parse_time(e.get("finished_at")) or datetime.min).strftime("%Y-%m-%d %H:%M"),
                r.get("rto_measured_s"),
                r.get("verdict"),
            )
            for e, r in runs
        ]
        target = next((r["rto_target_s"] for _, r in reversed(runs) if r.get("rto_target_s")), None)
        views.append(
            {
                "kind": kind,
                "runs": len(runs),
                "chart": charts.history_svg(kind, points, target),
                "summary": _trend(points, target),
            }
        )
    return views


def _trend(points: list[charts.Point], target_s: float | None) -> str:
    """The recoveries' times in words; runs that did not recover are counted, not timed."""
    values = [p.measured_s for p in points if p.measured_s and recovered(p.verdict)]
    failed = sum(1 for p in points if not recovered(p.verdict))
    lost = f"{failed} of {len(points)} runs did not recover" if failed else ""
    if not values:
        return lost or "no run measured an RTO yet"
    text = f"latest recovery {duration(values[-1])}"
    if target_s:
        text += f" ({share_text(values[-1] / target_s * 100)} of the {duration(target_s)} target)"
    if len(values) > 1:
        change = (values[-1] - values[0]) / values[0] * 100
        text += (
            f"; over {len(values)} recoveries: fastest {duration(min(values))}, slowest "
            f"{duration(max(values))}, {change:+.0f}% from the first to the latest"
        )
    return text + (f"; {lost}" if lost else "")
