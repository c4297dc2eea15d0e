"""What a producer writes into its manifests beyond the backup's facts: whose it is, and doubts.

Three top-level keys, read back into `Manifest.extra` by `Manifest.from_json`:

- ``"producer": "recovery-drills"`` and ``"estate": "<[estate] name>"``: this producer made it
  for that estate. Pruning touches only backups that carry both, for its own estate: a
  backup without them (the user's own cron dumps, another estate's) is never removed.
- ``"suspect": ["<cause>", ...]``: the backup was written but is not plausible (no tables, no
  rows, a fraction of the previous one's size). The drill fails on it; it never lets pruning
  run.

Example::

    manifest = mark(manifest, estate="drishti", run={"id": "3f2a", "host": "db1", "pid": 42})
    path.write_bytes(manifest_bytes(manifest))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from drills.storage.manifest import Manifest

PRODUCER = "recovery-drills"
TOP_LEVEL = ("producer", "estate", "suspect")


def mark(
    manifest: Manifest, *, estate: str, run: dict[str, Any], suspect: list[str] | None = None
) -> Manifest:
    """The manifest with our producer, `estate`, the run that made it and any suspect causes."""
    extra = {**manifest.extra, "producer": PRODUCER, "estate": estate, "run": run}
    if suspect:
        extra["suspect"] = list(suspect)
    return dataclasses.replace(manifest, extra=extra)


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest's JSON with the marks at the top level (where the drill reads them)."""
    data = json.loads(manifest.to_json())
    extra = data.get("extra") or {}
    for key in TOP_LEVEL:
        if key in extra:
            data[key] = extra.pop(key)
    return (json.dumps(data, indent=2) + "\n").encode()


def is_ours(manifest: Manifest, estate: str) -> bool:
    """Whether the manifest says this producer made the backup for `estate`."""
    return manifest.extra.get("producer") == PRODUCER and manifest.extra.get("estate") == estate


def suspect_causes(manifest: Manifest) -> list[str]:
    """The causes a manifest marks its backup suspect for; [] when it is not."""
    causes = manifest.extra.get("suspect") or []
    return [str(c) for c in causes] if isinstance(causes, list) else [str(causes)]
