"""The old path of the backup catalog, kept for users who import it: `drills.storage.catalog`
is where it lives."""

from drills.storage.catalog import (
    DEFAULT_PREFIXES,
    Backup,
    latest,
    latest_at_or_before,
    list_backups,
    oldest_in_retention,
)

__all__ = [
    "DEFAULT_PREFIXES",
    "Backup",
    "latest",
    "latest_at_or_before",
    "list_backups",
    "oldest_in_retention",
]
