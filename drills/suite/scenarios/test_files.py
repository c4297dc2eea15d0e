"""Drill: the latest uploads snapshot restores into a fresh volume exactly as it was, every
file whole and plausible.

Runbook: locate the newest snapshot, even an empty one (and the one before it) -> create a
fresh volume -> stream the snapshot into it as the manifest records it, else as the stored
tree holds it: files (each hashed, its first bytes sniffed, as it is read; many fetched at
once from S3), links as links (never followed), empty directories, hard links, modes, owners
and times -> from a read-only container over the volume, read back every entry and compare it
with the snapshot on every recorded fact: missing, altered and extra entries, modes, owners,
times and hard links are named, a damaged file with every snapshot sharing it and the newest
one holding it intact (without a manifest: at least one file, and integrity was not provable)
-> compare what was restored with the last passing drill and the snapshot before it (not
emptied, not mass-encrypted) -> compare the time taken with the RTO and the snapshot's age
with the RPO.
"""

from __future__ import annotations

import functools

import pytest

from drills.checks import plausibility, plausibility_files
from drills.checks.choice import Choice
from drills.checks.conclusion import conclude, locate_with_previous
from drills.restore.files import check_files, landed_files, read_restored_file, restore_files
from drills.runtime import images
from drills.suite.fixtures import configured, drill_history
from drills.suite.public import RestoredFiles


@pytest.mark.drill("files")
def test_latest_uploads_snapshot_restores(
    request,
    drill,
    drill_config,
    drill_storage,
    docker_client,
    run_session,
    restores,
    accept_shrink,
):
    settings = configured(drill_config.files, "files")
    targets = drill_config.targets
    record = drill("files")

    backup, previous = locate_with_previous(
        drill_storage,
        "files",
        record,
        drill_config.storage.prefixes.files,
        zone=drill_config.storage.name_timezone,
        choice=Choice.of(drill_config, "files"),
    )

    with record.watch.phase("provision"):
        # Any local image with bash, tar, find and sha256sum serves; ours is always there.
        helper = images.ensure_postgres_image(docker_client, 15)

    bound = targets.rto.files
    with record.watch.phase("restore"):
        restored = restore_files(
            docker_client, run_session, drill_storage, backup, image=helper, timeout=bound
        )
    record.extra["restore"] = {
        "method": restored.method,
        "files": len(restored.streamed),
        "bytes_read": restored.bytes_read,
        "seconds": round(restored.seconds, 3),
    }
    record.notes.append("fetch streams inside the restore phase")
    # The team's own checks (restored_files) read this very volume, after this drill.
    reader = functools.partial(
        read_restored_file, docker_client, run_session, restored.volume, image=helper, timeout=bound
    )
    offered = RestoredFiles(restored.volume, {}, reader)
    restores.hand_over(request, record, offered, release=restored.remove)

    with record.watch.phase("validate"):
        landed = landed_files(
            docker_client, run_session, restored.volume, image=helper, timeout=bound
        )
        offered.files.update(landed.files)
        check_files(record, backup, restored, landed)

        # Is it believable? Against the last passing drill and the snapshot before it.
        baselines, notes = plausibility_files.files_baselines(
            drill_history(drill_config), drill_config.estate.name, backup, previous, drill_storage
        )
        profile = plausibility_files.files_profile(
            restored, drill_storage, baselines, seed=backup.key
        )
    record.notes += notes
    record.extra["profile"] = profile.as_dict()
    findings = plausibility_files.judge_files(
        profile, backup, baselines, plausibility_files.FilesLimits.of(settings)
    )
    plausibility.record_plausibility(
        record, baselines, findings, accept_shrink, what="the restored uploads"
    )

    conclude(record, targets.rto.files, targets.rpo.files, backup.taken_at)
