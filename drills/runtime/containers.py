"""What every container of ours shares: labels, loopback-only ports, readiness with logs."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable

import docker.errors
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from drills.config.errors import DrillError
from drills.runtime.labels import RunSession
from drills.runtime.state import ROLE_NAMES, ContainerState, observe

LOOPBACK = "127.0.0.1"


class ContainerNotReady(DrillError):
    """A container did not become ready within its bound; the message carries its logs."""


class LabelledContainer(DockerContainer):
    """A testcontainers container labelled with the run, publishing ports on 127.0.0.1 only.

    It is named by its role (`drill-<run>-<name>-<random>`, the name "db" for a Postgres
    container unless `name` says otherwise), so that `docker ps` and the reports say what
    each container is for.
    """

    role = "container"

    def __init__(self, image: str, session: RunSession, *, name: str | None = None, **kwargs):
        super().__init__(image, **kwargs)
        self.session = session
        self.display = name or ROLE_NAMES.get(self.role, self.role)
        # with_kwargs() replaces all kwargs, so options are set on the dict directly.
        self._kwargs["labels"] = session.labels(self.role, self.display)
        slug = "".join(c if c.isalnum() else "-" for c in self.display)
        self.with_name(f"drill-{session.run_id}-{slug}-{uuid.uuid4().hex[:6]}")

    def publish(self, port: int) -> LabelledContainer:
        """Publish a container port on a random loopback port (never on every interface)."""
        self.ports[f"{port}/tcp"] = (LOOPBACK, None)
        return self

    def on_network(self, network: Network | None, *aliases: str) -> LabelledContainer:
        """Join a private network under aliases; without one, the default bridge."""
        if network is None:
            # Naming the network stops testcontainers from guessing one from /.dockerenv.
            self._kwargs["network"] = "bridge"
        else:
            self.with_network(network)
            if aliases:
                self.with_network_aliases(*aliases)
        return self

    def host_port(self, port: int) -> int:
        """The loopback port a container port is published on."""
        return int(self.get_exposed_port(port))

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of the container's output (stdout and stderr), for error messages."""
        try:
            raw = self.get_wrapped_container().logs(tail=lines)
        except (docker.errors.DockerException, AttributeError):
            return "(no logs: the container is gone)"
        return raw.decode(errors="replace").rstrip()

    def state(self) -> str:
        """'running', 'exited', ... as Docker reports it now."""
        try:
            container = self.get_wrapped_container()
            container.reload()
            return container.status
        except (docker.errors.DockerException, AttributeError):
            return "gone"

    def observe(self) -> ContainerState:
        """One look at the container: running, restarts, exit code, health."""
        try:
            container = self.get_wrapped_container()
        except AttributeError:
            return ContainerState(self.display, "gone")
        if container is None:
            return ContainerState(self.display, "gone")
        return observe(container, self.display)

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll `probe` until true; fail fast if the container exits; the error carries logs."""
        started = time.monotonic()
        last_error = ""
        while True:
            try:
                if probe():
                    return time.monotonic() - started
            except Exception as exc:  # the probe's failures are the expected "not yet"
                last_error = f"{type(exc).__name__}: {exc}".strip()
            state = self.state()
            if state in ("exited", "dead", "gone"):
                raise ContainerNotReady(
                    f"{what} exited before it was ready (state {state}); its last output:\n"
                    f"{self.logs_tail()}",
                    container=self.display,
                )
            if time.monotonic() - started > timeout:
                raise ContainerNotReady(
                    f"{what} not ready within {timeout:.0f} s (last probe: {last_error or 'no'});"
                    f" its last output:\n{self.logs_tail()}",
                    container=self.display,
                )
            time.sleep(0.1)

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container; a container already gone is not an error."""
        with contextlib.suppress(docker.errors.NotFound):
            super().stop(force=force, delete_volume=delete_volume)

    def start_or_clean(self, ready: Callable[[], None]) -> LabelledContainer:
        """Start, wait until `ready()` returns; on any failure remove the container first."""
        try:
            self.start()
            ready()
        except BaseException:
            self.stop()
            raise
        return self
