"""A plain dump's table data on several sessions restores what one psql restores.

The shop estate's dumps (`fixtures/shapes.py`: a 40 MB gzip script with partitions, large
objects, a sequence owned by a column, row-level security, generated columns, comments) are
restored into one real Postgres by one psql, and by the drill with two sessions: its size
takes the data path of `drills.restore.lanes` by itself. The rows of each COPY are cut into
pieces of 256 KiB here (2 MiB in a drill), so that every large table is spread over both
sessions in many pieces; the restore is otherwise the drill's own, through real psql.
"""

from __future__ import annotations

import gzip

import pytest

from drills.restore import lanes
from drills.restore.common import RestoreError
from drills.restore.database import restore_database
from drills.storage import open_storage
from drills.storage.catalog import latest, list_backups
from fixtures import shapes
from fixtures.shapes import SUPERUSER, ShopBackups

SMALL_PIECES = 256 * 1024


def _contents(pg, dbname: str) -> dict[str, str]:
    """Each table's rows, as one digest of their sorted text (order is not data)."""
    with pg.connect(dbname) as conn:
        return {
            table: conn.execute(
                f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t"
            ).fetchone()[0]
            for table in shapes.ROWS
        }


def _large_objects(pg, dbname: str) -> list[tuple]:
    with pg.connect(dbname) as conn:
        return conn.execute(
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()


def _store(tmp_path, name: str, script: bytes):
    store = tmp_path / "store"
    (store / "database").mkdir(parents=True)
    (store / "database" / name).write_bytes(gzip.compress(script, compresslevel=1))
    storage = open_storage(store.as_uri())
    return storage, latest(list_backups(storage, "database"))


def _runbook_script(shop_backups: ShopBackups) -> tuple[str, bytes]:
    source = shop_backups.root / "runbook" / shop_backups.backups["runbook"].key
    return source.name, gzip.decompress(source.read_bytes())


@pytest.mark.parametrize("format", ["runbook", "plain"])
def test_table_data_on_two_sessions_restores_what_one_psql_restores(
    format, shop_backups: ShopBackups, postgres_factory, monkeypatch
):
    storage = open_storage(shop_backups.url(format, "file"))
    backup = latest(list_backups(storage, "database"))
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)
    monkeypatch.setattr(lanes, "PIECE_BYTES", SMALL_PIECES)

    one = restore_database(storage, backup, pg, "one_session", timeout=900, parallel=1)
    two = restore_database(storage, backup, pg, "two_sessions", timeout=900, parallel=2)

    assert "table data on" not in one.method
    assert "table data on 2 sessions" in two.method
    assert shapes.counts(pg, "two_sessions") == shapes.ROWS
    assert shapes.failed_checks(pg, "two_sessions") == []
    assert _contents(pg, "two_sessions") == _contents(pg, "one_session")
    assert _large_objects(pg, "two_sessions") == _large_objects(pg, "one_session")
    with pg.connect("two_sessions") as conn:
        assert conn.execute("SELECT last_value FROM shop.orders_id_seq").fetchone()[0] == 250_000


def test_a_bad_row_in_a_session_stops_the_restore_with_its_error(
    shop_backups: ShopBackups, postgres_factory, monkeypatch, tmp_path
):
    """A row the server refuses, deep in the largest table, fails the restore with the
    server's words, as one psql would name it."""
    name, script = _runbook_script(shop_backups)
    start = script.index(b"\nCOPY shop.order_lines ")
    rows = script.index(b"\n", start + 1) + 1
    middle = script.index(b"\n", rows + 20_000_000) + 1  # about 20 MB into its rows
    broken = script[:middle] + b"not a row\n" + script[middle:]
    storage, backup = _store(tmp_path, name, broken)
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)
    monkeypatch.setattr(lanes, "PIECE_BYTES", SMALL_PIECES)

    with pytest.raises(RestoreError) as failed:
        restore_database(storage, backup, pg, "broken", timeout=900, parallel=2)

    message = str(failed.value)
    assert 'psql failed: ERROR:  invalid input syntax for type bigint: "not a row"' in message
    assert "COPY order_lines, line" in message
    assert "line numbers count from the start of a piece" in message


def test_a_statement_among_the_data_waits_for_every_row_before_it(
    shop_backups: ShopBackups, postgres_factory, monkeypatch, tmp_path
):
    """A statement in the data section other than a sequence's value (here one that counts
    what came before it) is a barrier: every session finishes first, and the rest of the
    script runs after it, in order, as one psql would run it."""
    name, script = _runbook_script(shop_backups)
    start = script.index(b"\nCOPY shop.order_lines ")
    end = script.index(b"\n\\.\n", start) + len(b"\n\\.\n")
    check = (
        b"DO $$ BEGIN IF (SELECT count(*) FROM shop.order_lines) <> 750000 "
        b"THEN RAISE EXCEPTION 'rows missing at the barrier'; END IF; END $$;\n"
    )
    storage, backup = _store(tmp_path, name, script[:end] + check + script[end:])
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)
    monkeypatch.setattr(lanes, "PIECE_BYTES", SMALL_PIECES)

    result = restore_database(storage, backup, pg, "barrier", timeout=900, parallel=2)

    assert "table data on 2 sessions" in result.method
    assert shapes.counts(pg, "barrier") == shapes.ROWS
    assert shapes.failed_checks(pg, "barrier") == []
