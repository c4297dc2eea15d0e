"""What a dump says about itself: the Postgres major it was taken from, read from its header.

Used when a backup has no manifest (the original runbook's dumps): plain SQL dumps start with
`-- Dumped from database version 15.14 (...)`; custom-format archives carry the server
version string in their header.
"""

from __future__ import annotations

import re
import subprocess
import zlib

from drills.config.errors import DrillError, IntegrityError
from drills.restore.common import Secrets, decrypting
from drills.storage import Storage
from drills.storage.catalog import Backup

PEEK_BYTES = 256 * 1024
PEEK_SECONDS = 60
_PLAIN = re.compile(rb"Dumped from database version (\d+)(?:\.(\d+))?")
_ARCHIVE = re.compile(rb"(\d{2,})\.(\d+)(?: \(|\x00|$)")


def backup_major(
    storage: Storage, backup: Backup, secrets: Secrets | None = None
) -> tuple[int | None, str]:
    """The major version a database backup was taken from, and where that came from. An
    encrypted dump's head is decrypted to read it (a wrong passphrase is named here, before
    any container starts)."""
    manifest = backup.manifest
    if manifest is not None and manifest.server_version:
        return int(manifest.server_version.split(".")[0]), "manifest"
    head = _peek(storage, backup, secrets)
    if backup.format == "plain":
        found = _PLAIN.search(head)
        if found:
            return int(found.group(1)), "dump header"
        return None, "dump header has no version line"
    if head.startswith(b"PGDMP"):
        found = _ARCHIVE.search(head[5:4096])
        if found:
            return int(found.group(1)), "archive header"
    return None, "archive header has no server version"


def _peek(storage: Storage, backup: Backup, secrets: Secrets | None) -> bytes:
    """The first bytes of the dump, decrypted and decompressed where the whole file is."""
    key = backup.key
    if backup.is_directory:
        key = backup.key + "toc.dat"
    stream = storage.open(key)
    try:
        raw = stream.read(PEEK_BYTES)
    finally:
        stream.close()
    if not raw:
        raise IntegrityError(f"{key}: the backup is empty (0 bytes)")
    if backup.encrypted:
        raw = _decrypt_head(backup, raw, secrets)
    if backup.format != "plain" or backup.compression == "none":
        return raw
    if backup.compression == "gzip":
        try:
            return zlib.decompressobj(wbits=47).decompress(raw, PEEK_BYTES * 4)
        except zlib.error as exc:
            raise IntegrityError(f"{key}: gzip stream is corrupt ({exc})") from None
    if backup.compression == "zstd":
        result = subprocess.run(
            ["zstd", "-dc"], input=raw, capture_output=True, timeout=30, check=False
        )
        return result.stdout
    return raw


def _decrypt_head(backup: Backup, raw: bytes, secrets: Secrets | None) -> bytes:
    """What gpg makes of the ciphertext's first bytes (it stops, failing, where they end)."""
    with decrypting(backup, secrets) as gpg:
        try:
            plain, _ = gpg.proc.communicate(raw, timeout=PEEK_SECONDS)
        except subprocess.TimeoutExpired:
            raise DrillError(f"{backup.key}: gpg did not answer within {PEEK_SECONDS} s") from None
        if not plain:
            raise gpg.error(backup.key)
    return plain
