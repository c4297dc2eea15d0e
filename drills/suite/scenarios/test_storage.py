"""Drill: the storage itself protects the backups (the `storage` kind, `[posture]`).

The runbook's promise of a private, encrypted bucket, as a drill: versioning and Object Lock
against an attacker who deletes backups, default encryption, no public access, no plain-HTTP
access, lifecycle rules that keep every backup as long as promised; for backups in a local
directory, modes no looser than 600/700 and one owner, the backup user. Each check carries
what was read and, when it failed, the setting that fixes it.
"""

from __future__ import annotations

import pytest

from drills.checks import posture
from drills.checks.conclusion import conclude
from drills.suite.fixtures import configured


@pytest.mark.drill("storage")
def test_storage_protects_the_backups(drill, drill_config, drill_storage):
    record = drill("storage")
    settings = configured(drill_config.posture, "posture")
    required = posture.required_checks(settings, drill_storage, drill_config)

    with record.watch.phase("verify"):
        findings = posture.assess(drill_storage, drill_config)
    posture.record_findings(record, findings, required)

    conclude(record, None, None, None)
