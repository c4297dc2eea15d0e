"""What a container is doing now, as a drill watches it: running, restarted, unhealthy, gone.

A drill that starts an application watches its containers until it holds: an exit, a
restart (Docker's restart count, or the `restarting` state) or the container's own
healthcheck turning `unhealthy` is trouble, named with the container's role.

    >>> before = observe(container, "api")                         # doctest: +SKIP
    >>> observe(container, "api").trouble(before)                  # doctest: +SKIP
    'the api container exited (code 1)'
"""

from __future__ import annotations

from dataclasses import dataclass

import docker.errors

from drills.runtime.labels import NAME

# Docker's own names for the roles a drill gives its containers.
ROLE_NAMES = {"postgres": "db"}


def role_name(labels: dict[str, str], role: str | None) -> str:
    """A container's name by role: the name label a drill gave it, else its role's."""
    return labels.get(NAME) or ROLE_NAMES.get(role or "", role or "container")


@dataclass(frozen=True)
class ContainerState:
    """One look at a container."""

    name: str
    """Its role: "api", "db", "compose service worker"."""
    status: str
    """Docker's: running, restarting, exited, dead, created, paused; "gone" once removed."""
    restarts: int = 0
    exit_code: int | None = None
    health: str | None = None
    """Its own healthcheck's verdict (healthy, unhealthy, starting); None without one."""
    one_shot: bool = False
    """A job that may run to completion (a compose service with no restart policy)."""

    def trouble(self, before: ContainerState | None = None) -> str | None:
        """What is wrong with it now (compared with an earlier look), None when nothing is."""
        if self.status == "gone":
            return f"the {self.name} container is gone (removed while the drill watched it)"
        if self.status in ("exited", "dead"):
            if self.one_shot and self.exit_code == 0:
                return None
            return f"the {self.name} container exited (code {self.exit_code})"
        if self.status == "restarting" or (before is not None and self.restarts > before.restarts):
            return f"the {self.name} container restarted ({self.restarts} restarts so far)"
        if self.health == "unhealthy":
            return f"the {self.name} container's own healthcheck says unhealthy"
        return None


def observe(container, name: str, *, one_shot: bool = False) -> ContainerState:
    """Look at a docker-py container now (it is reloaded)."""
    try:
        container.reload()
    except docker.errors.NotFound:
        return ContainerState(name, "gone")
    except docker.errors.DockerException:
        return ContainerState(name, "unknown")
    state = container.attrs.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    return ContainerState(
        name,
        state.get("Status") or container.status,
        int(container.attrs.get("RestartCount") or 0),
        state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
        health,
        one_shot,
    )
