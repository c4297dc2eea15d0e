"""Drill: the latest config archive decrypts, holds the required files, and they parse.

Runbook: locate the newest archive (and the one before it) -> fetch it (sha256 against the
manifest) and decrypt it with the passphrase from the configured environment variable ->
extract it into a private temporary directory (links recorded, never followed) -> every
configured path is in the archive as what it was, the required files are present (a link to a
file the archive lacks is not), every .env-style file parses, members equal the manifest's
checksums, modes, owners, times and links -> the directory is removed ->
no file that the last passing drill or the archive before it had is gone -> compare the time
taken with the RTO and the archive's age with the RPO. No value is ever printed or written to a
report.
"""

from __future__ import annotations

import contextlib
import functools

import pytest

from drills.checks import plausibility, plausibility_config
from drills.checks.choice import Choice
from drills.checks.conclusion import conclude, locate_with_previous
from drills.restore.config import archive_names, check_config, restore_config
from drills.suite.fixtures import configured, drill_history


@pytest.mark.drill("config")
def test_latest_config_archive_restores(
    request, drill, drill_config, drill_storage, restores, accept_shrink
):
    settings = configured(drill_config.config, "config")
    targets = drill_config.targets
    record = drill("config")

    backup, previous = locate_with_previous(
        drill_storage,
        "config",
        record,
        drill_config.storage.prefixes.config,
        zone=drill_config.storage.name_timezone,
        choice=Choice.of(drill_config, "config"),
    )

    with contextlib.ExitStack() as extracted:  # the extracted files are removed on exit
        with record.watch.phase("restore"):
            restored = extracted.enter_context(
                restore_config(
                    drill_storage,
                    backup,
                    passphrase_env=settings.passphrase_env,
                    timeout=targets.rto.config,
                )
            )
        # The team's own checks (restored_config) read these very files, after this drill.
        restores.hand_over(request, record, restored, release=extracted.pop_all().close)
        record.extra["restore"] = {
            "members": len(restored.members),
            "bytes_read": restored.bytes_read,
            "sha256": restored.sha256,
        }
        with record.watch.phase("validate"):
            check_config(
                record,
                backup,
                restored,
                settings.required,
                paths=settings.paths,
                optional=settings.optional,
            )
        profile = plausibility_config.config_profile(restored)
    record.extra["profile"] = profile

    # Is it believable? No file the last passing drill or the archive before it had is gone
    # (an archive without a manifest is listed by opening it).
    list_names = functools.partial(
        archive_names,
        drill_storage,
        passphrase_env=settings.passphrase_env,
        timeout=targets.rto.config,
    )
    with record.watch.phase("validate"):
        baselines, notes = plausibility_config.config_baselines(
            drill_history(drill_config), drill_config.estate.name, backup, previous, list_names
        )
    record.notes += notes
    findings = plausibility_config.judge_config(
        profile, backup, baselines, allow_vanished=settings.allow_vanished
    )
    plausibility.record_plausibility(
        record, baselines, findings, accept_shrink, what="the archive's file list"
    )

    conclude(record, targets.rto.config, targets.rpo.config, backup.taken_at)
