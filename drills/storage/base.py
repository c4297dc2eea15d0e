"""The storage interface every backup source implements, and what it speaks in.

`Storage` is a protocol: keys are '/'-separated and relative to the storage root (a directory,
or a bucket and prefix); every failure is a `StorageError` whose message names the object and
the cause. This module knows no implementation; `local` and `s3` implement it, and never
import each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from drills.config.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the storage root), size, time and class."""

    key: str
    size: int
    modified: datetime
    storage_class: str | None = None
    etag: str | None = None
    """The S3 ETag without quotes (the MD5 of a single-part upload); None for local files."""


class ObjectExists(StorageError):
    """A conditional create found the object there already."""


class ObjectChanged(StorageError):
    """A conditional replace or delete found the object changed (or gone) since it was read."""


@runtime_checkable
class Storage(Protocol):
    """What a backup source offers: listing, streaming reads, atomic writes, a health check."""

    url: str
    endpoint_url: str | None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, at any depth."""
        ...

    def folders(self, prefix: str = "") -> list[str]:
        """The folders directly under `prefix` (each ending in '/'), empty ones included
        where the store keeps them (a directory; an S3 folder marker)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A streaming reader of the object (not read into memory)."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole object (for small objects such as manifests)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Store a local file under `key`."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`."""
        ...

    def check(self) -> None:
        """Raise StorageError if the storage is unreachable, missing or denied."""
        ...

    def create(self, key: str, data: bytes) -> str:
        """Store `data` under `key` only if no object is there (else ObjectExists); its tag."""
        ...

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The whole object and the tag that `replace` and `delete` compare against."""
        ...

    def replace(self, key: str, data: bytes, tag: str) -> str:
        """Store `data` under `key` only if the object still has `tag` (else ObjectChanged)."""
        ...

    def delete(self, key: str, tag: str | None = None) -> None:
        """Remove the object; with `tag`, only if it still has it (else ObjectChanged). A
        missing object is not an error."""
        ...

    def delete_all(self, keys: list[str]) -> None:
        """Remove every object in `keys` (in batches where the store has them)."""
        ...
