"""Plausibility of the files and config drills: the legitimate changes stay green.

Each test stores a good backup, drills it once (the history a monthly drill leaves), stores a
newer backup with a change a healthy estate makes, and drills again through `drill run`: the
uploads grew, images were re-saved, files of a new type arrived, a few were deleted, a config
file was added. Each passes, compared with the last passing drill and the backup before it. A
deliberate purge passes with `--accept-shrink REASON`, the reason in drill.json; the thresholds
are `[files]` and `[config]` keys. The faults (encrypted, emptied, a config file gone) are rows
of `tests/faults/catalogue.py`.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

from fixtures.estate_backups import (
    put_config_archive,
    put_files_snapshot,
    run_drill,
    typed_upload,
    typed_uploads,
    write_drill_toml,
)

GOOD = typed_uploads(30)
BOTH = {"plausible against the last passing drill", "plausible against the backup before it"}
PASSPHRASE = "plausible config passphrase 41"
ENV = {**os.environ, "DRILL_TEST_CONFIG_PASSPHRASE": PASSPHRASE}
CONFIG = """[config]
passphrase_env = "DRILL_TEST_CONFIG_PASSPHRASE"
required = [".env.production"]
"""
MEMBERS = {
    "srv/app/.env.production": b"DATABASE_URL=postgresql://app@db/app\n",
    "srv/app/docker-compose.yml": b"services:\n  api:\n    image: app\n",
    "etc/nginx/sites-enabled/app.conf": b"server { listen 443 ssl; }\n",
}


def _files_drill(tmp_path, storage, *args: str, sections: str = "[files]\n"):
    config = write_drill_toml(tmp_path, storage.url, sections)
    outcome = run_drill(config, "files", *args)
    return outcome, outcome.drill("files")


def _config_drill(tmp_path, storage, *args: str, sections: str = CONFIG):
    config = write_drill_toml(tmp_path, storage.url, sections)
    outcome = run_drill(config, "config", *args, env=ENV)
    return outcome, outcome.drill("config")


def _drilled_good_uploads(tmp_path, storage) -> None:
    """The good snapshot, two hours old, drilled once: it passes and enters the history."""
    put_files_snapshot(storage, GOOD, age=timedelta(hours=2))
    outcome, drill = _files_drill(tmp_path, storage)
    assert drill["verdict"] == "pass", outcome.output
    assert drill["profile"]["files"] == len(GOOD)


def _plausibility_checks(drill: dict) -> dict[str, dict]:
    return {c["name"]: c for c in drill["checks"] if c["name"].startswith("plausible against")}


def _passed_against_both(outcome, drill) -> None:
    assert outcome.exit == 0, outcome.output
    assert drill["verdict"] == "pass", drill["error"]
    checks = _plausibility_checks(drill)
    assert set(checks) == BOTH, drill["checks"]
    assert all(c["passed"] for c in checks.values()), checks


def test_uploads_grew_passes(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    grown = {**GOOD, **typed_uploads(15, seed=6, start=len(GOOD))}
    put_files_snapshot(local_storage, grown)
    outcome, drill = _files_drill(tmp_path, local_storage)
    _passed_against_both(outcome, drill)
    assert drill["profile"]["files"] == 45
    assert drill["profile"]["changes"]["added"] == 15
    assert drill["profile"]["changes"]["look_encrypted"] == 0


def test_resaved_images_and_edited_notes_pass(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    rng = random.Random(3)
    edited = [p for p in GOOD if p.endswith((".png", ".jpg", ".gif"))][:6]
    edited += [p for p in GOOD if p.endswith(".txt")][:2]
    newer = dict(GOOD)
    for path in edited:  # new bytes, same type: what an image editor or a text edit leaves
        newer[path] = typed_upload("." + path.rsplit(".", 1)[1], rng)
    put_files_snapshot(local_storage, newer)
    outcome, drill = _files_drill(tmp_path, local_storage)
    _passed_against_both(outcome, drill)
    changes = drill["profile"]["changes"]
    assert changes["changed"] == len(edited)
    assert changes["heads_read"] == len(edited)
    assert changes["look_encrypted"] == 0


def test_files_of_a_new_type_pass(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    rng = random.Random(4)
    newer = dict(GOOD)
    for i in range(10):  # WebP images, and opaque high-entropy blobs of a type never seen
        newer[f"photos/new {i}.webp"] = b"RIFF\x00\x10\x00\x00WEBPVP8 " + rng.randbytes(9000)
        newer[f"blobs/model {i}.bin"] = rng.randbytes(6000)
    put_files_snapshot(local_storage, newer)
    outcome, drill = _files_drill(tmp_path, local_storage)
    _passed_against_both(outcome, drill)
    assert drill["profile"]["extensions"][".bin"]["noise"] == 10
    assert drill["profile"]["extensions"][".webp"]["files"] == 10


def test_small_deletion_passes(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    put_files_snapshot(local_storage, dict(list(GOOD.items())[6:]))  # 6 of 30 deleted: 20%
    outcome, drill = _files_drill(tmp_path, local_storage)
    _passed_against_both(outcome, drill)
    assert drill["profile"]["changes"]["removed"] == 6


def test_large_deletion_fails_unless_max_shrink_allows_it(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    put_files_snapshot(local_storage, dict(list(GOOD.items())[20:]))  # 20 of 30: 67%
    outcome, drill = _files_drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "the file count dropped from 30 to 10" in drill["error"]
    assert "more than 50%" in drill["error"]

    outcome, drill = _files_drill(tmp_path, local_storage, sections="[files]\nmax_shrink = 80\n")
    _passed_against_both(outcome, drill)


def test_snapshots_without_manifests_are_compared_by_listing(tmp_path, local_storage):
    put_files_snapshot(local_storage, GOOD, age=timedelta(hours=2), manifest=False)
    grown = {**GOOD, **typed_uploads(5, seed=8, start=len(GOOD))}
    put_files_snapshot(local_storage, grown, manifest=False)
    outcome, drill = _files_drill(tmp_path, local_storage)
    assert outcome.exit == 0, outcome.output
    check = _plausibility_checks(drill)["plausible against the backup before it"]
    assert check["passed"], check
    assert "size per file (listing, no manifest)" in check["detail"]


def test_accept_shrink_passes_an_emptied_snapshot_with_the_reason(tmp_path, local_storage):
    _drilled_good_uploads(tmp_path, local_storage)
    put_files_snapshot(local_storage, {"README": b"uploads moved to the CDN bucket\n"})
    reason = "uploads moved to the CDN bucket (change 1432)"
    outcome, drill = _files_drill(tmp_path, local_storage, "--accept-shrink", reason)
    _passed_against_both(outcome, drill)
    assert drill["plausibility"]["accepted"] == reason
    detail = _plausibility_checks(drill)["plausible against the backup before it"]["detail"]
    assert f"accepted (--accept-shrink: {reason})" in detail
    assert "the file count dropped from 30 to 1" in detail


def test_config_file_added_passes(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE, age=timedelta(hours=2))
    outcome, drill = _config_drill(tmp_path, local_storage)
    assert drill["verdict"] == "pass", outcome.output
    more = {**MEMBERS, "etc/cron.d/app-backups": b"0 2 * * * root /usr/local/bin/backup\n"}
    put_config_archive(local_storage, more, passphrase=PASSPHRASE)
    outcome, drill = _config_drill(tmp_path, local_storage)
    _passed_against_both(outcome, drill)
    assert drill["profile"]["files"] == sorted(more)


def test_config_file_gone_passes_when_allowed(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE, age=timedelta(hours=2))
    fewer = {k: v for k, v in MEMBERS.items() if not k.endswith("app.conf")}
    put_config_archive(local_storage, fewer, passphrase=PASSPHRASE)
    outcome, drill = _config_drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "config files gone" in drill["error"]
    assert "etc/nginx/sites-enabled/app.conf (.conf)" in drill["error"]

    allowed = CONFIG + 'allow_vanished = ["sites-enabled/app.conf"]\n'
    outcome, drill = _config_drill(tmp_path, local_storage, sections=allowed)
    assert outcome.exit == 0, outcome.output
    assert drill["verdict"] == "pass"


def test_config_moved_as_a_whole_passes(tmp_path, local_storage):
    put_config_archive(local_storage, MEMBERS, passphrase=PASSPHRASE, age=timedelta(hours=2))
    moved = {f"new-host/{name}": data for name, data in MEMBERS.items()}
    put_config_archive(local_storage, moved, passphrase=PASSPHRASE)
    outcome, drill = _config_drill(tmp_path, local_storage)
    assert outcome.exit == 0, outcome.output
    assert drill["verdict"] == "pass"
