"""A plain dump's table data loaded on several sessions, as pg_restore --jobs loads an
archive's: the rows of each COPY block cut into pieces at line ends, every piece a COPY of
its own on whichever session is free.

The data section of a full pg_dump script only fills tables its pre-data section created: no
index, key, trigger or rule exists on them before the post-data section, so rows go in the
same whatever their order or session, and a bad row is refused with the same error. The
script's own reading (`drills.restore.dumpscan.DumpScan`) says where each block's rows start
and end; `Fanout` is only used while that holds (`drills.restore.plain` decides), and
anything else in the data section (a statement other than a sequence's value) is a barrier:
the sessions finish, and the rest of the script goes to one session, in order.

    >>> lanes = Lanes(pg, "drishti", preamble, sessions=2)        # doctest: +SKIP
    >>> lanes.copy(b"COPY public.users (id, name) FROM stdin;", [rows])  # doctest: +SKIP
    >>> lanes.finish(); lanes.wait(timeout=600)                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Sequence

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError
from drills.restore.common import Drain, RestoreError, open_pipe, psql_input
from drills.runtime.postgres import PostgresContainer

PIECE_BYTES = 2 * 1024 * 1024
"""Rows per COPY piece: large enough that a statement's cost vanishes, small enough that
the pieces queued and in flight stay a few megabytes."""
_END = b"\\.\n"
_HARMLESS = (b"--", b"SELECT pg_catalog.setval(")


def harmless(text: bytes | memoryview) -> bool:
    """Whether the script text between data blocks may run on any session in any order:
    comments, blank lines, and the values of sequences."""
    for line in bytes(text).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(_HARMLESS):
            return False
    return True


class Lanes:
    """`sessions` psql processes (ON_ERROR_STOP) fed from one queue: each takes the next
    piece when it is done with its last, so a slow table never holds the others up. Every
    session starts with the script's session settings (its preamble)."""

    def __init__(
        self, pg: PostgresContainer, dbname: str, preamble: bytes, sessions: int, timeout: float
    ) -> None:
        self.queue: queue.Queue[tuple[bytes, ...] | None] = queue.Queue(sessions)
        self.failed = threading.Event()
        self.lanes = [_Lane(self, pg, dbname, preamble, timeout) for _ in range(sessions)]
        for lane in self.lanes:
            lane.start()

    def copy(self, line: bytes, rows: Sequence[bytes | memoryview]) -> bool:
        """Queue the COPY `line`'s `rows` (whole lines); False when a session failed (its
        error is the cause: stop feeding)."""
        return self._put((line + b"\n", *rows, _END))

    def raw(self, text: bytes | memoryview) -> bool:
        """Queue script text that may run on any session (see `harmless`)."""
        return self._put((bytes(text),))

    def _put(self, item: tuple) -> bool:
        while not self.failed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def finish(self) -> None:
        """No more pieces: every session ends once the queue is empty."""
        for lane in self.lanes:
            while lane.is_alive():
                try:
                    self.queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def wait(self, timeout: float, what: str) -> None:
        """Wait for every session to end; past the bound kill them and name the step."""
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.join(timeout=max(0.1, deadline - time.monotonic()))
            try:
                if lane.psql is not None:
                    lane.psql.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                lane.join(0)
            if lane.is_alive() or (lane.psql is not None and lane.psql.poll() is None):
                self.kill()
                raise StepTimeout(f"{what} did not finish within its bound of {timeout:.0f} s")

    def kill(self) -> None:
        """Stop every session now (a timeout, or the restore given up)."""
        self.failed.set()
        for lane in self.lanes:
            if lane.psql is not None and lane.psql.poll() is None:
                lane.psql.kill()

    def failures(self) -> list[str]:
        """The error output of every session that failed."""
        return [lane.errors.text() for lane in self.lanes if lane.psql.returncode != 0]

    def errors(self) -> list[DrillError]:
        """The feeding errors of the sessions (not psql's own: see `failures`)."""
        return [lane.error for lane in self.lanes if lane.error is not None]


class _Lane(threading.Thread):
    """One psql reading a named pipe in the target's inbox (or `docker exec`'s stdin)."""

    def __init__(
        self, lanes: Lanes, pg: PostgresContainer, dbname: str, preamble: bytes, timeout: float
    ) -> None:
        super().__init__(daemon=True, name="data lane")
        self.owner, self.preamble, self.timeout = lanes, preamble, timeout
        argv, self.pipe = psql_input(pg, dbname, "data")
        self.psql: subprocess.Popen = subprocess.Popen(
            pg.exec_argv(argv, interactive=self.pipe is None),
            stdin=subprocess.DEVNULL if self.pipe else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.errors = Drain(self.psql.stderr)
        self.error: DrillError | None = None

    def run(self) -> None:
        sink = None
        try:
            if self.pipe is None:
                sink = self.psql.stdin
            else:
                sink = open_pipe(self.pipe[0], self.psql, self.timeout)
            if sink is None:
                return  # psql exited before it opened its input: its error says why
            _write(sink, self.preamble)
            while (item := self.owner.queue.get()) is not None:
                for part in item:
                    _write(sink, part)
        except BrokenPipeError:
            self.owner.failed.set()  # psql stopped reading: its exit status names why
        except DrillError as exc:
            self.error = exc
        except OSError as exc:
            self.error = RestoreError(f"passing table data to psql failed: {exc}")
        finally:
            if sink is None or self.error is not None:
                self.owner.failed.set()
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()
            if self.pipe is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.pipe[0])


def _write(sink, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[sink.write(view) :]


class Fanout:
    """Routes a plain script's bytes, as `DumpScan.feed` returns them, to one psql until the
    first block of table data, then the rows of every declared table's block to `Lanes`.

    `write` takes the bytes for the single psql; `open_lanes` ends that psql (waiting for
    it: the tables must exist before any row goes in) and returns the lanes, or None when
    that psql failed (its error is the cause).
    """

    def __init__(self, scan, write, open_lanes) -> None:
        self.scan, self.write, self.open_lanes = scan, write, open_lanes
        self.spread = False
        """Rows went to several sessions."""
        self.lanes: Lanes | None = None
        self.ended: list[Lanes] = []
        """Lanes ended at a barrier (their errors are still to be read)."""
        self.serial = False
        """A barrier was met: the rest of the script goes to one session, in order."""
        self.stopped = False
        self._line: bytes | None = None  # the COPY line of the block being spread
        self._pending: list[tuple[bytes, int, int]] = []  # rows not queued yet
        self._size = 0

    def send(self, ready: bytes | memoryview, events: list[tuple[int, bytes | None, bool]]) -> None:
        """Route the next bytes (whole lines; `events`: the scan's `copy_events` in them)."""
        data = ready if isinstance(ready, bytes) else bytes(ready)
        view = memoryview(data)
        position = 0  # the first byte not routed yet
        for at, line, declared in events:
            if self.stopped:
                return
            if line is not None:
                if self.serial or not declared or self.scan.switches_role:
                    continue  # the block goes on as it is, with the text around it
                self._text(view[position : at - len(line) - 1])
                if self.lanes is None and not self._open():
                    return
                self._line, position = line, at
            elif self._line is not None:
                self._rows(data, position, max(at, 0), trim=max(0, -at))
                self._flush(final=True)
                self._line, position = None, at + len(_END)
        if self._line is not None:
            self._rows(data, position, len(data))
        else:
            self._text(view[position:])

    def finish(self) -> None:
        """The data section ended (or the script did): the sessions end with their queue."""
        if self._line is not None:  # a dump cut inside a block: psql would load what came
            buf, _, last = self._pending[-1] if self._pending else (b"\n", 0, 1)
            if buf[last - 1 : last] != b"\n":
                self._pending.append((b"\n", 0, 1))
            self._flush(final=True)
            self._line = None
        if self.lanes is not None:
            self.lanes.finish()

    def _open(self) -> bool:
        self.lanes = self.open_lanes(None)
        if self.lanes is None:
            self.stopped = True
        self.spread = not self.stopped
        return not self.stopped

    def all(self) -> list[Lanes]:
        """Every set of sessions opened, the ended ones first."""
        return [*self.ended, *([self.lanes] if self.lanes is not None else [])]

    def _text(self, text: memoryview) -> None:
        if not text or self.stopped:
            return
        if self.lanes is None:
            self.write(text)
            return
        if not self.serial and not harmless(text):
            self._barrier()
            if self.stopped:
                return
        if not self.lanes.raw(text):
            self.stopped = True

    def _barrier(self) -> None:
        """Every session ends; the rest goes to one new session, in order."""
        self.lanes.finish()
        self.ended.append(self.lanes)
        self.serial = True
        self.lanes = self.open_lanes(self.ended[-1])
        if self.lanes is None:
            self.stopped = True

    def _rows(self, data: bytes, start: int, stop: int, trim: int = 0) -> None:
        if stop > start:
            self._pending.append((data, start, stop))
            self._size += stop - start
        while trim and self._pending:  # the end marker began in the bytes before
            buf, first, last = self._pending.pop()
            cut = min(trim, last - first)
            trim -= cut
            self._size -= cut
            if last - cut > first:
                self._pending.append((buf, first, last - cut))
        if self._size >= PIECE_BYTES:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Queue the pending rows as one COPY: all of them at a block's end, else those up
        to the last whole line."""
        pieces, rest = self._pending, []
        if not final:
            for index in range(len(pieces) - 1, -1, -1):
                buf, first, last = pieces[index]
                cut = buf.rfind(b"\n", first, last)
                if cut >= 0:
                    rest = [(buf, cut + 1, last), *pieces[index + 1 :]]
                    pieces = [*pieces[:index], (buf, first, cut + 1)]
                    break
            else:
                return  # not one whole line yet
        self._pending = [piece for piece in rest if piece[2] > piece[1]]
        self._size = sum(last - first for _, first, last in self._pending)
        views = [memoryview(buf)[first:last] for buf, first, last in pieces if last > first]
        if views and not self.lanes.copy(self._line, views):
            self.stopped = True
