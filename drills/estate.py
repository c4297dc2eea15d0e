"""The embedded default estate: a "production" of the sample application in containers.

It stands in for the user's real estate in the demo and the tests: a Postgres database filled
with generated users, transactions and audit logs, an uploads volume with generated files,
and the application's API in front of them, all on a private Docker network.

    >>> with ProductionEstate.start(client, session, scale=1) as estate:   # doctest: +SKIP
    ...     estate.api.url("/health")
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import docker

from drills.errors import DrillError
from drills.runtime import images
from drills.runtime.api import ApiContainer, start_api
from drills.runtime.labels import RunSession
from drills.runtime.network import create_volume, private_network
from drills.runtime.postgres import PostgresContainer, start_postgres

APP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "app"
DATABASE = "drishti_production"


def generated_uploads(count: int, seed: int = 7) -> dict[str, bytes]:
    """Deterministic upload files (images and documents) by relative path."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        kind = ("avatars", "documents", "receipts")[i % 3]
        suffix = (".png", ".pdf", ".jpg")[i % 3]
        size = rng.randint(512, 64 * 1024)
        files[f"{kind}/file{i:05d}{suffix}"] = rng.randbytes(size)
    return files


def tar_of(files: dict[str, bytes]) -> bytes:
    """A tar archive of in-memory files (for docker put_archive)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_sql_file(pg: PostgresContainer, path: Path, dbname: str, **variables: str) -> None:
    """Run an SQL file through psql inside the container, stopping at the first error."""
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname]
    for key, value in variables.items():
        argv += ["-v", f"{key}={value}"]
    result = pg.run(argv, stdin=path.read_bytes(), timeout=1800)
    if result.returncode != 0:
        raise DrillError(f"{path.name}: psql failed: {result.stderr.decode(errors='replace')}")


@dataclass
class ProductionEstate:
    """A running "production": database, uploads volume and API on one private network."""

    client: docker.DockerClient
    session: RunSession
    database: PostgresContainer
    api: ApiContainer
    uploads_volume: str
    uploads: dict[str, str] = field(default_factory=dict)  # path -> sha256
    _network: object = None

    @classmethod
    def start(
        cls, client: docker.DockerClient, session: RunSession, scale: int = 1
    ) -> ProductionEstate:
        """Start the estate; on any failure remove what was started, then re-raise."""
        started: list = []
        try:
            network = private_network(session)
            started.append(network)
            pg = start_postgres(
                images.ensure_postgres_image(client, 15),
                session,
                network=network,
                aliases=("db",),
                dbname=DATABASE,
            )
            started.append(pg)
            run_sql_file(pg, APP_DIR / "schema.sql", DATABASE)
            run_sql_file(pg, APP_DIR / "seed.sql", DATABASE, scale=str(scale))
            volume = create_volume(client, session, "uploads")
            files = generated_uploads(30 * scale)
            _fill_volume(client, session, volume, tar_of(files))
            api = start_api(
                images.ensure_app_image(client),
                session,
                network=network,
                database_url=f"postgresql://{pg.user}:{pg.password}@db:5432/{DATABASE}",
                uploads_volume=volume,
            )
            started.append(api)
        except BaseException:
            for thing in reversed(started):
                _quietly(thing)
            raise
        estate = cls(client, session, pg, api, volume, _network=network)
        estate.uploads = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        return estate

    def stop(self) -> None:
        """Remove the estate's containers, network and volume (best effort)."""
        for thing in (self.api, self.database, self._network):
            _quietly(thing)
        with contextlib.suppress(docker.errors.DockerException):
            self.client.volumes.get(self.uploads_volume).remove(force=True)

    def __enter__(self) -> ProductionEstate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _fill_volume(client: docker.DockerClient, session: RunSession, volume: str, tar: bytes) -> None:
    """Unpack a tar archive into a volume through a stopped helper container."""
    helper = client.containers.create(
        images.ensure_postgres_image(client, 15),
        command=["true"],
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        labels=session.labels("volume-loader"),
    )
    try:
        helper.put_archive("/data", tar)
    finally:
        helper.remove(force=True)


def _quietly(thing: object) -> None:
    try:
        if hasattr(thing, "stop"):
            thing.stop()
        elif hasattr(thing, "remove"):
            thing.remove()
    except docker.errors.DockerException:
        pass
