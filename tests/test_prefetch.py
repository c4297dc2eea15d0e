"""Many small uploads fetched from the embedded S3 at once: several GETs in flight, never more
than the workers, never more bytes waiting than the budget, handed on in the order asked, each
hashed; a large object is left for the consumer to stream."""

from __future__ import annotations

import hashlib
import threading
import time

from drills.restore.prefetch import Prefetch, Wanted

SIZE = 1000


class _Counting:
    """Opens objects of a real storage, counting the GETs in flight and those started."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.started = 0

    def __call__(self, wanted: Wanted):
        with self.lock:
            self.in_flight += 1
            self.started += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.01)  # a round trip as from a remote store, so overlap shows
            return self.storage.open(wanted.key)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_small_objects_in_parallel_bounded_and_in_order(s3_bucket):
    data = {f"files/x/{i:04d}.png": bytes([i % 256]) * SIZE for i in range(120)}
    for key, body in data.items():
        s3_bucket.put_bytes(key, body)
    big = "files/x/video.mp4"
    s3_bucket.put_bytes(big, b"v" * 3000)
    wanted = [Wanted(k, len(v), k) for k, v in data.items()] + [Wanted(big, 3000, big)]
    opener = _Counting(s3_bucket)
    budget = 10 * SIZE

    got, ahead = [], []
    for item in Prefetch(opener, wanted, workers=8, budget=budget, small=2000):
        with opener.lock:
            ahead.append(opener.started - len(got) - 1)
        got.append(item)

    assert [item.wanted.key for item in got] == [w.key for w in wanted]
    for item in got[:-1]:
        assert item.data == data[item.wanted.key]
        assert item.sha256 == hashlib.sha256(data[item.wanted.key]).hexdigest()
    assert got[-1].data is None  # large: streamed by the consumer, not fetched ahead
    assert 1 < opener.most <= 8, opener.most
    assert max(ahead) <= budget // SIZE, max(ahead)
