"""`drill backup files --mirror`: the sync marker of the runbook's off-site uploads mirror.

The original runbook's off-site copy is ``aws s3 sync <dir>/current/ s3://<bucket>/files/
--delete``: one flat mirror, no dated directories. A sync that changes nothing leaves no trace
in the bucket, so without help the drill can only say the mirror is at most as old as its
newest object. Run right after the sync (``aws s3 sync ... && drill backup files --mirror``),
this writes ``files/.drill-mirror.json`` recording when the sync finished and what the mirror
held then, so its time is exact from then on. The next ``--delete`` sync removes the marker
(it is not in the uploads directory); the command after it writes it again. Nothing else in
the bucket is touched.

Example::

    marker = mark_mirror(storage, "files/")
    print(marker.key, marker.objects)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from drills import __version__
from drills.config.errors import ConfigError, StorageError
from drills.storage import LocalStorage, Storage
from drills.storage.catalog import MIRROR_MARKER, mirror_objects


@dataclass(frozen=True)
class MirrorMarker:
    """The marker written: its key, the time it records and what the mirror held."""

    key: str
    synced_at: datetime
    objects: int
    bytes: int
    newest: datetime

    def summary(self) -> str:
        """One line for people."""
        return (
            f"files: mirror {self.key.rsplit('/', 1)[0]}/ ({self.objects} objects, "
            f"{self.bytes} bytes, newest {self.newest.isoformat()}) synced by "
            f"{self.synced_at.isoformat()}: marker {self.key}"
        )


def mark_mirror(storage: Storage, prefix: str) -> MirrorMarker:
    """Write the sync marker of the mirror under `prefix`; raise if there is no mirror."""
    if isinstance(storage, LocalStorage):
        raise ConfigError(
            f"--mirror: {storage.url} is a local storage; the mirror is the S3 copy `aws s3 "
            "sync` makes (use --storage-url s3://<bucket>)"
        )
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    objects = mirror_objects(storage, prefix)
    where = f"{storage.url.rstrip('/')}/{prefix}"
    if not objects:
        raise StorageError(
            f"--mirror: no mirror under {where} (run it after `aws s3 sync <uploads>/ {where} "
            "--delete`); no marker written"
        )
    now = datetime.now(UTC)
    marker = MirrorMarker(
        key=prefix + MIRROR_MARKER,
        synced_at=now,
        objects=len(objects),
        bytes=sum(o.size for o in objects),
        newest=max(o.modified for o in objects).astimezone(UTC),
    )
    document = {
        "kind": "files-mirror",
        "synced_at": now.isoformat(),
        "objects": marker.objects,
        "bytes": marker.bytes,
        "newest_modified": marker.newest.isoformat(),
        "harness": __version__,
    }
    storage.put_bytes(marker.key, (json.dumps(document, indent=2) + "\n").encode())
    return marker
