"""A bucket's lifecycle rules, read, and the storage class they give a backup at an age.

The seed runbook's lifecycle moves backups to STANDARD_IA after 30 days, to GLACIER after 90
and expires them at 365: a backup drilled today in STANDARD may be in GLACIER the day it is
needed. `class_at()` predicts that day's class from the rules (enabled rules whose prefix
filter matches the key; transitions by days since the object was written), so a drill can
count the retrieval in the RTO before the day comes.

Example::

    rules = parse_rules(storage.lifecycle_rules())
    print(class_at(rules, storage.bucket_key("database/app_20250115_020000.sql.gz"), 120))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drills.storage.tiers import coldness

EXPIRED = "EXPIRED"
"""The class `class_at` gives a backup a rule has deleted by then."""


@dataclass(frozen=True)
class Rule:
    """One enabled lifecycle rule: the keys it covers and what it does at which age."""

    id: str
    prefix: str
    transitions: tuple[tuple[int, str], ...]
    """(days, storage class), soonest first."""
    expiration_days: int | None = None


def parse_rules(raw: Sequence[dict[str, Any]]) -> list[Rule]:
    """The enabled rules of S3's GetBucketLifecycleConfiguration answer (tag filters and
    date-based actions are not read: they cannot be placed on a backup's age)."""
    rules = []
    for item in raw:
        if item.get("Status") != "Enabled":
            continue
        found = item.get("Filter") or {}
        prefix = found.get("Prefix", (found.get("And") or {}).get("Prefix", item.get("Prefix")))
        transitions = tuple(
            sorted(
                (int(t["Days"]), str(t["StorageClass"]))
                for t in item.get("Transitions", [])
                if "Days" in t
            )
        )
        expiration = (item.get("Expiration") or {}).get("Days")
        rules.append(
            Rule(
                id=str(item.get("ID") or "(unnamed)"),
                prefix=prefix or "",
                transitions=transitions,
                expiration_days=int(expiration) if expiration is not None else None,
            )
        )
    return rules


def class_at(
    rules: Sequence[Rule], bucket_key: str, age_days: float, written_class: str = "STANDARD"
) -> tuple[str, str | None]:
    """The class an object (`bucket_key`, with the storage's prefix) is in at `age_days`,
    and the rule that put it there (None: no rule acted): `EXPIRED` once a rule deleted it.
    A transition never makes an object readier than it was written."""
    current, why = written_class, None
    for rule in rules:
        if not bucket_key.startswith(rule.prefix):
            continue
        if rule.expiration_days is not None and age_days >= rule.expiration_days:
            return EXPIRED, rule.id
        for days, storage_class in rule.transitions:
            if age_days >= days and coldness(storage_class) > coldness(current):
                current, why = storage_class, rule.id
    return current, why
