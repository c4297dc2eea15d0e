"""Reports of a drill run: the HTML drill report, its history, and the sealed evidence.

`finalize_run()` is what `drill run` calls once pytest has written `<run>/drill.json`:

>>> run_dir = Path("reports/20250115T020000.000000Z")
>>> finalize_run(run_dir, load_config("drill.toml"))  # doctest: +SKIP

The pytest-html and Allure side lives in `drills.report.pytest_extras` (pytest hooks);
`evidence` holds the artefact hashes, the signature and the history.

The report reads the drill record (drill.json) and nothing else of a run: it may import
`drills.record` and `drills.config` only, never the containers, the storage or the engines
(a contract in pyproject.toml says so). The face and the plugin import it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drills.config.errors import ConfigError, DrillError
from drills.config.schema import Config, redact_text
from drills.report import chain, evidence
from drills.report.html import REPORT, history_points, write_report

__all__ = ["REPORT", "finalize_run", "record_incomplete", "write_report"]

HOST_TOOLS = {
    "pg_dump": ["pg_dump", "--version"],
    "pg_restore": ["pg_restore", "--version"],
    "psql": ["psql", "--version"],
    "gpg": ["gpg", "--version"],
    "docker engine": ["docker", "version", "--format", "{{.Server.Version}}"],
}
RUN_DIR_STAMP = "%Y%m%dT%H%M%S.%fZ"
# The verdict of a run that did not complete, in its history record.
INCOMPLETE = "incomplete"


def finalize_run(
    run_dir: Path, config: Config, *, announce: Callable[[dict], dict] | None = None
) -> None:
    """Complete a run's reports: drill.json facts, drill-report.html, history, hashes, signature.

    In order: add the estate, the run's start, the environment and the signing state to
    drill.json (every string redacted), and what the report draws of the history (verdicts
    and RTOs of the last runs, this one's included);
    write drill-report.html (unless `[report] html = false`); scrub the configuration's
    secret values from every file of the run; record every file's sha256 in drill.json and
    sign it; then append the run's record, chained to the one before and signed, to
    `<report-dir>/history.jsonl` (`drills.report.chain`). `announce`, given, is called with
    the finished, scrubbed drill.json just before the seal (to tell people of the run); what
    it returns is added to drill.json, redacted, and sealed with the rest. A configured
    signing key that cannot be used leaves the run unsigned, says why in the report, and
    raises ConfigError at the end (exit 2).
    """
    report_dir = run_dir.parent
    document_path = run_dir / evidence.DOCUMENT
    if not document_path.exists():
        raise DrillError(f"{document_path}: missing; the drills wrote no record")
    key, problem = None, None
    try:
        key = evidence.signing_key(config.report, report_dir)
    except ConfigError as exc:
        problem = str(exc)
    document = json.loads(document_path.read_text())
    document.update(
        estate=config.estate.name,
        run={"id": run_dir.name, "started_at": _run_started(run_dir)},
        environment=_environment(config),
        evidence=evidence.signing_state(key, problem),
    )
    document = _redacted(document)
    # What the report draws of the history goes into drill.json too: the run directory then
    # renders the same page wherever it is copied, with or without its report directory.
    # The run itself is drawn from its entry: its record is chained only once it is sealed.
    finished = document.get("finished_at") or ""
    past = [e for e in evidence.read_history(report_dir) if e.get("run") != run_dir.name]
    entry = evidence.history_entry(document, run_dir.name)
    document["history"] = history_points([*past, entry], finished)
    document_path.write_text(json.dumps(document, indent=2) + "\n")
    if config.report.html:
        write_report(run_dir)
    secrets = evidence.known_secrets(config)
    evidence.scrub(run_dir, secrets)
    if announce is not None:
        document = json.loads(document_path.read_text())
        document.update(_redacted(announce(document)))
        document_path.write_text(json.dumps(document, indent=2) + "\n")
        evidence.scrub(run_dir, secrets)
    evidence.seal(run_dir, key)
    sealed = json.loads(document_path.read_text())
    chain.append(
        report_dir,
        evidence.history_entry(sealed, run_dir.name),
        evidence.sha256_file(document_path),
        key,
    )
    if problem:
        raise ConfigError(f"the run's evidence is not signed: {problem}")


def record_incomplete(run_dir: Path, config: Config, reason: str) -> None:
    """Chain a run that did not complete (interrupted, no drill.json): its record says so,
    with the reason, so that it cannot vanish from the history either. Never raises."""
    report_dir = run_dir.parent
    try:
        key = evidence.signing_key(config.report, report_dir)
    except ConfigError:
        key = None  # the run's own failure is the news; an unsigned record still chains
    document = run_dir / evidence.DOCUMENT
    entry = {
        "run": run_dir.name,
        "estate": config.estate.name,
        "started_at": _run_started(run_dir),
        "finished_at": datetime.now(UTC).isoformat(),
        "verdict": INCOMPLETE,
        "reason": redact_text(reason),
        "drills": {},
    }
    try:
        chain.append(
            report_dir, entry, evidence.sha256_file(document) if document.is_file() else None, key
        )
    except OSError as exc:
        print(f"drill: the history could not record the incomplete run: {exc}")


def _run_started(run_dir: Path) -> str | None:
    # `drill run` names each run directory after the UTC moment it started.
    try:
        return datetime.strptime(run_dir.name, RUN_DIR_STAMP).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return None


def _environment(config: Config) -> dict[str, Any]:
    storage = config.storage
    return {
        "storage": {
            "url": storage.url,
            "endpoint_url": storage.endpoint_url,
            "region": storage.region,
        },
        "tools": {name: _version(argv) for name, argv in HOST_TOOLS.items()},
    }


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    if result.returncode != 0:
        return f"unknown ({lines[0] if lines else f'exit {result.returncode}'})"
    return lines[0] if lines else "unknown"


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
