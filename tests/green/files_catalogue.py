"""The green catalogue of uploads and config: trees of every shape, backed up as the product's
producers and as the original runbook make them, each drilled green and restored exactly as it
was.

An uploads directory of every shape (`fixtures/upload_trees.py`: private keys, scripts, a
setuid tool, a sticky shared directory, other owners, nanosecond times, symlinks inside the
tree, to a host file outside it, dangling and to a directory, empty directories, a hard link,
a zero-byte file, odd names) and a server's config (a 600 key and .env, a 755 script, an
nginx site enabled by a symlink, an empty conf.d). Each row must drill green (`drill run`,
exit 0) and come back from `drill restore` identical under `diff -r --no-dereference` and
`stat` to what was backed up. The host file the uploads link to is changed after the backup:
the restored link must still be a link, and nothing of the host file read. The S3 row's tree
has no name with a newline: the embedded S3 (moto) answers 404 to such a key, which AWS S3
accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalogue import _cell

PRODUCER_FILES = "`drill backup files` (rsync -aH, manifest records the tree)"
RUNBOOK_FILES = "`rsync -a` into files/current, `cp -al` to files/<ts> (no manifest)"
PRODUCER_CONFIG = "`drill backup config` (links as links, pax times, paths recorded)"
RUNBOOK_CONFIG = "`tar -czf` of absolute paths (no manifest)"


@dataclass(frozen=True)
class GreenTree:
    """One row: a tree, how it was backed up and stored, and what must hold."""

    name: str
    kind: str  # "files" or "config"
    made_by: str  # "producer" or "runbook"
    store: str  # "file" or "s3"
    holds: str

    @property
    def id(self) -> str:
        """A short test id: "files-producer-s3"."""
        return f"{self.kind}-{self.made_by}-{self.store}"

    @property
    def made(self) -> str:
        """How the backup was made, in words."""
        if self.kind == "files":
            return PRODUCER_FILES if self.made_by == "producer" else RUNBOOK_FILES
        return PRODUCER_CONFIG if self.made_by == "producer" else RUNBOOK_CONFIG


UPLOADS_HOLD = (
    "drill green; `drill restore files` identical to {what} under diff -r --no-dereference "
    "and stat (modes, owners, ns times, links, empty directories{links}); the host-file link "
    "restored as a link, named, never read"
)
CONFIG_HOLD = (
    "drill green with every [config] path and required file; `drill restore config` gives the "
    "configured tree back identical under diff -r --no-dereference and stat{times}"
)

ROWS: list[GreenTree] = [
    GreenTree(
        "uploads of every shape, producer, file://",
        "files",
        "producer",
        "file",
        UPLOADS_HOLD.format(what="the uploads", links=", the hard link"),
    ),
    GreenTree(
        "uploads of every shape, producer, S3",
        "files",
        "producer",
        "s3",
        UPLOADS_HOLD.format(what="the uploads", links=", the hard link"),
    ),
    GreenTree(
        "uploads of every shape, runbook snapshot, file://",
        "files",
        "runbook",
        "file",
        UPLOADS_HOLD.format(what="the dated snapshot", links=""),
    ),
    GreenTree(
        "server config with a symlinked site, producer, file://",
        "config",
        "producer",
        "file",
        CONFIG_HOLD.format(times=" (times to the nanosecond)"),
    ),
    GreenTree(
        "server config with a symlinked site, runbook tar, file://",
        "config",
        "runbook",
        "file",
        CONFIG_HOLD.format(times=" (times to the second: tar's own format keeps no more)"),
    ),
]


COLUMNS = {
    "tree": "name",
    "made by": "made",
    "stored": "store",
    "what must hold": "holds",
    "got": "got",
    "cause when red": "cause",
}


def catalogue_markdown(rows: list[dict]) -> str:
    """The rows' results as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += [
        "| " + " | ".join(_cell(str(row[k])) for k in COLUMNS.values()) + " |" for row in rows
    ]
    return "\n".join(lines) + "\n"
