"""Is there a Docker engine, and what to do when there is none."""

from __future__ import annotations

import docker
import docker.errors

from drills.config.errors import EnvironmentProblem

ADVICE = (
    "start one with `sudo scripts/docker-engine.sh` (Debian, as root: installs docker.io and "
    "starts dockerd), or point DOCKER_HOST at a running engine"
)


OPERATION_TIMEOUT_S = 300


def connect(timeout: float = 10.0) -> docker.DockerClient:
    """Return a client of a Docker engine that answers, or raise EnvironmentProblem."""
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
        client.ping()
        # A short bound to learn whether an engine answers; a longer one for real work
        # (creating containers, copying archives into them), still a bound.
        client.api.timeout = OPERATION_TIMEOUT_S
    except (docker.errors.DockerException, OSError) as exc:
        where = _where()
        raise EnvironmentProblem(
            f"no Docker engine answers at {where} ({_short(exc)}); {ADVICE}"
        ) from None
    return client


def _where() -> str:
    import os

    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
