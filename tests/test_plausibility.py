"""Plausibility of database drills, the legitimate side: real dumps whose changes against the
last passing drill and the backup before them are ordinary life (growth, a new table, a
small purge, a deliberate purge accepted with a reason) stay green, with the evidence in
drill.json and the report. The implausible side is the fault catalogue's (tests/faults)."""

from __future__ import annotations

import gzip
import re
from datetime import timedelta
from pathlib import Path

import pytest

from fixtures.estate_backups import DB, run_drill, stamp, write_drill_toml

# Backups of a few hours ago are fresh enough here: these tests judge plausibility, not RPO.
SECTIONS = f'[targets.rpo]\ndatabase = "1d"\n\n[database]\nname = "{DB}"\n'
MARKER = b"--\n-- PostgreSQL database dump complete\n--"


@pytest.fixture(scope="module")
def dumps(dump_variants):
    """The session's real dumps (fixtures/estate_backups.py)."""
    return dump_variants


def _put(store: Path, sql: bytes, age: timedelta) -> None:
    folder = store / "database"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{DB}_{stamp(age)}.sql.gz").write_bytes(gzip.compress(sql, compresslevel=1))


def _drill(tmp_path: Path, sections: str = SECTIONS, **kw):
    config = write_drill_toml(tmp_path, f"file://{tmp_path / 'store'}", sections, **kw)
    return run_drill(config, "database")


def _with_table(sql: bytes) -> bytes:
    """The dump with one more table (and its rows), declared the way pg_dump declares."""
    added = (
        b"--\n-- Name: invoices; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        b"CREATE TABLE public.invoices (id integer);\n\n"
        b"--\n-- Data for Name: invoices; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n"
        b"COPY public.invoices (id) FROM stdin;\n1\n2\n\\.\n\n\n"
    )
    return sql.replace(MARKER, added + MARKER)


def _purged(sql: bytes, table: bytes, share: float) -> bytes:
    """The dump with the first `share` of one table's rows gone (a purge)."""
    start = sql.index(b"\n", sql.index(b"COPY public." + table + b" ")) + 1
    end = sql.index(b"\n\\.\n", start) + 1
    rows = sql[start:end].splitlines(keepends=True)
    return sql[:start] + b"".join(rows[int(len(rows) * share) :]) + sql[end:]


def test_rows_grew_since_the_last_drill(tmp_path, dumps):
    _put(tmp_path / "store", dumps["wiped"], timedelta(hours=3))
    first = _drill(tmp_path)
    assert first.exit == 0, first.output[-3000:]
    _put(tmp_path / "store", dumps["plain"], timedelta(minutes=5))

    second = _drill(tmp_path)

    assert second.exit == 0, second.output[-3000:]
    entry = second.drill("database")
    kinds = {b["kind"] for b in entry["plausibility"]["baselines"]}
    assert kinds == {"history", "previous backup"}
    assert entry["plausibility"]["findings"] == []
    names = {c["name"]: c["passed"] for c in entry["checks"]}
    assert names["plausible against the last passing drill"] is True
    assert names["plausible against the backup before it"] is True


def test_a_table_added_and_a_small_purge_stay_green(tmp_path, dumps):
    _put(tmp_path / "store", dumps["plain"], timedelta(hours=3))
    assert _drill(tmp_path).exit == 0
    changed = _purged(_with_table(dumps["plain"]), b"audit_logs", 0.3)
    _put(tmp_path / "store", changed, timedelta(minutes=5))

    outcome = _drill(tmp_path)

    assert outcome.exit == 0, outcome.output[-3000:]
    entry = outcome.drill("database")
    assert entry["profile"]["rows"]["public.invoices"] == 2
    assert entry["profile"]["rows"]["public.audit_logs"] == 1400
    assert entry["plausibility"]["findings"] == []


def test_a_deliberate_purge_is_accepted_with_its_reason(tmp_path, dumps):
    _put(tmp_path / "store", dumps["plain"], timedelta(hours=3))
    assert _drill(tmp_path).exit == 0
    _put(tmp_path / "store", dumps["wiped"], timedelta(minutes=5))
    refused = _drill(tmp_path)
    assert refused.exit == 1
    assert "total rows dropped" in refused.drill("database")["error"]
    assert "--accept-shrink" in refused.drill("database")["error"]

    config = tmp_path / "drill.toml"
    accepted = run_drill(config, "database", "--accept-shrink", "GDPR erasure of 2023 accounts")

    assert accepted.exit == 0, accepted.output[-3000:]
    entry = accepted.drill("database")
    assert entry["plausibility"]["accepted"] == "GDPR erasure of 2023 accounts"
    accepted_checks = [c for c in entry["checks"] if c["name"].startswith("plausible against")]
    assert accepted_checks
    assert all(c["passed"] for c in accepted_checks)
    assert all("accepted (--accept-shrink: GDPR erasure" in c["detail"] for c in accepted_checks)


def test_the_report_shows_the_profile_against_its_baselines(tmp_path, dumps):
    _put(tmp_path / "store", dumps["plain"], timedelta(hours=3))
    assert _drill(tmp_path, all_reports=True).exit == 0
    _put(tmp_path / "store", dumps["wiped"], timedelta(minutes=5))

    outcome = _drill(tmp_path, all_reports=True)

    html = (outcome.run_dir / "drill-report.html").read_text()
    section = html[html.index("What was restored, against its baselines") :]
    assert "the last passing drill (run" in section
    assert "the backup before it (database/" in section
    assert re.search(r"total rows</th><td class=\"mono\">\d+</td><td class=\"mono\">8000", section)
    assert "total rows dropped from 8,000 to" in section


def test_a_table_dumped_without_data_on_purpose_is_excused(tmp_path, dumps):
    folder = tmp_path / "store" / "database"
    folder.mkdir(parents=True)
    (folder / f"{DB}_{stamp(timedelta(minutes=5))}.dump").write_bytes(
        dumps["custom_without_transactions"]
    )
    sections = SECTIONS + 'tables_without_data = ["public.transactions"]\n'

    outcome = _drill(tmp_path, sections)

    assert outcome.exit == 0, outcome.output[-3000:]
    checks = {c["name"]: c for c in outcome.drill("database")["checks"]}
    assert (
        "excused by [database] tables_without_data"
        in checks["every table's data is in the dump"]["detail"]
    )
