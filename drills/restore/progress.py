"""Progress of a restore on the user's terminal: bytes read of the total, rate, ETA, the phase.

The restore engines count as they read: `measuring(label, total)` opens a meter around a
restore, `counter()` gives the thread that reads the backup a counter of its own, and the
reading loop adds each chunk's length to it (an int add; one writer per counter, so no
lock). A `Display` thread samples the counters at most `RATE_HZ` times a second and rewrites
one line of the terminal with a carriage return; it clears the line when it stops. Without a
display (not a terminal, `DRILL_PROGRESS=0`, `--no-progress`) nothing reads the counters.
The displays are started by the pytest plugin for `drill run` and `drill demo` (one per
drill, below pytest's test name) and by `drill restore` (below its messages).

    restore  database/app_20250115.sql.gz  120.5 MB / 292.0 MB  41%  35.2 MB/s  ETA 4.9 s
    restore  indexes and constraints  12.3 s

>>> with measuring("dump.sql.gz", 2_000_000) as meter:
...     counter().done += 500_000
>>> meter.done
500000
>>> format_bytes(1_536_000)
'1.5 MB'
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from drills.config.clock import human

RATE_HZ = 4
"""At most this many updates of the line a second."""
RATE_WINDOW_S = 5.0
"""The rate is the bytes read over about the last this many seconds."""
ENV = "DRILL_PROGRESS"
"""`DRILL_PROGRESS=0` turns the display off, whatever the terminal."""
_CLEAR_TO_END = "\x1b[K"


class Counter:
    """Bytes one thread has read; only that thread adds to it."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = 0


class Meter:
    """A transfer of known (or unknown) size, and the step its restore is at after the bytes."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.started = time.monotonic()
        self.counters: list[Counter] = []
        self.readers: list = []
        """Streams that count what is read through them (`bytes_read`), as counters do."""
        self.stage: str | None = None
        self.stage_since = self.started

    @property
    def done(self) -> int:
        """Bytes read so far, by every counter."""
        return sum(c.done for c in list(self.counters)) + sum(
            r.bytes_read for r in list(self.readers)
        )

    def step(self, name: str | None) -> None:
        """The restore is at a step without a byte count (indexes, ANALYZE); None: the bytes."""
        self.stage, self.stage_since = name, time.monotonic()


_meters: list[Meter] = []


@contextlib.contextmanager
def measuring(label: str, total: int | None) -> Iterator[Meter]:
    """Count the reading of `label` (`total` bytes, if known) while the block runs."""
    meter = Meter(label, total if total and total > 0 else None)
    _meters.append(meter)
    try:
        yield meter
    finally:
        _meters.remove(meter)


def current() -> Meter | None:
    """The meter opened last and still open, else None."""
    last = _meters[-1:]  # one step: the display's thread reads while a restore ends
    return last[0] if last else None


def counter() -> Counter:
    """A counter of the current meter for one reading thread (a spare one when none is open)."""
    count = Counter()
    meter = current()
    if meter is not None:
        meter.counters.append(count)
    return count


def follow(reader) -> None:
    """Count a stream that counts itself (`bytes_read`, e.g. a HashingReader) in the current
    meter, for a reading loop that is not ours (tarfile's)."""
    meter = current()
    if meter is not None:
        meter.readers.append(reader)


def step(name: str | None) -> None:
    """Name the step the current restore is at (no-op without a meter)."""
    meter = current()
    if meter is not None:
        meter.step(name)


def wanted(fd: int, env: dict[str, str] | None = None) -> bool:
    """Whether to show progress on `fd`: a terminal, and not turned off by `DRILL_PROGRESS=0`."""
    env = os.environ if env is None else env
    if env.get(ENV, "").strip().lower() in ("0", "no", "false", "off"):
        return False
    try:
        return os.isatty(fd)
    except OSError:
        return False


def format_bytes(n: float) -> str:
    """'512 B', '1.5 kB', '120.5 MB', '1.39 GB' (powers of 1000, as the storage lists sizes)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.2f} {unit}" if unit in ("GB", "TB") and n < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float | None) -> str:
    """'35.2 MB/s'; '-- B/s' before there is anything to measure."""
    if bytes_per_s is None:
        return "-- B/s"
    return f"{format_bytes(bytes_per_s)}/s"


def format_eta(seconds: float | None) -> str:
    """'ETA 4.9 s', 'ETA 3m 05s', 'ETA 1h 02m'; 'ETA --' while unknown."""
    return "ETA --" if seconds is None else f"ETA {human(seconds)}"


class Rate:
    """Bytes per second over a sliding window of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, done: int) -> float | None:
        """Add a sample; the rate over the window, None until two samples a moment apart."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        then, before = self._samples[0]
        if now - then < 0.05:  # too short to tell a rate from noise
            return None
        return max(0, done - before) / (now - then)


def eta(done: int, total: int | None, rate: float | None) -> float | None:
    """Seconds left at `rate`; None when the total or a rate is unknown."""
    if total is None or not rate or done >= total:
        return None if total is None or not rate else 0.0
    return (total - done) / rate


def line(phase: str | None, meter: Meter | None, rate: float | None, now: float) -> str:
    """The progress line for this moment.

    >>> line("validate", None, None, 0.0)
    'validate'
    """
    head = phase or "drill"
    if meter is None:
        return head
    if meter.stage is not None:
        return f"{head}  {meter.stage}  {human(now - meter.stage_since)}"
    done = meter.done
    if meter.total is not None and done >= meter.total:
        return (
            f"{head}  {meter.label}  all {format_bytes(meter.total)} read  "
            f"{human(now - meter.started)}"
        )
    if meter.total is None:
        return f"{head}  {meter.label}  {format_bytes(done)}  {format_rate(rate)}"
    share = min(100, int(done * 100 / meter.total))
    return (
        f"{head}  {meter.label}  {format_bytes(done)} / {format_bytes(meter.total)}  "
        f"{share}%  {format_rate(rate)}  {format_eta(eta(done, meter.total, rate))}"
    )


class Display(threading.Thread):
    """Rewrites one line of the terminal `fd` with the progress, `RATE_HZ` times a second.

    `phase` tells the current phase and the seconds since it began, or None. `return_to`, when
    the terminal's current line holds someone else's text (pytest's test name), is that
    text's width: the display then draws on the line below and, on `stop()`, clears it and
    puts the cursor back at the end of that text, so that the next write lands where it would
    have without the display.

    >>> display = Display(fd, phase=lambda: ("restore", 1.0))  # doctest: +SKIP
    >>> display.start(); ...; display.stop()                      # doctest: +SKIP
    """

    def __init__(
        self,
        fd: int,
        phase: Callable[[], tuple[str, float] | None],
        *,
        return_to: int = 0,
        interval: float = 1 / RATE_HZ,
    ) -> None:
        super().__init__(daemon=True, name="progress")
        self.fd, self.phase, self.return_to, self.interval = fd, phase, return_to, interval
        self.drawn = 0
        """How many times the line was written."""
        self.cpu_s = 0.0
        """CPU seconds the display's thread used (known once it stopped)."""
        self._halt = threading.Event()
        self._lock = threading.Lock()  # a line is drawn, or cleared for a message, at a time
        self._shown = ""
        self._rates: dict[int, Rate] = {}

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self._draw(self.render(time.monotonic()))
        except Exception:  # a terminal gone, or a line that cannot be drawn:
            pass  # the restore goes on without its progress line, and so does its verdict
        finally:
            self.cpu_s = time.thread_time()

    def render(self, now: float) -> str:
        """The text of the line at `now`."""
        meter = current()
        rate = None
        if meter is not None:
            if id(meter) not in self._rates:
                # From the meter's opening: the first line drawn already has a rate.
                self._rates[id(meter)] = Rate()
                self._rates[id(meter)].sample(meter.started, 0)
            rate = self._rates[id(meter)].sample(now, meter.done)
        at = self.phase()
        if at is None:
            return line(None, meter, rate, now) if meter else ""
        name, elapsed = at
        if meter is None:
            return f"{name}  {human(elapsed)}"
        return line(name, meter, rate, now)

    def _draw(self, text: str) -> None:
        text = text[: self._width() - 1]
        with self._lock:
            if text == self._shown:
                return
            prefix = "\n" if not self.drawn and self.return_to else ""
            os.write(self.fd, f"{prefix}\r{text}{_CLEAR_TO_END}".encode())
            self._shown = text
            self.drawn += 1

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Clear the line while the block prints a message of its own on the same terminal;
        the next update draws it again below the message."""
        with self._lock:
            if self._shown:
                with contextlib.suppress(OSError):
                    os.write(self.fd, f"\r{_CLEAR_TO_END}".encode())
                self._shown = ""
            yield

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns or 80  # 0: a terminal never sized
        except OSError:
            return 80

    def stop(self) -> None:
        """Stop drawing; clear the line and put the cursor back where the display found it."""
        self._halt.set()
        if self.is_alive():
            self.join()
        if not self.drawn:
            return
        back = ""
        if self.return_to:
            # A text wider than the terminal wrapped: its end is on the row above, at this column.
            column = self.return_to % self._width()
            back = "\x1b[A" + (f"\x1b[{column}C" if column else "")
        with contextlib.suppress(OSError):
            os.write(self.fd, f"\r{_CLEAR_TO_END}{back}".encode())
