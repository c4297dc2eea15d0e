"""The green catalogue: valid backups of a production-shaped database, each drilled green.

The other half of the fault catalogue (`tests/faults/`): there, every fault made for real must
turn the drill red for its named cause; here, every *valid* backup of the shop estate
(`fixtures/shapes.py`: an owner role, grants, partitioned tables, large objects, row-level
security, about 40 MB of gzip) must turn it green, restored exactly once. A drill that fails
good backups gets ignored, and it blocks the CI gate it exists to power.

One row per way a real backup of that database is made and stored. `tests/green/
test_catalogue.py` runs each through `drill run --only database` (or, for the recovery row,
`drill restore database` into a throwaway production) and prints the table; docs/
reliability.md carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fixtures.shapes import ROLES

RUNBOOK = "`pg_dump | gzip > <db>_<ts>.sql.gz` in the server's container (no pipefail)"
PRODUCER = "`drill backup database --format {format}`"
DRILLED = (
    "pass, exit 0; restored once; roles created ⊇ the dump's "
    f"{len(ROLES)} roles; the shapes' SQL checks"
)


@dataclass(frozen=True)
class Green:
    """One row: a valid backup, how it was made and stored, and what must hold."""

    name: str
    format: str  # a key of fixtures.shapes.FORMATS
    store: str  # "file" or "s3"
    made: str
    holds: str
    via: str = "drill run"  # or "drill restore"

    @property
    def id(self) -> str:
        """A short test id: "custom-s3", "recovery-directory-s3"."""
        prefix = "recovery-" if self.via == "drill restore" else ""
        return f"{prefix}{self.format}-{self.store}"

    @property
    def manifest(self) -> bool:
        """Whether the backup has a manifest (every dump but the runbook's)."""
        return self.format != "runbook"


def _made(format: str) -> str:
    return RUNBOOK if format == "runbook" else PRODUCER.format(format=format)


def _holds(format: str) -> str:
    if format == "runbook":
        return f"{DRILLED} (no manifest: no counts to compare)"
    return f"{DRILLED}; row counts equal the manifest's"


def _drilled(format: str, store: str, name: str) -> Green:
    return Green(name, format, store, _made(format), _holds(format))


ROWS: list[Green] = [
    _drilled("runbook", "file", "runbook plain gzip, no manifest, file://"),
    _drilled("runbook", "s3", "runbook plain gzip, no manifest, S3"),
    _drilled("plain", "file", "producer plain gzip + manifest, file://"),
    _drilled("plain", "s3", "producer plain gzip + manifest, S3"),
    _drilled("custom", "file", "producer custom format + manifest, file://"),
    _drilled("custom", "s3", "producer custom format + manifest, S3"),
    _drilled("directory", "file", "producer directory format + manifest, file://"),
    _drilled("directory", "s3", "producer directory format + manifest, S3"),
    Green(
        "recovery: `drill restore database --yes` over a damaged production",
        "directory",
        "s3",
        _made("directory"),
        "exit 0; the restored database answers every shapes' check with the estate's "
        "row counts; the damaged one kept as <db>_before_<ts>",
        via="drill restore",
    ),
]


def catalogue_markdown(rows: list[dict]) -> str:
    """The green catalogue's results as a Markdown table."""
    lines = [
        "| backup | made by | stored | through | what must hold | got | cause when red |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cause = row["cause"] or ""
        if len(cause) > 240:
            cause = cause[:237] + "..."
        cells = [row[k] for k in ("name", "made", "store", "via", "holds", "got")] + [cause]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
