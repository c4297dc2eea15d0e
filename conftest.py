"""Root conftest: lists the fixture modules, holds no logic."""

pytest_plugins = [
    "fixtures.runtime",
    "fixtures.storage",
    "fixtures.drills",
    "fixtures.estate_backups",
    "fixtures.shapes",
    "fixtures.pitr",
    "fixtures.apps",
    "fixtures.receivers",
]
