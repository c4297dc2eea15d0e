"""drill.toml: defaults, precedence, the messages a user reads, redaction, the example file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from drills.config import config_keys, load_config, parse_duration
from drills.config.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[storage]
url = "file:///srv/backups"

[database]
name = "drishti_production"
"""


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """Run in an empty directory, so the repo's drill.toml is never picked up by accident."""
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "drill.toml") -> Path:
    path = Path(name)
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(*args, **kwargs)
    return str(caught.value)


def test_defaults_without_a_file():
    cfg = load_config(env={})

    assert cfg.source is None
    assert cfg.configured_drills() == []
    assert cfg.estate.name == "estate"
    assert cfg.storage.url is None
    assert cfg.storage.prefixes.database == "database/"
    assert cfg.storage.prefixes.wal == "wal/"
    assert cfg.targets.rto.database == 2 * 3600
    assert cfg.targets.rto.full_system == 8 * 3600
    assert cfg.targets.rpo.database == 3600
    assert cfg.targets.rpo.config == 24 * 3600
    assert cfg.targets.enforce_projection is False
    assert cfg.runtime.step_timeout == 30 * 60
    assert cfg.runtime.pull is True
    assert cfg.backup.retention_days == 30
    assert cfg.report.dir == "reports"
    assert (cfg.database, cfg.files, cfg.config, cfg.app, cfg.pitr) == (None,) * 5


def test_values_from_the_file():
    path = write(
        MINIMAL
        + """
checks = ["SELECT count(*) > 0 FROM users"]
format = "directory"
production_bytes = 1_390_000_000

[targets.rto]
database = "1h30m"

[app]
port = 8080

[config]
paths = ["/srv/app/.env.production"]
required = [".env.production"]
"""
    )
    cfg = load_config(path, env={})

    assert cfg.source == path.absolute()
    assert cfg.database.name == "drishti_production"
    assert cfg.database.checks == ("SELECT count(*) > 0 FROM users",)
    assert cfg.database.format == "directory"
    assert cfg.database.compression == "gzip"
    assert cfg.database.production_bytes == 1_390_000_000
    assert cfg.targets.rto.database == 5400
    assert cfg.targets.rto.application == 3600
    assert cfg.app.port == 8080
    assert cfg.app.health_path == "/health"
    assert cfg.config.required == (".env.production",)
    assert cfg.configured_drills() == ["database", "config", "system", "freshness"]


def test_the_settings_are_frozen():
    cfg = load_config(write(MINIMAL), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.database.name = "other"  # type: ignore[misc]


def test_drill_toml_in_the_working_directory_is_found():
    write(MINIMAL)
    assert load_config(env={}).database.name == "drishti_production"


def test_drill_config_names_the_file():
    write(MINIMAL, "elsewhere.toml")
    assert load_config(env={"DRILL_CONFIG": "elsewhere.toml"}).database is not None


def test_environment_beats_file():
    path = write(MINIMAL + "\n[app]\nport = 8080\n")
    cfg = load_config(
        path,
        env={
            "DRILL_STORAGE_URL": "s3://drishti-backups/prod",
            "DRILL_STORAGE_ENDPOINT_URL": "http://127.0.0.1:9000",
            "DRILL_TARGETS_RTO_DATABASE": "45m",
            "DRILL_APP_PORT": "9090",
            "DRILL_REPORT_HTML": "false",
            "DRILL_DATABASE_CHECKS": '["SELECT true", "SELECT 1 = 1"]',
        },
    )

    assert cfg.storage.url == "s3://drishti-backups/prod"
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.targets.rto.database == 45 * 60
    assert cfg.app.port == 9090
    assert cfg.report.html is False
    assert cfg.database.checks == ("SELECT true", "SELECT 1 = 1")


def test_command_line_beats_environment():
    cfg = load_config(
        write(MINIMAL),
        env={"DRILL_STORAGE_URL": "s3://from-env", "DRILL_REPORT_DIR": "env-reports"},
        overrides={"storage.url": "file:///x", "report.dir": "out", "app.port": None},
    )

    assert cfg.storage.url == "file:///x"
    assert cfg.report.dir == "out"
    assert cfg.app is None  # an option not given (None) configures nothing


def test_an_empty_value_unsets_an_optional_key():
    path = write(MINIMAL.replace("[storage]", '[storage]\nendpoint_url = "http://minio:9000"'))
    cfg = load_config(path, env={"DRILL_STORAGE_ENDPOINT_URL": ""})
    assert cfg.storage.endpoint_url is None


def test_a_left_out_section_means_the_drill_is_not_configured():
    cfg = load_config(write(MINIMAL), env={})

    assert cfg.files is None
    assert cfg.config is None
    assert cfg.app is None
    assert cfg.configured_drills() == ["database", "freshness"]


def test_an_empty_section_configures_the_drill_with_defaults():
    cfg = load_config(write(MINIMAL + "\n[files]\n[app]\n"), env={})

    assert cfg.files.source_dir is None
    assert cfg.app.port == 3001
    assert cfg.app.start_timeout == 60
    assert cfg.configured_drills() == ["database", "files", "system", "freshness"]


def test_an_environment_variable_of_a_section_configures_its_drill():
    cfg = load_config(
        env={"DRILL_STORAGE_URL": "file:///srv/b", "DRILL_FILES_SOURCE_DIR": "/srv/uploads"}
    )
    assert cfg.configured_drills() == ["files", "freshness"]


def test_unknown_key_names_the_key_and_suggests():
    write('[database]\nnmae = "drishti_production"\n')
    assert error_of(env={}) == "drill.toml: unknown key [database] nmae (did you mean name?)"


def test_unknown_section_names_the_section_and_suggests():
    write('[databse]\nname = "x"\n')
    assert error_of(env={}) == "drill.toml: unknown section [databse] (did you mean database?)"


def test_a_key_outside_any_section():
    write('name = "drishti"\n')
    assert error_of(env={}) == ("drill.toml: unknown key name (settings belong in a [section])")


def test_unknown_command_line_setting_suggests():
    message = error_of(env={}, overrides={"storage.ur": "file:///x"})
    assert message == "command line: unknown setting storage.ur (did you mean storage.url?)"


def test_wrong_type_in_the_file():
    write(MINIMAL + '\n[app]\nport = "abc"\n')
    assert error_of(env={}) == 'drill.toml: [app] port must be an integer, got "abc"'


def test_wrong_type_in_the_environment_names_the_variable():
    message = error_of(write(MINIMAL), env={"DRILL_APP_PORT": "abc"})
    assert message == 'DRILL_APP_PORT: [app] port must be an integer, got "abc"'


def test_value_outside_its_choices():
    write(MINIMAL + 'compression = "bzip2"\n')
    assert error_of(env={}) == (
        'drill.toml: [database] compression must be one of "gzip", "zstd", "none", got "bzip2"'
    )


def test_bad_duration():
    write(MINIMAL + '\n[targets.rto]\ndatabase = "2 hours"\n')
    assert error_of(env={}) == (
        'drill.toml: [targets.rto] database: bad duration "2 hours" (use e.g. 90s, 15m, 2h)'
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (90, 90), ("90", 90)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 hours", "5w", "-5m", -5, "h", True])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration(text)


def test_toml_syntax_error_names_the_line():
    write('[storage]\nurl = "file:///srv/backups"\nport = \n')
    message = error_of(env={})
    assert message.startswith("drill.toml: not valid TOML: ")
    assert "line 3" in message


def test_a_file_named_explicitly_must_exist():
    assert error_of("missing.toml", env={}) == "missing.toml: no such configuration file"
    assert error_of(env={"DRILL_CONFIG": "gone.toml"}) == (
        "gone.toml: no such configuration file (named by $DRILL_CONFIG)"
    )


def test_a_passphrase_in_the_file_is_rejected():
    write(MINIMAL + '\n[config]\npaths = ["/srv/.env"]\npassphrase = "hunter2"\n')
    message = error_of(env={})

    assert message.startswith("drill.toml: [config] passphrase is not allowed: ")
    assert "passphrase_env" in message
    assert "hunter2" not in message


def test_a_passphrase_in_passphrase_env_is_rejected_without_echoing_it():
    write(MINIMAL + '\n[config]\npassphrase_env = "correct horse battery"\n')
    message = error_of(env={})

    assert message.startswith("drill.toml: [config] passphrase_env must be the name of an")
    assert "horse" not in message


def test_storage_url_is_required_once_a_drill_is_configured():
    write('[database]\nname = "drishti_production"\n')
    message = error_of(env={})
    assert message.startswith("drill.toml: [storage] url is required when a drill is configured")
    assert "DRILL_STORAGE_URL" in message


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("ftp://host/backups", "must be file:///abs/dir or s3://bucket/prefix"),
        ("file://backups", "needs an absolute path"),
        ("s3:///prefix", "needs a bucket"),
        ("s3://AKIA:sEcReT@bucket/prefix", "must not carry credentials"),
    ],
)
def test_storage_url_scheme_is_checked(url, cause):
    message = error_of(env={"DRILL_STORAGE_URL": url})
    assert message.startswith(f"DRILL_STORAGE_URL: [storage] url {cause}")


def test_database_section_needs_a_name():
    write('[storage]\nurl = "file:///srv/b"\n[database]\nchecks = ["SELECT true"]\n')
    assert error_of(env={}) == (
        "drill.toml: [database] name is required: the database's name,"
        " as in its dump names (<name>_YYYYMMDD_HHMMSS...)"
    )


def test_optional_config_files_must_be_among_the_paths():
    write(MINIMAL + '\n[config]\npaths = ["/srv/.env"]\noptional = ["/etc/nginx.conf"]\n')
    assert error_of(env={}) == (
        'drill.toml: [config] optional lists "/etc/nginx.conf", not in paths'
    )


def test_pitr_target_needs_an_offset():
    message = error_of(write(MINIMAL), env={"DRILL_PITR_TARGET": "2025-01-15T02:00:00"})
    assert message.startswith("DRILL_PITR_TARGET: [pitr] target needs a UTC offset")


def test_redaction_hides_passwords_and_secret_keys():
    write(
        MINIMAL
        + 'dsn = "postgresql://backup:s3cr3t@db.internal:5432/drishti_production"\n'
        + '\n[report]\nsigning_key_path = "/etc/drill/signing.key"\n'
    )
    cfg = load_config(env={"DRILL_STORAGE_ENDPOINT_URL": "https://ak:sk-PASS@minio.local"})
    redacted = cfg.redacted()
    text = json.dumps(redacted)

    assert redacted["database"]["dsn"] == (
        "postgresql://backup:***@db.internal:5432/drishti_production"
    )
    assert redacted["report"]["signing_key_path"] == "***"
    assert redacted["storage"]["endpoint_url"] == "https://ak:***@minio.local"
    assert "s3cr3t" not in text
    assert "sk-PASS" not in text
    assert redacted["database"]["name"] == "drishti_production"
    assert redacted["source"] == str(Path("drill.toml").absolute())


def test_redaction_hides_a_keyword_dsn_password():
    cfg = load_config(
        write(MINIMAL),
        env={"DRILL_DATABASE_DSN": "host=db user=backup password='p a s s' dbname=x"},
    )
    assert cfg.redacted()["database"]["dsn"] == "host=db user=backup password=*** dbname=x"


def test_config_error_exits_with_code_2():
    write("[databse]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={})
    assert caught.value.exit_code == 2


def test_the_example_drill_toml_loads():
    cfg = load_config(REPO / "drill.toml", env={})

    assert cfg.estate.name == "drishti"
    assert cfg.database.name == "drishti_production"
    assert cfg.configured_drills() == ["database", "files", "config", "system", "freshness"]
    json.dumps(cfg.redacted())


def test_every_key_is_in_the_example_and_the_reference():
    example = (REPO / "drill.toml").read_text()
    reference = (REPO / "docs" / "configuration.md").read_text()
    for key in config_keys():
        assert re.search(rf"^#? ?{key.path[-1]} = ", example, re.M), f"drill.toml: {key.dotted}"
        assert f"`{key.env}`" in reference, f"docs/configuration.md: {key.env}"


def test_environment_variable_names_are_unambiguous():
    names = [key.env for key in config_keys()]
    assert len(names) == len(set(names))
    assert "DRILL_CONFIG" not in names


@pytest.mark.parametrize("key", ["restore_dsn", "target_dsn", "restore_to"])
def test_a_drill_cannot_be_pointed_at_an_existing_server(tmp_path, key):
    path = tmp_path / "drill.toml"
    path.write_text(
        f'[storage]\nurl = "file:///b"\n[database]\nname = "app"\n'
        f'{key} = "postgresql://prod.example/app"\n'
    )
    with pytest.raises(ConfigError, match="never into an existing server") as err:
        load_config(path)
    assert "drill restore database --to" in str(err.value)
    with pytest.raises(ConfigError, match="never into an existing server"):
        load_config(None, env={}, overrides={f"database.{key}": "postgresql://x/y"})
