"""The application as its restored compose file runs it, brought up for a drill.

`ComposeProject.read()` reads the restored compose file through `docker compose config`
(interpolated with the restored `.env`, env files merged); its `rewrite()` is the drill's
model (`drills.runtime.compose_file`: the database replaced by the restored one, only the
drill's private network, loopback ports, labels, the restored uploads), whose images can be
checked before anything long starts; `stack()` writes it next to the original, so relative
paths mean what they meant. `start_ready()` brings it up through
testcontainers' compose support (`up --detach`, no build, no pull: every image is checked
first) and waits until the app answers HTTP; `stop()` takes it down with its volumes. Its
containers and volumes carry the run's labels, so a killed run's stack is swept like any
other container.

Compose v2 (the `docker compose` plugin) and Debian's compose v1 behind a `docker compose`
shim (scripts/setup.sh) both work: only commands and flags they share are used.

    >>> project = ComposeProject.read(restored / "docker-compose.yml", session)  # doctest: +SKIP
    >>> project.rewrite(plan, session).images()                                # doctest: +SKIP
    >>> project.stack(plan, session, client).start_ready(60).url("/health")    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import docker
import docker.errors
import requests
import yaml
from testcontainers.compose import DockerCompose

from drills.config.errors import DrillError, EnvironmentProblem
from drills.runtime.compose_file import Plan, Rewritten, rewrite
from drills.runtime.containers import LOOPBACK, ContainerNotReady
from drills.runtime.labels import RunSession
from drills.runtime.state import ContainerState, observe

DRILL_FILE = ".drill-compose.yml"
COMMAND_TIMEOUT = 120.0
SHOWN = 15
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class ComposeError(DrillError):
    """A compose command failed; the message carries what compose said."""


@dataclass
class _Compose(DockerCompose):
    """testcontainers' DockerCompose with a project name of ours and bounded, named failures."""

    project: str = ""
    timeout: float = COMMAND_TIMEOUT

    @cached_property
    def compose_command_property(self) -> list[str]:
        command = DockerCompose.compose_command_property.func(self)  # type: ignore[attr-defined]
        return [*command[:2], "-p", self.project, *command[2:]]

    def _run_command(self, cmd, context=None) -> subprocess.CompletedProcess[bytes]:
        what = " ".join(cmd[cmd.index("compose") :]) if "compose" in cmd else " ".join(cmd)
        try:
            done = subprocess.run(
                cmd, capture_output=True, cwd=context or str(self.context), timeout=self.timeout
            )
        except FileNotFoundError:
            raise EnvironmentProblem(
                "docker compose: the docker command is not installed (scripts/setup.sh "
                "installs it with the compose plugin)"
            ) from None
        except subprocess.TimeoutExpired:
            raise ComposeError(f"`{what}` did not finish within {self.timeout:.0f} s") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()[-SHOWN:]
            text = "\n".join(said) or f"exit {done.returncode}"
            if "unknown command" in text and "compose" in text:
                raise EnvironmentProblem(
                    "docker compose is not installed: the compose plugin is missing "
                    "(scripts/setup.sh installs it from Debian's docker-compose package)"
                )
            raise ComposeError(f"`{what}` failed (exit {done.returncode}):\n{text}")
        return done


@dataclass
class ComposeProject:
    """A restored compose file as `docker compose config` reads it, before any rewrite."""

    file: Path
    project: str
    model: dict
    timeout: float = COMMAND_TIMEOUT

    @classmethod
    def read(
        cls, compose_file: Path, session: RunSession, *, timeout: float = COMMAND_TIMEOUT
    ) -> ComposeProject:
        """Read `compose_file` (interpolated with the `.env` beside it, env files merged)."""
        project = f"drill-{session.run_id}-{uuid.uuid4().hex[:6]}"
        reader = _Compose(
            compose_file.parent, compose_file.name, wait=False, project=project, timeout=timeout
        )
        printed = reader._run_command([*reader.compose_command_property, "config"]).stdout
        try:
            model = yaml.safe_load(printed)
        except yaml.YAMLError as exc:
            raise ComposeError(
                f"{compose_file.name}: `docker compose config` printed no model: {exc}"
            ) from None
        if not isinstance(model, dict):
            raise ComposeError(f"{compose_file.name}: `docker compose config` printed no model")
        return cls(compose_file, project, model, timeout)

    def rewrite(self, plan: Plan, session: RunSession) -> Rewritten:
        """The drill's model of it (nothing written, nothing started)."""
        return rewrite(self.model, replace(plan, labels=session.labels()))

    def stack(self, plan: Plan, session: RunSession, client: docker.DockerClient) -> ComposeStack:
        """Write the drill's compose file next to the original; the stack, not started."""
        rewritten = self.rewrite(plan, session)
        directory = self.file.parent
        (directory / DRILL_FILE).write_text(yaml.safe_dump(rewritten.model, sort_keys=False))
        compose = _Compose(
            directory, DRILL_FILE, wait=False, project=self.project, timeout=self.timeout
        )
        return ComposeStack(compose, rewritten, client, plan.app_port)


@dataclass
class ComposeStack:
    """A restored compose project rewritten for a drill; see the module's docstring."""

    compose: _Compose
    rewritten: Rewritten
    client: docker.DockerClient
    app_port: int
    _containers: dict[str, object] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """The role name of the service serving the app's HTTP."""
        return f"api (compose service {self.rewritten.app})"

    def images(self) -> dict[str, str]:
        """The image of each service that will run."""
        return self.rewritten.images()

    def start_ready(self, timeout: float) -> ComposeStack:
        """`up --detach`, then wait until the app answers HTTP at all; a container that
        exits first fails it, with that container's logs; any failure takes it down."""
        try:
            self.compose.start()
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            for state in self.states():
                if state.trouble() is not None:
                    raise ContainerNotReady(
                        f"{state.trouble()} before the app was ready; its last output:\n"
                        f"{self.logs_of(state.name)}",
                        container=state.name,
                    )
            try:
                requests.get(self.url("/"), timeout=2)
                return
            except (requests.RequestException, DrillError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ContainerNotReady(
                    f"the {self.display} container did not answer HTTP within {timeout:.0f} s "
                    f"(last: {last}); its last output:\n{self.logs_of()}",
                    container=self.display,
                )
            time.sleep(0.2)

    def containers(self) -> dict[str, object]:
        """The stack's containers by service (docker-py objects)."""
        if not self._containers:
            found = self.client.containers.list(
                all=True, filters={"label": f"{PROJECT_LABEL}={self.compose.project}"}
            )
            self._containers = {c.labels.get(SERVICE_LABEL): c for c in found}
        return self._containers

    def _name(self, service: str) -> str:
        return self.display if service == self.rewritten.app else f"compose service {service}"

    def url(self, path: str = "/") -> str:
        """The URL of a path of the app's HTTP, on loopback."""
        container = self.containers().get(self.rewritten.app)
        if container is None:
            raise DrillError(f"the {self.display} container was not created")
        container.reload()
        bound = (container.ports or {}).get(f"{self.app_port}/tcp") or []
        port = next((b["HostPort"] for b in bound if b.get("HostIp") == LOOPBACK), None)
        if port is None:
            raise DrillError(
                f"the {self.display} container publishes no port {self.app_port} ([app] port)"
            )
        return f"http://{LOOPBACK}:{port}{path}"

    def states(self) -> list[ContainerState]:
        """One look at each service's container, the app's first."""
        order = sorted(self.containers(), key=lambda s: s != self.rewritten.app)
        return [
            observe(self.containers()[s], self._name(s), one_shot=self.rewritten.one_shot(s))
            for s in order
        ]

    def logs_of(self, name: str | None = None, lines: int = 40) -> str:
        """The last lines of a service container's output, by role name (None: the app's)."""
        wanted = name or self.display
        for service, container in self.containers().items():
            if self._name(service) == wanted:
                try:
                    return container.logs(tail=lines).decode(errors="replace").rstrip()
                except docker.errors.DockerException:
                    return "(no logs: the container is gone)"
        return f"(no container {wanted})"

    def stop(self) -> None:
        """Take the stack down with its volumes (best effort; the sweep takes what is left)."""
        down = [*self.compose.compose_command_property, "down", "--volumes", "--remove-orphans"]
        with contextlib.suppress(DrillError):
            self.compose._run_command([*down, "--timeout", "1"])
        self._containers = {}
