"""Cleaning up after runs that did not finish (a killed run, a storage outage), at start.

Under the series' lock no other run of the series is writing, so what an unfinished run left
can go. Only this series' names are ever touched, and never a complete backup:

- incomplete multipart uploads (billed by S3, invisible in listings): aborted when a dead
  run's lock recorded their key, or when they began more than `LEFTOVER_AGE` ago;
- objects of a backup with no manifest: removed when a dead run's lock recorded the key;
  a directory dump without its ``toc.dat`` (a base backup without ``backup_manifest``) also
  when it is older than `LEFTOVER_AGE`. A manifest-less backup that looks complete (the
  user's own cron dumps, the seed scripts' snapshots) is never removed;
- ``.partial`` copies in the local directory: of a dead run of this host, or older than
  `LEFTOVER_AGE`.

Each function returns one line per thing it cleaned, for the run's report.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from drills.backup.common import PARTIAL, discard, human_size, parse_stamp
from drills.backup.lock import Holder
from drills.backup.series import Series, Stored
from drills.storage import Storage
from drills.storage.s3 import S3Storage

log = logging.getLogger(__name__)

LEFTOVER_AGE = timedelta(days=1)
COMPLETES = {"database": "toc.dat", "base": "backup_manifest"}
"""The file a directory backup of that kind is incomplete without."""


def clean_store(
    storage: Storage, series: Series, listing: list[Stored], stale: Holder | None, now: datetime
) -> tuple[list[str], set[str]]:
    """Abort and remove what unfinished runs left in `storage`: (report lines, keys removed)."""
    recorded = set(stale.writing) if stale else set()
    notes = []
    if isinstance(storage, S3Storage):
        notes += _abort_uploads(storage, series, recorded, now)
    removed = set()
    for backup in listing:
        if backup.manifest_key is not None or not backup.objects:
            continue
        if backup.key in recorded:
            why = "left by a run that did not finish"
        elif _incomplete(series, backup) and backup.modified < now - LEFTOVER_AGE:
            why = f"no {COMPLETES[series.kind]} and no manifest since {backup.modified:%Y-%m-%d}"
        else:
            continue
        storage.delete_all(backup.object_keys())
        removed.add(backup.key)
        notes.append(
            f"removed {backup.key} ({len(backup.objects)} objects, "
            f"{human_size(backup.size)}): {why}"
        )
    for note in notes:
        log.info("%s: %s", storage.url, note)
    return notes, removed


def clean_local(kind_dir: Path, series: Series, stale: Holder | None, now: datetime) -> list[str]:
    """Remove partial backups in the local directory left by dead runs; report lines."""
    if not kind_dir.is_dir():
        return []
    mine = stale is not None and stale.host == socket.gethostname()
    recorded = {k[len(series.prefix) :].rstrip("/") for k in stale.writing} if mine else set()
    notes = []
    for name in sorted(os.listdir(kind_dir)):
        if not name.endswith(PARTIAL):
            continue
        final = name[: -len(PARTIAL)]
        when = parse_stamp((series.stamp_of(final) or "")[:15])
        if when is None:
            continue
        if final in recorded or when < now - LEFTOVER_AGE:
            discard(kind_dir / name)
            notes.append(f"removed {kind_dir / name}: left by a run that did not finish")
    for note in notes:
        log.info("%s", note)
    return notes


def _incomplete(series: Series, backup: Stored) -> bool:
    marker = COMPLETES.get(series.kind)
    if marker is None or not backup.is_directory:
        return False
    return all(info.key.rsplit("/", 1)[-1] != marker for info in backup.objects)


def _under(key: str, backup_key: str) -> bool:
    """Whether `key` is the backup `backup_key`, or in it (a directory's "…/")."""
    return key == backup_key or (backup_key.endswith("/") and key.startswith(backup_key))


def _abort_uploads(
    storage: S3Storage, series: Series, recorded: set[str], now: datetime
) -> list[str]:
    aborted: dict[str, list[int]] = defaultdict(list)
    for upload in storage.list_uploads(series.prefix + series.stem):
        name = series.name_of(upload.key)
        if name is None:
            continue
        mine = any(_under(upload.key, k) for k in recorded)
        if not mine and upload.initiated >= now - LEFTOVER_AGE:
            continue  # may be another writer's, still going
        size = storage.upload_bytes(upload)
        storage.abort_upload(upload)
        aborted[series.prefix + name].append(size)
    return [
        f"aborted {len(sizes)} incomplete upload{'s' if len(sizes) > 1 else ''} of {key} "
        f"({human_size(sum(sizes))} in parts)"
        for key, sizes in sorted(aborted.items())
    ]
