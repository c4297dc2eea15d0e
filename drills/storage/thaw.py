"""Thaw an archived backup: ask S3 to restore each of its archived objects, wait until all
are readable.

A backup in GLACIER or DEEP_ARCHIVE is readable only after a restore request has made a
temporary copy (`tiers` gives the documented wait of each tier). `thaw()` issues the requests
(one per archived object; one already in progress is left to finish), then polls each
object's x-amz-restore until it says the copy is there, waiting longer between polls as
time goes (a real Bulk retrieval takes hours), and fails naming what is still archived
when the bound is reached.

Example::

    archived = archived_objects(storage, backup)
    done = thaw(storage, archived, "Expedited", timeout=600)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from drills.config.clock import human
from drills.config.errors import DrillError, StorageError
from drills.storage import ObjectInfo, Storage
from drills.storage.catalog import MIRROR, Backup, mirror_objects
from drills.storage.tiers import needs_restore

RESTORED = 'ongoing-request="false"'
"""What x-amz-restore says once the temporary copy is readable."""
KEEP_DAYS = 1
"""How long the restored copy stays: the drill reads it at once."""


@dataclass(frozen=True)
class Thawed:
    """What a thaw did: how many objects it restored, from which classes, in how long."""

    objects: int
    classes: tuple[str, ...]
    tier: str
    seconds: float
    polls: int


def archived_objects(storage: Storage, backup: Backup) -> list[ObjectInfo]:
    """The objects of `backup` that can be read only after a restore request."""
    if backup.format == MIRROR:
        infos = mirror_objects(storage, backup.key)
    elif backup.is_directory:
        infos = list(storage.list(backup.key))
    else:
        infos = [info for info in storage.list(backup.key) if info.key == backup.key]
    return [info for info in infos if needs_restore(info.storage_class)]


def thaw(
    storage: Storage,
    objects: list[ObjectInfo],
    tier: str,
    timeout: float,
    *,
    first_poll: float = 0.5,
    longest_poll: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Thawed:
    """Restore `objects` by `tier` and wait until every one is readable, at most `timeout`
    seconds."""
    request = getattr(storage, "request_restore", None)
    state = getattr(storage, "restore_state", None)
    if request is None or state is None:
        raise StorageError(f"{storage.url}: this storage has no archive classes to restore from")
    started = time.monotonic()
    for info in objects:
        request(info.key, tier, KEEP_DAYS)
    pending = [info.key for info in objects]
    polls, wait = 0, first_poll
    while True:
        polls += 1
        pending = [key for key in pending if RESTORED not in (state(key) or "")]
        elapsed = time.monotonic() - started
        if not pending:
            classes = tuple(sorted({info.storage_class or "" for info in objects}))
            return Thawed(len(objects), classes, tier, elapsed, polls)
        if elapsed >= timeout:
            raise DrillError(
                f"thaw: {len(pending)} of {len(objects)} archived objects still being restored "
                f"({tier} tier) after {human(elapsed)}, the bound of {human(timeout)}; first: "
                f"{storage.url.rstrip('/')}/{pending[0]}"
            )
        sleep(min(wait, max(timeout - elapsed, 0.0)))
        wait = min(wait * 1.5, longest_poll)
