"""What a file's first bytes say: the type its magic bytes announce, and their byte entropy.

Encrypted bytes look like noise: no type's header, close to 8 bits of entropy per byte. So do
compressed ones (JPEG, PNG, ZIP...), which is why a file of a compressed type is judged by its
header only, never by entropy alone. `sniff` reads a head of at most `SAMPLE` bytes, already in
memory; it computes the entropy only when no header was recognised (a JPEG that still starts
like one needs no more), so a snapshot of typical uploads costs a few prefix tests per file.

    >>> head = sniff(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(600))
    >>> head.kind, head.entropy
    ('png', None)
    >>> promised_kind("avatars/me.JPG")
    'jpeg'
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

SAMPLE = 2048
"""Bytes of a file's head that are sniffed."""
MIN_ENTROPY_SAMPLE = 512
"""Below this many bytes the entropy of a head says too little (random bytes score low)."""
HIGH = 7.5
"""Bits per byte at or above which a head looks like noise (encrypted or compressed). Random
heads of 512 bytes or more score 7.8 to 8.0; text scores 4 to 6, base64 6."""
LOW = 6.5
"""Bits per byte below which a head is plainly not noise (text, markup, raw data)."""

# (kind, offset, bytes): the headers of the types uploads are made of.
_MAGIC: tuple[tuple[str, int, bytes], ...] = (
    ("png", 0, b"\x89PNG\r\n\x1a\n"),
    ("jpeg", 0, b"\xff\xd8\xff"),
    ("gif", 0, b"GIF87a"),
    ("gif", 0, b"GIF89a"),
    ("pdf", 0, b"%PDF-"),
    ("zip", 0, b"PK\x03\x04"),
    ("zip", 0, b"PK\x05\x06"),
    ("gzip", 0, b"\x1f\x8b"),
    ("tiff", 0, b"II*\x00"),
    ("tiff", 0, b"MM\x00*"),
    ("webp", 8, b"WEBP"),
    ("wav", 8, b"WAVE"),
    ("avi", 8, b"AVI "),
    ("isobmff", 4, b"ftyp"),
    ("7z", 0, b"7z\xbc\xaf\x27\x1c"),
    ("rar", 0, b"Rar!\x1a\x07"),
    ("ogg", 0, b"OggS"),
    ("flac", 0, b"fLaC"),
    ("mp3", 0, b"ID3"),
    ("ole2", 0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    ("psd", 0, b"8BPS"),
    ("matroska", 0, b"\x1a\x45\xdf\xa3"),
    ("xz", 0, b"\xfd7zXZ\x00"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"),
    ("bzip2", 0, b"BZh"),
    ("bmp", 0, b"BM"),
    ("ico", 0, b"\x00\x00\x01\x00"),
    ("rtf", 0, b"{\\rtf"),
    ("sqlite", 0, b"SQLite format 3\x00"),
)

# The type a name promises. Office documents and e-books are ZIP containers.
_EXTENSIONS = {
    "png": ("png",),
    "jpeg": ("jpg", "jpeg", "jpe", "jfif"),
    "gif": ("gif",),
    "pdf": ("pdf",),
    "zip": ("zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub", "jar", "apk"),
    "gzip": ("gz", "tgz"),
    "tiff": ("tif", "tiff"),
    "webp": ("webp",),
    "wav": ("wav",),
    "avi": ("avi",),
    "isobmff": ("mp4", "m4v", "m4a", "mov", "heic", "heif", "avif", "3gp"),
    "7z": ("7z",),
    "rar": ("rar",),
    "ogg": ("ogg", "oga", "ogv", "opus"),
    "flac": ("flac",),
    "ole2": ("doc", "xls", "ppt", "msg"),
    "psd": ("psd",),
    "matroska": ("mkv", "webm"),
    "xz": ("xz",),
    "zstd": ("zst",),
    "bzip2": ("bz2",),
    "bmp": ("bmp",),
    "ico": ("ico",),
    "rtf": ("rtf",),
    "sqlite": ("sqlite", "sqlite3"),
}
_PROMISED = {f".{ext}": kind for kind, exts in _EXTENSIONS.items() for ext in exts}
# Types whose bytes are compressed (high entropy by nature) but whose header we do not test.
_COMPRESSED = frozenset({".aac", ".br", ".lz4", ".jxl", ".dng", ".raw"})
_LOG2 = [0.0] + [n * math.log2(n) for n in range(1, SAMPLE + 1)]


@dataclass(frozen=True)
class Head:
    """What a file's first bytes say."""

    kind: str | None
    """The type its magic bytes announce ("png", "jpeg", "zip"...), None when none."""
    entropy: float | None = None
    """Bits per byte of the head, computed only when no type was recognised and the head is
    long enough to tell (`MIN_ENTROPY_SAMPLE`)."""

    @property
    def bare(self) -> bool:
        """No known header, and not plainly quiet bytes (text...): noise, or too short to tell."""
        return self.kind is None and (self.entropy is None or self.entropy >= HIGH)

    @property
    def noise(self) -> bool:
        """No known header and bytes like noise: how encrypted content looks."""
        return self.kind is None and self.entropy is not None and self.entropy >= HIGH


def sniff(head: bytes) -> Head:
    """The type and, for an unrecognised head, the entropy of `head` (the first bytes)."""
    head = head[:SAMPLE]
    for kind, offset, magic in _MAGIC:
        if head.startswith(magic, offset):
            return Head(kind)
    if len(head) >= 2 and head[0] == 0xFF and head[1] >= 0xE0 and head[1] != 0xFF:
        return Head("mp3")  # an MPEG audio frame without an ID3 tag
    return Head(None, entropy(head) if len(head) >= MIN_ENTROPY_SAMPLE else None)


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte, with the Miller-Madow correction for a short sample
    (so that random bytes score near 8 whatever the sample's length)."""
    n = len(data)
    if n == 0:
        return 0.0
    counts = Counter(data)
    total = sum(_LOG2[c] if c <= SAMPLE else c * math.log2(c) for c in counts.values())
    plain = math.log2(n) - total / n
    return min(8.0, plain + (len(counts) - 1) / (2 * n * math.log(2)))


def extension(path: str) -> str:
    """The file's class: its last suffix, lower case (".jpg"), or "" when it has none."""
    return PurePosixPath(path).suffix.lower()


def promised_kind(path: str) -> str | None:
    """The type a file's name promises (".jpg" -> "jpeg"), None for a name we cannot read."""
    return _PROMISED.get(extension(path))


def by_header(path: str, head: Head | None = None) -> bool:
    """Whether a file is judged by its header, never by its entropy: its name or its bytes say
    it is of a known type (most are compressed, high-entropy by nature)."""
    return (
        promised_kind(path) is not None
        or extension(path) in _COMPRESSED
        or (head is not None and head.kind is not None)
    )


def describe(kind: str) -> str:
    """A type as a user names it ("png" -> "PNG", "isobmff" -> "MP4/HEIC")."""
    return {"isobmff": "MP4/HEIC", "ole2": "Office 97", "matroska": "MKV/WebM"}.get(
        kind, kind.upper()
    )
