"""One evidence bundle per audit window: a signed zip an auditor checks offline.

`build()` puts into one zip every run that started in the window (every file of its
directory, signed artefacts included), the excerpt of the history's chain that covers them
(with the record before and after the window, so that a record removed at its edges shows),
the verification of the whole history at build time, the summary page and the public key.
`MANIFEST.json` lists the sha256 of every other file and `MANIFEST.json.sig` signs it.

`verify()` needs nothing but the bundle and the public key: the manifest's signature, every
file against the manifest (a changed byte names its file), every run's own signature and
artefact hashes, and the chain excerpt (signatures, order, links, each run's drill.json
against its record).

    >>> build(Path("reports"), since, until, Path("b.zip"), key, ["database"])  # doctest: +SKIP
    >>> verify(Path("bundle.zip"), Path("signer.key.pub"))  # doctest: +SKIP
    []
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drills.config.errors import ConfigError
from drills.report import chain, evidence, period
from drills.report.html import parse_time

MANIFEST = "MANIFEST.json"
MANIFEST_SIG = "MANIFEST.json.sig"
EXCERPT = "chain/history.jsonl"
VERIFICATION = "chain/verification.json"
PUBLIC_KEY = "public-key.pem"
RUNS = "runs"
# Fixed member times: the same runs make the same bytes, whenever the bundle is built.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def day(text: str, *, end: bool = False) -> datetime:
    """A window's bound from 'YYYY-MM-DD' (the day's start; with `end`, the next day's start)
    or a full ISO time, in UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{text!r}: not a date (YYYY-MM-DD) or an ISO-8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(text) == len("2026-12-31"):
        moment += timedelta(days=1)  # --until 2026-12-31 includes that day
    return moment


@dataclass(frozen=True)
class Built:
    """What `build()` made."""

    path: Path
    runs: list[str]
    check: chain.ChainCheck
    missing: list[str]


def build(
    report_dir: Path,
    since: datetime,
    until: datetime,
    out: Path,
    key: Ed25519PrivateKey,
    kinds: list[str],
    *,
    estate: str | None = None,
    now: datetime | None = None,
) -> Built:
    """Write the bundle of the runs that started in [since, until) to `out`."""
    history = report_dir / evidence.HISTORY
    if not history.exists():
        raise ConfigError(f"{history}: missing; no run has been recorded in {report_dir}")
    public = key.public_key()
    check = chain.verify_history(report_dir, public)
    lines = chain.split_lines(history.read_bytes())
    records = chain.parse(lines)
    inside = [i for i, r in enumerate(records) if r.data and _within(r.data, since, until)]
    files: dict[str, bytes] = {}
    missing = []
    for index in inside:
        run = records[index].run
        run_dir = report_dir / run
        if not run_dir.is_dir():
            missing.append(run)
            continue
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[f"{RUNS}/{run}/{path.relative_to(run_dir).as_posix()}"] = path.read_bytes()
    if inside:
        first, last = max(inside[0] - 1, 0), min(inside[-1] + 1, len(lines) - 1)
        files[EXCERPT] = b"".join(line + b"\n" for line in lines[first : last + 1])
    else:
        files[EXCERPT] = b""
    built_at = now or datetime.now(UTC)
    # The page reads oldest first (a failure's follow-up is the next passing run).
    window = sorted((records[i].data for i in inside), key=lambda r: r.get("started_at") or "")
    estate = estate or next((r.get("estate") for r in window if r.get("estate")), None)
    verification = {
        "checked_at": built_at.isoformat(),
        "whole": check.whole,
        "problems": check.problems,
        "notes": check.notes,
        "head": check.head,
        "records": len(check.records),
        "missing_run_directories": missing,
    }
    files[VERIFICATION] = (json.dumps(verification, indent=2) + "\n").encode()
    page = period.view(
        window,
        since,
        until,
        kinds,
        check,
        estate=estate or "(estate not named)",
        built_at=built_at.isoformat(),
        fingerprint=evidence.fingerprint(public),
    )
    files[period.SUMMARY] = period.render_summary(page).encode()
    files[PUBLIC_KEY] = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    manifest = {
        "format": 1,
        "estate": estate,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "built_at": built_at.isoformat(),
        "runs": [records[i].run for i in inside],
        "chain_head": check.head,
        "signer": evidence.signing_state(key),
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    files[MANIFEST] = manifest_bytes
    files[MANIFEST_SIG] = base64.b64encode(key.sign(manifest_bytes)) + b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in [MANIFEST, MANIFEST_SIG, *sorted(set(files) - {MANIFEST, MANIFEST_SIG})]:
            archive.writestr(zipfile.ZipInfo(name, ZIP_TIME), files[name], zipfile.ZIP_DEFLATED)
    partial.replace(out)
    return Built(out, manifest["runs"], check, missing)


def _within(record: dict[str, Any], since: datetime, until: datetime) -> bool:
    started = parse_time(record.get("started_at"))
    return started is not None and since <= started < until


# --- verification -------------------------------------------------------------------------


@dataclass
class Verified:
    """What checking a bundle found: problems of the bundle's bytes, of its evidence."""

    manifest: dict[str, Any]
    problems: list[str]
    notes: list[str]


def verify(path: Path, public_key: Ed25519PublicKey | Path | None = None) -> Verified:
    """Check a bundle offline; every problem names the file of the bundle it is in."""
    if isinstance(public_key, Path):
        public_key = evidence.load_public_key(public_key)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return Verified({}, [f"{path}: not a readable zip ({exc})"], [])
    with archive:
        contents, problems = _read_members(archive)
    manifest, found = _manifest(contents, public_key)
    problems += found
    if not manifest:
        return Verified({}, problems, [])
    listed = manifest.get("files") or {}
    for name, expected in sorted(listed.items()):
        data = contents.get(name)
        if data is None:
            if not any(p.startswith(f"{name}:") for p in problems):
                problems.append(f"{name}: missing (listed in {MANIFEST})")
        elif hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            problems.append(
                f"{name}: sha256 differs from {MANIFEST}'s: changed after the bundle was built"
            )
    for name in sorted(set(contents) - set(listed) - {MANIFEST, MANIFEST_SIG}):
        problems.append(f"{name}: not listed in {MANIFEST}: added after the bundle was built")
    notes: list[str] = []
    problems += _run_problems(contents, public_key)
    problems += _excerpt_problems(contents, manifest, public_key, notes)
    problems += _built_problems(contents)
    return Verified(manifest, problems, notes)


def _built_problems(contents: dict[str, bytes]) -> list[str]:
    """What the check of the whole history found when the bundle was built."""
    try:
        found = json.loads(contents.get(VERIFICATION, b"{}")).get("problems") or []
    except (ValueError, AttributeError):
        return [f"{VERIFICATION}: not JSON"]
    return [f"{VERIFICATION}: when the bundle was built: {problem}" for problem in found]


def _read_members(archive: zipfile.ZipFile) -> tuple[dict[str, bytes], list[str]]:
    contents, problems = {}, []
    for info in archive.infolist():
        try:
            contents[info.filename] = archive.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            problems.append(f"{info.filename}: cannot be read ({exc}): the bundle's bytes changed")
    return contents, problems


def _manifest(
    contents: dict[str, bytes], public_key: Ed25519PublicKey | None
) -> tuple[dict[str, Any], list[str]]:
    data = contents.get(MANIFEST)
    if data is None:
        return {}, [f"{MANIFEST}: missing or unreadable: nothing vouches for the bundle"]
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        return {}, [f"{MANIFEST}: not JSON ({exc})"]
    signer = manifest.get("signer") or {}
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(signer["public_key"]))
    except (KeyError, TypeError, ValueError):
        return manifest, [f"{MANIFEST}: names no signer's public key"]
    if public_key is None:
        public_key = embedded
    elif evidence.fingerprint(embedded) != evidence.fingerprint(public_key):
        return manifest, [
            f"{MANIFEST}: signed by key {evidence.fingerprint(embedded)}, not by the given key "
            f"{evidence.fingerprint(public_key)}"
        ]
    try:
        signature = base64.b64decode(contents.get(MANIFEST_SIG, b"").strip(), validate=True)
        public_key.verify(signature, data)
    except (ValueError, InvalidSignature):
        return manifest, [
            f"{MANIFEST}: the signature in {MANIFEST_SIG} does not match ({MANIFEST} or "
            "its signature was changed after the bundle was built)"
        ]
    return manifest, []


def _run_problems(contents: dict[str, bytes], public_key: Ed25519PublicKey | None) -> list[str]:
    """Each run's own evidence: drill.json's signature and its artefacts' hashes."""
    problems = []
    runs = sorted({PurePosixPath(n).parts[1] for n in contents if _run_member(n)})
    with tempfile.TemporaryDirectory(prefix="drill-bundle-") as scratch:
        for run in runs:
            run_dir = Path(scratch) / run
            for name, data in contents.items():
                if _run_member(name) and PurePosixPath(name).parts[1] == run:
                    target = run_dir.joinpath(*PurePosixPath(name).parts[2:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
            for problem in evidence.verify_run(run_dir, public_key):
                problems.append(f"{RUNS}/{run}/{problem}")
    return problems


def _run_member(name: str) -> bool:
    parts = PurePosixPath(name).parts
    # Only plain relative names under runs/RUN/ are written out: no '..', no absolute path.
    return len(parts) >= 3 and parts[0] == RUNS and ".." not in parts and not name.startswith("/")


def _excerpt_problems(
    contents: dict[str, bytes],
    manifest: dict[str, Any],
    public_key: Ed25519PublicKey | None,
    notes: list[str],
) -> list[str]:
    lines = chain.split_lines(contents.get(EXCERPT, b""))
    runs = manifest.get("runs") or []
    if not lines:
        return [] if not runs else [f"{EXCERPT}: empty, although the bundle holds runs"]
    check = chain.verify_lines(lines, public_key, excerpt=True)
    problems = [f"{EXCERPT}: {problem}" for problem in check.problems]
    notes += [f"{EXCERPT}: {note}" for note in check.notes]
    by_run = {r.run: r for r in check.records}
    for run in runs:
        record = by_run.get(run)
        document = contents.get(f"{RUNS}/{run}/{evidence.DOCUMENT}")
        if record is None:
            problems.append(f"{EXCERPT}: no record of run {run}, which the bundle lists")
        elif document is None and record.chain.get("drill_json_sha256"):
            problems.append(
                f"{RUNS}/{run}/: missing; {record.name()} says the run happened (its "
                "directory was gone when the bundle was built)"
            )
        elif document is not None and (
            hashlib.sha256(document).hexdigest() != record.chain.get("drill_json_sha256")
        ):
            problems.append(
                f"{RUNS}/{run}/{evidence.DOCUMENT}: does not match {record.name()} in {EXCERPT}"
            )
    return problems
