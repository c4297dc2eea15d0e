"""`drill demo`: the embedded default estate, started and proven healthy end to end.

This is the smallest real end-to-end path: a "production" of the sample application in
containers (Postgres with generated data, an uploads volume, the API), checked through the
application itself. The full backup-and-drill demo replaces the body of `main` as the drills
land; the command and its exit codes stay.
"""

from __future__ import annotations

import time

import requests

from drills.errors import DrillError
from drills.estate import DATABASE, ProductionEstate
from drills.runtime import engine
from drills.runtime.labels import RunSession, sweep


def main(scale: int = 1) -> int:
    """Start the demo estate, check it through the API, remove it; return the exit code."""
    client = engine.connect()
    session = RunSession.begin()
    sweep(client, keep=session.run_id)
    started = time.monotonic()
    try:
        print(f"demo: starting the embedded estate (scale {scale})", flush=True)
        with ProductionEstate.start(client, session, scale=scale) as estate:
            print(f"demo: estate up in {time.monotonic() - started:.1f} s", flush=True)
            health = requests.get(estate.api.url("/health"), timeout=10)
            if health.status_code != 200:
                raise DrillError(f"GET /health answered {health.status_code}: {health.text}")
            api_count = requests.get(estate.api.url("/users/count"), timeout=10).json()["count"]
            with estate.database.connect(DATABASE) as conn:
                db_count = conn.execute("SELECT count(*) FROM users").fetchone()[0]
            if api_count != db_count:
                raise DrillError(f"API counts {api_count} users, the database {db_count}")
            print(f"demo: GET /health 200; users through the API {api_count} = database {db_count}")
    finally:
        session.end(client)
    print(f"demo: pass in {time.monotonic() - started:.1f} s")
    return 0
