"""Run the green catalogue: every valid backup of the shop estate drilled green, restored once.

Each drill row runs `drill run --only database` as a subprocess on one of the session's real
dumps (`fixtures/shapes.py`) and reads the run's drill.json; the recovery row runs `drill
restore database --yes` into a throwaway "production" and checks the database it leaves.
Prints the catalogue as a table at the end and writes it to reports/green-catalogue.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from drills.storage.s3server import EmbeddedS3
from fixtures import shapes
from fixtures.estate_backups import drill_cli, run_drill, write_drill_toml
from fixtures.shapes import CHECKS, DB, ROLES, SUPERUSER, ShopBackups
from tests.tables import published

from .catalogue import ROWS as CATALOGUE
from .catalogue import Green, catalogue_markdown

RESULTS: list[dict] = []
DRILLED = [row for row in CATALOGUE if row.via == "drill run"]
RECOVERED = [row for row in CATALOGUE if row.via == "drill restore"]
MANIFEST_COUNTS = "row counts equal the manifest's exact counts"
RUN_BOUND_S = 900


def database_section() -> str:
    """The shop's [database] section: its name and the shapes' checks."""
    checks = ",\n  ".join(json.dumps(query) for query in CHECKS)
    return f'[database]\nname = "{DB}"\nchecks = [\n  {checks},\n]\n'


def aws_env(s3: EmbeddedS3) -> dict[str, str]:
    """The environment of a `drill` subprocess: ours plus the embedded S3's credentials."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "AWS_DEFAULT_REGION": s3.region,
    }


def _result(row: Green) -> dict:
    result = {
        "name": row.name,
        "made": row.made,
        "store": "file://" if row.store == "file" else "embedded S3",
        "via": row.via,
        "holds": row.holds,
        "got": "error",
        "cause": "",
    }
    RESULTS.append(result)
    return result


def drill_problems(row: Green, code: int, entry: dict) -> list[str]:
    """What a user would notice is wrong with a drill of a valid backup; empty when green."""
    problems = []
    if entry["verdict"] != "pass":
        failed = "; ".join(
            f"{c['name']}: {c['detail']}" for c in entry["checks"] if not c["passed"]
        )
        problems.append(f"verdict {entry['verdict']}: {entry['error'] or failed}")
    if code != 0:
        problems.append(f"exit {code}")
    restore = entry.get("restore") or {}
    if restore.get("attempts") != 1:
        problems.append(f"restore.attempts is {restore.get('attempts')!r}, not 1")
    created = restore.get("roles_created")
    if created is None:
        problems.append("drill.json has no restore.roles_created")
    elif missing := [role for role in ROLES if role not in created]:
        problems.append(f"restore.roles_created {created} lacks {missing}")
    ran = [c for c in entry["checks"] if c["name"].startswith("SQL: ")]
    if len(ran) != len(CHECKS):
        problems.append(f"{len(ran)} of the {len(CHECKS)} shapes' checks ran")
    compared = [c["passed"] for c in entry["checks"] if c["name"] == MANIFEST_COUNTS]
    if row.manifest and compared != [True]:
        problems.append(f"the check '{MANIFEST_COUNTS}' did not pass: {compared}")
    return problems


@pytest.mark.parametrize("row", DRILLED, ids=[row.id for row in DRILLED])
def test_drill_is_green(row: Green, shop_backups: ShopBackups, embedded_s3, tmp_path):
    result = _result(row)
    endpoint = embedded_s3.endpoint_url if row.store == "s3" else None
    url = shop_backups.url(row.format, row.store)
    config = write_drill_toml(tmp_path, url, database_section(), endpoint_url=endpoint)
    try:
        outcome = run_drill(config, "database", env=aws_env(embedded_s3), timeout=RUN_BOUND_S)
    except AssertionError as exc:
        result["cause"] = str(exc).splitlines()[0]
        raise
    entry = outcome.drill("database")
    problems = drill_problems(row, outcome.exit, entry)
    drilled = (entry.get("backup") or {}).get("key") or ""
    if not drilled.endswith(shop_backups.backups[row.format].key):
        problems.insert(0, f"drilled {drilled!r}, not the {row.format} dump")
    restore = entry.get("restore") or {}
    result["got"] = (
        f"{entry['verdict']} (exit {outcome.exit}); restore phase "
        f"{entry['phases'].get('restore', 0):.0f} s, attempts {restore.get('attempts', '?')}"
    )
    result["cause"] = "; ".join(problems)
    assert not problems, "\n".join(problems) + "\n" + outcome.output[-3000:]


def _recover(cwd: Path, config: Path, pg, s3: EmbeddedS3) -> subprocess.CompletedProcess:
    """`drill restore database --yes` into `pg`'s shop database, as a user types it."""
    to = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{DB}"
    argv = ["restore", "database", "--config", str(config), "--to", to, "--yes"]
    env = {**aws_env(s3), "PGPASSWORD": pg.password}
    return drill_cli(*argv, cwd=cwd, env=env, timeout=RUN_BOUND_S)


@pytest.fixture
def production(postgres_factory, shop_backups: ShopBackups):
    """A "production" server with the shop's roles and its database, as the runbook's dump
    left it, then damaged by a bad migration."""
    pg = postgres_factory(dbname="postgres", user=SUPERUSER)
    shapes.create_roles(pg)
    with pg.connect(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DB}" OWNER shop_owner')
    dump = shop_backups.root / "runbook" / shop_backups.backups["runbook"].key
    load = ["sh", "-c", f"gzip -dc | psql -X -q -v ON_ERROR_STOP=1 -d {DB}"]
    loaded = pg.run(load, stdin=dump.read_bytes(), timeout=RUN_BOUND_S)
    assert loaded.returncode == 0, loaded.stderr.decode(errors="replace")
    with pg.connect(DB, autocommit=True) as conn:
        conn.execute("TRUNCATE billing.invoices")
        conn.execute("DELETE FROM shop.order_lines WHERE line_no = 3")
    return pg


@pytest.mark.parametrize("row", RECOVERED, ids=[row.id for row in RECOVERED])
def test_recovery_is_green(row: Green, production, shop_backups, embedded_s3, tmp_path):
    result = _result(row)
    damaged = shapes.counts(production)
    url = shop_backups.url(row.format, row.store)
    config = write_drill_toml(
        tmp_path, url, database_section(), endpoint_url=embedded_s3.endpoint_url
    )
    started = time.monotonic()
    done = _recover(tmp_path, config, production, embedded_s3)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    problems = [] if done.returncode == 0 else [f"exit {done.returncode}: {done.stderr.strip()}"]
    if not problems:
        problems += _recovered_problems(production, damaged)
    outcome = "restored" if done.returncode == 0 else "failed"
    result["got"] = f"{outcome} (exit {done.returncode}) in {took:.0f} s"
    result["cause"] = "; ".join(problems)
    assert not problems, "\n".join(problems) + "\n" + output[-3000:]


def _recovered_problems(pg, damaged: dict[str, int]) -> list[str]:
    """What differs between the recovered shop database and the estate; what was lost of
    the damaged one, kept beside it."""
    problems = []
    restored = shapes.counts(pg)
    if restored != shapes.ROWS:
        wrong = {t: n for t, n in restored.items() if n != shapes.ROWS[t]}
        problems.append(f"restored row counts differ from the estate's: {wrong}")
    problems += [f"check failed: {failed}" for failed in shapes.failed_checks(pg)]
    with pg.connect(autocommit=True) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (DB,)
        ).fetchone()[0]
        kept = [
            name
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{DB}_before_%",)
            ).fetchall()
        ]
    if owner != "shop_owner":
        problems.append(f"the recovered {DB} is owned by {owner}, not shop_owner")
    if len(kept) != 1:
        problems.append(f"expected one {DB}_before_<ts>, found {kept}")
    elif shapes.counts(pg, kept[0]) != damaged:
        problems.append(f"{kept[0]} is not the damaged database as it was")
    return problems


print_catalogue = published(RESULTS, catalogue_markdown, "green catalogue", "green-catalogue.md")
