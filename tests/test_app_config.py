"""[app] in drill.toml: tables (env, headers), an array of tables (smoke), keys that may be
emptied, and the messages a user reads when one is wrong. Header values never in a file."""

from __future__ import annotations

import pytest

from drills.config import load_config
from drills.config.errors import ConfigError
from drills.config.schema import SmokeRequest

BASE = '[storage]\nurl = "file:///srv/backups"\n[database]\nname = "app"\n'


def load(tmp_path, app: str, env: dict[str, str] | None = None):
    path = tmp_path / "drill.toml"
    path.write_text(BASE + app)
    return load_config(path, env=env or {})


def test_tables_and_an_array_of_tables_from_the_file(tmp_path):
    cfg = load(
        tmp_path,
        "[app]\n"
        'compose_file = "srv/app/docker-compose.yml"\n'
        'count_sql = "SELECT count(*) FROM auth_user"\n'
        'smoke = [{ path = "/api", contains = "ok" }, { path = "/gone", status = 410 }]\n'
        "[app.env]\n"
        'SECRET_KEY = "drill-only"\n'
        'DB_HOST = "{db_host}"\n'
        "[app.headers]\n"
        'X-Health-Token = "HEALTH_TOKEN"\n',
    )
    app = cfg.app
    assert app.compose_file == "srv/app/docker-compose.yml"
    assert app.env == {"SECRET_KEY": "drill-only", "DB_HOST": "{db_host}"}
    assert app.headers == {"X-Health-Token": "HEALTH_TOKEN"}
    assert app.smoke == (SmokeRequest("/api", 200, "ok"), SmokeRequest("/gone", 410, None))
    assert app.soak == 10.0
    assert cfg.redacted()["app"]["env"]["SECRET_KEY"] == "***"


def test_tables_from_the_environment_and_keys_emptied(tmp_path):
    env = {
        "DRILL_APP_ENV": '{ SECRET_KEY = "x" }',
        "DRILL_APP_SMOKE": '[{ path = "/" }]',
        "DRILL_APP_COUNT_PATH": "",
        "DRILL_APP_UPLOADS_URL_PATH": "",
        "DRILL_APP_SOAK": "30s",
    }
    app = load(tmp_path, "[app]\n", env).app
    assert app.env == {"SECRET_KEY": "x"}
    assert app.smoke == (SmokeRequest("/"),)
    assert (app.count_path, app.uploads_url_path, app.soak) == (None, None, 30.0)


@pytest.mark.parametrize(
    ("app", "words"),
    [
        ('headers = { "X-Token" = "s3cr3t value" }', "[app] headers [X-Token] must be the name"),
        ('headers = { "Bad Header" = "TOKEN" }', "not a header name"),
        ('env = { "not a name" = "x" }', "[app] env holds names that are not variable names"),
        ('smoke = [{ path = "api" }]', "[app] smoke item 1: path must start with"),
        ('smoke = [{ path = "/", code = 200 }]', "item 1: unknown key code (known: path, status"),
        ("smoke = [{ status = 200 }]", "item 1: path is required"),
        ('smoke = [{ path = "/", status = 999 }]', "item 1: status must be an HTTP status"),
        ('compose_file = "/etc/docker-compose.yml"', "must be a path inside the config archive"),
        ('uploads_url_path = "/media"', 'must start and end with "/"'),
        ('env = "SECRET_KEY=x"', "[app] env must be a table of strings"),
        ('soak = "0s"', "[app] soak must be longer than zero"),
    ],
)
def test_a_wrong_value_is_named(tmp_path, app, words):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[app]\n{app}\n")
    assert words in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
