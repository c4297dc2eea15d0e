"""WAL file names, segment arithmetic, segment headers and timeline history files.

Pure functions over what PostgreSQL writes into its archive: segments
(``000000010000000A000000FF``: timeline, then the segment number in two halves), timeline
history files (``00000002.history``) and backup history files
(``000000010000000000000003.00000028.backup``). The split of a segment number into the two
halves of a name depends on the cluster's segment size, which every segment states in its
first page header; so does the system identifier that tells two clusters apart.

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


def check_segment(name: str, header: SegmentHeader, size: int) -> None:
    """Raise ValueError naming the cause when a segment's bytes do not fit its name.

    Catches a copy that is still being written or was cut (the size is not the segment size
    its own header states), a file renamed to another segment, and bytes that are not WAL.
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
    if header.pageaddr != segno * seg_size or header.timeline not in (tli, 0):
        raise ValueError(
            f"{name}: its first page is {format_lsn(header.pageaddr)} on timeline "
            f"{header.timeline}, not what the name says (a renamed or foreign file?)"
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


def on_path(path: list[TimelineStretch], tli: int, lsn: int) -> bool:
    """Whether position `lsn` of timeline `tli` lies on `path` (it did not branch off)."""
    return any(s.tli == tli and s.begin <= lsn and (s.end is None or lsn <= s.end) for s in path)
