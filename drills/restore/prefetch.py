"""Many small objects fetched ahead, in parallel, and handed on in order.

A snapshot of uploads is thousands of small objects; fetched one at a time over HTTP, each
waits a round trip. `Prefetch` keeps a bounded number of GETs in flight (`workers`) and a
bounded number of bytes waiting (`budget`), so memory stays flat whatever the snapshot's
size, and yields the objects in the order they were asked for (a tar stream needs them in
order). Each small object is read whole and hashed by its worker; a large one (over `small`)
is not fetched ahead: the consumer streams it when its turn comes.

Example::

    wanted = [Wanted("files/x/a.png", 2000, "a.png")]
    for item in Prefetch(lambda w: storage.open(w.key), wanted, workers=16):
        item.data, item.sha256      # None for a large object: open and stream it
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from drills.config.errors import DrillError, StorageError

SMALL = 1 << 20
"""Objects up to this size are fetched whole, ahead of their turn."""
BUDGET = 64 << 20
"""Bytes fetched ahead and not yet handed on, at most."""
AHEAD = 1024
"""Objects fetched ahead, at most."""


@dataclass(frozen=True)
class Wanted:
    """One object to fetch: its key, its listed size, and what the consumer calls it."""

    key: str
    size: int
    name: str


@dataclass(frozen=True)
class Item:
    """A fetched object; `data` is None for a large one, which the consumer streams."""

    wanted: Wanted
    data: bytes | None = None
    sha256: str | None = None


Opener = Callable[[Wanted], BinaryIO]


class Prefetch:
    """Fetch `wanted` ahead with `workers` threads, bounded by `budget` bytes; iterate in
    order. `opener` gives a reader of one object (default: the storage's)."""

    def __init__(
        self,
        opener: Opener,
        wanted: Sequence[Wanted],
        *,
        workers: int,
        budget: int = BUDGET,
        small: int = SMALL,
    ) -> None:
        self.opener = opener
        self.wanted = wanted
        self.workers = max(1, workers)
        self.budget = budget
        self.small = small

    def __iter__(self) -> Iterator[Item]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fetch")
        queue: deque[tuple[Wanted, Future[Item] | None]] = deque()
        held = 0
        upcoming = iter(self.wanted)
        following = next(upcoming, None)
        try:
            while queue or following is not None:
                while following is not None and len(queue) < AHEAD:
                    large = following.size > self.small
                    if not large and queue and held + following.size > self.budget:
                        break
                    future = None if large else pool.submit(self._fetch, following)
                    held += 0 if large else following.size
                    queue.append((following, future))
                    following = next(upcoming, None)
                wanted, future = queue.popleft()
                if future is None:
                    yield Item(wanted)
                    continue
                item = future.result()
                held -= wanted.size
                yield item
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, wanted: Wanted) -> Item:
        try:
            with self.opener(wanted) as stream:
                data = stream.read()
        except DrillError:
            raise
        except Exception as exc:
            raise StorageError(f"{wanted.key}: reading from storage failed: {exc}") from None
        return Item(wanted, data, hashlib.sha256(data).hexdigest())
