"""The sample API on a private network reaches its database by alias and reports health."""

from __future__ import annotations

import requests

from drills.runtime.api import start_api


def test_health_follows_the_database(postgres_factory, network, run_session, app_image):
    pg = postgres_factory(network=network, aliases=("db",), dbname="drishti")
    with pg.connect("drishti") as conn:
        conn.execute("CREATE TABLE users (id int)")
        conn.execute("INSERT INTO users VALUES (1), (2), (3)")
    api = start_api(
        app_image,
        run_session,
        network=network,
        database_url=f"postgresql://{pg.user}:{pg.password}@db:5432/drishti",
    )
    try:
        health = requests.get(api.url("/health"), timeout=10)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert requests.get(api.url("/users/count"), timeout=10).json() == {"count": 3}

        pg.get_wrapped_container().stop(timeout=10)
        down = requests.get(api.url("/health"), timeout=15)
        assert down.status_code == 503
        assert down.json()["reason"].startswith("database:")
    finally:
        api.stop()
