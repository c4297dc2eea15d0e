"""The built-in drill `test_system`; it ships in the package, in drills/suite/scenarios/.

This face lets `pytest scenarios/ --drill-config drill.toml` run it from a checkout; `drill run`
collects the packaged module itself.
"""

from drills.suite.scenarios.test_system import *  # noqa: F403
