"""Evidence for auditors: artefact hashes in drill.json, its Ed25519 signature, the history.

(The history's records are appended, chained and signed by `drills.report.chain`; bundles
of an audit window are made by `drills.report.bundle`.)

A run directory holds `drill.json` and the run's artefacts (junit.xml, pytest-report.html,
allure-results/, drill-report.html). `seal()` records the sha256 of every artefact in
drill.json under `artefacts` and, given a key, signs drill.json's exact bytes into
`drill.json.sig` (base64). `verify_run()` checks both and names every mismatching file.

The signing key is an Ed25519 private key in PEM (`keygen()` makes one). It comes from
`[report] signing_key_path`, or from the environment variable named by
`[report] signing_key_env` (holding the PEM itself, or a path to it); a key kept inside the
report directory is refused: whoever can rewrite the evidence could then re-sign it.

>>> public = keygen(Path("/etc/drill/signing.key"))  # doctest: +SKIP
>>> verify_run(Path("reports/latest"), public_key=public)  # doctest: +SKIP
[]
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drills.config.errors import ConfigError
from drills.config.schema import TOKEN_URLS, Config, ReportSettings

log = logging.getLogger(__name__)

DOCUMENT = "drill.json"
SIGNATURE = "drill.json.sig"
HISTORY = "history.jsonl"
ALGORITHM = "Ed25519"
# Shorter secrets are not scrubbed from files: they match ordinary words and would mangle them.
MIN_SCRUB_LENGTH = 6


# --- keys ---------------------------------------------------------------------------------


def keygen(path: Path) -> Path:
    """Write a new Ed25519 private key to `path` (mode 0600) and its public key to `path.pub`."""
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if existing.exists():
            raise ConfigError(f"{existing}: already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_path


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: 'SHA256:' and the first 16 hex digits."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


def signing_key(
    settings: ReportSettings, report_dir: Path, environ: Mapping[str, str] | None = None
) -> Ed25519PrivateKey | None:
    """The configured signing key, None when none is configured; a named error when unusable."""
    environ = os.environ if environ is None else environ
    if settings.signing_key_path:
        path = Path(settings.signing_key_path).expanduser()
        return _key_file(path, report_dir, "signing_key_path")
    if not settings.signing_key_env:
        return None
    name = settings.signing_key_env
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"[report] signing_key_env names {name}, which is not set or empty")
    if value.startswith("-----BEGIN"):
        return _parse_private(value.encode(), f"the key in ${name}")
    return _key_file(Path(value).expanduser(), report_dir, f"signing_key_env (${name})")


def _key_file(path: Path, report_dir: Path, origin: str) -> Ed25519PrivateKey:
    if path.resolve().is_relative_to(report_dir.resolve()):
        raise ConfigError(
            f"[report] {origin}: {path} is inside the report directory {report_dir}; keep the "
            "signing key elsewhere, or anyone who can rewrite a report can re-sign it"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[report] {origin}: cannot read {path}: {exc.strerror}") from exc
    return _parse_private(data, str(path))


def _parse_private(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}: not an Ed25519 key (make one with `drill keygen PATH`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (the `.pub` that `keygen` writes)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the public key: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return key


def signing_state(key: Ed25519PrivateKey | None, problem: str | None = None) -> dict[str, Any]:
    """The `evidence` section of drill.json: who signs it, or why it is not signed."""
    if key is None:
        reason = problem or "no signing key is configured ([report] signing_key_path or _env)"
        return {"signed": False, "algorithm": None, "unsigned_reason": reason}
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "signed": True,
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw).decode(),
        "fingerprint": fingerprint(public),
        "signature_file": SIGNATURE,
    }


# --- sealing ------------------------------------------------------------------------------


def hash_artefacts(run_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of the run, except drill.json and its signature."""
    result = {}
    for path in sorted(run_dir.rglob("*")):
        name = path.relative_to(run_dir).as_posix()
        if name in (DOCUMENT, SIGNATURE) or not path.is_file() or path.is_symlink():
            continue
        result[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return result


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal(run_dir: Path, key: Ed25519PrivateKey | None) -> None:
    """Record every artefact's sha256 in drill.json; with a key, sign it into drill.json.sig."""
    document_path = run_dir / DOCUMENT
    document = json.loads(document_path.read_text())
    document["artefacts"] = hash_artefacts(run_dir)
    data = (json.dumps(document, indent=2) + "\n").encode()
    document_path.write_bytes(data)
    signature_path = run_dir / SIGNATURE
    if key is None:
        signature_path.unlink(missing_ok=True)
        return
    signature_path.write_text(base64.b64encode(key.sign(data)).decode() + "\n")


# --- verification -------------------------------------------------------------------------


def verify_run(
    run_dir: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    *,
    allow_unsigned: bool = False,
) -> list[str]:
    """Every problem of a run's evidence, each naming its file; [] when all is intact.

    Without `public_key`, the key embedded in drill.json checks the signature: that proves
    drill.json was not changed after signing, not who signed it.
    """
    document_path = run_dir / DOCUMENT
    try:
        data = document_path.read_bytes()
        document = json.loads(data)
    except OSError as exc:
        return [f"{DOCUMENT}: cannot read ({exc.strerror})"]
    except ValueError as exc:
        return [f"{DOCUMENT}: not JSON ({exc})"]
    if isinstance(public_key, Path):
        public_key = load_public_key(public_key)
    problems = _signature_problems(run_dir, data, document, public_key, allow_unsigned)
    return problems + _artefact_problems(run_dir, document)


def _signature_problems(
    run_dir: Path,
    data: bytes,
    document: dict,
    public_key: Ed25519PublicKey | None,
    allow_unsigned: bool,
) -> list[str]:
    evidence = document.get("evidence") or {}
    signature_path = run_dir / SIGNATURE
    if not signature_path.exists():
        if evidence.get("signed"):
            return [f"{SIGNATURE}: missing, although drill.json says the run was signed"]
        if allow_unsigned:
            return []
        why = evidence.get("unsigned_reason") or "no signature"
        return [
            f"{DOCUMENT}: unsigned ({why}); its artefact hashes prove nothing against someone "
            "who can rewrite drill.json"
        ]
    embedded = _embedded_key(evidence)
    if public_key is None:
        if embedded is None:
            return [f"{DOCUMENT}: names no public key; give one with --public-key"]
        public_key = embedded
    elif embedded is not None and fingerprint(embedded) != fingerprint(public_key):
        return [
            f"{DOCUMENT}: signed by key {fingerprint(embedded)}, not by the given key "
            f"{fingerprint(public_key)}"
        ]
    try:
        signature = base64.b64decode(signature_path.read_text().strip(), validate=True)
        public_key.verify(signature, data)
    except (ValueError, InvalidSignature):
        return [
            f"{DOCUMENT}: the signature in {SIGNATURE} does not match (drill.json or the "
            "signature was changed after signing)"
        ]
    return []


def _embedded_key(evidence: dict) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(evidence["public_key"]))
    except (KeyError, TypeError, ValueError):
        return None


def _artefact_problems(run_dir: Path, document: dict) -> list[str]:
    recorded = document.get("artefacts")
    if not isinstance(recorded, dict):
        return [f"{DOCUMENT}: lists no artefact hashes (the run was never sealed)"]
    problems = []
    present = hash_artefacts(run_dir)
    for name, expected in sorted(recorded.items()):
        found = present.get(name)
        if found is None:
            problems.append(f"{name}: missing (listed in drill.json)")
        elif found["sha256"] != expected.get("sha256"):
            problems.append(
                f"{name}: sha256 {found['sha256'][:16]}... differs from drill.json's "
                f"{str(expected.get('sha256'))[:16]}... (changed after the run)"
            )
    for name in sorted(set(present) - set(recorded)):
        problems.append(f"{name}: not listed in drill.json (added after the run)")
    return problems


# --- history ------------------------------------------------------------------------------


def history_entry(document: dict, run: str) -> dict[str, Any]:
    """One run as a line of history.jsonl: its verdict, each drill's RTO and RPO, the backup
    it drilled and the profile of what it restored."""
    drills = {}
    for drill in document.get("drills", []):
        rto, rpo = drill.get("rto") or {}, drill.get("rpo") or {}
        backup = drill.get("backup") or {}
        drills[drill["kind"]] = {
            "verdict": drill.get("verdict"),
            # What `drill status` and `drill runbook` say of a failed drill.
            "cause": (drill.get("first_cause") or drill.get("error"))
            if drill.get("verdict") == "fail"
            else None,
            "rto_target_s": rto.get("target_s"),
            "rto_measured_s": rto.get("measured_s"),
            "rpo_target_s": rpo.get("target_s"),
            "rpo_measured_s": rpo.get("measured_s"),
            # What the next drill's plausibility checks compare with (drills.checks.plausibility).
            "backup": {"key": backup.get("key"), "taken_at": backup.get("taken_at")},
            # How it was chosen (`[drill] pick`): `drill status` draws the window's drilled days.
            "pick": (drill.get("pick") or {}).get("replay"),
            "profile": drill.get("profile"),
        }
    return {
        "run": run,
        "estate": document.get("estate"),
        "started_at": (document.get("run") or {}).get("started_at"),
        "finished_at": document.get("finished_at"),
        "verdict": document.get("verdict"),
        "drills": drills,
    }


def read_history(report_dir: Path) -> list[dict[str, Any]]:
    """The runs in `<report_dir>/history.jsonl`, oldest first; unreadable lines are skipped."""
    path = report_dir / HISTORY
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            log.warning("%s:%d: not JSON, skipped", path, number)
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


# --- secrets ------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"password|secret|token|passphrase|key", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DSN_PASSWORD = re.compile(r"\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&']+))", re.I)


def known_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret values the configuration leads to: DSN passwords, values of `*_env` secrets,
    the values of `[app] headers` and of secret-looking `[app] env` entries.

    These are scrubbed from every file of a run as a last line of defence behind redaction.
    """
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in _settings(config):
        if name == "headers" and isinstance(value, Mapping):  # header -> variable NAME
            found.update(environ.get(variable, "").strip() for variable in value.values())
            continue
        if name == "env" and isinstance(value, Mapping):  # the app's variables
            found.update(v for k, v in value.items() if _SECRET_NAME.search(k))
            found.update(environ.get(n, "") for v in value.values() for n in _VARIABLE.findall(v))
            continue
        if not isinstance(value, str) or not value:
            continue
        if name == "dsn":
            found.update(_dsn_passwords(value))
        elif name in TOKEN_URLS:  # a URL whose path is its token
            found.add(value)
        elif name.endswith("_env") and _SECRET_NAME.search(name):
            found.add(environ.get(value, "").strip())
        elif _SECRET_NAME.search(name) and not name.endswith("_path"):
            found.add(value)
    return sorted(s for s in found if len(s) >= MIN_SCRUB_LENGTH)


def _settings(value: Any, name: str = "") -> Iterable[tuple[str, Any]]:
    if is_dataclass(value):
        for field in fields(value):
            yield from _settings(getattr(value, field.name), field.name)
    else:
        yield name, value


def _dsn_passwords(dsn: str) -> set[str]:
    found = set()
    parts = urlsplit(dsn)
    if parts.scheme and parts.password:
        found |= {parts.password, unquote(parts.password)}
    for quoted, bare in _DSN_PASSWORD.findall(dsn):
        found.add(quoted or unquote(bare))
    return found


def scrub(run_dir: Path, secrets: Iterable[str]) -> list[str]:
    """Replace each secret by '***' in every file of the run; return the files changed."""
    needles = [s.encode() for s in secrets if s]
    changed = []
    if not needles:
        return changed
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        cleaned = data
        for needle in needles:
            cleaned = cleaned.replace(needle, b"***")
        if cleaned != data:
            path.write_bytes(cleaned)
            changed.append(path.relative_to(run_dir).as_posix())
    return changed
