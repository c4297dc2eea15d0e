"""The history as a hash chain: each run's record holds the hash of the record before it.

A record is one line of `<report-dir>/history.jsonl`: what `evidence.history_entry()` says
of the run, and a `chain` object:

- `seq`: the record's place in the history (0 for the first line);
- `prev`: the sha256 of the previous line's exact bytes (None for the first line), and
  `prev_run`: that line's run id (so a removed record can be named by its run);
- `drill_json_sha256`: the sha256 of the run's signed drill.json;
- `signer` and `signature`: the run's public key and an Ed25519 signature of the record
  (its canonical JSON without the signature), when the run was signed.

Removing a record leaves a hole in `seq` that its successor names; altering one breaks its
signature and its successor's `prev`; reordering puts `seq` out of order. Appends take an
exclusive lock on the history file, so concurrent runs cannot fork the chain. A history
written before records were chained keeps its lines: the first chained record links to the
last of them, and they are reported as unchained.

    >>> check = verify_history(Path("reports"), public_key=Path("signer.key.pub"))  # doctest: +SKIP
    >>> check.problems  # doctest: +SKIP
    []
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drills.report import evidence

CHAIN = "chain"


# --- writing ------------------------------------------------------------------------------


def line_hash(raw: bytes) -> str:
    """The sha256 of one history line's exact bytes (without its newline)."""
    return hashlib.sha256(raw.rstrip(b"\n")).hexdigest()


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's signature covers: its JSON, keys sorted, without the signature."""
    unsigned = {**record, CHAIN: {k: v for k, v in record[CHAIN].items() if k != "signature"}}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def link(
    entry: dict[str, Any],
    previous: bytes | None,
    seq: int,
    drill_json_sha256: str | None,
    key: Ed25519PrivateKey | None,
) -> bytes:
    """The line of a new record after the line `previous` (None: the first), signed with `key`."""
    prev_run = None
    if previous is not None:
        try:
            prev_run = json.loads(previous).get("run")
        except (ValueError, AttributeError):
            prev_run = None
    signer = None
    if key is not None:
        public = key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        signer = {"fingerprint": evidence.fingerprint(public), "public_key": b64(raw)}
    record = {
        **entry,
        CHAIN: {
            "seq": seq,
            "prev": line_hash(previous) if previous is not None else None,
            "prev_run": prev_run,
            "drill_json_sha256": drill_json_sha256,
            "signer": signer,
        },
    }
    if key is not None:
        record[CHAIN]["signature"] = b64(key.sign(canonical(record)))
    return json.dumps(record, separators=(",", ":")).encode()


def append(
    report_dir: Path,
    entry: dict[str, Any],
    drill_json_sha256: str | None,
    key: Ed25519PrivateKey | None,
) -> bool:
    """Append the run's chained record to the history, once; False when it was there already.

    The history file is locked (flock) from reading its last line to writing the new one:
    two runs finishing together get seq n and n+1, never two records claiming one place.
    """
    path = report_dir / evidence.HISTORY
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(descriptor, "r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            data = handle.read()
            lines = split_lines(data)
            if any(_run_of(line) == entry.get("run") for line in lines):
                return False
            line = link(entry, lines[-1] if lines else None, len(lines), drill_json_sha256, key)
            # A torn last line (a crash mid-write) keeps its own line; the chain names it.
            torn = b"\n" if data and not data.endswith(b"\n") else b""
            handle.write(torn + line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def split_lines(data: bytes) -> list[bytes]:
    """The non-empty lines of a history file."""
    return [line for line in data.split(b"\n") if line.strip()]


def _run_of(line: bytes) -> Any:
    try:
        return json.loads(line).get("run")
    except (ValueError, AttributeError):
        return None


def b64(data: bytes) -> str:
    """Base64 text of bytes."""
    return base64.b64encode(data).decode()


# --- checking -----------------------------------------------------------------------------


@dataclass
class Record:
    """One line of the history, as read."""

    line: int
    raw: bytes
    data: dict[str, Any] | None

    @property
    def chain(self) -> dict[str, Any]:
        """The record's chain object ({} when unchained)."""
        value = (self.data or {}).get(CHAIN)
        return value if isinstance(value, dict) else {}

    @property
    def seq(self) -> int:
        """Its place in the history."""
        value = self.chain.get("seq")
        return value if isinstance(value, int) else -1

    @property
    def run(self) -> str:
        """The run's id."""
        return str((self.data or {}).get("run"))

    @property
    def hash(self) -> str:
        """The sha256 of its line."""
        return line_hash(self.raw)

    def name(self) -> str:
        """How a message names it: 'record 4 (run 2026..., fail)'."""
        verdict = (self.data or {}).get("verdict") or "?"
        return f"record {self.seq} (run {self.run}, {verdict}, line {self.line})"


@dataclass
class ChainCheck:
    """What checking a history found: problems (each a break) and notes (not breaks)."""

    records: list[Record] = field(default_factory=list)
    unchained: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)

    @property
    def head(self) -> str | None:
        """The hash of the last record (note it: a later check can prove nothing was cut)."""
        return self.records[-1].hash if self.records else None

    @property
    def whole(self) -> bool:
        """No break found and something was chained to check."""
        return not self.problems


def parse(lines: Sequence[bytes], first_line: int = 1) -> list[Record]:
    """The records of history lines; a line that is not a JSON object has data None."""
    records = []
    for number, raw in enumerate(lines, start=first_line):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        records.append(Record(number, raw, data if isinstance(data, dict) else None))
    return records


def verify_lines(
    lines: Sequence[bytes],
    public_key: Ed25519PublicKey | None = None,
    *,
    excerpt: bool = False,
    allow_unsigned: bool = False,
) -> ChainCheck:
    """Check a history's lines: signatures, order, holes and links.

    `excerpt`: the lines are a piece of a history (a bundle's): the first record's `prev`
    points outside it and is not checked, and its `seq` need not be its line's place.
    """
    check = ChainCheck()
    for record in parse(lines):
        if record.data is None:
            check.problems.append(f"line {record.line}: not a JSON record (damaged or inserted)")
        elif not record.chain:
            if check.records:
                check.problems.append(
                    f"line {record.line} (run {record.run}): not chained, after the chain "
                    "began: a record inserted by hand"
                )
            else:
                check.unchained.append(record)
        else:
            check.records.append(record)
    if not check.records:
        if check.unchained:
            check.problems.append(
                f"no chained record: the {len(check.unchained)} record(s) were written before "
                "history records were chained; nothing proves none was removed or changed"
            )
        elif not check.problems:
            check.problems.append("the history is empty")
        return check
    if check.unchained:
        check.notes.append(
            f"{len(check.unchained)} record(s) before the chain began (written by an older "
            "version): not chained, so a change to them is not detected, except to the last"
        )
    _check_signatures(check, public_key, allow_unsigned)
    _check_order(check)
    _check_links(check, excerpt)
    return check


def _check_signatures(
    check: ChainCheck, public_key: Ed25519PublicKey | None, allow_unsigned: bool
) -> None:
    unsigned = []
    for record in check.records:
        chain = record.chain
        signer, signature = chain.get("signer") or {}, chain.get("signature")
        if not signature:
            unsigned.append(record)
            continue
        try:
            embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(signer["public_key"]))
        except (KeyError, TypeError, ValueError):
            check.problems.append(f"{record.name()}: signed, but names no usable public key")
            continue
        check.fingerprints.add(evidence.fingerprint(embedded))
        if public_key is not None and evidence.fingerprint(embedded) != evidence.fingerprint(
            public_key
        ):
            check.problems.append(
                f"{record.name()}: signed by key {evidence.fingerprint(embedded)}, not by the "
                f"given key {evidence.fingerprint(public_key)}"
            )
            continue
        try:
            embedded.verify(base64.b64decode(signature, validate=True), canonical(record.data))
        except (ValueError, InvalidSignature):
            check.problems.append(
                f"{record.name()}: altered: its signature does not match its content"
            )
    if unsigned:
        first = unsigned[0].name()
        text = f"{len(unsigned)} record(s) not signed (the first: {first})"
        if allow_unsigned:
            check.notes.append(text + "; their hashes prove nothing against whoever can rewrite")
        else:
            check.problems.append(
                text + ": an unsigned chain can be rewritten whole (configure a signing key)"
            )


def _check_order(check: ChainCheck) -> None:
    records = check.records
    for before, after in itertools.pairwise(records):
        if after.seq == before.seq:
            check.problems.append(
                f"two records hold seq {after.seq} (runs {before.run} and {after.run}, lines "
                f"{before.line} and {after.line}): the chain forked, or a record was copied in"
            )
        elif after.seq < before.seq:
            check.problems.append(f"reordered: {after.name()} comes after {before.name()}")
    seqs = {r.seq for r in records}
    by_seq = {r.seq: r for r in records}
    missing = sorted(set(range(min(seqs), max(seqs) + 1)) - seqs)
    for start, end in _ranges(missing):
        after = by_seq[end + 1]
        what = f"record {start}" if start == end else f"records {start} to {end}"
        last = after.chain.get("prev_run")
        verb = "is" if start == end else "are"
        check.problems.append(
            f"removed: {what} (the run before {after.run} was {last}) {verb} missing from "
            "the history"
        )


def _check_links(check: ChainCheck, excerpt: bool) -> None:
    by_seq = {r.seq: r for r in check.records}
    first = min(by_seq)
    for record in check.records:
        seq, prev = record.seq, record.chain.get("prev")
        before = by_seq.get(seq - 1)
        if before is None and seq == first and not excerpt:
            _check_start(check, record)
            continue
        if before is None:
            continue  # a hole, named already; or the first record of an excerpt
        if before.hash != prev:
            check.problems.append(
                f"altered: {before.name()}: {record.name()} holds another hash of it"
            )


def _check_start(check: ChainCheck, record: Record) -> None:
    """The first chained record links to the last unchained one, at its place."""
    prefix = check.unchained
    if record.seq != len(prefix):
        gone = record.seq - len(prefix)
        where = "before the chain" if prefix else "at the start of the history"
        if gone > 0:
            check.problems.append(
                f"removed: {gone} record(s) {where} (the last was run "
                f"{record.chain.get('prev_run')}); {record.name()} is number {record.seq}"
            )
        else:
            check.problems.append(
                f"{-gone} line(s) inserted before {record.name()}, which was written as "
                f"number {record.seq}"
            )
        return
    expected = prefix[-1].hash if prefix else None
    if record.chain.get("prev") != expected:
        check.problems.append(
            f"altered: line {prefix[-1].line} (run {prefix[-1].run}, before the chain began): "
            f"{record.name()} holds another hash of it"
        )


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for number in numbers:
        if ranges and ranges[-1][1] == number - 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


# --- a report directory -------------------------------------------------------------------


def verify_history(
    report_dir: Path,
    public_key: Ed25519PublicKey | Path | None = None,
    *,
    allow_unsigned: bool = False,
    head: str | None = None,
) -> ChainCheck:
    """Check `<report_dir>/history.jsonl` and the run directories beside it.

    Beyond the chain: every chained run's directory must exist and hold the drill.json its
    record hashed, and every sealed run directory must have a record. `head`, a record hash
    noted earlier, must still be in the chain (that is what shows records cut from the end).
    """
    if isinstance(public_key, Path):
        public_key = evidence.load_public_key(public_key)
    path = report_dir / evidence.HISTORY
    if not path.exists():
        check = ChainCheck()
        check.problems.append(f"{path}: missing")
        return check
    check = verify_lines(split_lines(path.read_bytes()), public_key, allow_unsigned=allow_unsigned)
    check.problems += run_problems(report_dir, check)
    if head and head not in {r.hash for r in check.records}:
        check.problems.append(
            f"the record with hash {head} (a head noted earlier) is no longer in the chain: "
            "records were cut from its end, or it was rewritten"
        )
    return check


def run_problems(report_dir: Path, check: ChainCheck) -> list[str]:
    """Chained runs whose directory is missing or changed; sealed runs with no record."""
    problems = []
    for record in check.records:
        run_dir = report_dir / record.run
        expected = record.chain.get("drill_json_sha256")
        document = run_dir / evidence.DOCUMENT
        if not run_dir.is_dir():
            problems.append(
                f"run {record.run}: its directory is missing ({record.name()} stays, and says "
                f"it ran from {record.data.get('started_at')} to {record.data.get('finished_at')})"
            )
        elif not document.is_file():
            if expected:  # a run that wrote no drill.json has none to lose
                problems.append(
                    f"run {record.run}: {evidence.DOCUMENT} is missing ({record.name()})"
                )
        elif expected and evidence.sha256_file(document) != expected:
            problems.append(
                f"run {record.run}: {evidence.DOCUMENT} no longer matches its record "
                f"({record.name()} holds sha256 {expected[:16]}...): changed after the run"
            )
    known = {r.run for r in check.records} | {r.run for r in check.unchained}
    for run_dir in sorted(report_dir.iterdir()):
        document = run_dir / evidence.DOCUMENT
        if run_dir.is_symlink() or not document.is_file() or run_dir.name in known:
            continue
        if _sealed(document):
            problems.append(
                f"run {run_dir.name}: its directory has no record in the history (the record "
                "was removed, or the directory was added)"
            )
        else:
            check.notes.append(f"run {run_dir.name}: never finalized (an incomplete run)")
    return problems


def _sealed(document: Path) -> bool:
    try:
        return "artefacts" in json.loads(document.read_text())
    except (OSError, ValueError):
        return True  # an unreadable drill.json is no excuse to leave it out
