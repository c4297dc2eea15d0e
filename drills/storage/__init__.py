"""Where backups live: a local directory (``file:///abs/dir``) or an S3 bucket
(``s3://bucket/prefix``), with any S3-compatible endpoint.

One way to read a backup, whatever holds it: `open_storage(url)` gives a `Storage` whose keys
are '/'-separated and relative to the storage root (the directory, or the bucket and prefix).
Every failure is a `StorageError` whose message names the object and the cause.

Example::

    from drills.storage import open_storage

    storage = open_storage("file:///var/backups")
    storage.check()
    for info in storage.list("database/"):
        print(info.key, info.size, info.modified)

The package: `base` (the interface), `local` and `s3` (its two implementations, chosen by
`open_storage` here), `catalog` (which backups there are: latest, at or before a time),
`manifest` (a backup's sidecar), `walfile` (WAL file names), `s3server` (the embedded S3),
`posture` (a bucket's protective settings, a local store's modes and owners).
It may import `drills.config` only; every part above it may import it.
"""

from __future__ import annotations

import os
import urllib.parse

from drills.config.errors import ConfigError
from drills.storage.base import ObjectChanged, ObjectExists, ObjectInfo, Storage
from drills.storage.local import LocalStorage

__all__ = [
    "LocalStorage",
    "ObjectChanged",
    "ObjectExists",
    "ObjectInfo",
    "Storage",
    "open_storage",
]


def open_storage(
    url: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    sse: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Storage:
    """Open `file:///abs/dir` (or an absolute path) or `s3://bucket/optional/prefix`.

    For S3, credentials come from `access_key_id`/`secret_access_key` when given, else from
    boto3's usual chain (environment, profile, instance role). `sse` (e.g. ``"AES256"`` or
    ``"aws:kms"``) is requested on every upload. Opening is lazy: nothing is contacted until
    the first call; `check()` contacts the storage on purpose.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.username or parsed.password:
        raise ConfigError(
            f"{parsed.scheme}://{parsed.hostname}: credentials in the storage URL are not "
            "accepted; use the environment or a profile"
        )
    if parsed.scheme == "s3":
        from drills.storage.s3 import S3Storage

        if not parsed.netloc:
            raise ConfigError(f"{url}: no bucket name (expected s3://bucket/optional/prefix)")
        return S3Storage(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint_url=endpoint_url,
            region=region,
            sse=sse,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"{url}: a file URL needs an absolute path (file:///abs/dir)")
        return LocalStorage(urllib.parse.unquote(parsed.path))
    if not parsed.scheme and os.path.isabs(url):
        return LocalStorage(url)
    raise ConfigError(f"{url}: unsupported storage URL (expected file:///abs/dir or s3://bucket)")
