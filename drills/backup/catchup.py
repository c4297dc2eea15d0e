"""Local copies an earlier run made but could not upload (the storage was down, the run was
killed): found at start, checked against their manifests, uploaded after the new backup.

A local copy is pending when this producer made it for this estate, the storage has no
manifest for it, it is newer than the newest backup of the series the storage holds, and it
is within the retention. (Older copies the storage lacks were most likely expired there by
a lifecycle rule on purpose: they are not sent back.)

Example::

    for backup in pending(local_listing, stored_listing, "drishti", 30, now):
        expected = check_local(local_dir, backup)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from drills.backup.series import Stored
from drills.backup.verify import Expected, file_digests
from drills.config.errors import IntegrityError


def pending(
    local: list[Stored], stored: list[Stored], estate: str, days: int, now: datetime
) -> list[Stored]:
    """The local copies to upload, oldest first."""
    in_store = {b.key for b in stored if b.manifest_key is not None}
    newest = max((b.taken_at for b in stored if b.manifest_key is not None), default=None)
    horizon = now - timedelta(days=days)
    return [
        b
        for b in local
        if b.ours(estate)
        and b.key not in in_store
        and (newest is None or b.taken_at > newest)
        and b.taken_at >= horizon
    ]


def check_local(root: Path, backup: Stored) -> Expected:
    """What the storage must hold once the local copy is uploaded; IntegrityError when the
    local copy no longer matches its manifest (it is then not uploaded)."""
    manifest = backup.manifest
    assert manifest is not None
    if not backup.is_directory:
        digests = file_digests(root / backup.key)
        if manifest.sha256 not in (None, digests.sha256) or manifest.bytes not in (
            None,
            digests.bytes,
        ):
            raise IntegrityError(f"{root / backup.key}: differs from its manifest")
        return {backup.key: (digests.bytes, digests.etag)}
    expected: Expected = {}
    for entry in manifest.files:
        digests = file_digests(root / backup.key / entry.path)
        if digests.sha256 != entry.sha256:
            raise IntegrityError(f"{root / backup.key / entry.path}: differs from its manifest")
        expected[backup.key + entry.path] = (digests.bytes, digests.etag)
    return expected
