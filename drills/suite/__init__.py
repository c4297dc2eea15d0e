"""The drill suite shipped in the package: the built-in scenarios and their fixtures.

`drills/suite/scenarios/` holds the built-in drills, one pytest test per kind; `drill run`
collects them, and the team's own checks beside them (`[run] scenarios`, or paths on the
command line). `drills.suite.fixtures` holds the fixtures they use, and `drills.suite.public`
the public ones a team's own checks ask for (`restored_database`, `restored_files`,
`restored_config`, `api_stack`, `drill_record`): each gives what the drill's own restore made,
never a second restore.
"""

from pathlib import Path

SCENARIOS = Path(__file__).with_name("scenarios")
