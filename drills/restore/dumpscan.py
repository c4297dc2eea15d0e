"""What a pg_dump script declares about itself, read as it streams past: one pass, no copy.

pg_dump's plain format (and `pg_restore --schema-only --file=-` of an archive) precedes every
object with a header comment::

    --
    -- Name: customers; Type: TABLE; Schema: shop; Owner: shop_owner
    --

and ends a complete dump with ``-- PostgreSQL database dump complete``. A producer that died
midway leaves a script that psql runs happily to its end, so `DumpScan` reads the headers as
the bytes pass on their way to psql and answers:

- **completeness**: was the completion marker reached, and if not, where the dump ends (inside
  a table's data, after the data section, in the post-data section), in an operator's words;
- **inventory**: the objects the dump declares (tables, indexes, constraints by kind,
  sequences, views, functions, triggers, extensions, types, policies, large objects), to be
  found again in the restored database (`drills.restore.inventory`);
- **roles**: every role the script refers to (owners, grantees, policy roles, default
  privileges, session authorisations), so the restore target can have them before psql
  needs them; `feed` returns the new ones of each block;
- **data**: which tables have a data entry, and which declared tables have none.

COPY data (nearly all of a dump's bytes) is skipped with one search for its end marker per
block; only the lines between data blocks are parsed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from drills.config.errors import DrillError

COMPLETE = b"-- PostgreSQL database dump complete"
_HEADER_START = b"-- PostgreSQL database dump"
_COPY_END = b"\n\\.\n"
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_IDENT_LIST = rf"{_IDENT}(?:\s*,\s*{_IDENT})*"
_NOT_ROLES = {"public", "current_user", "session_user", "current_role", "default", "none"}

# Where each header type belongs: pg_dump writes pre-data, then data, then post-data, then
# the access privileges (section "none"); the last header seen tells where a dump stopped.
DATA_TYPES = {"TABLE DATA", "SEQUENCE SET", "BLOBS", "BLOB DATA", "LARGE OBJECTS"}
POST_DATA_TYPES = {
    "CONSTRAINT",
    "FK CONSTRAINT",
    "CHECK CONSTRAINT",
    "INDEX",
    "INDEX ATTACH",
    "TRIGGER",
    "EVENT TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
    "MATERIALIZED VIEW DATA",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION",
    "STATISTICS",
}
ACL_TYPES = {"ACL", "DEFAULT ACL"}

# Header type -> inventory kind, for the objects a restore must bring back.
KINDS = {
    "SCHEMA": "schema",
    "EXTENSION": "extension",
    "TABLE": "table",
    "FOREIGN TABLE": "foreign table",
    "VIEW": "view",
    "MATERIALIZED VIEW": "materialized view",
    "SEQUENCE": "sequence",
    "INDEX": "index",
    "FK CONSTRAINT": "foreign key",
    "CHECK CONSTRAINT": "check constraint",
    "TRIGGER": "trigger",
    "FUNCTION": "function",
    "PROCEDURE": "procedure",
    "AGGREGATE": "aggregate",
    "TYPE": "type",
    "DOMAIN": "domain",
    "POLICY": "policy",
    "BLOB": "large object",
}
# Objects named "<table> <name>" in their header.
_ON_TABLE = {"CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "POLICY", "RULE"}
_CONSTRAINT_KIND = re.compile(
    r"\bADD CONSTRAINT (?P<name>" + _IDENT + r") (?P<what>PRIMARY KEY|UNIQUE|EXCLUDE|CHECK)\b"
)
_CONSTRAINT_KINDS = {
    "PRIMARY KEY": "primary key",
    "UNIQUE": "unique constraint",
    "EXCLUDE": "exclusion constraint",
    "CHECK": "check constraint",
}
_INLINE_CHECK = re.compile(r"^    CONSTRAINT (?P<name>" + _IDENT + r") CHECK ")
_COPY = re.compile(rb"^COPY (?P<table>.+?) (?:\(.*\) )?FROM stdin;$")
_ROLE_PATTERNS = [
    re.compile(rf"\bOWNER TO (?P<roles>{_IDENT})\s*;"),
    re.compile(rf"\bAUTHORIZATION (?P<roles>{_IDENT})\s*;"),
    re.compile(rf"\bFOR (?:ROLE|USER) (?P<roles>{_IDENT_LIST}) "),
    re.compile(rf"\bGRANTED BY (?P<roles>{_IDENT})"),
]
_GRANT = re.compile(rf"^(?:GRANT .* TO|REVOKE .* FROM) (?P<roles>{_IDENT_LIST})(?:\s|;|$)")
_DEFAULT_PRIVILEGES = re.compile(
    rf"\b(?:GRANT .* TO|REVOKE .* FROM) (?P<roles>{_IDENT_LIST})(?:\s|;|$)"
)
_POLICY_ROLES = re.compile(rf" TO (?P<roles>{_IDENT_LIST})(?: USING| WITH CHECK|;|$)")
_SESSION = re.compile(rf"^SET (?:SESSION AUTHORIZATION|ROLE) (?P<roles>{_IDENT}|'[^']+')\s*;")
_ROLE_LINES = ("GRANT ", "REVOKE ", "ALTER ", "CREATE POLICY ", "CREATE SCHEMA ", "SET ")
# Lines worth decoding between data blocks: role references, constraint kinds, partitioning.
_PARSED = (
    *tuple(p.encode() for p in _ROLE_LINES),
    b"PARTITION BY ",
    b"    ",
    b"DROP ",
    b"CREATE DATABASE ",
    b"COMMENT ON DATABASE ",
    b"SECURITY LABEL ",
    b"\\connect",
)
_ON_DATABASE = re.compile(
    r"^(?P<lead>(?:ALTER DATABASE|COMMENT ON DATABASE|SECURITY LABEL .*? ON DATABASE|"
    r"(?:GRANT|REVOKE) .*? ON DATABASE) )(?P<name>" + _IDENT + r")(?P<rest>.*)$"
)


class UnsupportedDump(DrillError):
    """The script is not one database's plain dump (e.g. a pg_dumpall script)."""


@dataclass(frozen=True)
class Header:
    """One object header of a dump: `-- Name: ...; Type: ...; Schema: ...; Owner: ...`."""

    name: str
    type: str
    schema: str
    owner: str

    @property
    def section(self) -> str:
        """pre-data, data, post-data or acl."""
        if self.type in DATA_TYPES:
            return "data"
        if self.type in POST_DATA_TYPES:
            return "post-data"
        if self.type in ACL_TYPES:
            return "acl"
        return "pre-data"

    def describe(self) -> str:
        """The object as an operator reads it: "TABLE DATA shop.orders"."""
        where = f"{self.schema}." if self.schema not in ("", "-") else ""
        return f"{self.type} {where}{self.name}"


def parse_header(line: str) -> Header | None:
    """The header of a `-- Name: ...` or `-- Data for Name: ...` comment line, else None."""
    for lead in ("-- Name: ", "-- Data for Name: "):
        if line.startswith(lead):
            rest = line[len(lead) :]
            break
    else:
        return None
    # Names may hold anything; the labels after them are fixed: split from the right.
    rest, _, _tablespace = rest.partition("; Tablespace: ")
    head, sep, owner = rest.rpartition("; Owner: ")
    if not sep:
        return None
    head, sep, schema = head.rpartition("; Schema: ")
    if not sep:
        return None
    name, sep, kind = head.rpartition("; Type: ")
    if not sep:
        return None
    return Header(name, kind, schema, owner.strip())


def identifiers(text: str) -> list[str]:
    """The identifiers of a comma-separated list, unquoted and case-folded as Postgres does."""
    names = []
    for token in re.findall(_IDENT + "|'[^']+'", text):
        if token.startswith('"'):
            names.append(token[1:-1].replace('""', '"'))
        elif token.startswith("'"):
            names.append(token[1:-1])
        else:
            names.append(token.lower())
    return names


def roles_in(line: str) -> set[str]:
    """The roles one line of dump SQL refers to (PUBLIC and CURRENT_USER are not roles)."""
    if not line.startswith(_ROLE_LINES):
        return set()
    found: list[str] = []
    for pattern in _ROLE_PATTERNS:
        for match in pattern.finditer(line):
            found += identifiers(match["roles"])
    if line.startswith(("GRANT ", "REVOKE ")):
        match = _GRANT.match(line)
        if match:
            found += identifiers(match["roles"])
    elif line.startswith("ALTER DEFAULT PRIVILEGES"):
        match = _DEFAULT_PRIVILEGES.search(line)
        if match:
            found += identifiers(match["roles"])
    elif line.startswith("CREATE POLICY "):
        match = _POLICY_ROLES.search(line)
        if match:
            found += identifiers(match["roles"])
    elif line.startswith("SET "):
        match = _SESSION.match(line)
        if match:
            found += identifiers(match["roles"])
    return {name for name in found if name.lower() not in _NOT_ROLES}


class DumpScan:
    """Reads a plain dump as it streams: headers, roles, data blocks, the completion marker.

    >>> scan = DumpScan(database="drishti_restore")
    >>> ready = scan.feed(chunk)   # to psql, once scan.new_roles exist   # doctest: +SKIP
    >>> last = scan.end(); scan.ending()   # None when the dump is whole     # doctest: +SKIP
    """

    def __init__(self, database: str | None = None) -> None:
        self.database = database
        """The database the script is restored into: statements about the dump's own
        database are pointed at it (see `_rewrite`)."""
        self.rewritten: list[str] = []
        """Statements not passed on as written, in words, for the report."""
        self.inventory: Counter[tuple[str, str]] = Counter()
        self.roles: set[str] = set()
        self.tables: set[str] = set()
        """Declared tables that hold rows of their own (not partitioned, not foreign)."""
        self.data_tables: set[str] = set()
        """Tables with a data entry (TABLE DATA)."""
        self.table_names: dict[str, tuple[str, str]] = {}
        """Every declared table: "schema.name" -> (schema, name)."""
        self.entries: list[TocEntry] = []
        """An archive's data entries (`pg_restore --list`); empty for a plain dump."""
        self.data_files: dict[int, str] = {}
        """An archive's data entry ids (a directory dump's NNNN.dat files) -> table."""
        self.headers = 0
        self.bytes = 0
        self.started = False
        """The script starts like a pg_dump dump."""
        self.complete = False
        self.creates_database: str | None = None
        self.last: Header | None = None
        self.sections: set[str] = set()
        self.copy_table: str | None = None
        """The table whose COPY data the stream is inside, None between data blocks."""
        self._carry = b""
        self._tail = b""  # the last bytes of COPY data passed on, to find a split end marker
        self.passed = 0
        """Bytes passed on so far."""
        self.preamble: bytes | None = None
        """What the script says before its first object: the session settings every psql
        session of the restore needs (b"" when it did not fit the first chunk)."""
        self._preamble_end: int | None = None
        self.post_data_seen = False
        self.post_data_split: int | None = None
        """Where, in the bytes the last `feed` returned, the first post-data (or access
        privileges) entry begins: from there on the script's statements only build on the
        data, and may run on several sessions."""
        self._after_complete = False
        self._pending: tuple[str, str] | None = None  # a header whose kind the SQL decides
        self._table: str | None = None  # the table whose CREATE TABLE is being read
        self.new_roles: set[str] = set()
        """The roles the bytes of the last `feed` refer to that were not seen before."""
        self._connects = 0
        self._objects = False  # a header of an object (not of the database itself) was read
        self._relations: dict[str, set[str]] = {}  # schema -> declared relation names
        self._data: str | None = None  # the table of the last TABLE DATA header
        self.copy_events: list[tuple[int, bytes | None, bool]] = []
        """Where COPY data starts and ends in the bytes the last `feed` returned: (offset,
        the COPY line, declared) where a block's rows start, (offset, None, False) where its
        rows end and the end marker begins. `declared`: the block is the TABLE DATA entry
        of a table this script creates (no index, key or trigger on it before the post-data
        section). An end's offset is negative when part of the marker was in the bytes of
        the `feed` before."""
        self._declared = False
        self.switches_role = False
        """The script changes its session's role (SET SESSION AUTHORIZATION, SET ROLE)."""

    def feed(self, data: bytes) -> bytes | memoryview:
        """Read the next bytes; return those that may go on to psql now: whole lines (a line
        split across chunks waits for its end), some of them rewritten (`_rewrite`). The
        roles they refer to first are in `new_roles`."""
        self.bytes += len(data)
        self.new_roles = set()
        self.post_data_split = None
        self.copy_events = []
        if self.copy_table is None or self._carry:
            return self._passed(self._lines(data))
        # Inside COPY data (nearly every byte of a dump) the chunk goes on as it is: only
        # the end marker is looked for, across the chunk boundary too.
        joint = self._tail + data[: len(_COPY_END) - 1]
        found = joint.find(_COPY_END)
        if found >= 0:
            end = found + len(_COPY_END) - len(self._tail)
        else:
            found = data.find(_COPY_END)
            end = found + len(_COPY_END) if found >= 0 else -1
        if end < 0:
            self._tail = (self._tail + data[-(len(_COPY_END) - 1) :])[-(len(_COPY_END) - 1) :]
            self.passed += len(data)
            return data
        self.copy_table = None
        self.copy_events.append((end - len(_COPY_END) + 1, None, False))
        rest = self._lines(data[end:])
        if self.post_data_split is not None:
            self.post_data_split += end
        self.copy_events[1:] = [(at + end, *event) for at, *event in self.copy_events[1:]]
        return self._passed(b"".join((memoryview(data)[:end], rest)))

    def _passed(self, ready: bytes | memoryview) -> bytes | memoryview:
        """Count what goes on; keep the script's opening lines (its session settings)."""
        if self.preamble is None and self._preamble_end is not None:
            self.preamble = bytes(ready[: self._preamble_end]) if self.passed == 0 else b""
        self.passed += len(ready)
        return ready

    def _lines(self, data: bytes) -> bytes | memoryview:
        """Read lines (and any COPY data that starts among them) from the held-back part of
        a line and `data`; return what may go on."""
        buffer = self._carry + data if self._carry else data
        position = 0
        end = len(buffer)
        edits: list[tuple[int, int, bytes]] = []
        while position < end:
            if self.copy_table is not None:
                position = self._skip_copy(buffer, position)
                if self.copy_table is not None:
                    break
                rows_end = _output_offset(position, edits) - len(_COPY_END) + 1
                self.copy_events.append((rows_end, None, False))
                continue
            newline = buffer.find(b"\n", position)
            if newline < 0:
                break
            headers, post = self.headers, self.post_data_seen
            replacement = self._line(buffer[position:newline])
            if replacement is not None:
                edits.append((position, newline, replacement))
            if self.copy_table is not None:
                line = bytes(buffer[position:newline])
                at = _output_offset(newline + 1, edits)
                self.copy_events.append((at, line, self._declared))
            if self.headers and not headers and self._preamble_end is None:
                self._preamble_end = _output_offset(position, edits)
            if self.post_data_seen and not post:
                self.post_data_split = _output_offset(position, edits)
            position = newline + 1
        if self.copy_table is not None:
            cut = len(buffer)  # COPY data goes on; its last bytes are kept to find the marker
            self._tail = buffer[-(len(_COPY_END) - 1) :]
        else:
            cut = position
        self._carry = buffer[cut:]
        if not edits:
            return memoryview(buffer)[:cut]
        pieces, at = [], 0
        for start, stop, replacement in edits:
            pieces += [buffer[at:start], replacement]
            at = stop
        pieces.append(buffer[at:cut])
        return b"".join(pieces)

    def end(self) -> bytes:
        """The stream ended: read its last line if it had no newline; return what is left to
        pass on."""
        self.post_data_split = None
        rest, self._carry = self._carry, b""
        if rest and self.copy_table is None:
            replacement = self._line(rest)
            if replacement is not None:
                rest = replacement
        return rest

    def _skip_copy(self, buffer: bytes, position: int) -> int:
        """Past the end marker of the COPY data that starts at `position`, else the end."""
        # The marker is a line of its own: search from the newline that ends the line before.
        start = position - 1 if buffer[position - 1 : position] == b"\n" else position
        found = buffer.find(_COPY_END, max(start, 0))
        if found < 0:
            return len(buffer)
        self.copy_table = None
        return found + len(_COPY_END)

    def _line(self, raw: bytes) -> bytes | None:
        """Read one line outside COPY data; return its replacement, or None to pass it on."""
        if self._after_complete:
            if raw.strip() and not raw.startswith((b"--", b"\\unrestrict")):
                self.complete = False  # something after the marker: not pg_dump's ending
                self._after_complete = False
            else:
                return None
        if raw.startswith(b"--"):
            self._comment(raw)
            return None
        if raw.startswith(b"COPY "):
            match = _COPY.match(raw)
            if match:
                named = match["table"].decode(errors="replace").strip()
                self.copy_table = self._data or named
                self._declared = self._data is not None and self._data in self.table_names
                return None
        if not raw.startswith(_PARSED) and self._pending is None:
            return None  # INSERT rows of an --inserts dump, function bodies, uninteresting SETs
        line = raw.decode(errors="replace")
        if line.startswith(_ROLE_LINES):
            self._roles(roles_in(line))
        if line.startswith(("SET SESSION AUTHORIZATION", "SET ROLE")):
            self.switches_role = True
        replacement = self._rewrite(line)
        if replacement is not None:
            return replacement.encode()
        self._statement(line)
        return None

    def _rewrite(self, line: str) -> str | None:
        """The line psql must not run as written, made safe: a restore goes into the database
        the restore created and nowhere else.

        - `\\connect` (pg_dump --create) would take psql to another database: it stays;
        - DROP DATABASE / CREATE DATABASE (pg_dump --clean --create) never run: on a real
          server the first would drop the database being recovered;
        - statements about the dump's own database (owner, settings, comment, grants) are
          pointed at the restore's database;
        - the DROP statements pg_dump --clean puts before the first object would fail on an
          empty database: they are skipped.
        """
        if line.startswith("\\connect"):
            self._connects += 1
            if self._connects > 1:
                raise UnsupportedDump(
                    "the script connects to more than one database (a pg_dumpall script?): "
                    "drill the dump of one database (pg_dump)"
                )
            return self._skipped(line, "stays in the restore's own database")
        if line.startswith(("DROP DATABASE ", "CREATE DATABASE ")):
            if line.startswith("CREATE DATABASE "):
                self.creates_database = identifiers(line[len("CREATE DATABASE ") :])[0]
            return self._skipped(line, "the restore created its own database")
        if not self._objects and (
            line.startswith("DROP ") or (line.startswith("ALTER ") and " DROP " in line)
        ):
            return self._skipped(line, "pg_dump --clean's drop of an object not yet restored")
        if self._about_database():
            match = _ON_DATABASE.match(line)
            if match:
                if self.database is None:
                    return self._skipped(line, "not about the restore's database")
                self.rewritten.append(f"{match['lead'].strip()} pointed at {self.database}")
                quoted = '"' + self.database.replace('"', '""') + '"'
                return f"{match['lead']}{quoted}{match['rest']}"
        return None

    def _about_database(self) -> bool:
        """Whether the current header is about the dump's database itself."""
        last = self.last
        if last is None or last.type in ("DATABASE", "DATABASE PROPERTIES"):
            return True
        return last.type in ("COMMENT", "ACL", "SECURITY LABEL") and last.name.startswith(
            "DATABASE "
        )

    def _skipped(self, line: str, why: str) -> str:
        self.rewritten.append(f"skipped ({why}): {line[:120]}")
        return f"-- drill: skipped ({why}): {line}"

    def _comment(self, raw: bytes) -> None:
        if raw.startswith(COMPLETE):
            self.complete = True
            self._after_complete = True
            return
        if raw.startswith(_HEADER_START) and not self.headers:
            self.started = True
            return
        if not raw.startswith((b"-- Name: ", b"-- Data for Name: ")):
            return
        header = parse_header(raw.decode(errors="replace"))
        if header is None:
            return
        self.headers += 1
        self.last = header
        if header.section in ("post-data", "acl"):
            self.post_data_seen = True
        if not self._about_database():
            self._objects = True
        self.sections.add(header.section)
        self._data = None
        self._table = None
        self._pending = None
        if header.owner not in ("", "-"):
            self._roles({header.owner})
        self._declare(header)

    def _declare(self, header: Header) -> None:
        kind = header.type
        schema = header.schema if header.schema not in ("", "-") else ""
        qualified = f"{schema}.{header.name}" if schema else header.name
        if kind == "TABLE DATA":
            self.data_tables.add(qualified)
            self._data = qualified
            return
        if kind == "DATABASE":
            self.creates_database = header.name
            return
        if kind == "TABLE":
            self._table = qualified
            self.tables.add(qualified)
            self.table_names[qualified] = (schema, header.name)
        if kind in ("TABLE", "FOREIGN TABLE", "VIEW", "MATERIALIZED VIEW"):
            self._relations.setdefault(schema, set()).add(header.name)
        if kind in _ON_TABLE:
            table, name = self._split_on_table(schema, header.name)
            qualified = f"{schema}.{table}.{name}" if schema else f"{table}.{name}"
            if kind == "CONSTRAINT":
                self._pending = ("constraint", qualified)
                return
        if kind in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            qualified = qualified.split("(", 1)[0]  # overloads counted, not matched by args
        if kind in KINDS:
            self.inventory[(KINDS[kind], qualified)] += 1

    def _split_on_table(self, schema: str, tag: str) -> tuple[str, str]:
        """ "<table> <name>" of a constraint, trigger or policy; the table's name may hold
        spaces, so the longest declared relation that leads the tag wins."""
        known = [t for t in self._relations.get(schema, ()) if tag.startswith(t + " ")]
        if known:
            table = max(known, key=len)
            return table, tag[len(table) + 1 :]
        table, _, name = tag.partition(" ")
        return table, name

    def _statement(self, line: str) -> None:
        if self._pending is not None:
            match = _CONSTRAINT_KIND.search(line)
            if match:
                self.inventory[(_CONSTRAINT_KINDS[match["what"]], self._pending[1])] += 1
                self._pending = None
            return
        if self._table is None:
            return
        if line.startswith("PARTITION BY "):
            self.tables.discard(self._table)  # a partitioned parent holds no rows itself
            return
        match = _INLINE_CHECK.match(line)
        if match:
            name = identifiers(match["name"])[0]
            self.inventory[("check constraint", f"{self._table}.{name}")] += 1

    def _roles(self, names: set[str]) -> None:
        new = names - self.roles
        if new:
            self.roles |= new
            self.new_roles |= new

    def tables_without_data(self) -> list[str]:
        """Declared tables with rows of their own but no data entry in the dump."""
        return sorted(self.tables - self.data_tables)

    def ending(self) -> str | None:
        """None when the dump is whole; else where it ends and what that means."""
        if self.complete:
            return None
        if self.bytes == 0:
            return "the dump is empty"
        if not self.started and not self.headers:
            return (
                "not a pg_dump plain-format script (no 'PostgreSQL database dump' header and no "
                "object headers): its completeness cannot be proven"
            )
        if self.copy_table is not None:
            return (
                f"the dump ends inside the data of {self.copy_table}: the dump process did "
                "not finish (the rest of that table and everything after it are missing)"
            )
        last = self.last
        after = f" after {last.describe()}" if last else ""
        if last is None or last.section == "pre-data":
            return (
                f"the dump ends in its pre-data section{after}: the dump process did not "
                "finish; no table data was restored"
            )
        if "post-data" not in self.sections and "acl" not in self.sections:
            return (
                f"the dump ends{after} and has no post-data section: no primary keys, unique "
                "constraints, indexes or foreign keys were restored (the dump process did not "
                "finish)"
            )
        return (
            f"the dump ends in its {last.section} section{after} without pg_dump's completion "
            "marker: the dump process did not finish; what came after (indexes, constraints, "
            "triggers or grants) is missing"
        )


@dataclass(frozen=True)
class TocEntry:
    """One data entry of an archive's table of contents (`pg_restore --list`)."""

    dump_id: int
    type: str
    rest: str  # "<schema> <tag> <owner>" as pg_restore prints it


_TOC_LINE = re.compile(
    r"^(?P<id>\d+); \d+ \d+ (?P<type>TABLE DATA|BLOBS|LARGE OBJECTS) (?P<rest>.*)$"
)


def data_entries(listing: str) -> list[TocEntry]:
    """The data entries of a `pg_restore --list` output."""
    entries = []
    for line in listing.splitlines():
        match = _TOC_LINE.match(line)
        if match:
            entries.append(TocEntry(int(match["id"]), match["type"], match["rest"]))
    return entries


def resolve_table(entry: TocEntry, tables: dict[str, tuple[str, str]]) -> str | None:
    """The declared table ("schema.name") a TABLE DATA entry belongs to (names may hold
    spaces: the longest declared name that leads the entry wins)."""
    found = None
    for qualified, (schema, name) in tables.items():
        lead = f"{schema} {name}"
        leads = entry.rest == lead or entry.rest.startswith(lead + " ")
        if leads and (found is None or len(qualified) > len(found)):
            found = qualified
    return found


def _output_offset(position: int, edits: list[tuple[int, int, bytes]]) -> int:
    """Where `position` of the input lands in the output, after the rewrites before it."""
    shift = sum(len(new) - (stop - start) for start, stop, new in edits if stop <= position)
    return position + shift
