"""The pytest plugin of recovery-drills: options, markers and the run's session hooks."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; part of the CI test command")
    config.addinivalue_line("markers", "docker: needs a Docker engine (fails without one)")
