"""A plain dump's post-data section on several sessions restores what one psql restores.

The shop estate's dumps (`fixtures/shapes.py`: partitions with attached indexes, foreign
keys into partitioned keys, policies, grants, a materialized view, extensions) are restored
twice into one real Postgres: by one psql, and with the post-data section run on two
sessions. The size from which a drill splits the section off (`PARALLEL_MIN_BYTES`) is set
to zero here, so that the estate's dumps take the parallel path whatever their size; the
restore is otherwise the drill's own, through real psql sessions.
"""

from __future__ import annotations

import gzip

import pytest

from drills.restore import plain
from drills.restore.common import RestoreError
from drills.restore.database import restore_database
from drills.storage import open_storage
from drills.storage.catalog import latest, list_backups
from fixtures import shapes
from fixtures.shapes import SUPERUSER, ShopBackups

INVALID_INDEXES = "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid"


def _schema(pg, dbname: str) -> str:
    dumped = pg.run(["pg_dump", "--schema-only", "-d", dbname], timeout=300)
    assert dumped.returncode == 0, dumped.stderr.decode(errors="replace")
    # \restrict and \unrestrict carry a random key of each pg_dump run.
    lines = dumped.stdout.decode().splitlines()
    return "\n".join(line for line in lines if not line.startswith(("\\restrict", "\\unrestrict")))


@pytest.mark.parametrize("format", ["runbook", "plain"])
def test_parallel_post_data_restores_what_one_psql_restores(
    format, shop_backups: ShopBackups, postgres_factory, monkeypatch
):
    storage = open_storage(shop_backups.url(format, "file"))
    backup = latest(list_backups(storage, "database"))
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)

    one = restore_database(storage, backup, pg, "one_session", timeout=900, parallel=1)
    monkeypatch.setattr(plain, "PARALLEL_MIN_BYTES", 0)
    two = restore_database(storage, backup, pg, "two_sessions", timeout=900, parallel=2)

    assert "post-data on" not in one.method
    assert "post-data on 2 sessions" in two.method
    assert {"post-data 1", "post-data 3"} <= set(two.stages)  # indexes, then foreign keys
    assert shapes.counts(pg, "two_sessions") == shapes.ROWS
    assert shapes.failed_checks(pg, "two_sessions") == []
    with pg.connect("two_sessions") as conn:
        assert conn.execute(INVALID_INDEXES).fetchall() == []
    assert _schema(pg, "two_sessions") == _schema(pg, "one_session").replace(
        "one_session", "two_sessions"
    )


def test_a_failing_index_build_in_a_parallel_session_is_named(
    shop_backups: ShopBackups, postgres_factory, monkeypatch, tmp_path
):
    """An index the restore cannot build (its column renamed in the dump's post-data) stops
    the drill with psql's own error, as one psql would name it."""
    source = shop_backups.root / "runbook" / shop_backups.backups["runbook"].key
    script = gzip.decompress(source.read_bytes())
    good = b"ON shop.products USING gin (name "
    assert script.count(good) == 1
    broken = script.replace(good, b"ON shop.products USING gin (no_such_column ")
    store = tmp_path / "store"
    (store / "database").mkdir(parents=True)
    (store / "database" / source.name).write_bytes(gzip.compress(broken, compresslevel=1))
    storage = open_storage(store.as_uri())
    backup = latest(list_backups(storage, "database"))
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)
    monkeypatch.setattr(plain, "PARALLEL_MIN_BYTES", 0)

    with pytest.raises(RestoreError, match='column "no_such_column" does not exist'):
        restore_database(storage, backup, pg, "broken", timeout=900, parallel=2)
