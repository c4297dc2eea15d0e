"""The locally built Postgres image honours the official image's contract."""

from __future__ import annotations

import psycopg
import pytest

from drills.runtime.labels import RunSession
from drills.runtime.network import create_volume
from drills.runtime.postgres import PostgresContainer

INIT_SCRIPT = b"""
CREATE TABLE init_runs (at timestamptz DEFAULT now());
INSERT INTO init_runs DEFAULT VALUES;
"""


def test_env_contract_and_tcp_password_login(postgres_factory):
    pg = postgres_factory(user="alice", password="s3cret-pw", dbname="shop")
    assert pg.port > 0
    with psycopg.connect(
        host="127.0.0.1", port=pg.port, user="alice", password="s3cret-pw", dbname="shop"
    ) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("alice", "shop")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=pg.port, user="alice", password="wrong", dbname="shop"
        )


def test_port_is_published_on_loopback_only(postgres, docker_client):
    bindings = docker_client.api.inspect_container(postgres.get_wrapped_container().id)[
        "NetworkSettings"
    ]["Ports"]["5432/tcp"]
    assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}


def test_initdb_scripts_run_once(docker_client, run_session: RunSession, postgres_image):
    """An initdb.d script runs on an empty data directory, and not again on a second start."""
    data = create_volume(docker_client, run_session, "pgdata")
    counts = []
    for _ in range(2):
        pg = PostgresContainer(postgres_image, run_session, password="pw", dbname="app")
        pg.with_volume_mapping(data, "/var/lib/postgresql/data", "rw")
        pg.with_copy_into_container(INIT_SCRIPT, "/docker-entrypoint-initdb.d/10-init.sql")
        pg.on_network(None)
        pg.start_ready(90)
        try:
            with pg.connect("app") as conn:
                counts.append(conn.execute("SELECT count(*) FROM init_runs").fetchone()[0])
            logs = pg.logs_tail(200)
        finally:
            pg.stop()
    assert counts == [1, 1]
    assert "10-init.sql" not in logs  # the second start skipped init entirely
    docker_client.volumes.get(data).remove(force=True)
