"""Point-in-time recovery across a real failover: a primary archiving gzip-compressed WAL, its
standby promoted, the heartbeat going on on the new timeline (`fixtures.pitr`).

`drill backup wal` ships timeline 2's first segment (its first page still on timeline 1),
``00000002.history`` and timeline 1's ``.partial``; the pitr drill recovers to a time before
the switch, right after timeline 1's last commit (replaying into timeline 2 to find where to
stop) and after the switch, and the heartbeat rows restored prove each boundary.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta

import pytest

from drills.pitr import iso
from drills.storage.manifest import Manifest
from drills.storage.walfile import read_header
from fixtures.estate_backups import run_drill


def test_shipping_follows_the_promotion(promoted_archive):
    archive = promoted_archive
    history = gzip.decompress((archive.archive / "00000002.history.gz").read_bytes()).decode()
    assert history.split()[0] == "1", history  # timeline 2 branched off timeline 1
    names = sorted(p.name for p in archive.archive.iterdir() if p.name.startswith("00000002000"))
    first = names[0]
    # the genuine file: timeline 2's first segment starts with timeline 1's pages
    assert read_header(gzip.decompress((archive.archive / first).read_bytes())).timeline == 1
    wal = archive.store / "wal"
    stored = Manifest.from_json((wal / f"{first}.manifest.json").read_text())
    assert stored.extra["timeline"] == 2
    assert (wal / "00000002.history.gz.manifest.json").exists()
    partial = [p.name for p in archive.archive.iterdir() if ".partial" in p.name]
    assert partial, "the promoted standby archives timeline 1's last segment as .partial"
    assert (wal / f"{partial[0][: -len('.gz')]}.gz.manifest.json").exists()
    assert " shipped, 0 already stored" in archive.ship_output, archive.ship_output
    assert "not WAL names" not in archive.ship_output


def _between(beats: list[datetime], n: int) -> tuple[datetime, datetime]:
    """The n-th beat and the middle between it and the next."""
    return beats[n], beats[n] + (beats[n + 1] - beats[n]) / 2


@pytest.mark.parametrize("where", ["before", "at", "after"])
def test_recovers_across_the_switch(tmp_path, promoted_archive, where):
    archive = promoted_archive
    before = [b for b in archive.before if b > archive.base_ended_at]
    assert len(before) >= 4, before
    assert len(archive.after) >= 3, archive.after
    if where == "before":
        newest, target = _between(before, len(before) // 2)
        runs, timeline = 1, 1
    elif where == "at":
        # just after timeline 1's last commit: recovery replays into timeline 2 to find the
        # first commit after the target, and stops before it
        newest, target = before[-1], before[-1] + timedelta(milliseconds=500)
        runs, timeline = 1, 2
    else:
        newest, target = _between(archive.after, 1)
        runs, timeline = 2, 2
    checks = (
        f"SELECT count(DISTINCT run_id) = {runs} FROM drill_heartbeat",
        f"SELECT count(*) = {len([b for b in archive.before + archive.after if b <= target])} "
        "FROM drill_heartbeat",
        "SELECT count(*) = 100 FROM items",
    )
    url = archive.copy_store(tmp_path / "store")
    config = archive.config(tmp_path, url, target=iso(target), checks=checks)
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    drill = outcome.drill("pitr")
    assert drill["verdict"] == "pass", drill["error"]
    failed = [c for c in drill["checks"] if not c["passed"]]
    assert not failed, failed
    assert drill["recovered_point"]["data_time"] == iso(newest)
    pitr = drill["pitr"]
    assert pitr["timeline"] == 2
    assert pitr["timelines"] == [1, 2]
    assert pitr["measured"]["target_on_timeline"] == timeline
    assert f"the target lies on timeline {timeline}" in " ".join(drill["notes"])
    assert pitr["continuous"] is True
    print(f"{where}: replay {pitr['measured'].get('replay_s')} s, {pitr['measured']}")
