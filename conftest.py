"""Root conftest: lists the fixture modules, holds no logic."""

pytest_plugins = [
    "drills.suite.fixtures",
    "drills.suite.public",
    "fixtures.runtime",
    "fixtures.storage",
    "fixtures.estate_backups",
    "fixtures.shapes",
    "fixtures.pitr",
    "fixtures.apps",
    "fixtures.receivers",
    "fixtures.engines",
]
