"""S3 storage classes and the provider's documented time to read a backup back from each.

An object in GLACIER (Flexible Retrieval) or DEEP_ARCHIVE cannot be read until a restore
request has made a temporary copy; how long that takes depends on the retrieval tier asked
for. These are AWS's documented ranges (Amazon S3 User Guide, "Archive retrieval options"):

=============  ===========  ================  ============
class          Expedited    Standard          Bulk
=============  ===========  ================  ============
GLACIER        1-5 minutes  3-5 hours         5-12 hours
DEEP_ARCHIVE   not offered  within 12 hours   within 48 hours
GLACIER_IR     milliseconds (read directly, no restore request)
=============  ===========  ================  ============

STANDARD, STANDARD_IA, ONEZONE_IA, REDUCED_REDUNDANCY and INTELLIGENT_TIERING's frequent and
infrequent tiers are read directly. (INTELLIGENT_TIERING's opt-in archive tiers are not
listed by the storage class, so they are not told apart here.) Other providers' archive
classes behave alike; the table is AWS's. A drill compares the upper end of a range with the
RTO: a documented "3-5 hours" cannot meet a 2 h target.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = 60.0
HOUR = 3600.0

TIERS = ("Expedited", "Standard", "Bulk")
DEFAULT_TIER = "Standard"
"""The tier S3 uses for a restore request that names none."""


@dataclass(frozen=True)
class Retrieval:
    """How long one tier takes to make an archived object readable, as documented."""

    tier: str
    low_s: float
    high_s: float
    words: str


RETRIEVAL: dict[str, dict[str, Retrieval]] = {
    "GLACIER": {
        "Expedited": Retrieval("Expedited", MINUTE, 5 * MINUTE, "1-5 minutes"),
        "Standard": Retrieval("Standard", 3 * HOUR, 5 * HOUR, "3-5 hours"),
        "Bulk": Retrieval("Bulk", 5 * HOUR, 12 * HOUR, "5-12 hours"),
    },
    "DEEP_ARCHIVE": {
        "Standard": Retrieval("Standard", 0.0, 12 * HOUR, "within 12 hours"),
        "Bulk": Retrieval("Bulk", 0.0, 48 * HOUR, "within 48 hours"),
    },
}
"""The classes that need a restore request, and each tier they offer."""

DIRECT = {
    "GLACIER_IR": "milliseconds (read directly)",
}
"""Archive classes read without a restore request, and how fast."""

# From the readiest to the coldest: a backup of many objects is as slow as its coldest one.
_COLDNESS = ["STANDARD", "REDUCED_REDUNDANCY", "INTELLIGENT_TIERING", "STANDARD_IA",
             "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]  # fmt: skip


def needs_restore(storage_class: str | None) -> bool:
    """Whether an object of this class can be read only after a restore request."""
    return storage_class in RETRIEVAL


def retrieval(storage_class: str, tier: str) -> Retrieval | None:
    """The documented time of `tier` for `storage_class`; None when the class does not offer
    it (DEEP_ARCHIVE has no Expedited) or needs no restore."""
    return RETRIEVAL.get(storage_class, {}).get(tier)


def coldness(storage_class: str | None) -> int:
    """How far from readable a class is (0: STANDARD, or unknown, or a local file)."""
    try:
        return _COLDNESS.index(storage_class or "STANDARD")
    except ValueError:
        return 0


def documented(storage_class: str) -> str:
    """Each tier's documented time for a class, in words, for the report."""
    if storage_class in RETRIEVAL:
        offered = RETRIEVAL[storage_class]
        return "; ".join(
            f"{tier} {offered[tier].words}" if tier in offered else f"{tier} not offered"
            for tier in TIERS
        )
    return DIRECT.get(storage_class, "read directly")
