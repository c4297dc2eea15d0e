"""One posture check's result: its name, whether it passed, its evidence, its fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TITLES = {
    "versioning": "versioning is on",
    "object_lock": "Object Lock covers the RPO window",
    "encryption": "default encryption is set",
    "public_access": "public access is blocked",
    "tls_only": "the bucket policy refuses non-TLS access",
    "lifecycle": "lifecycle rules keep backups for the promised retention",
    "permissions": "local backups are not readable by group or others",
    "owner": "local backups are owned by the backup user",
}


@dataclass(frozen=True)
class Finding:
    """One posture check: its name, whether it passed, what it read, and how to fix it."""

    name: str
    passed: bool
    evidence: str
    fix: str = ""

    @property
    def title(self) -> str:
        """The check in words ("versioning is on")."""
        return TITLES[self.name]

    def as_dict(self, required: bool) -> dict[str, Any]:
        """The finding as drill.json keeps it under `posture`."""
        return {
            "check": self.name,
            "title": self.title,
            "required": required,
            "passed": self.passed,
            "evidence": self.evidence,
            "fix": "" if self.passed else self.fix,
        }
