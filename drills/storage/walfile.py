"""WAL file names, segment arithmetic, segment headers and timeline history files.

Pure functions over what PostgreSQL writes into its archive: segments
(``000000010000000A000000FF``: timeline, then the segment number in two halves), timeline
history files (``00000002.history``) and backup history files
(``000000010000000000000003.00000028.backup``). The split of a segment number into the two
halves of a name depends on the cluster's segment size, which every segment states in its
first page header; so does the system identifier that tells two clusters apart.

Archives hold these files as people's `archive_command` or `pg_receivewal` left them:
compressed (``.gz``, ``.zst``, ``.lz4``) or partial (``.partial``: the last, unfinished
segment of a timeline a promoted standby archives, or the segment `pg_receivewal` is still
writing). `archived_name` reads such a name as the WAL file it holds.

    >>> segment_name(1, 3, 16 * 1024 * 1024)
    '000000010000000000000003'
    >>> parse_segment('00000001000000010000000A', 16 * 1024 * 1024)
    (1, 266)
    >>> format_lsn(parse_lsn('0/3000028'))
    '0/3000028'
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

SEGMENT = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})$")
HISTORY = re.compile(r"^(?P<tli>[0-9A-F]{8})\.history$")
BACKUP = re.compile(r"^(?P<segment>[0-9A-F]{24})\.(?P<offset>[0-9A-F]{8})\.backup$")
ARCHIVED = re.compile(
    r"^(?P<wal>[0-9A-F]{24}(?:\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)"
    r"(?P<partial>\.partial)?(?P<suffix>\.gz|\.zst|\.lz4)?(?P<late>\.partial)?$"
)
# A name PostgreSQL could have archived, whatever follows it: such a file is WAL to read or
# an error, never something to ignore.
WAL_LIKE = re.compile(r"^(?:[0-9A-F]{24}|[0-9A-F]{8}\.history)(?:\.|$)")
COMPRESSIONS = {"": "none", ".gz": "gzip", ".zst": "zstd", ".lz4": "lz4"}
MIN_SEGMENT = 1 << 20
MAX_SEGMENT = 1 << 30
# XLogLongPageHeaderData: magic, info, tli, pageaddr, rem_len (padded to 24), then sysid,
# seg_size, blcksz. Little-endian: the byte order of every platform PostgreSQL runs on here.
_SHORT = struct.Struct("<HHIQI")
_LONG = struct.Struct("<QII")
LONG_HEADER_BYTES = 40


def kind_of(name: str) -> str | None:
    """'segment', 'history', 'backup', or None for anything else (.partial, temp files)."""
    if SEGMENT.match(name):
        return "segment"
    if HISTORY.match(name):
        return "history"
    if BACKUP.match(name):
        return "backup"
    return None


@dataclass(frozen=True)
class ArchivedName:
    """A file of a WAL archive: the WAL file it holds, its compression, whether partial."""

    name: str
    """The file's own name, e.g. ``000000010000000000000005.partial.gz``."""
    wal: str
    """The name PostgreSQL gave the WAL file (``%f``), e.g. ``000000010000000000000005``."""
    kind: str
    """'segment', 'history' or 'backup'."""
    compression: str
    """'none', 'gzip', 'zstd' or 'lz4'."""
    partial: bool = False

    @property
    def wal_name(self) -> str:
        """The WAL file's name with ``.partial`` when it is one (pg_stat_archiver's name)."""
        return f"{self.wal}.partial" if self.partial else self.wal


def archived_name(name: str) -> ArchivedName | None:
    """How an archived file's name reads, None if it is not one this archive can hold.

    >>> archived_name("000000010000000000000005.partial.gz").compression
    'gzip'
    >>> archived_name("000000010000000000000005.gz.partial").partial
    True
    """
    match = ARCHIVED.match(name)
    if match is None or (match["partial"] and match["late"]):
        return None
    wal, partial = match["wal"], bool(match["partial"] or match["late"])
    kind = kind_of(wal)
    if kind is None or (partial and kind != "segment"):
        return None
    return ArchivedName(name, wal, kind, COMPRESSIONS[match["suffix"] or ""], partial)


def looks_like_wal(name: str) -> bool:
    """Whether a name starts as PostgreSQL names WAL files (a segment or history name)."""
    return WAL_LIKE.match(name) is not None


def order_key(name: str) -> tuple[int, str, int, str]:
    """Archive order: history files first, then segments by position, each segment's backup
    history file after it. Needs no segment size: the hex halves sort as the number does."""
    if match := HISTORY.match(name):
        return (0, "", int(match["tli"], 16), name)
    if match := BACKUP.match(name):
        return (1, match["segment"][8:], 1, name)
    return (1, name[8:], 0, name)


def segs_per_id(seg_size: int) -> int:
    """Segments in one 4 GB 'log id', the unit of a name's middle eight digits."""
    return 0x1_0000_0000 // seg_size


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    """The file name of segment `segno` on timeline `tli`."""
    per = segs_per_id(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, seg_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a segment name; ValueError if it is not one."""
    match = SEGMENT.match(name)
    if match is None:
        raise ValueError(f"{name}: not a WAL segment name")
    per = segs_per_id(seg_size)
    seg = int(match["seg"], 16)
    if seg >= per:
        raise ValueError(f"{name}: not a segment name for {seg_size // MIN_SEGMENT} MB segments")
    return int(match["tli"], 16), int(match["log"], 16) * per + seg


def history_tli(name: str) -> int | None:
    """The timeline of a history file name, None if it is not one."""
    match = HISTORY.match(name)
    return int(match["tli"], 16) if match else None


def parse_lsn(text: str) -> int:
    """A log sequence number written as PostgreSQL does ('0/3000028') as an integer."""
    high, sep, low = text.strip().partition("/")
    if not sep:
        raise ValueError(f"{text!r}: not an LSN (expected X/X)")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An integer LSN as PostgreSQL writes it."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_segno(lsn: int, seg_size: int) -> int:
    """The number of the segment holding `lsn`."""
    return lsn // seg_size


@dataclass(frozen=True)
class SegmentHeader:
    """The long page header that opens every WAL segment."""

    magic: int
    timeline: int
    pageaddr: int
    system_identifier: int
    seg_size: int
    block_size: int


def read_header(data: bytes) -> SegmentHeader:
    """The header at the start of a segment's bytes; ValueError if there is none."""
    if len(data) < LONG_HEADER_BYTES:
        raise ValueError(f"{len(data)} bytes: shorter than a WAL page header")
    magic, _info, tli, pageaddr, _rem = _SHORT.unpack_from(data, 0)
    sysid, seg_size, block_size = _LONG.unpack_from(data, 24)
    return SegmentHeader(magic, tli, pageaddr, sysid, seg_size, block_size)


def check_segment(
    name: str,
    header: SegmentHeader,
    size: int,
    path: list[TimelineStretch] | None = None,
) -> None:
    """Raise ValueError naming the cause when a segment's bytes do not fit its name.

    Catches a copy that is still being written or was cut (the size is not the segment size
    its own header states), a file renamed to another segment, and bytes that are not WAL.
    The first segment of a new timeline starts as a copy of its parent's up to the switch,
    so its first page may be on the parent timeline: `path` (the timeline path its history
    file gives, `timeline_path`) says which timeline the segment's first page belongs to.
    """
    seg_size = header.seg_size
    if not (MIN_SEGMENT <= seg_size <= MAX_SEGMENT) or seg_size & (seg_size - 1):
        raise ValueError(f"{name}: not a WAL segment (its header states segment size {seg_size})")
    if size != seg_size:
        raise ValueError(
            f"{name}: {size} bytes, but its header says segments are {seg_size} bytes "
            "(a partial copy? archive_command must copy to a temporary name, then rename)"
        )
    tli, segno = parse_segment(name, seg_size)
    start = segno * seg_size
    if header.pageaddr != start:
        raise ValueError(
            f"{name}: its first page is {format_lsn(header.pageaddr)} on timeline "
            f"{header.timeline}, not what the name says (a renamed or foreign file?)"
        )
    if header.timeline in (tli, 0):
        return
    begins = path[-1].begin if path and path[-1].tli == tli else None
    if begins is None or len(path) < 2:
        raise ValueError(
            f"{name}: its first page is on timeline {header.timeline}, not {tli} as its name "
            f"says, and no history file of timeline {tli} shows where it began (ship "
            f"{tli:08X}.history first; a renamed or foreign file?)"
        )
    if lsn_segno(begins, seg_size) != segno or timeline_at(path, start) != header.timeline:
        raise ValueError(
            f"{name}: its first page is on timeline {header.timeline}, but by "
            f"{tli:08X}.history timeline {tli} began at {format_lsn(begins)}, not inside this "
            "segment after a page of that timeline (a renamed or foreign file?)"
        )


@dataclass(frozen=True)
class Switch:
    """One line of a timeline history file: `parent` ended at `lsn`, where the child began."""

    parent: int
    lsn: int
    reason: str = ""


def parse_history(text: str, name: str = "history") -> list[Switch]:
    """The lines of a timeline history file, oldest first; ValueError naming a bad line."""
    switches = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        try:
            switches.append(
                Switch(int(parts[0]), parse_lsn(parts[1]), parts[2] if len(parts) > 2 else "")
            )
        except (ValueError, IndexError):
            raise ValueError(f"{name}: line {number} is not 'parent-timeline LSN reason'") from None
    return switches


@dataclass(frozen=True)
class TimelineStretch:
    """Part of a timeline path: WAL on `tli` from `begin` (LSN) to `end` (None: open end)."""

    tli: int
    begin: int
    end: int | None


def timeline_path(target: int, switches: list[Switch]) -> list[TimelineStretch]:
    """The stretches of WAL that lead to timeline `target`, oldest first.

    `switches` is the target's history file (empty for timeline 1 or a target without one).
    """
    stretches = []
    begin = 0
    for switch in switches:
        stretches.append(TimelineStretch(switch.parent, begin, switch.lsn))
        begin = switch.lsn
    stretches.append(TimelineStretch(target, begin, None))
    return stretches


def timeline_of(path: list[TimelineStretch], segno: int, seg_size: int) -> int:
    """The timeline whose file of segment `segno` recovery reads along `path`.

    The segment where a timeline begins exists on both; recovery reads the newer one.
    """
    chosen = path[0].tli
    for stretch in path:
        if lsn_segno(stretch.begin, seg_size) <= segno:
            chosen = stretch.tli
    return chosen


def timeline_at(path: list[TimelineStretch], lsn: int) -> int:
    """The timeline that wrote position `lsn` along `path`."""
    chosen = path[0].tli
    for stretch in path:
        if stretch.begin <= lsn:
            chosen = stretch.tli
    return chosen


def on_path(path: list[TimelineStretch], tli: int, lsn: int) -> bool:
    """Whether position `lsn` of timeline `tli` lies on `path` (it did not branch off)."""
    return any(s.tli == tli and s.begin <= lsn and (s.end is None or lsn <= s.end) for s in path)
