"""Check that what the store holds is what this run wrote, before the run reports success.

S3 gives every object an ETag: the MD5 of a single-part upload, or the MD5 of its parts' MD5s
followed by ``-<parts>`` for a multipart one. The producers hash what they write in both ways
as they write it (`Digests`), so that one listing of the stored objects proves each one's
size and bytes without reading them back. Stores that do not give MD5 ETags (SSE-KMS, a
``file://`` directory) are checked by size.

Example::

    digests = Digests()
    digests.update(b"...")
    verify_stored(storage, "config/config_20250115_020000.tar.gz",
                  {"config/config_20250115_020000.tar.gz": (digests.bytes, digests.etag)})
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from drills.config.errors import IntegrityError
from drills.storage import Storage
from drills.storage.etag import PartDigests
from drills.storage.s3 import MULTIPART_THRESHOLD

CHUNK = 1 << 20
_MAX_PARTS = 10_000

Expected = dict[str, tuple[int, str | None]]
"""Stored key -> (size, ETag or None)."""


class Digests:
    """sha256 and the S3 ETag of a byte stream, fed as it is written."""

    def __init__(self, part_size: int = MULTIPART_THRESHOLD) -> None:
        self.part_size = part_size
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._parts = PartDigests(part_size)

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes."""
        self._sha.update(data)
        self.bytes += len(data)
        self._parts.update(data)

    @property
    def sha256(self) -> str:
        """The hex sha256 of everything so far."""
        return self._sha.hexdigest()

    @property
    def etag(self) -> str | None:
        """The ETag S3 gives an upload of these bytes, None past what boto3 uploads in
        parts of `part_size` (it then picks larger parts)."""
        if self.bytes < self.part_size:
            return self._parts.current.hexdigest()  # one part: the MD5 of the whole
        if self._parts.count > _MAX_PARTS:
            return None
        return self._parts.etag()


def file_digests(path: Path) -> Digests:
    """The digests of a file, in one read."""
    digests = Digests()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digests.update(block)
    return digests


def verify_stored(storage: Storage, key: str, expected: Expected) -> None:
    """Raise IntegrityError unless every expected object is stored with its size and ETag.

    `key` is the backup's key (a file, or a directory ending in "/"); one listing under it
    gives every object's size and ETag.
    """
    found = {info.key: info for info in storage.list(key)}
    md5_tags = getattr(storage, "sse", None) != "aws:kms"
    for name, (size, etag) in sorted(expected.items()):
        info = found.get(name)
        where = f"{storage.url.rstrip('/')}/{name}"
        if info is None:
            raise IntegrityError(f"{where}: not in the store after its upload (removed by whom?)")
        if info.size != size:
            raise IntegrityError(
                f"{where}: the store holds {info.size} bytes, this run wrote {size} "
                "(another writer replaced it?)"
            )
        if md5_tags and etag and info.etag and info.etag != etag:
            raise IntegrityError(
                f"{where}: the stored object is not the one this run wrote (ETag {info.etag}, "
                f"expected {etag}; another writer replaced it?)"
            )
