"""The error types of the harness, each mapped to one exit code of the `drill` command.

Every error carries a message that names the thing and the cause, so that a failed drill
explains itself without a traceback.
"""


class DrillError(Exception):
    """A named cause that fails a drill or a command (exit code 1).

    `container`, when set, names the container (by its role: "db", "api", "compose service
    worker") that caused it; the report shows that container's logs beside the cause.
    """

    exit_code = 1
    container: str | None = None

    def __init__(self, *args: object, container: str | None = None) -> None:
        super().__init__(*args)
        if container is not None:
            self.container = container


class ConfigError(DrillError):
    """The configuration or the command line is wrong (exit code 2)."""

    exit_code = 2


class EnvironmentProblem(DrillError):
    """The machine cannot run drills: no Docker engine, an image cannot be built (exit code 3)."""

    exit_code = 3


class StorageError(DrillError):
    """The backup storage cannot be read or written (unreachable, denied, missing object)."""


class IntegrityError(DrillError):
    """A backup's bytes disagree with its manifest or its compressor's own check."""


class ManifestError(IntegrityError):
    """A backup's manifest cannot be read: not JSON, a missing field, a field of the wrong type."""
