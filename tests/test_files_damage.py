"""Shared damage in hard-linked snapshots, and the partial recovery around it.

`drill backup files` into a ``file://`` storage keeps its snapshots in place, each file that
did not change a hard link to the snapshot before (rsync ``--link-dest``). One upload is then
truncated in place in the newest snapshot: the one before shares that inode, so it is damaged
there too; the oldest snapshot holds an older, intact version. The drill names all of it;
`drill restore files` refuses, `--skip-damaged` restores the rest and exits 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drills.backup import backup_files, destination
from drills.config import load_config
from fixtures.estate_backups import drill_cli, run_drill, typed_uploads
from fixtures.upload_trees import signature

DAMAGED = "photos/upload 001.jpg"


@pytest.fixture
def damaged(tmp_path: Path) -> dict:
    """Three snapshots (the damaged file changed between the first two), then the newest
    copy of it truncated in place."""
    source = tmp_path / "uploads"
    for path, data in typed_uploads(12).items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "{store.as_uri()}"\n\n[files]\nsource_dir = "{source}"\n\n'
        f'[report]\ndir = "{tmp_path / "reports"}"\nhtml = false\npytest_html = false\n'
        "allure = false\n"
    )
    dest = destination(load_config(config, env={}), "files")
    first = backup_files(dest, source)
    (source / DAMAGED).write_bytes(b"\xff\xd8\xff\xe0 a newer photo" + bytes(500))
    second = backup_files(dest, source)
    third = backup_files(dest, source)
    newest = store / third.key / DAMAGED
    assert os.stat(newest).st_ino == os.stat(store / second.key / DAMAGED).st_ino
    os.truncate(newest, 10)
    keys = [first.key, second.key, third.key]
    return {"config": config, "source": source, "keys": keys}


def test_the_drill_names_every_snapshot_sharing_the_damage_and_where_it_is_intact(damaged):
    first, second, third = damaged["keys"]

    outcome = run_drill(damaged["config"], "files")

    drill = outcome.drill("files")
    assert outcome.exit == 1, outcome.output
    assert drill["backup"]["key"] == third
    assert (
        f"altered: {DAMAGED} (checksum differs) [the same inode is in {second} (hard links: "
        f"damaged there too); intact in {first}]"
    ) in drill["error"]
    assert drill["tree"]["damaged"][DAMAGED] == {
        "cause": "checksum differs",
        "shared_with": [second],
        "intact_in": first,
    }


def test_skip_damaged_restores_the_rest_and_exits_1(damaged, tmp_path: Path):
    first, second, _ = damaged["keys"]
    live = tmp_path / "live"
    args = ["restore", "files", "--config", str(damaged["config"]), "--to", str(live)]

    refused = drill_cli(*args)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "--skip-damaged restores the rest and lists them" in refused.stderr
    assert f"nothing was replaced: {live} is as it was" in refused.stderr
    assert not live.exists()

    partial = drill_cli(*args, "--skip-damaged")

    output = partial.stdout + partial.stderr
    assert partial.returncode == 1, output
    assert "NOT restored: 1 damaged or lost files" in output
    assert (
        f"  {DAMAGED} (checksum differs; the same inode is in {second} (hard links: damaged "
        f"there too); intact in {first})"
    ) in partial.stdout
    assert "the previous directory is kept" not in output  # there was none
    assert not (live / DAMAGED).exists()
    source, restored = set(signature(damaged["source"])), set(signature(live))
    assert restored <= source
    assert [line.split(" | ")[0] for line in source - restored] == [f"./{DAMAGED}"]
