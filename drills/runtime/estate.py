"""The embedded default estate: a "production" of the sample application in containers.

It stands in for the user's real estate in the demo and the tests: a Postgres database filled
with generated users, transactions and audit logs, an uploads directory with generated
images and documents, config files holding fake secrets, and the application's API in front
of them, on a private Docker network.

    >>> with ProductionEstate.start(client, session, uploads, scale=1) as estate:  # doctest: +SKIP
    ...     estate.api.url("/health")
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from drills.config.errors import DrillError
from drills.runtime import images
from drills.runtime.api import ApiContainer
from drills.runtime.labels import RunSession
from drills.runtime.network import private_network
from drills.runtime.postgres import PostgresContainer

APP_DIR = Path(__file__).with_name("demo_app")
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
    """A running "production": database and API on one private network, uploads on the host."""

    client: docker.DockerClient
    session: RunSession
    database: PostgresContainer
    api: ApiContainer
    uploads_dir: Path
    uploads: dict[str, str] = field(default_factory=dict)  # path -> sha256
    _network: object = None

    @classmethod
    def start(
        cls,
        client: docker.DockerClient,
        session: RunSession,
        uploads_dir: Path,
        scale: int = 1,
        archive_dir: Path | None = None,
    ) -> ProductionEstate:
        """Start the estate; on any failure remove what was started, then re-raise.

        With `archive_dir`, the database archives its WAL into that host directory (as a
        user's `archive_command` would, for `drill backup wal`) and allows replication
        connections (for `drill backup base`).
        """
        files = generated_uploads(30 * scale)
        for path, data in files.items():
            target = uploads_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        started: list = []
        try:
            network = private_network(session)
            started.append(network)
            pg = PostgresContainer(
                images.ensure_postgres_image(client, 15),
                session,
                dbname=DATABASE,
                settings=archiving_settings() if archive_dir else None,
            )
            if archive_dir is not None:
                archive_dir.mkdir(parents=True, exist_ok=True)
                archive_dir.chmod(0o777)  # the server's own user writes through the bind mount
                pg.with_volume_mapping(str(archive_dir), ARCHIVE, "rw")
            pg.on_network(network, "db")
            pg.start_ready()
            started.append(pg)
            if archive_dir is not None:
                _allow_replication(pg)
            run_sql_file(pg, APP_DIR / "schema.sql", DATABASE)
            run_sql_file(pg, APP_DIR / "seed.sql", DATABASE, scale=str(scale))
            api = ApiContainer(
                images.ensure_app_image(client),
                session,
                env={"DATABASE_URL": f"postgresql://{pg.user}:{pg.password}@db:5432/{DATABASE}"},
            )
            api.with_volume_mapping(str(uploads_dir), "/app/uploads", "ro")
            api.on_network(network, "api")
            api.start_ready(60)
            started.append(api)
        except BaseException:
            for thing in reversed(started):
                _quietly(thing)
            raise
        estate = cls(client, session, pg, api, uploads_dir, _network=network)
        estate.uploads = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        return estate

    def stop(self) -> None:
        """Remove the estate's containers and network (best effort)."""
        for thing in (self.api, self.database, self._network):
            _quietly(thing)

    def __enter__(self) -> ProductionEstate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


ARCHIVE = "/archive"


def archiving_settings() -> dict[str, str]:
    """Server settings of a production that archives its WAL for point-in-time recovery."""
    # Copy under a temporary name, then rename: the shipper never sees half a segment.
    command = (
        f"test ! -f {ARCHIVE}/%f && cp %p {ARCHIVE}/%f.tmp && mv {ARCHIVE}/%f.tmp {ARCHIVE}/%f"
    )
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": command,
        "archive_timeout": "1s",
    }


def _allow_replication(pg: PostgresContainer) -> None:
    line = 'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"'
    result = pg.run(["sh", "-c", line])
    if result.returncode != 0:
        raise DrillError(f"pg_hba.conf: {result.stderr.decode(errors='replace')}")
    with pg.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")


def switch_wal(pg: PostgresContainer, archive_dir: Path, timeout: float = 30) -> str:
    """Close the current WAL segment and wait until the archive holds it; return its name."""
    with pg.connect(DATABASE, autocommit=True) as conn:
        name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + timeout
    while not (archive_dir / name).exists():
        if time.monotonic() > deadline:
            raise DrillError(f"WAL segment {name} was not archived within {timeout:.0f} s")
        time.sleep(0.2)
    return name


def write_config_files(
    directory: Path, secret: str, app_image: str = images.APP_REPO
) -> list[Path]:
    """The estate's config files, holding fake secrets (`secret` is planted in .env.production):
    .env.production, the sample app's docker-compose.yml and the `.env` naming its image."""
    directory.mkdir(parents=True, exist_ok=True)
    env = directory / ".env.production"
    env.write_text(
        "# production settings of the sample application\n"
        "NODE_ENV=production\n"
        f"DATABASE_URL=postgresql://drishti:{secret}@db:5432/{DATABASE}\n"
        f"POSTGRES_PASSWORD={secret}\n"
        f'STRIPE_SECRET_KEY="sk_live_{secret}"\n'
        "export UPLOADS_DIR=/app/uploads\n"
    )
    compose = directory / "docker-compose.yml"
    compose.write_bytes((APP_DIR / "compose" / "docker-compose.yml").read_bytes())
    interpolation = directory / ".env"
    interpolation.write_text(
        f"# read by docker compose for the compose file\nDRISHTI_IMAGE={app_image}\n"
    )
    for path in (env, compose, interpolation):
        path.chmod(0o600)
    return [env, compose, interpolation]


def _quietly(thing: object) -> None:
    try:
        if hasattr(thing, "stop"):
            thing.stop()
        elif hasattr(thing, "remove"):
            thing.remove()
    except docker.errors.DockerException:
        pass
