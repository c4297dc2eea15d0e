"""What a drill's record says of the containers of its run: name by role, image, image id,
state, client tool versions and, when the drill failed, the tail of their logs (keyed by
each container's name by role: "db", "api", "compose service worker").

The plugin fills the record with these when a drill's test finishes; the reports read them
from the record and never ask the engine themselves. Everything taken from a container passes
through the harness's redaction.

    >>> describe_containers(client, session.run_id, record, with_logs=True)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors

from drills.config.schema import redact_text
from drills.record import DrillRecord
from drills.runtime import labels
from drills.runtime.state import role_name

LOG_LINES = 60
TOOLS = "pg_dump --version; pg_restore --version; psql --version"


def describe_containers(
    client: docker.DockerClient, run_id: str, record: DrillRecord, *, with_logs: bool
) -> None:
    """Put the run's containers (`containers`) and, `with_logs`, their logs (`logs`) into
    the record; a listing that fails is a note, not an error."""
    mine = [f"{labels.PROJECT}={labels.PROJECT_VALUE}", f"{labels.RUN}={run_id}"]
    try:
        containers = labels.list_containers(client, {"label": mine})
    except docker.errors.DockerException as exc:
        record.notes.append(f"the run's containers could not be listed for the report: {exc}")
        return
    record.extra["containers"] = [_container_facts(c) for c in containers]
    if with_logs and containers:
        logs = record.extra.setdefault("logs", {})
        for container in containers:
            name = _role_name(container)
            if name in logs:  # two containers of one role: the second by its Docker name too
                name = f"{name} ({container.name})"
            logs.setdefault(name, _logs_tail(container))


def _role_name(container) -> str:
    found = (container.attrs.get("Config") or {}).get("Labels") or {}
    return role_name(found, found.get(labels.ROLE))


def _container_facts(container) -> dict[str, Any]:
    config = container.attrs.get("Config") or {}
    role = (config.get("Labels") or {}).get(labels.ROLE)
    facts = {
        "name": container.name,
        "role": role,
        "role_name": _role_name(container),
        "image": config.get("Image"),
        "image_id": container.attrs.get("Image"),
        "state": container.status,
    }
    if role == "postgres" and container.status == "running":
        try:
            result = container.exec_run(["sh", "-c", TOOLS])
            facts["tools"] = result.output.decode(errors="replace").strip().splitlines()
        except docker.errors.DockerException as exc:
            facts["tools"] = [f"unknown ({exc})"]
    return facts


def _logs_tail(container) -> str:
    try:
        raw = container.logs(tail=LOG_LINES)
    except docker.errors.DockerException as exc:
        return f"(no logs: {exc})"
    return redact_text(raw.decode(errors="replace").rstrip()) or "(no output)"
