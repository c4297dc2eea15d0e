"""An example of a check of your own, beside the built-in drills. Written by `drill init`.

A custom scenario is a plain pytest test, run by `drill run` after the built-in drills (drill.toml's
`[run] scenarios` names this directory). This one uses the `restored_database` fixture: the
drill's own restore of the newest database backup (a psycopg connection, `.connection`, and
its DSN, `.dsn`), so it checks what the database drill restored, never a second copy. Its
outcome is one of the database drill's checks, in drill.json and every report; a failure
fails the drill. The other fixtures: `restored_files`, `restored_config`, `api_stack` and
`drill_record` (docs/custom-checks.md). Rename it, and write the invariants your application
relies on.
"""


def test_the_restored_database_has_tables(restored_database):
    # restored_database: the fixture of the restored database (connection and DSN).
    row = restored_database.connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchone()
    assert row[0] > 0, "the restored database has no table in the public schema"
