"""Archive tiers counted in the RTO: each backup's storage class, the time the provider
documents to read it back, the class lifecycle rules will have moved it to on the last day it
is promised, and the thaw of an archived backup before it is drilled.

`judge_archive()` records, for the backups inside the promised window, the classes they are
in now and the classes the bucket's lifecycle rules give them on their last promised day
(drill.json's ``archive``), each class's documented retrieval times (`drills.storage.tiers`),
and a check: the retrieval of the configured tier (`[storage] thaw`, else S3's default,
Standard) fits the drill's RTO for every archive class a backup inside the window is or will
be in. `thaw_backup()` makes an archived backup readable in a phase of its own ("thaw").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from drills.checks.choice import Choice
from drills.config.clock import human
from drills.record import DrillRecord
from drills.storage import Storage
from drills.storage.catalog import Backup
from drills.storage.lifecycle import EXPIRED, Rule, class_at, parse_rules
from drills.storage.pick import Picked
from drills.storage.thaw import archived_objects, thaw
from drills.storage.tiers import DEFAULT_TIER, documented, needs_restore, retrieval

CHECK = "archive retrieval fits the RTO"


def judge_archive(
    storage: Storage, backups: Sequence[Backup], picked: Picked, record: DrillRecord, choice: Choice
) -> None:
    """Record the window's storage classes, now and on their last promised day, with their
    documented retrieval times; check that the retrieval fits the RTO."""
    window = [b for b in backups if picked.window_start <= b.taken_at <= picked.window_end]
    now = Counter(b.storage_class for b in window if b.storage_class)
    lister = getattr(storage, "lifecycle_rules", None)
    rules = parse_rules(lister()) if lister is not None else []
    later: Counter[str] = Counter()
    moved_by: dict[str, str] = {}
    days = choice.retention / timedelta(days=1)
    for backup in window:
        # Its last promised day: the window's length after it was taken.
        cls, rule = _class_at(storage, rules, backup, days)
        later[cls] += 1
        if rule:
            moved_by.setdefault(cls, rule)
    drilled = picked.backup
    needed, _ = _class_at(storage, rules, drilled, days)
    if not now and not rules:
        return  # local files, or a bucket with no class to tell: nothing to count
    in_use = sorted(set(now) | {c for c in later if c != EXPIRED})
    tier = choice.thaw or DEFAULT_TIER
    record.extra["archive"] = {
        "drilled_class": drilled.storage_class,
        # The drilled backup on the last day it is promised: its class then, by the rules.
        "drilled_last_promised_day": (drilled.taken_at + choice.retention).date().isoformat(),
        "drilled_class_then": needed,
        "classes_now": dict(now),
        "classes_on_last_promised_day": dict(later),
        "lifecycle_rules": [_rule(r) for r in rules],
        "retrieval": {cls: documented(cls) for cls in in_use},
        "tier": tier,
    }
    if later.get(EXPIRED):
        record.notes.append(
            f"{later[EXPIRED]} backups inside the window are expired by lifecycle rule "
            f"{moved_by[EXPIRED]} before their last promised day"
        )
    archived = [cls for cls in in_use if needs_restore(cls)]
    if archived and choice.rto_s is not None:
        _check_rto(record, archived, now, later, moved_by, tier, choice.rto_s)


def _class_at(
    storage: Storage, rules: list[Rule], backup: Backup, age_days: float
) -> tuple[str, str | None]:
    bucket_key = getattr(storage, "bucket_key", None)
    key = bucket_key(backup.key) if bucket_key is not None else backup.key
    return class_at(rules, key, age_days, backup.storage_class or "STANDARD")


def _rule(rule: Rule) -> dict:
    return {
        "id": rule.id,
        "prefix": rule.prefix,
        "transitions": [list(t) for t in rule.transitions],
        "expiration_days": rule.expiration_days,
    }


def _check_rto(record, archived, now, later, moved_by, tier, rto_s) -> None:
    over, fits = [], []
    for cls in archived:
        where = f"{now.get(cls, 0)} backups of the window now, {later.get(cls, 0)} by their last"
        where += " promised day" + (f" (lifecycle rule {moved_by[cls]})" if cls in moved_by else "")
        found = retrieval(cls, tier)
        if found is None:
            over.append(f"{cls} ({where}) offers no {tier} retrieval ({documented(cls)})")
        elif found.high_s > rto_s:
            over.append(
                f"{cls} ({where}): {tier} retrieval takes {found.words} (documented), over the "
                f"RTO of {human(rto_s)}"
            )
        else:
            fits.append(f"{cls}: {tier} retrieval {found.words}, within the RTO of {human(rto_s)}")
    record.check(CHECK, not over, "; ".join(over or fits))


def thaw_backup(storage: Storage, backup: Backup, record: DrillRecord, choice: Choice) -> None:
    """With `[storage] thaw`, restore an archived backup from its archive tier (the phase
    "thaw", counted in the RTO); without, leave it: reading it fails naming its class."""
    if not needs_restore(backup.storage_class):
        return
    if choice.thaw is None:
        record.notes.append(
            f"{backup.key} is in {backup.storage_class}: it cannot be read before a restore "
            'from the archive; [storage] thaw = "Expedited", "Standard" or "Bulk" has the drill '
            "ask for it and wait"
        )
        return
    bound = choice.thaw_timeout or choice.rto_s or 12 * 3600.0
    with record.watch.phase("thaw"):
        objects = archived_objects(storage, backup)
        done = thaw(storage, objects, choice.thaw, bound)
    record.extra["thaw"] = {
        "tier": done.tier,
        "objects": done.objects,
        "classes": list(done.classes),
        "seconds": round(done.seconds, 3),
        "polls": done.polls,
        "documented": {cls: documented(cls) for cls in done.classes},
    }
