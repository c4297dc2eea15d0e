"""Settings, errors and clocks: the foundation every other part of the harness stands on.

- `schema`: drill.toml as frozen dataclasses, every setting documented where it is defined;
- `loading`: one resolver, command line > environment > file > defaults (`load_config`);
- `errors`: the error types, each mapped to one exit code of the `drill` command;
- `clock`: stopwatches, targets and durations as people read them.

It imports nothing of the harness; every part may import it.
"""

from drills.config.loading import (
    COMMAND_LINE,
    CONFIG_ENV,
    DEFAULT_FILE,
    ENV_PREFIX,
    ConfigKey,
    config_keys,
    load_config,
    parse_duration,
)
from drills.config.schema import Config, redact_text

__all__ = [
    "COMMAND_LINE",
    "CONFIG_ENV",
    "DEFAULT_FILE",
    "ENV_PREFIX",
    "Config",
    "ConfigKey",
    "config_keys",
    "load_config",
    "parse_duration",
    "redact_text",
]
