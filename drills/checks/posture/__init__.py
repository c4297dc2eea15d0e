"""The storage posture: whether the storage itself protects the backups, check by check.

Each check reads what the storage answered (`drills.storage.posture`) and gives a `Finding`:
passed or not, the evidence it rests on, and, when it failed, the setting that would fix it.
On a bucket: versioning, Object Lock (mode, and a default retention covering the RPO window),
default encryption, the public access block, a policy refusing non-TLS access, lifecycle
rules that never expire a backup before the promised retention. On a local store: modes no
looser than `[posture] file_mode`/`dir_mode`, and one owner, the backup user.

A setting the store would not show (access denied, not implemented) fails its check with that
cause: a posture that cannot be read is not a posture that holds.

The package: `finding` (a check's result), `bucket` (the bucket checks), `local` (a
local store's modes and owner); this module chooses the checks and records them.

Example::

    findings = assess(storage, config)
    for f in findings:
        print(f.name, f.passed, f.evidence, f.fix)
"""

from __future__ import annotations

from pathlib import Path

from drills.checks.posture.bucket import (
    bucket_finding,
    lock_window_s,
    promised_retention_s,
    tls_statement,
)
from drills.checks.posture.finding import Finding
from drills.checks.posture.local import local_finding
from drills.config import Config
from drills.config.schema import (
    POSTURE_BUCKET_CHECKS,
    POSTURE_CHECKS,
    POSTURE_LOCAL_CHECKS,
    PostureSettings,
)
from drills.record import DrillRecord
from drills.storage import LocalStorage, Storage
from drills.storage.posture import read_bucket, read_tree
from drills.storage.s3 import S3Storage

__all__ = [
    "Finding",
    "assess",
    "local_stores",
    "lock_window_s",
    "promised_retention_s",
    "record_findings",
    "required_checks",
    "tls_statement",
]


def local_stores(storage: Storage, config: Config) -> list[Path]:
    """The local directories backups lie in: a file:// storage, and `[backup] local_dir`."""
    roots = [Path(storage.root)] if isinstance(storage, LocalStorage) else []
    if config.backup.local_dir and Path(config.backup.local_dir) not in roots:
        roots.append(Path(config.backup.local_dir))
    return roots


def required_checks(settings: PostureSettings, storage: Storage, config: Config) -> list[str]:
    """`[posture] required`, else the default: every bucket check on an s3:// storage, and
    permissions and owner wherever backups lie in a local directory."""
    if settings.required is not None:
        return list(settings.required)
    found = list(POSTURE_BUCKET_CHECKS) if isinstance(storage, S3Storage) else []
    return found + (list(POSTURE_LOCAL_CHECKS) if local_stores(storage, config) else [])


def assess(storage: Storage, config: Config, checks: list[str] | None = None) -> list[Finding]:
    """Run the posture checks named (default: the required and informative ones of
    `[posture]`) against the storage and the local stores; one finding each, in order."""
    settings = config.posture or PostureSettings()
    if checks is None:
        wanted = set(required_checks(settings, storage, config)) | set(settings.informative)
        checks = [name for name in POSTURE_CHECKS if name in wanted]
    findings = []
    bucket = None
    if any(name in POSTURE_BUCKET_CHECKS for name in checks) and isinstance(storage, S3Storage):
        bucket = read_bucket(storage)
    roots = local_stores(storage, config)
    trees, missing = [], [root for root in roots if not root.exists()]
    if any(name in POSTURE_LOCAL_CHECKS for name in checks):
        trees = [read_tree(root) for root in roots if root.exists()]
    for name in checks:
        if name in POSTURE_BUCKET_CHECKS:
            findings.append(bucket_finding(name, bucket, storage, config))
        else:
            findings.append(local_finding(name, trees, missing, settings))
    return findings


def record_findings(record: DrillRecord, findings: list[Finding], required: list[str]) -> None:
    """Put the findings into a drill's record: required ones as its checks (a failed one
    fails the drill, its fix in the evidence), informative ones as notes; all of them, with
    evidence and fix, under `posture`."""
    record.extra["posture"] = [f.as_dict(f.name in required) for f in findings]
    for finding in findings:
        detail = finding.evidence if finding.passed else f"{finding.evidence}; fix: {finding.fix}"
        if finding.name in required:
            record.check(finding.title, finding.passed, detail)
        elif not finding.passed:
            record.notes.append(f"informative, not required: {finding.title}: FAILED: {detail}")
    if not required:
        record.notes.append(
            "no posture check is required ([posture] required = []): the verdict rests on nothing"
        )
