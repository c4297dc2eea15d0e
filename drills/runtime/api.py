"""One way to start the application's API container, next to its database on a private network.

>>> api = start_api(image, session, network=net, database_url=url,
...                 uploads_volume=vol)                                # doctest: +SKIP
>>> requests.get(api.url("/health")).status_code                      # doctest: +SKIP
"""

from __future__ import annotations

import requests
from testcontainers.core.network import Network

from drills.runtime.containers import LOOPBACK, LabelledContainer
from drills.runtime.labels import RunSession


class ApiContainer(LabelledContainer):
    """The application's API in a labelled container, its port published on 127.0.0.1."""

    role = "api"

    def __init__(
        self,
        image: str,
        session: RunSession,
        *,
        port: int = 3001,
        database_env: str = "DATABASE_URL",
        database_url: str = "",
        uploads_dir: str = "/app/uploads",
        uploads_volume: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(image, session)
        self.container_port = port
        self.with_env(database_env, database_url)
        self.with_env("UPLOADS_DIR", uploads_dir)
        self.with_env("PORT", str(port))
        for key, value in (env or {}).items():
            self.with_env(key, value)
        if uploads_volume:
            self.with_volume_mapping(uploads_volume, uploads_dir, "ro")
        self.publish(port)

    def url(self, path: str = "/") -> str:
        """The URL of a path of the API, on loopback."""
        return f"http://{LOOPBACK}:{self.host_port(self.container_port)}{path}"

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
    database_url: str,
    port: int = 3001,
    database_env: str = "DATABASE_URL",
    uploads_dir: str = "/app/uploads",
    uploads_volume: str | None = None,
    timeout: float = 60,
) -> ApiContainer:
    """Start the API container on `network` and wait until it answers HTTP."""
    container = ApiContainer(
        image,
        session,
        port=port,
        database_env=database_env,
        database_url=database_url,
        uploads_dir=uploads_dir,
        uploads_volume=uploads_volume,
    )
    container.on_network(network, "api")
    return container.start_ready(timeout)
