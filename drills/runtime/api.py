"""The application under drill: its API in one container, next to its database on a private
network (a compose stack of it is `drills.runtime.stack`).

Both forms are a `RunningApp`: the URL of a path on loopback, one look at each of its
containers, the tail of a container's logs (`logs_of`), and `stop()`.

>>> api = start_api(image, session, network=net, env={"DATABASE_URL": url},
...                 uploads_volume=vol)                                # doctest: +SKIP
>>> requests.get(api.url("/health")).status_code                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import requests
from testcontainers.core.network import Network

from drills.config.errors import ConfigError
from drills.runtime.containers import LOOPBACK, LabelledContainer
from drills.runtime.labels import RunSession
from drills.runtime.state import ContainerState


class RunningApp(Protocol):
    """An application a drill started, whatever its form."""

    display: str
    """The role name of the container that serves its HTTP ("api")."""

    def url(self, path: str = "/") -> str:
        """The URL of a path of its HTTP, on loopback."""
        ...

    def states(self) -> list[ContainerState]:
        """One look at each of its containers, the HTTP one first."""
        ...

    def logs_of(self, name: str | None = None, lines: int = 40) -> str:
        """The last lines of a container's output (by role name; None: the HTTP one)."""
        ...

    def stop(self) -> None:
        """Remove it; what is gone already is not an error."""
        ...


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class DatabaseAddress:
    """Where the app finds the restored database, from inside the drill's network."""

    host: str
    name: str
    user: str
    password: str
    port: int = 5432

    @property
    def url(self) -> str:
        """A libpq URL of it."""
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{quote(self.name)}"


def unset_variables(
    overrides: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The ${NAME}s `[app] env` refers to that the drill's environment does not set."""
    environ = os.environ if environ is None else environ
    named = {m for value in overrides.values() for m in _VARIABLE.findall(value)}
    return sorted(name for name in named if name not in environ)


def app_environment(
    base: Mapping[str, str],
    database_env: str,
    database: DatabaseAddress,
    overrides: Mapping[str, str],
    *,
    uploads_dir: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The app's environment on restored data: `base` (the restored env file), the database
    URL under `database_env`, then `overrides` (`[app] env`) with {database_url}, {db_host},
    {db_port}, {db_name}, {db_user}, {db_password}, {uploads_dir} and ${NAME} filled in."""
    environ = os.environ if environ is None else environ
    missing = unset_variables(overrides, environ)
    if missing:
        raise ConfigError(
            f"[app] env refers to {', '.join('$' + n for n in missing)}, not set in the drill's "
            "environment"
        )
    fills = {
        "{database_url}": database.url,
        "{db_host}": database.host,
        "{db_port}": str(database.port),
        "{db_name}": database.name,
        "{db_user}": database.user,
        "{db_password}": database.password,
        "{uploads_dir}": uploads_dir,
    }
    env = {**base, database_env: database.url}
    for key, value in overrides.items():
        for token, filled in fills.items():
            value = value.replace(token, filled)
        env[key] = _VARIABLE.sub(lambda m: environ[m[1]], value)
    return env


class ApiContainer(LabelledContainer):
    """The application's API in a labelled container, its port published on 127.0.0.1.

    Its environment is `env` (the restored env file and the drill's overrides) over the
    sample app's defaults: PORT and UPLOADS_DIR.
    """

    role = "api"

    def __init__(
        self,
        image: str,
        session: RunSession,
        *,
        port: int = 3001,
        uploads_dir: str = "/app/uploads",
        uploads_volume: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(image, session)
        self.container_port = port
        for key, value in {"UPLOADS_DIR": uploads_dir, "PORT": str(port), **(env or {})}.items():
            self.with_env(key, value)
        if uploads_volume:
            self.with_volume_mapping(uploads_volume, uploads_dir, "ro")
        self.publish(port)

    def url(self, path: str = "/") -> str:
        """The URL of a path of the API, on loopback."""
        return f"http://{LOOPBACK}:{self.host_port(self.container_port)}{path}"

    def states(self) -> list[ContainerState]:
        """One look at the container."""
        return [self.observe()]

    def logs_of(self, name: str | None = None, lines: int = 40) -> str:
        """The last lines of the container's output."""
        return self.logs_tail(lines)

    def _probe(self) -> bool:
        # Any HTTP answer means the server is up; whether it is healthy is a check's business.
        requests.get(self.url("/"), timeout=2)
        return True

    def start_ready(self, timeout: float = 60) -> ApiContainer:
        """Start and wait until the API answers HTTP at all."""
        what = f"API container ({self.image})"
        return self.start_or_clean(lambda: self.wait_ready(self._probe, timeout, what))


def start_api(
    image: str,
    session: RunSession,
    *,
    network: Network | None,
    env: Mapping[str, str] | None = None,
    port: int = 3001,
    uploads_dir: str = "/app/uploads",
    uploads_volume: str | None = None,
    timeout: float = 60,
) -> ApiContainer:
    """Start the API container on `network` and wait until it answers HTTP."""
    container = ApiContainer(
        image,
        session,
        port=port,
        uploads_dir=uploads_dir,
        uploads_volume=uploads_volume,
        env=env,
    )
    container.on_network(network, "api")
    return container.start_ready(timeout)
