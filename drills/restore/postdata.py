"""A plain dump's post-data section run on several sessions, as pg_restore --jobs runs an
archive's: the index builds and foreign-key checks that dominate a restore, in parallel.

pg_dump writes post-data after all the data: constraints and indexes, then partition index
attachments, triggers, foreign keys, policies, grants, materialized view data. Each entry
starts with its header comment. They are run in four phases, each a barrier, so that every
entry finds what it builds on, as in pg_dump's own order:

1. primary keys, unique and exclusion constraints, indexes, extended statistics: in
   parallel (each builds on one table's data only);
2. the entries before the first foreign key (index attachments, triggers, ...), in order;
3. foreign keys: in parallel (their partitioned referenced keys are attached by now);
4. everything else, in order (policies, grants, comments, materialized view data).

Every session starts with the script's own session settings (its preamble) and the settings
in force where each entry stood (`SET default_tablespace`, ...), runs under
`ON_ERROR_STOP=1` like the single psql, and the parallel entries are spread over the
sessions by the size of the tables they read, largest first.

    >>> run_post_data(pg, "drishti", preamble, text, timeout=600, sessions=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError
from drills.restore.common import (
    Drain,
    RestoreError,
    open_pipe,
    psql_input,
    tool_failure,
    wait_all,
)
from drills.restore.dumpscan import parse_header
from drills.runtime.postgres import PostgresContainer
from drills.storage.catalog import Backup

PARALLEL_FIRST = {"INDEX", "CONSTRAINT", "CHECK CONSTRAINT", "STATISTICS"}
PARALLEL_KEYS = {"FK CONSTRAINT"}
_STATE = re.compile(r"^(?:SET |RESET |SELECT pg_catalog\.set_config\()")
_SETTING = re.compile(r"^(?:SET|RESET) (?:SESSION )?(?P<name>[\w.]+(?: AUTHORIZATION)?)")
_TABLES = re.compile(r"\b(?:ON(?: ONLY)?|TABLE(?: ONLY)?|REFERENCES) (?P<name>[\w.\"]+)")
_SIZES = """
SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'm')
"""


@dataclass
class Entry:
    """One post-data entry: its header's type, its text, the settings in force before it."""

    type: str
    text: str
    settings: list[str] = field(default_factory=list)
    cost: int = 0
    table: str = ""
    """The table it builds on first (its lock), for keeping a table's entries together."""


def split_entries(text: str) -> list[Entry]:
    """The post-data section cut at its entries' header comments; a setting between entries
    (`SET default_tablespace = ...`) applies to every entry after it, as in one session."""
    entries: list[Entry] = []
    settings: dict[str, str] = {}
    current: Entry | None = None
    lead: list[str] = []
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        header = parse_header(stripped) if stripped.startswith("-- ") else None
        if header is not None:
            current = Entry(header.type, "".join(lead) + line, list(settings.values()))
            lead = []
            entries.append(current)
        elif _STATE.match(line) and (current is None or not _open(current.text)):
            match = _SETTING.match(line)
            settings[match["name"] if match else line] = line
        elif current is None:
            lead.append(line)
        else:
            current.text += line
    return entries


def _open(text: str) -> bool:
    """Whether the text ends inside a statement (its last line is not a comment and has no
    closing `;`)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and not lines[-1].startswith("--") and not lines[-1].rstrip().endswith(";")


def plan(entries: list[Entry]) -> list[tuple[bool, list[Entry]]]:
    """The four phases: (parallel, entries)."""
    first_key = next((i for i, e in enumerate(entries) if e.type in PARALLEL_KEYS), len(entries))
    phases = [
        (True, [e for e in entries if e.type in PARALLEL_FIRST]),
        (False, [e for e in entries[:first_key] if e.type not in PARALLEL_FIRST]),
        (True, [e for e in entries if e.type in PARALLEL_KEYS]),
        (
            False,
            [
                e
                for e in entries[first_key:]
                if e.type not in PARALLEL_FIRST and e.type not in PARALLEL_KEYS
            ],
        ),
    ]
    return [(parallel, chosen) for parallel, chosen in phases if chosen]


def spread(entries: list[Entry], sessions: int) -> list[list[Entry]]:
    """Entries over `sessions` lists: the entries of one table together (they would wait for
    each other's locks anyway), the costliest tables first, each to the least loaded list."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.table, []).append(entry)
    lanes: list[list[Entry]] = [[] for _ in range(sessions)]
    loads = [0] * sessions
    for group in sorted(groups.values(), key=lambda g: -sum(e.cost for e in g)):
        lane = loads.index(min(loads))
        lanes[lane] += group
        loads[lane] += sum(e.cost for e in group) + 1
    return [lane for lane in lanes if lane]


def run_post_data(
    pg: PostgresContainer,
    backup: Backup,
    dbname: str,
    preamble: bytes,
    text: str,
    *,
    timeout: float,
    sessions: int,
) -> dict[str, float]:
    """Run the post-data `text` into `dbname`; return the seconds of each phase. The first
    failing statement's error is raised, named, as psql's would be."""
    entries = split_entries(text)
    _weigh(pg, dbname, entries)
    deadline = time.monotonic() + timeout
    seconds: dict[str, float] = {}
    for index, (parallel, chosen) in enumerate(plan(entries), start=1):
        started = time.monotonic()
        lanes = spread(chosen, sessions) if parallel else [chosen]
        _run_lanes(pg, backup, dbname, preamble, lanes, deadline)
        seconds[f"post-data {index}"] = round(time.monotonic() - started, 3)
    return seconds


def _weigh(pg: PostgresContainer, dbname: str, entries: list[Entry]) -> None:
    """Each entry's cost: the bytes of the tables it names (after the data is in)."""
    try:
        with pg.connect(dbname, autocommit=True) as conn:
            sizes = dict(conn.execute(_SIZES).fetchall())
    except Exception:  # the sessions will say what is wrong; costs only order the work
        sizes = {}
    for entry in entries:
        names = [m["name"].replace('"', "") for m in _TABLES.finditer(entry.text)]
        entry.table = names[0] if names else entry.text
        entry.cost = sum(int(sizes.get(name, 0)) for name in set(names))


def _run_lanes(
    pg: PostgresContainer,
    backup: Backup,
    dbname: str,
    preamble: bytes,
    lanes: list[list[Entry]],
    deadline: float,
) -> None:
    sessions = [_Session(pg, dbname, preamble, lane) for lane in lanes]
    try:
        for session in sessions:
            session.start()
        remaining = max(1.0, deadline - time.monotonic())
        procs = [s.psql for s in sessions]
        wait_all(procs, [s.feeder for s in sessions], remaining, f"post-data of {backup.key}")
    except StepTimeout:
        for session in sessions:
            session.kill()
        raise
    finally:
        for session in sessions:
            session.close()
    failed = [s for s in sessions if s.psql.returncode != 0]
    if failed:
        raise tool_failure(backup, "psql", failed[0].errors.text())
    for session in sessions:
        if session.feeder.error is not None:
            raise session.feeder.error


class _Session:
    """One psql reading a named pipe in the target's inbox (or `docker exec`'s stdin)."""

    def __init__(
        self, pg: PostgresContainer, dbname: str, preamble: bytes, entries: list[Entry]
    ) -> None:
        self.pg, self.entries, self.preamble = pg, entries, preamble
        self.argv, self.pipe = psql_input(pg, dbname, "post")
        self.psql: subprocess.Popen | None = None
        self.errors: Drain | None = None
        self.feeder = _Feeder(self)

    def start(self) -> None:
        self.psql = subprocess.Popen(
            self.pg.exec_argv(self.argv, interactive=self.pipe is None),
            stdin=subprocess.DEVNULL if self.pipe else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.errors = Drain(self.psql.stderr)
        self.feeder.start()

    def script(self) -> bytes:
        parts = [self.preamble]
        for entry in self.entries:
            parts += [line.encode() for line in entry.settings]
            parts.append(entry.text.encode())
        return b"".join(parts)

    def kill(self) -> None:
        if self.psql is not None and self.psql.poll() is None:
            self.psql.kill()

    def close(self) -> None:
        if self.pipe is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.pipe[0])


class _Feeder(threading.Thread):
    """Writes a session's script into its psql, once psql has opened its input."""

    def __init__(self, session: _Session) -> None:
        super().__init__(daemon=True, name="post-data feed")
        self.session = session
        self.error: DrillError | None = None

    def run(self) -> None:
        session = self.session
        try:
            if session.pipe is None:
                sink = session.psql.stdin
            else:
                sink = open_pipe(session.pipe[0], session.psql, 60)
            if sink is None:
                return  # psql exited before it opened its input: its error says why
            with contextlib.suppress(BrokenPipeError), sink:
                sink.write(session.script())
        except DrillError as exc:
            self.error = exc
        except OSError as exc:
            self.error = RestoreError(f"passing post-data to psql failed: {exc}")
