"""Replay one base backup to a target time in a `RecoveryContainer`, timing each step.

The steps a recovery takes once `drills.pitr` has chosen the base backup and the target:
stream the base backup into ``$PGDATA`` (its sha256 and size checked on the way), run
`pg_verifybackup` against PostgreSQL's own manifest with the WAL the backup needs, then
start the server with ``recovery_target_time`` and let it replay the WAL `WalFeed`
delivers until it stops before the first commit after the target and promotes. Each step
is bounded by what is left of the recovery's bound; PostgreSQL's log gives the replayed
range and its own account of where it stopped.

    >>> rec = Recovery(storage, archive, chosen, container, when, timeout=7200)  # doctest: +SKIP
    >>> rec.restore_base(); rec.verify(); rec.replay()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import Any

from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.pitr import Recoverable, RecoveryError, iso
from drills.pitr.catalog import WalArchive
from drills.pitr.container import (
    HBA,
    SCAN_DIR,
    WAL_DIR,
    WORK,
    RecoveryContainer,
    WalFeed,
    restore_command_script,
)
from drills.record import DrillRecord
from drills.restore.common import Drain
from drills.runtime.containers import ContainerNotReady
from drills.storage import Storage
from drills.storage.manifest import HashingReader
from drills.storage.walfile import format_lsn, parse_lsn, timeline_at

CHUNK = 1 << 20
BASE_TAR = "base.tar.gz"
WAL_TAR = "pg_wal.tar.gz"
PG_MANIFEST = "backup_manifest"
PROBE_EVERY_S = 0.5

_LOG = {
    "redo_start": re.compile(r"redo starts at (\S+)"),
    "redo_end": re.compile(r"redo done at (\S+)"),
    "redo_elapsed": re.compile(r"redo done at .*elapsed: ([\d.]+) s"),
    "stopped_before": re.compile(
        r"recovery stopping before (?:commit|abort) of transaction (\d+), time (.+)$", re.M
    ),
    "last_transaction": re.compile(r"last completed transaction was at log time (.+)$", re.M),
    "timeline": re.compile(r"selected new timeline ID: (\d+)"),
    "ready": re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  database system is ready "
        r"to accept connections",
        re.M,
    ),
}
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
_FATAL = re.compile(r"(?:FATAL|PANIC):\s+(.+)$", re.M)
# what our own readiness probe is told while recovery runs: not the cause of anything
_REFUSALS = ("is starting up", "not accepting connections", "is shutting down")


class Recovery:
    """One recovery of a base backup to a target time in a `RecoveryContainer`."""

    def __init__(
        self,
        storage: Storage,
        archive: WalArchive,
        chosen: Recoverable,
        container: RecoveryContainer,
        target: datetime,
        *,
        timeout: float,
    ) -> None:
        self.storage, self.archive, self.chosen = storage, archive, chosen
        self.container, self.target = container, target
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.base = chosen.base
        self.facts: dict[str, Any] = {}
        self.stopped_before: datetime | None = None
        self.has_manifest = True
        self.last_applied: datetime | None = None
        self._next_probe = 0.0
        self._go_at = datetime.now(UTC)
        self.end_wal = chosen.plan.end_segment
        if self.end_wal is None:
            raise DrillError(f"{self.base.key}: its WAL is not archived up to its end")
        self.feed = WalFeed(storage, archive, chosen.plan, container, ahead_of=self.end_wal)
        container.user = self.base.superuser

    def __enter__(self) -> Recovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.feed.stop()

    def _left(self, step: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RecoveryError(f"{step}: the recovery's bound of {self.timeout:.0f} s is spent")
        return left

    def restore_base(self) -> None:
        """Stream the base backup into $PGDATA (and the WAL it carries, as `pg_basebackup
        -X stream` writes it, into pg_wal); sha256 and size checked on the way."""
        files = {f.path: f for f in self.base.files}
        others = sorted(set(files) - {BASE_TAR, WAL_TAR, PG_MANIFEST})
        if others or BASE_TAR not in files:
            raise DrillError(
                f"{self.base.key}: expected {BASE_TAR}, {PG_MANIFEST} and {WAL_TAR} only, found "
                f"{', '.join(sorted(files))} (tablespaces are not supported by this drill)"
            )
        started = time.monotonic()
        self.container.sh(f'mkdir -p "$PGDATA" {WAL_DIR} {SCAN_DIR}', timeout=30)
        self.has_manifest = PG_MANIFEST in files
        if self.has_manifest:
            manifest = self._read_checked(files[PG_MANIFEST])
            self.container.put(WORK, {PG_MANIFEST: manifest})
        read = self._untar(self.base.key + BASE_TAR, files[BASE_TAR], ".")
        if WAL_TAR in files:
            read += self._untar(self.base.key + WAL_TAR, files[WAL_TAR], "pg_wal")
        self.facts["base_restore_s"] = round(time.monotonic() - started, 3)
        self.facts["base_bytes"] = read
        self.feed.start()

    def _untar(self, key: str, entry: Any, into: str) -> int:
        """storage -> sha256 -> `tar -xz` in the container; bounded; the root cause first."""
        reader = HashingReader(self.storage.open(key))
        proc = subprocess.Popen(
            self.container.sh_argv(
                'mkdir -p "$PGDATA/$1" && exec tar -xzf - -C "$PGDATA/$1"', into
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        errors = Drain(proc.stderr)
        state: dict[str, Any] = {"broken": False, "error": None}

        def send() -> None:
            try:
                with reader:
                    while block := reader.read(CHUNK):
                        proc.stdin.write(block)
            except BrokenPipeError:
                state["broken"] = True  # tar stopped reading: its exit status says why
            except Exception as exc:  # the storage failed mid-stream
                state["error"] = exc
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        sender = threading.Thread(target=send, daemon=True, name=f"send {key}")
        sender.start()
        try:
            proc.wait(timeout=self._left(f"restore of {key}"))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RecoveryError(f"{key}: not restored within {self.timeout:.0f} s") from None
        sender.join(timeout=30)
        if state["error"] is not None:
            error = state["error"]
            raise error if isinstance(error, DrillError) else StorageError(f"{key}: {error}")
        if not state["broken"]:
            reader.verify(entry.sha256, entry.size, key)  # a cut or changed object, first
        if proc.returncode != 0:
            raise RecoveryError(f"{key}: tar failed in the container: {errors.text().strip()}")
        return reader.bytes_read

    def _read_checked(self, entry: Any) -> bytes:
        key = self.base.key + entry.path
        reader = HashingReader(self.storage.open(key))
        with reader:
            data = reader.read()
        reader.verify(entry.sha256, entry.size, key)
        return data

    def verify(self) -> None:
        """`pg_verifybackup` against PostgreSQL's manifest and the WAL the backup needs."""
        started = time.monotonic()
        self.feed.wait_for(self.end_wal, self._left("fetch of the backup's WAL"))
        self.container.sh(
            f'chown -R postgres:postgres "$PGDATA" {WORK} && chmod 700 "$PGDATA"', timeout=300
        )
        if not self.has_manifest:
            self.facts["verified"] = (
                f"not verified: {self.base.key} has no {PG_MANIFEST} (taken with --no-manifest)"
            )
            return
        result = self.container.sh(
            f"pg_verifybackup --manifest-path={WORK}/{PG_MANIFEST} --wal-directory={WAL_DIR} "
            '"$PGDATA"',
            user="postgres",
            timeout=self._left("pg_verifybackup"),
        )
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0:
            lines = [line for line in output.splitlines() if line.strip()]
            raise IntegrityError(
                f"{self.base.key}: pg_verifybackup failed: {' | '.join(lines[-4:])}; the "
                "backup was not started"
            )
        self.facts["verify_s"] = round(time.monotonic() - started, 3)
        self.facts["verified"] = output.splitlines()[-1] if output else "verified"

    def replay(self) -> None:
        """Set the target, start the server, wait until recovery ends and it is promoted."""
        plan = self.chosen.plan
        settings = {
            "restore_command": f"{WORK}/restore_command %f %p",
            "recovery_target_time": self.target.isoformat(sep=" "),
            "recovery_target_timeline": str(plan.target_timeline),
            "recovery_target_action": "promote",
            "recovery_target_inclusive": "on",
        }
        conf = "".join(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n" for k, v in settings.items())
        self.container.put(
            WORK, {"plan": "\n".join(plan.names()).encode() + b"\n", "pg_hba.conf": HBA.encode()}
        )
        self.container.put(
            WORK, {"restore_command": restore_command_script(self._left("replay"))}, mode=0o755
        )
        self.container.sh(
            f'touch "$PGDATA/postgresql.conf" "$PGDATA/recovery.signal" {WORK}/requested && '
            f'printf "%s" "$1" >> "$PGDATA/postgresql.auto.conf" && '
            f'chown -R postgres:postgres "$PGDATA" {WORK}',
            f"\n# drill: point-in-time recovery\n{conf}",
            timeout=300,
        )
        started, self._go_at = time.monotonic(), datetime.now(UTC)
        self.container.go()
        try:
            self.container.wait_ready(
                self._promoted, self._left("replay"), f"recovery to {iso(self.target)}"
            )
        except ContainerNotReady as exc:
            raise self._cause(exc) from None
        finally:
            self.feed.stop()
        self.facts["replay_s"] = round(time.monotonic() - started, 3)
        self._read_log()

    def _promoted(self) -> bool:
        # not too often: each refused attempt is a FATAL line in the server's log
        wait = self._next_probe - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        with self.container.connect("template1", connect_timeout=2) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]

    def _cause(self, exc: ContainerNotReady) -> DrillError:
        if self.feed.error is not None:
            return RecoveryError(f"{self.feed.error}; recovery could not continue")
        fatal = [
            line
            for line in _FATAL.findall(self.container.logs_text())
            if not any(refusal in line for refusal in _REFUSALS)
        ]
        if fatal:
            return RecoveryError(f"recovery to {iso(self.target)} failed: {fatal[-1].strip()}")
        return RecoveryError(str(exc))

    def _read_log(self) -> None:
        log = self.container.logs_text()
        found = {name: pattern.search(log) for name, pattern in _LOG.items()}
        facts = self.facts
        if found["redo_start"] and found["redo_end"]:
            start = parse_lsn(found["redo_start"].group(1))
            end = parse_lsn(found["redo_end"].group(1))
            facts["redo_start_lsn"], facts["redo_end_lsn"] = format_lsn(start), format_lsn(end)
            facts["replayed_bytes"] = end - start
            # the timeline that wrote the last record replayed: where the target lies
            facts["target_on_timeline"] = timeline_at(list(self.chosen.plan.path), end)
        if found["redo_elapsed"]:
            facts["redo_elapsed_s"] = float(found["redo_elapsed"].group(1))
        if found["stopped_before"]:
            facts["stopped_before_xid"] = int(found["stopped_before"].group(1))
            self.stopped_before = _pg_time(found["stopped_before"].group(2))
            facts["stopped_before"] = iso(self.stopped_before)
        if found["last_transaction"]:
            self.last_applied = _pg_time(found["last_transaction"].group(1))
            facts["last_transaction_at"] = iso(self.last_applied)
        if found["ready"]:
            # the server's own stamp: the probe only looks once in a while
            ready = _pg_time(found["ready"].group(1) + "+00")
            facts["replay_s"] = round(max(0.0, (ready - self._go_at).total_seconds()), 3)
        if found["timeline"]:
            facts["new_timeline"] = int(found["timeline"].group(1))
        restored = sorted(set(_RESTORED.findall(log)))
        facts["segments_replayed"] = len(restored)
        facts["wal_fetched_bytes"] = self.feed.bytes
        facts["wal_fetch_s"] = round(self.feed.fetch_s, 3)
        seconds = facts.get("replay_s") or 0
        if seconds > 0:
            facts["segments_per_s"] = round(len(restored) / seconds, 2)
            facts["replay_mb_per_s"] = round(facts.get("replayed_bytes", 0) / 1e6 / seconds, 2)

    def check_stop(self, record: DrillRecord) -> None:
        """PostgreSQL's own account: it stopped before the first commit after the target,
        and the last transaction it applied is at or before it."""
        before, last = self.stopped_before, self.last_applied
        record.check(
            "recovery stopped at the target",
            before is not None and before > self.target and (last is None or last <= self.target),
            f"stopped before the commit at {iso(before) if before else '?'}, the last applied "
            f"at {iso(last) if last else '?'}; target {iso(self.target)}",
        )


def _pg_time(text: str) -> datetime:
    """A time as the server logs it ('2025-01-15 02:00:01.123456+00')."""
    text = text.strip()
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text).astimezone(UTC)
