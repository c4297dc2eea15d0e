"""Private Docker networks and volumes, labelled with the run so the sweep can find them."""

from __future__ import annotations

import uuid

import docker
from testcontainers.core.network import Network

from drills.runtime.labels import RunSession


def private_network(session: RunSession) -> Network:
    """Create a labelled private bridge network for one drill's containers."""
    # Not `internal`: Docker publishes no ports of containers on internal-only networks, and
    # the harness reaches its containers through ports published on 127.0.0.1.
    network = Network(docker_network_kw={"labels": session.labels("network")})
    network.name = f"drill-{session.run_id}-{uuid.uuid4().hex[:6]}"
    return network.create()


def create_volume(client: docker.DockerClient, session: RunSession, role: str) -> str:
    """Create a labelled Docker volume; return its name."""
    name = f"drill-{session.run_id}-{role}-{uuid.uuid4().hex[:6]}"
    client.volumes.create(name=name, labels=session.labels(role))
    return name
