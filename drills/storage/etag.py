"""An object's bytes against its S3 ETag, checked while they stream by.

A single-part upload's ETag is the MD5 of its bytes. A multipart upload's is the MD5 of its
parts' MD5s, then ``-<parts>``: it can be checked only with the part size the uploader used.
That size is inferred: the whole MiB sizes that cut the object into exactly that many parts
(the AWS CLI and boto3 default to 8 MiB, tried first). Where none does, or none tried gives
the ETag (another part size and changed bytes cannot be told apart), or the ETag has another
shape (an SSE-KMS or SSE-C object's is no MD5), the object is unverifiable and said so, never
counted as verified. A single-part ETag that differs is a mismatch: the bytes are not the
object's.

    check = EtagCheck("9b2cf535f27731c974343645a3985328-2", size=9 << 20)
    check.update(data)
    check.result()   # Verdict(ok=True, words='ETag verified (2 parts of 8 MiB)')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_PART = 8 * MIB
MAX_CANDIDATES = 4
"""Part sizes tried at once for one multipart ETag (each costs an MD5 of the stream)."""

_SINGLE = re.compile(r"^[0-9a-f]{32}$")
_MULTI = re.compile(r"^(?P<md5>[0-9a-f]{32})-(?P<parts>[1-9][0-9]*)$")


@dataclass(frozen=True)
class Verdict:
    """What the ETag says of the bytes: ok True (equal), False (differ) or None (cannot tell)."""

    ok: bool | None
    words: str


def part_sizes(size: int, parts: int) -> list[int]:
    """The whole MiB part sizes that cut `size` bytes into exactly `parts` parts, 8 MiB first."""
    if parts == 1:
        return [max(size, 1)]
    low = -(-size // parts)  # a part at least this big, else one more part is needed
    high = -(-size // (parts - 1)) - 1  # and smaller than this, else one part fewer
    first = max(5, -(-low // MIB))  # S3's smallest part is 5 MiB
    found = [m * MIB for m in range(first, high // MIB + 1)]
    found.sort(key=lambda p: (p != DEFAULT_PART, p))
    return found[:MAX_CANDIDATES]


class EtagCheck:
    """Feed an object's bytes in order; `result` says whether they are its ETag's."""

    def __init__(self, etag: str, size: int) -> None:
        self.etag = etag.strip('"').lower()
        self.size = size
        self.seen = 0
        self._whole: hashlib._Hash | None = None
        self._splits: list[PartDigests] = []
        self._why: str | None = None
        multi = _MULTI.match(self.etag)
        if _SINGLE.match(self.etag):
            self._whole = hashlib.md5(usedforsecurity=False)
        elif multi is None:
            self._why = f"ETag {etag!r} is no MD5 (an encrypted object's?)"
        else:
            parts = int(multi["parts"])
            self._splits = [PartDigests(p) for p in part_sizes(size, parts)]
            if not self._splits:
                self._why = (
                    f"a multipart upload of {parts} parts whose part size cannot be inferred "
                    "(not a whole MiB)"
                )

    def update(self, data: bytes) -> None:
        """The next bytes of the object."""
        self.seen += len(data)
        if self._whole is not None:
            self._whole.update(data)
        for split in self._splits:
            split.update(data)

    def result(self) -> Verdict:
        """Equal, different, or unverifiable, in words."""
        if self.seen != self.size:
            return Verdict(False, f"{self.seen} bytes read, the listing says {self.size}")
        if self._why is not None:
            return Verdict(None, f"unverifiable: {self._why}")
        if self._whole is not None:
            got = self._whole.hexdigest()
            if got == self.etag:
                return Verdict(True, "ETag verified (MD5)")
            return Verdict(False, f"MD5 {got} differs from the ETag {self.etag}")
        for split in self._splits:
            if split.etag() == self.etag:
                return Verdict(True, f"ETag verified ({split.count} parts of {_mib(split.part)})")
        tried = ", ".join(_mib(s.part) for s in self._splits)
        return Verdict(
            None,
            f"unverifiable: no part size tried ({tried}) gives the multipart ETag "
            f"{self.etag}: uploaded with another part size, or bytes that differ",
        )


class PartDigests:
    """The MD5 of each `part` bytes of a stream, and the multipart ETag they make."""

    def __init__(self, part: int) -> None:
        self.part = part
        self.digests: list[bytes] = []
        self.current = hashlib.md5(usedforsecurity=False)
        self.filled = 0

    @property
    def count(self) -> int:
        """Parts so far, the one being filled included."""
        return len(self.digests) + (1 if self.filled else 0)

    def update(self, data: bytes | memoryview) -> None:
        """The next bytes of the stream."""
        view = memoryview(data)
        while view:
            take = min(len(view), self.part - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part:
                self.digests.append(self.current.digest())
                self.current = hashlib.md5(usedforsecurity=False)
                self.filled = 0

    def etag(self) -> str:
        """The multipart ETag of the parts so far: MD5 of their MD5s, then -<parts>."""
        digests = self.digests + ([self.current.digest()] if self.filled else [])
        joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(digests)}"


def _mib(size: int) -> str:
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size} bytes"
