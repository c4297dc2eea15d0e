"""What a storage says of how it protects the backups: a bucket's settings, a directory's modes.

`read_bucket` asks an S3 bucket for its versioning, Object Lock, default encryption, public
access block, policy and lifecycle rules, one request each, and keeps every answer as it came
(a setting never made is `None`; a request the store refused or does not know is an error
kept beside it, never taken for "off"). `read_tree` walks a local backup directory and keeps
each file's and directory's mode and owner. Judging them is `drills.checks.posture`'s work.

Example::

    facts = read_bucket(open_storage("s3://drishti-backups", endpoint_url=...))
    facts.answers["versioning"]  # {"Status": "Enabled"}
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from drills.config.errors import StorageError
from drills.storage.s3 import S3Storage

# The error each GET answers when the setting was never made: not a failure to read it.
_NEVER_SET = {
    "object_lock": {"ObjectLockConfigurationNotFoundError"},
    "encryption": {"ServerSideEncryptionConfigurationNotFoundError"},
    "public_access": {"NoSuchPublicAccessBlockConfiguration"},
    "policy": {"NoSuchBucketPolicy"},
    "lifecycle": {"NoSuchLifecycleConfiguration"},
}


@dataclass
class BucketFacts:
    """A bucket's protective settings as the store answered them.

    `answers[name]` is the setting (None: never set); `errors[name]` says why it could not be
    read (access denied, not implemented by this store)."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    answers: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def read_bucket(storage: S3Storage) -> BucketFacts:
    """Ask the bucket of `storage` for each of its protective settings."""
    client, bucket = storage.client, storage.bucket
    requests = {
        "versioning": lambda: _without_metadata(client.get_bucket_versioning(Bucket=bucket)),
        "object_lock": lambda: client.get_object_lock_configuration(Bucket=bucket)[
            "ObjectLockConfiguration"
        ],
        "encryption": lambda: client.get_bucket_encryption(Bucket=bucket)[
            "ServerSideEncryptionConfiguration"
        ]["Rules"],
        "public_access": lambda: client.get_public_access_block(Bucket=bucket)[
            "PublicAccessBlockConfiguration"
        ],
        "policy": lambda: client.get_bucket_policy(Bucket=bucket)["Policy"],
        "lifecycle": lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"],
    }
    facts = BucketFacts(bucket, storage.prefix, storage.endpoint_url)
    try:
        storage.check()  # unreachable, no such bucket, denied: one named cause for every setting
    except StorageError as exc:
        facts.errors = dict.fromkeys(requests, str(exc))
        return facts
    for name, request in requests.items():
        try:
            facts.answers[name] = request()
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NEVER_SET.get(name, ()):
                facts.answers[name] = None
            else:
                facts.errors[name] = f"{storage.url}: {_reason(exc)}"
        except botocore.exceptions.BotoCoreError as exc:
            facts.errors[name] = f"{storage.url}: {exc}"
    return facts


def _without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def _reason(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code, message = error.get("Code") or "error", error.get("Message") or ""
    return f"{code} (HTTP {status}){': ' + message if message else ''}"


@dataclass(frozen=True)
class Entry:
    """A file or directory of a local store: its path (relative to the root), mode, owner."""

    path: str
    is_dir: bool
    mode: int
    uid: int


@dataclass
class TreeFacts:
    """A local backup directory: its root's owner and every entry below it (symlinks are
    counted, not followed: what they point at is not part of the store)."""

    root: Path
    root_uid: int
    entries: list[Entry] = field(default_factory=list)
    symlinks: int = 0


def read_tree(root: Path) -> TreeFacts:
    """Every file and directory under `root` (the root itself first), with mode and owner."""
    top = os.lstat(root)
    facts = TreeFacts(root, top.st_uid, [Entry(".", True, stat.S_IMODE(top.st_mode), top.st_uid)])

    def walk_error(exc: OSError) -> None:
        raise exc

    for directory, dirs, files in os.walk(root, onerror=walk_error):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                facts.symlinks += 1
                continue
            relative = os.path.relpath(path, root)
            facts.entries.append(
                Entry(relative, stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid)
            )
    return facts
