"""Reading a dump as it streams: real pg_dump scripts of a database shaped like production
(an application-role owner, grants, a partitioned table, a policy, a large object), whole,
cut at statement boundaries in each section, and in every chunking."""

from __future__ import annotations

import pytest

from drills.restore.dumpscan import DumpScan, UnsupportedDump, roles_in
from drills.restore.inventory import missing, read_inventory

SHAPED = """
CREATE ROLE shop_owner NOLOGIN; CREATE ROLE shop_app; CREATE ROLE "Report Role";
CREATE SCHEMA shop AUTHORIZATION shop_owner;
SET ROLE shop_owner;
CREATE TYPE shop.status AS ENUM ('new', 'paid');
CREATE DOMAIN shop.email AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE shop.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email shop.email UNIQUE, cents int,
    euros numeric GENERATED ALWAYS AS (cents / 100.0) STORED, CONSTRAINT pos CHECK (cents >= 0));
CREATE TABLE shop.orders (id bigserial, customer_id bigint REFERENCES shop.customers (id),
    at date NOT NULL, st shop.status, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE shop.orders_2025 PARTITION OF shop.orders
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE shop.orders_other PARTITION OF shop.orders DEFAULT;
CREATE INDEX orders_customer ON shop.orders (customer_id);
CREATE TABLE shop."Odd Table" (id int PRIMARY KEY, note text);
CREATE MATERIALIZED VIEW shop.totals AS SELECT customer_id, count(*) FROM shop.orders GROUP BY 1;
CREATE VIEW shop.active AS SELECT * FROM shop.customers;
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT ON shop.customers FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE TRIGGER "odd touch" BEFORE INSERT ON shop."Odd Table"
    FOR EACH ROW EXECUTE FUNCTION shop.touch();
ALTER TABLE shop.customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON shop.customers FOR SELECT TO shop_app, "Report Role" USING (true);
GRANT USAGE ON SCHEMA shop TO shop_app;
GRANT SELECT ON shop.customers TO "Report Role";
ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT SELECT ON TABLES TO shop_app;
INSERT INTO shop.customers (email, cents)
    SELECT 'c' || g || '@x', g FROM generate_series(1, 5000) g;
INSERT INTO shop.orders (customer_id, at, st)
    SELECT 1 + g % 5000, DATE '2025-01-01' + (g % 700), 'new' FROM generate_series(1, 20000) g;
INSERT INTO shop."Odd Table" VALUES (1, 'a\\.b'), (2, E'back\\\\slash');
SELECT lo_from_bytea(0, 'hello');
RESET ROLE;
"""


@pytest.fixture(scope="module")
def shaped_dump(run_session, postgres_image) -> bytes:
    """A real plain pg_dump of a small production-shaped database."""
    from drills.runtime.postgres import start_postgres

    pg = start_postgres(postgres_image, run_session, dbname="shop")
    try:
        created = pg.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "shop"], stdin=SHAPED.encode()
        )
        assert created.returncode == 0, created.stderr.decode()
        dumped = pg.run(["pg_dump", "-d", "shop"], timeout=120)
        assert dumped.returncode == 0, dumped.stderr.decode()
        return dumped.stdout
    finally:
        pg.stop()


def _scan(data: bytes, chunk: int = 1 << 20, database: str | None = None) -> DumpScan:
    return _relay(data, chunk, database)[0]


def _relay(data: bytes, chunk: int, database: str | None = None) -> tuple[DumpScan, bytes]:
    """The scan of `data` fed in chunks, and the bytes it passed on."""
    scan = DumpScan(database=database)
    passed = [bytes(scan.feed(data[start : start + chunk])) for start in range(0, len(data), chunk)]
    passed.append(scan.end())
    return scan, b"".join(passed)


def test_a_whole_dump_is_complete_and_declares_its_objects_and_roles(shaped_dump):
    scan = _scan(shaped_dump)

    assert scan.ending() is None
    assert scan.roles == {"shop_owner", "shop_app", "Report Role"}
    assert scan.tables_without_data() == []
    declared = set(scan.inventory)
    for expected in [
        ("schema", "shop"),
        ("table", "shop.customers"),
        ("table", "shop.orders"),
        ("table", "shop.Odd Table"),
        ("primary key", "shop.customers.customers_pkey"),
        ("primary key", "shop.Odd Table.Odd Table_pkey"),
        ("unique constraint", "shop.customers.customers_email_key"),
        ("check constraint", "shop.customers.pos"),
        ("foreign key", "shop.orders.orders_customer_id_fkey"),
        ("index", "shop.orders_customer"),
        ("materialized view", "shop.totals"),
        ("view", "shop.active"),
        ("sequence", "shop.customers_id_seq"),
        ("function", "shop.touch"),
        ("trigger", "shop.customers.touch"),
        ("trigger", "shop.Odd Table.odd touch"),
        ("policy", "shop.customers.readers"),
        ("type", "shop.status"),
        ("domain", "shop.email"),
    ]:
        assert expected in declared, expected
    assert any(kind == "large object" for kind, _ in declared)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_any_chunking_reads_the_same(shaped_dump, chunk):
    whole = _scan(shaped_dump)
    data = shaped_dump if chunk > 1 else shaped_dump[:6000] + shaped_dump[-3000:]
    reference = whole if chunk > 1 else _scan(data)

    scan, passed = _relay(data, chunk)

    assert passed == data  # an ordinary dump goes on to psql byte for byte
    assert scan.complete == reference.complete
    assert scan.roles == reference.roles
    assert scan.inventory == reference.inventory
    assert scan.data_tables == reference.data_tables


@pytest.mark.parametrize("chunk", [2, 3, 5, 4096])
def test_copy_events_mark_every_blocks_rows_in_any_chunking(shaped_dump, chunk):
    """What the table data's sessions get (`drills.restore.lanes`): the rows of every COPY
    block, whole, wherever the chunks cut the lines and the end marker."""
    expected = []
    for block in shaped_dump.split(b"\nCOPY ")[1:]:
        line, _, rest = block.partition(b"\n")
        expected.append(
            (b"COPY " + line, rest[: rest.index(b"\\.\n")] if rest[:3] != b"\\.\n" else b"")
        )
    assert len(expected) >= 4
    assert all(rows for _, rows in expected[:2])

    scan = DumpScan()
    found, line, rows = [], None, bytearray()
    for start in range(0, len(shaped_dump), chunk):
        out = bytes(scan.feed(shaped_dump[start : start + chunk]))
        position = 0
        for at, copy_line, declared in scan.copy_events:
            if copy_line is not None:
                assert out[at - len(copy_line) - 1 : at] == copy_line + b"\n"
                assert declared  # every table's data is of a table the dump creates
                line, rows, position = copy_line, bytearray(), at
            else:
                rows += out[position : max(at, 0)]
                if at < 0:
                    del rows[at:]  # the marker began in the chunk before
                found.append((line, bytes(rows)))
                line = None
        if line is not None:
            rows += out[position:]

    assert found == expected


def _cut_after(data: bytes, marker: bytes) -> bytes:
    """The dump up to the end of the statement line that follows `marker`."""
    at = data.index(marker)
    end = data.index(b";\n", data.index(b"\n\n", at) + 2) + 2
    return data[:end]


@pytest.mark.parametrize(
    ("marker", "words"),
    [
        (b"Type: DOMAIN;", "ends in its pre-data section after DOMAIN shop.email"),
        (b"Type: SEQUENCE SET;", "ends after SEQUENCE SET shop."),
        (b"Type: INDEX;", "ends in its post-data section after INDEX shop.orders_customer"),
    ],
)
def test_a_dump_cut_at_a_statement_names_where_it_ends(shaped_dump, marker, words):
    cut = _cut_after(shaped_dump, marker)

    ending = _scan(cut).ending()

    assert ending is not None
    assert words in ending
    assert "did not finish" in ending


def test_a_dump_cut_after_its_data_says_no_keys_or_indexes_were_restored(shaped_dump):
    data_end = shaped_dump.index(b"Type: CONSTRAINT;")
    cut = shaped_dump[: shaped_dump.rindex(b"\n--\n", 0, data_end) + 1]

    ending = _scan(cut).ending()

    assert "no post-data section" in ending
    assert "no primary keys, unique constraints, indexes or foreign keys" in ending


def test_a_dump_cut_inside_a_tables_data_names_the_table(shaped_dump):
    start = shaped_dump.index(b"COPY shop.orders_2025")
    cut = shaped_dump[: shaped_dump.index(b"\n", start + 2000) + 1]

    scan = _scan(cut, 4096)

    assert "ends inside the data of shop.orders_2025" in scan.ending()


def test_a_sql_file_that_is_not_a_dump_cannot_prove_it_is_whole():
    scan = _scan(b"CREATE TABLE users (id int);\nINSERT INTO users VALUES (1);\n")

    assert "not a pg_dump plain-format script" in scan.ending()


def test_text_after_the_completion_marker_is_not_a_whole_dump(shaped_dump):
    scan = _scan(shaped_dump + b"DROP TABLE shop.customers;\n")

    assert scan.ending() is not None


@pytest.mark.parametrize(
    ("line", "roles"),
    [
        ("ALTER TABLE shop.customers OWNER TO shop_owner;", {"shop_owner"}),
        ('GRANT SELECT ON TABLE shop.t TO "Report Role" WITH GRANT OPTION;', {"Report Role"}),
        ("GRANT ALL ON SCHEMA public TO PUBLIC;", set()),
        ("REVOKE ALL ON SCHEMA public FROM PUBLIC;", set()),
        ("GRANT SELECT ON TABLE t TO app GRANTED BY admin;", {"app", "admin"}),
        (
            "ALTER DEFAULT PRIVILEGES FOR ROLE owner IN SCHEMA s GRANT SELECT ON TABLES  TO r;",
            {"owner", "r"},
        ),
        ('CREATE POLICY p ON s.t FOR SELECT TO a, "B b" USING (true);', {"a", "B b"}),
        ("SET SESSION AUTHORIZATION 'migrator';", {"migrator"}),
        ("SET SESSION AUTHORIZATION DEFAULT;", set()),
        ('ALTER LARGE OBJECT 16453 OWNER TO "Shop Owner";', {"Shop Owner"}),
        ("SELECT pg_catalog.set_config('search_path', '', false);", set()),
    ],
)
def test_roles_a_statement_refers_to(line, roles):
    assert roles_in(line) == roles


def test_the_restored_database_has_every_object_the_dump_declares(shaped_dump, postgres_factory):
    pg = postgres_factory(dbname="shop")
    for role in ("shop_owner", "shop_app", "Report Role"):
        pg.run(["psql", "-X", "-d", "shop", "-c", f'CREATE ROLE "{role}"'])
    loaded = pg.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "shop"], stdin=shaped_dump)
    assert loaded.returncode == 0, loaded.stderr.decode()

    with pg.connect("shop") as conn:
        present = read_inventory(conn)

    assert missing(_scan(shaped_dump).inventory, present) == []


def test_a_clean_create_dump_stays_in_the_restores_own_database(shaped_dump, postgres_factory):
    pg = postgres_factory(dbname="shop")
    made = pg.run(["pg_dump", "--clean", "--create", "-d", "shop"], timeout=120)
    assert made.returncode == 0, made.stderr.decode()

    scan, passed = _relay(made.stdout, 4096, database="shop_restore")

    lines = passed.decode().splitlines()
    assert not [
        line for line in lines if line.startswith(("DROP ", "CREATE DATABASE", "\\connect"))
    ]
    assert 'ALTER DATABASE "shop_restore" OWNER TO' in passed.decode()
    assert scan.creates_database == "shop"
    assert scan.ending() is None
    assert any("DROP DATABASE shop" in what for what in scan.rewritten)


def test_a_script_that_connects_to_two_databases_is_refused():
    script = b"--\n-- PostgreSQL database dump\n--\n\\connect a\nSELECT 1;\n\\connect b\n"

    with pytest.raises(UnsupportedDump, match="more than one database"):
        _relay(script, 1 << 20)


def test_post_data_runs_in_phases_that_keep_pg_dumps_order(shaped_dump):
    from drills.restore.postdata import plan, split_entries

    scan = DumpScan()
    start = None
    for at in range(0, len(shaped_dump), 4096):
        ready = bytes(scan.feed(shaped_dump[at : at + 4096]))
        if scan.post_data_split is not None and start is None:
            start = scan.passed - len(ready) + scan.post_data_split
    scan.end()
    assert scan.preamble.startswith(b"--\n-- PostgreSQL database dump")
    text = shaped_dump[start:].decode()

    entries = split_entries(text)
    phases = plan(entries)

    assert "".join(e.text for e in entries).endswith(text.split("--\n", 1)[1])
    kinds = [(parallel, [e.type for e in chosen]) for parallel, chosen in phases]
    first, attach, keys, rest = kinds
    assert first[0] is True
    assert set(first[1]) <= {"INDEX", "CONSTRAINT", "CHECK CONSTRAINT", "STATISTICS"}
    assert "INDEX ATTACH" in attach[1]  # before the foreign keys need the attached keys
    assert keys == (True, ["FK CONSTRAINT"])
    assert {"POLICY", "ACL", "DEFAULT ACL"} <= set(rest[1])
    assert sum(len(chosen) for _, chosen in phases) == len(entries)
