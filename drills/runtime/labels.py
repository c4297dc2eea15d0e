"""Labels on everything a run creates, the run's liveness lock, and the sweep of dead runs.

Every container, network and volume the harness creates carries `PROJECT` and `RUN` labels.
A run holds an exclusive lock on `<run dir>/<run id>.lock` for its whole life; a run whose
lock nobody holds is dead (finished, crashed, Ctrl-C'd or SIGKILLed), and its leftovers are
removed by the next run's sweep. The sweep only ever looks at objects with the project label.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger(__name__)

PROJECT = "io.recovery-drills.project"
PROJECT_VALUE = "recovery-drills"
RUN = "io.recovery-drills.run"
ROLE = "io.recovery-drills.role"
NAME = "io.recovery-drills.name"  # the container's name by role in reports ("db", "api")
HOST = "io.recovery-drills.host"
PID = "io.recovery-drills.pid"


def runs_dir() -> Path:
    """Where live runs keep their lock files (shared by every run on this machine)."""
    path = Path(os.environ.get("DRILL_RUN_DIR") or Path(tempfile.gettempdir()) / "recovery-drills")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class RunSession:
    """One run of the harness: its id, its labels and the lock that says it is alive.

    >>> session = RunSession.begin()      # doctest: +SKIP
    >>> session.labels(role="postgres")   # doctest: +SKIP
    """

    run_id: str
    _lock_handle: object = field(default=None, repr=False)

    @classmethod
    def begin(cls, run_id: str | None = None) -> RunSession:
        """Start a run: take its liveness lock."""
        session = cls(run_id or f"{uuid.uuid4().hex[:12]}")
        path = runs_dir() / f"{session.run_id}.lock"
        handle = open(path, "w")  # noqa: SIM115 - held open for the life of the run
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        session._lock_handle = handle
        return session

    def labels(self, role: str = "", name: str = "") -> dict[str, str]:
        """The labels for one object this run creates (`name`: its name by role)."""
        labels = {
            PROJECT: PROJECT_VALUE,
            RUN: self.run_id,
            HOST: socket.gethostname(),
            PID: str(os.getpid()),
        }
        if role:
            labels[ROLE] = role
        if name:
            labels[NAME] = name
        return labels

    def end(self, client: docker.DockerClient | None) -> list[str]:
        """Remove everything this run created (best effort), then release the lock."""
        removed: list[str] = []
        try:
            if client is not None:
                removed = remove_run(client, self.run_id)
        finally:
            handle = self._lock_handle
            if handle is not None:
                self._lock_handle = None
                handle.close()
                (runs_dir() / f"{self.run_id}.lock").unlink(missing_ok=True)
        return removed


def is_alive(run_id: str) -> bool:
    """True when some process holds the run's lock."""
    path = runs_dir() / f"{run_id}.lock"
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def list_containers(client: docker.DockerClient, filters: dict) -> list:
    """Every container (running or not) matching `filters`, inspected. One removed between
    the listing and its inspection (a short-lived container of a live run) is left out:
    docker-py's own `containers.list` fails as a whole on it."""
    found = []
    for summary in client.api.containers(all=True, filters=filters):
        try:
            found.append(client.containers.get(summary["Id"]))
        except docker.errors.NotFound:
            continue
    return found


def remove_run(client: docker.DockerClient, run_id: str) -> list[str]:
    """Remove the containers, then networks, then volumes of one run; each step best effort."""
    removed: list[str] = []
    selector = {"label": [f"{PROJECT}={PROJECT_VALUE}", f"{RUN}={run_id}"]}
    for container in _safe_list(list_containers, client=client, filters=selector):
        if _best_effort(lambda c=container: c.remove(force=True, v=True), container.name):
            removed.append(f"container {container.name}")
    for network in _safe_list(client.networks.list, filters=selector):
        if _best_effort(network.remove, network.name):
            removed.append(f"network {network.name}")
    for volume in _safe_list(client.volumes.list, filters=selector):
        if _best_effort(lambda v=volume: v.remove(force=True), volume.name):
            removed.append(f"volume {volume.name}")
    return removed


def sweep(client: docker.DockerClient, keep: str | None = None) -> list[str]:
    """Remove what dead runs left behind; never touches objects without the project label."""
    selector = {"label": f"{PROJECT}={PROJECT_VALUE}"}
    runs: set[str] = set()
    # Stopped and never-started containers too (list_containers lists all): a run killed
    # between create and start, or whose containers exited, may have nothing else left.
    found = _safe_list(list_containers, client=client, filters=selector)
    found += _safe_list(client.networks.list, filters=selector)
    found += _safe_list(client.volumes.list, filters=selector)
    for obj in found:
        labels = obj.attrs.get("Labels") or obj.attrs.get("Config", {}).get("Labels") or {}
        if labels.get(RUN):
            runs.add(labels[RUN])
    removed: list[str] = []
    for run in sorted(runs):
        if run != keep and not is_alive(run):
            removed += remove_run(client, run)
    if removed:
        log.info("swept leftovers of dead runs: %s", ", ".join(removed))
    return removed


def _safe_list(lister, **kwargs) -> list:
    try:
        return list(lister(**kwargs))
    except docker.errors.APIError as exc:
        log.warning("listing for cleanup failed: %s", exc)
        return []


def _best_effort(action, name: str) -> bool:
    try:
        action()
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        log.warning("could not remove %s: %s", name, exc)
        return False
    return True
