"""Upgrade rehearsal (`[database] rehearse_majors`): the drilled PostgreSQL 15 dump restored
into 17 as well, the same checks timed, what differs reported; informative unless
`rehearsal_gates = true`. Real dumps of real 15 servers, restored into the offline 15 and 17
images."""

from __future__ import annotations

import gzip

import pytest

from drills.storage import open_storage
from fixtures.estate_backups import (
    DB,
    Dump,
    pg_dump,
    put_database_dump,
    run_drill,
    write_drill_toml,
)

# A function pinned to a setting PostgreSQL 16 removed (renamed debug_parallel_query): 15
# takes it, 17 refuses it.
LEGACY = """
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO accounts SELECT g, 'account ' || g FROM generate_series(1, 500) AS g;
CREATE FUNCTION account_count() RETURNS bigint LANGUAGE sql
  SET force_parallel_mode = off AS 'SELECT count(*) FROM accounts';
"""


def _config(tmp_path, store, gates: bool = False):
    sections = f'[database]\nname = "{DB}"\nrehearse_majors = [17]\n'
    sections += f"rehearsal_gates = {'true' if gates else 'false'}\n"
    return write_drill_toml(tmp_path, store.as_uri(), sections)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "backups"
    root.mkdir()
    return root


def test_a_clean_15_dump_rehearses_on_17_with_its_checks_timed(tmp_path, store, estate_dump):
    put_database_dump(open_storage(store.as_uri()), estate_dump)
    outcome = run_drill(_config(tmp_path, store), "database")
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("database")
    assert drill["postgres_major"]["major"] == 15
    (rehearsal,) = drill["rehearsal"]["majors"]
    assert rehearsal["major"] == 17
    assert rehearsal["server_version"].startswith("17.")
    assert rehearsal["passed"] is True, rehearsal["summary"]
    assert rehearsal["checks"] >= 5
    assert all(rehearsal["seconds"][step] > 0 for step in ("provision", "restore", "validate"))
    assert any(n.startswith("upgrade rehearsal 15 -> 17: no difference") for n in drill["notes"])
    # The rehearsal ran after the verdict's clock stopped: it is not in the RTO.
    assert drill["rto"]["measured_s"] < sum(drill["phases"].values()) + 5


@pytest.fixture
def legacy_dump(run_session, postgres_image) -> Dump:
    """A real plain dump of a PostgreSQL 15 database holding LEGACY."""
    from drills.runtime.postgres import start_postgres

    pg = start_postgres(postgres_image, run_session, dbname=DB)
    try:
        with pg.connect(DB) as conn:
            conn.execute(LEGACY)
        return Dump(gzip.compress(pg_dump(pg, DB)), {"accounts": 500})
    finally:
        pg.stop()


def test_a_dump_17_refuses_is_reported_then_gates_when_asked(tmp_path, store, legacy_dump):
    put_database_dump(open_storage(store.as_uri()), legacy_dump)
    informative = run_drill(_config(tmp_path, store), "database")
    assert informative.exit == 0, informative.output  # the version-matched restore is the gate
    drill = informative.drill("database")
    (rehearsal,) = drill["rehearsal"]["majors"]
    assert rehearsal["passed"] is False
    assert "force_parallel_mode" in rehearsal["error"]
    assert rehearsal["seconds"]["validate"] is None  # nothing to check after a failed restore
    assert any("force_parallel_mode" in m for m in rehearsal["new_log_messages"])
    assert any(n.endswith("(informative)") for n in drill["notes"])

    config = _config(tmp_path, store, gates=True)
    config.write_text(config.read_text().replace("\nhtml = false", "\nhtml = true"))
    gated = run_drill(config, "database")
    assert gated.exit == 1, gated.output
    drill = gated.drill("database")
    assert drill["verdict"] == "fail"
    assert drill["error"].startswith("check failed: upgrade rehearsal into PostgreSQL 17: ")
    assert "force_parallel_mode" in drill["error"]
    page = (gated.run_dir / "drill-report.html").read_text()
    assert "Upgrade rehearsal" in page
    assert "unrecognized configuration parameter" in page
