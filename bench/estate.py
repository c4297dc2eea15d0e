"""The reference estate of the benchmark: generated at a chosen scale, backed up in each format.

Scale 1 is about 1.4 GB on disk: 2 million users and 6 million transactions (with their
indexes and a foreign key) carrying random text, in the sample application's schema, owned by
an application role and readable by a reporting role (as production's are). The
estate is generated inside a throwaway Postgres container, then dumped with the project's own
producer (`drills.backup.database.backup_database`) once per format into a cache directory;
later runs at the same scale reuse the dumps.

    >>> dumps = ensure_dumps(client, session, scale=0.25)   # doctest: +SKIP
    >>> dumps.storage_root("directory-gzip")                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from drills.backup.common import Destination
from drills.backup.database import backup_database
from drills.config.errors import DrillError
from drills.runtime import images
from drills.runtime.estate import APP_DIR, run_sql_file
from drills.runtime.images import cache_dir
from drills.runtime.labels import RunSession
from drills.runtime.postgres import PostgresContainer, start_postgres
from drills.storage import LocalStorage

DATABASE = "bench"
USERS_PER_SCALE = 2_000_000
TRANSACTIONS_PER_SCALE = 6_000_000
# Bump when the generated data or the set of formats changes, so cached dumps are remade.
RECIPE = "4"

# (format, compression) of every dump the benchmark restores. PostgreSQL 15's pg_dump has
# no zstd for custom and directory formats (16+ has); plain SQL is piped through zstd.
VARIANTS = {
    "plain-gzip": ("plain", "gzip"),
    "plain-zstd": ("plain", "zstd"),
    "custom-gzip": ("custom", "gzip"),
    "directory-gzip": ("directory", "gzip"),
    "directory-none": ("directory", "none"),
}

_GENERATE = """
SELECT setseed(0.42);
INSERT INTO users (email, name, created_at)
SELECT 'user' || g || '@example.test',
       initcap(substr(md5(random()::text), 1, 6 + (random() * 10)::int)),
       timestamptz '2020-01-01' + g * interval '1 minute'
FROM generate_series(1, :users) AS g;
INSERT INTO transactions (user_id, amount_cents, memo, created_at)
SELECT 1 + (random() * (:users - 1))::bigint,
       (random() * 200000)::bigint - 50000,
       substr(md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(random()::text),
              1, 40 + (random() * 40)::int),
       timestamptz '2020-01-01' + g * interval '20 seconds'
FROM generate_series(1, :transactions) AS g;
ANALYZE;
"""
# Production's shape: an application role owns the tables, a reporting role may read them.
# The restore target has neither; the grants come last in a dump, after all the data.
ROLES = ("drishti_app", "drishti_reporting")
_ROLES = """
CREATE ROLE drishti_app NOLOGIN;
CREATE ROLE drishti_reporting NOLOGIN;
ALTER TABLE users OWNER TO drishti_app;
ALTER TABLE transactions OWNER TO drishti_app;
ALTER TABLE audit_logs OWNER TO drishti_app;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO drishti_reporting;
"""


@dataclass
class EstateDumps:
    """The dumps of one scale: one file:// storage root per variant, and what they hold."""

    scale: float
    root: Path
    database_bytes: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dumps: dict[str, dict] = field(default_factory=dict)  # variant -> key, bytes, seconds

    def storage_root(self, variant: str) -> Path:
        """The storage directory holding only this variant's dump (under database/)."""
        return self.root / variant

    def local_path(self, variant: str) -> Path:
        """The dump itself, as a path on this machine (a file or a directory)."""
        return self.storage_root(variant) / self.dumps[variant]["key"].rstrip("/")

    def save(self) -> None:
        """Write the description next to the dumps."""
        info = {
            "recipe": RECIPE,
            "scale": self.scale,
            "database_bytes": self.database_bytes,
            "rows": self.rows,
            "dumps": self.dumps,
        }
        (self.root / "estate.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, root: Path, scale: float) -> EstateDumps | None:
        """The cached dumps of `scale`, None when absent, incomplete or of another recipe."""
        try:
            info = json.loads((root / "estate.json").read_text())
        except (OSError, ValueError):
            return None
        if info.get("recipe") != RECIPE or set(info.get("dumps", {})) != set(VARIANTS):
            return None
        return cls(scale, root, info["database_bytes"], info["rows"], info["dumps"])


def estate_dir(scale: float) -> Path:
    """Where the dumps of a scale are cached."""
    return cache_dir() / "bench" / f"scale-{scale:g}"


def ensure_dumps(
    client: docker.DockerClient, session: RunSession, scale: float, log=print
) -> EstateDumps:
    """The dumps of `scale`: from the cache, else generated now (minutes at scale 1)."""
    root = estate_dir(scale)
    cached = EstateDumps.load(root, scale)
    if cached is not None:
        return cached
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pg = start_estate_server(client, session)
    try:
        size, rows = generate(pg, scale, log)
        estate = EstateDumps(scale, root, size, rows)
        for variant, (fmt, compression) in VARIANTS.items():
            store = root / variant
            store.mkdir()
            dest = Destination("database/", LocalStorage(store), store)
            started = time.monotonic()
            result = backup_database(
                dest, DATABASE, dsn=pg.dsn(DATABASE), format=fmt, compression=compression
            )
            seconds = time.monotonic() - started
            estate.dumps[variant] = {
                "key": result.key,
                "bytes": result.manifest.bytes,
                "dump_seconds": round(seconds, 2),
            }
            log(f"  {variant}: {result.manifest.bytes / 1e6:.0f} MB dumped in {seconds:.0f} s")
        estate.save()
        return estate
    finally:
        pg.stop()


def start_estate_server(client: docker.DockerClient, session: RunSession) -> PostgresContainer:
    """A Postgres 15 container for the estate (crash-unsafe tuning: generation is not
    measured, and dumps read the same whatever the durability settings)."""
    image = images.ensure_postgres_image(client, 15)
    return start_postgres(image, session, tuning="restore", user="postgres", dbname=DATABASE)


def generate(pg: PostgresContainer, scale: float, log=print) -> tuple[int, dict[str, int]]:
    """Fill the estate's database in `pg` at `scale`; its size in bytes and its row counts."""
    started = time.monotonic()
    run_sql_file(pg, APP_DIR / "schema.sql", DATABASE)
    sql = _GENERATE.replace(":users", str(int(USERS_PER_SCALE * scale)))
    sql = sql.replace(":transactions", str(int(TRANSACTIONS_PER_SCALE * scale)))
    _run_sql(pg, sql + _ROLES)
    with pg.connect(DATABASE) as conn:
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        rows = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("users", "transactions", "audit_logs")
        }
    log(f"estate at scale {scale:g}: {size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s")
    return size, rows


def _run_sql(pg: PostgresContainer, sql: str) -> None:
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE]
    result = pg.run(argv, timeout=7200, stdin=sql.encode())
    if result.returncode != 0:
        raise DrillError(f"estate generation failed: {result.stderr.decode(errors='replace')}")
