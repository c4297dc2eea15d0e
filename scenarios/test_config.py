"""Drill: the latest config archive decrypts, holds the required files, and they parse.

Runbook: locate the newest archive -> fetch it (sha256 against the manifest) and decrypt it
with the passphrase from the configured environment variable -> extract it into a private
temporary directory -> the required files are present, every .env-style file parses, members
equal the manifest's checksums -> the directory is removed -> compare the time taken with the
RTO and the archive's age with the RPO. No value is ever printed or written to a report.
"""

from __future__ import annotations

import contextlib

import pytest

from drills.restore_config import check_config, restore_config
from drills.steps import conclude, locate
from fixtures.drills import configured


@pytest.mark.drill("config")
def test_latest_config_archive_restores(drill, drill_config, drill_storage):
    settings = configured(drill_config.config, "config")
    targets = drill_config.targets
    record = drill("config")

    backup = locate(drill_storage, "config", record, drill_config.storage.prefixes.config)

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
        record.extra["restore"] = {
            "members": len(restored.members),
            "bytes_read": restored.bytes_read,
            "sha256": restored.sha256,
        }
        with record.watch.phase("validate"):
            check_config(record, backup, restored, settings.required)

    conclude(record, targets.rto.config, targets.rpo.config, backup.taken_at)
