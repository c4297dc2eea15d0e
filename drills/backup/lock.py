"""One writer per series, across hosts: a lock object in the backup store itself.

A run creates ``<prefix>.drill-lock-<series>`` with a conditional create (S3 ``If-None-Match:
*``; a hard link in a directory), holding who it is (run id, host, pid) and a lease. While it
runs it renews the lease (a conditional replace on the tag it last wrote), and records the
keys it is writing, so that whoever takes over a dead run's lock knows what to clean up.

A lock is stale, and is taken over (again conditionally: one taker wins), when its lease has
ended, or when its holder ran on this host and that process is gone. Any other holder stops
the run with a message naming it.

Example::

    lock = StoreLock(storage, "database/.drill-lock-drishti", run_id="3f2a9c")
    stale = lock.acquire()          # the dead holder taken over, if any
    lock.record(["database/drishti_20250115_020000.dir/"])
    lock.release()
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from drills.config.errors import DrillError, StorageError
from drills.storage import ObjectChanged, ObjectExists, Storage

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
RENEW_EVERY = LEASE / 5
_ATTEMPTS = 3


class LockHeld(DrillError):
    """Another live run holds the series' lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, until when, and which keys it is writing."""

    run: str
    host: str
    pid: int
    pid_started: str | None
    since: str
    until: str
    writing: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Holder:
        """A holder from a lock object's JSON; DrillError naming `where` if it is not one."""
        try:
            raw = json.loads(data)
            return cls(
                str(raw["run"]), str(raw["host"]), int(raw["pid"]), raw.get("pid_started"),
                str(raw["since"]), str(raw["until"]), tuple(raw.get("writing") or ()),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise DrillError(
                f"{where}: not a lock this producer wrote ({exc}); remove it if no backup runs"
            ) from None

    def to_bytes(self) -> bytes:
        """The lock object's JSON."""
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    def describe(self) -> str:
        """Who it is, in words."""
        return (
            f"run {self.run} on host {self.host} (pid {self.pid}), started {self.since}, "
            f"lease until {self.until}"
        )

    def stale(self, now: datetime) -> str | None:
        """Why this holder is dead (its lease ended, its process is gone), None if it may live."""
        if _parse_time(self.until) <= now:
            return f"its lease ended at {self.until}"
        if self.host == socket.gethostname() and process_start(self.pid) != self.pid_started:
            return f"its process {self.pid} on this host is gone"
        return None


class StoreLock:
    """The lock of one series in one store, held by this run."""

    def __init__(self, storage: Storage, key: str, run_id: str, lease: timedelta = LEASE) -> None:
        self.storage = storage
        self.key = key
        self.where = f"{storage.url.rstrip('/')}/{key}"
        self.run_id = run_id
        self.lease = lease
        self.since = _iso(_now())
        self.writing: tuple[str, ...] = ()
        self.lost: str | None = None
        self.took_over: str | None = None
        """Why the lock of a dead run was taken over, if it was."""
        self._tag: str | None = None
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> Holder | None:
        """Take the lock; return the dead holder taken over (None if it was free).

        Raises LockHeld naming a live holder; StorageError when the store refuses the write.
        """
        for _ in range(_ATTEMPTS):
            try:
                self._tag = self.storage.create(self.key, self._holder().to_bytes())
                self._start_renewing()
                return None
            except ObjectExists:
                pass
            try:
                data, tag = self.storage.read_tagged(self.key)
            except StorageError:
                continue  # released between our create and our read: try the create again
            holder = Holder.parse(data, self.where)
            why = holder.stale(_now())
            if why is None:
                raise LockHeld(
                    f"{self.where}: another backup run holds it: {holder.describe()}; "
                    "not starting a second writer"
                )
            try:
                self._tag = self.storage.replace(self.key, self._holder().to_bytes(), tag)
            except ObjectChanged:
                continue  # another run took it over first: see who holds it now
            self.took_over = why
            log.info("%s: took over the lock of %s (%s)", self.where, holder.describe(), why)
            self._start_renewing()
            return holder
        raise LockHeld(f"{self.where}: other runs keep taking it; not starting a second writer")

    def record(self, writing: list[str]) -> None:
        """Note the keys this run is about to write (a taker of a dead run cleans them)."""
        self.writing = tuple(writing)
        self._write()

    def confirm(self) -> None:
        """Raise if the lock was taken from this run while it worked."""
        if self.lost:
            raise LockHeld(f"{self.where}: {self.lost}; this run's backup is not reported good")

    def release(self, keep: bool = False) -> None:
        """Stop renewing and remove the lock; `keep` leaves it (with what this run was
        writing) for the next run to clean up. Best effort: a store that is down keeps it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if keep or self.lost or self._tag is None:
            return
        try:
            self.storage.delete(self.key, self._tag)
        except StorageError as exc:
            log.warning("%s: lock not removed (%s); the next run takes it over", self.where, exc)

    def _holder(self) -> Holder:
        until = _iso(_now() + self.lease)
        pid = os.getpid()
        return Holder(
            self.run_id, socket.gethostname(), pid, process_start(pid), self.since, until,
            self.writing,
        )  # fmt: skip

    def _write(self) -> None:
        with self._guard:
            if self.lost or self._tag is None:
                return
            try:
                self._tag = self.storage.replace(self.key, self._holder().to_bytes(), self._tag)
            except ObjectChanged:
                self.lost = "the lock was taken over by another run while this one worked"

    def _start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew, name="drill-lock", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY.total_seconds()):
            try:
                self._write()
            except StorageError as exc:
                log.warning("%s: lease not renewed (%s); retrying", self.where, exc)


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot; None if there is none.

    With the pid it names one process: a pid reused by another process has another start.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
