"""Which backup is drilled (`[drill] pick`, `drill run --pick`): the oldest promised and a
random one, restored for real from a window of real dumps; `drill status` then shows which
days of the window were drilled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drills.config.errors import ConfigError, DrillError
from drills.config.picking import parse_pick
from drills.storage.catalog import Backup
from drills.storage.pick import pick
from fixtures.estate_backups import (
    DB,
    drill_cli,
    put_config_archive,
    put_database_dump,
    run_drill,
    write_drill_toml,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=30)
# A window of daily-ish backups and one older than the promise (40 days).
AGES = (timedelta(days=40), timedelta(days=25), timedelta(days=12), timedelta(days=3))


def _backups(*ages: timedelta) -> list[Backup]:
    return [
        Backup("database", f"database/{DB}_{i}.sql.gz", NOW - age, "manifest", 1)
        for i, age in enumerate(ages)
    ]


def test_oldest_is_the_oldest_inside_the_window_not_the_oldest_kept():
    backups = _backups(*AGES, timedelta(minutes=5))
    picked = pick(backups, parse_pick("oldest"), retention=WINDOW, now=NOW)
    assert picked.backup.taken_at == NOW - timedelta(days=25)
    assert picked.in_window == 4
    assert picked.newest.taken_at == NOW - timedelta(minutes=5)


def test_random_records_its_seed_and_the_seed_replays_the_draw():
    backups = _backups(*AGES, timedelta(days=1), timedelta(days=2), timedelta(minutes=5))
    first = pick(backups, parse_pick("random"), retention=WINDOW, now=NOW)
    assert first.seed is not None
    assert first.backup.taken_at >= NOW - WINDOW  # never the one outside the promise
    again = pick(backups, parse_pick(f"random:{first.seed}"), retention=WINDOW, now=NOW)
    assert again.backup.key == first.backup.key
    assert first.as_dict()["replay"] == f"random:{first.seed}"


def test_random_covers_the_whole_window():
    backups = _backups(*AGES, timedelta(minutes=5))
    drawn = {
        pick(backups, parse_pick(f"random:{seed}"), retention=WINDOW, now=NOW).backup.key
        for seed in range(200)
    }
    assert drawn == {b.key for b in backups[1:]}


def test_at_never_picks_a_newer_backup():
    backups = _backups(*AGES)
    rule = parse_pick(f"at:{(NOW - timedelta(days=20)).isoformat()}")
    assert pick(backups, rule, retention=WINDOW, now=NOW).backup.taken_at == NOW - AGES[1]


def test_an_empty_window_is_a_named_failure():
    with pytest.raises(DrillError, match="no backup inside the promised window"):
        pick(_backups(timedelta(days=40)), parse_pick("oldest"), retention=WINDOW, now=NOW)


@pytest.mark.parametrize("text", ["first", "random:abc", "at:2025-01-15T02:00:00", "latest:1"])
def test_a_bad_rule_is_a_config_error(text):
    with pytest.raises(ConfigError):
        parse_pick(text)


@pytest.fixture
def window_store(tmp_path, estate_dump):
    """A file:// store holding a real dump 40, 25, 12 and 3 days old and 5 minutes old, and
    its drill.toml promising 30 days."""
    store = tmp_path / "backups"
    store.mkdir()
    from drills.storage import open_storage

    storage = open_storage(store.as_uri())
    keys = [put_database_dump(storage, estate_dump, age=age) for age in AGES]
    keys.append(put_database_dump(storage, estate_dump, age=timedelta(minutes=5)))
    sections = f'[database]\nname = "{DB}"\n[drill]\nretention_days = 30\n'
    return write_drill_toml(tmp_path, store.as_uri(), sections), keys


def test_drill_the_oldest_then_a_random_backup_of_a_real_window(window_store):
    config, keys = window_store

    oldest = run_drill(config, "database", "--pick", "oldest")
    assert oldest.exit == 0, oldest.output
    drill = oldest.drill("database")
    assert drill["backup"]["key"] == keys[1]  # 25 days old: the 40-day one is past the promise
    assert drill["pick"]["rule"] == "oldest"
    assert drill["pick"]["backups_in_window"] == 4
    assert drill["pick"]["window_days"] == 30
    # The RPO is the newest backup's age (5 minutes), not the drilled one's (25 days).
    assert drill["rpo"]["measured_s"] < 3600
    assert any("not the newest backup" in note for note in drill["notes"])

    drawn = run_drill(config, "database", "--pick", "random")
    assert drawn.exit == 0, drawn.output
    chosen = drawn.drill("database")
    seed = chosen["pick"]["seed"]
    assert isinstance(seed, int)
    assert chosen["backup"]["key"] in keys[1:]

    replay = run_drill(config, "database", "--seed", str(seed))
    assert replay.exit == 0, replay.output
    assert replay.drill("database")["backup"]["key"] == chosen["backup"]["key"]

    status = drill_cli("status", "--config", str(config))
    calendar = next(line for line in status.stdout.splitlines() if "days drilled" in line)
    drilled_days = 1 if chosen["backup"]["key"] == keys[1] else 2
    assert f"{drilled_days} of 31 days drilled, {drilled_days} passed" in calendar
    # One mark a day, oldest first: the day 25 days back is the sixth.
    assert calendar.split("[")[1][5] == "#"


def test_pick_is_in_the_report(window_store):
    config, _ = window_store
    config.write_text(config.read_text().replace("html = false", "html = true"))
    outcome = run_drill(config, "database", "--pick", "random:7")
    assert outcome.exit == 0, outcome.output
    page = (outcome.run_dir / "drill-report.html").read_text()
    assert "Which backup was drilled" in page
    assert outcome.drill("database")["backup"]["key"] in page
    assert "random:7" in page


def test_a_config_drill_picks_the_oldest_archive_of_its_window(tmp_path, local_storage):
    """No container: archives 40 and 20 days old and an hour old, a 30-day promise."""
    members = {"srv/app/.env.production": b"APP_NAME=drishti\n"}
    ages = (timedelta(days=40), timedelta(days=20), timedelta(hours=1))
    keys = [put_config_archive(local_storage, members, age=age) for age in ages]
    sections = '[config]\nrequired = [".env.production"]\n[drill]\nretention_days = 30\n'
    config = write_drill_toml(tmp_path, local_storage.url, sections)
    outcome = run_drill(config, "config", "--pick", "oldest")
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("config")
    assert drill["backup"]["key"] == keys[1]
    assert drill["pick"]["newest_key"] == keys[2]
    assert drill["rpo"]["measured_s"] < 2 * 3600  # the newest archive's age, within 24 h
