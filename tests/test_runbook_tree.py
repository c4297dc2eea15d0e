"""The original runbook's off-site tree, as its own commands leave it in a bucket, drilled
green with its times right.

The runbook names its dumps with `date +%Y%m%d_%H%M%S` on a server kept in local time (here
Tokyo, nine hours ahead of UTC), uploads `pg_dump | gzip` under `database/` and its `gpg
--symmetric --cipher-algo AES256` copy under `encrypted/`, and mirrors the uploads with `aws
s3 sync current/ s3://<bucket>/files/ --delete` (the real AWS CLI against the embedded S3).
With `[storage] name_timezone` the drill reads the names in that zone; without it, a name
nine hours ahead of its write time is noted and the write time is taken, never the name.
"""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fixtures.estate_backups import (
    DB,
    drill_cli,
    gpg_symmetric,
    run_drill,
    typed_uploads,
    write_drill_toml,
)
from fixtures.upload_trees import runbook_mirror

ZONE = "Asia/Tokyo"
PASSPHRASE = "runbook passphrase"
ENV = "RUNBOOK_DUMP_PASSPHRASE"


def _aws_env(tmp_path) -> dict[str, str]:
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config),
        ENV: PASSPHRASE,
    }


def _config(tmp_path, bucket, embedded_s3, *, zone: bool, prefix: str):
    lines = [f'name_timezone = "{ZONE}"'] if zone else []
    lines += [
        f'\n[storage.prefixes]\ndatabase = "{prefix}"',
        f'\n[database]\nname = "{DB}"\npassphrase_env = "{ENV}"',
        'checks = ["SELECT count(*) = 1000 FROM users"]',
        "\n[files]",
    ]
    folder = tmp_path / f"{prefix.strip('/')}-{'zoned' if zone else 'utc'}"
    folder.mkdir()
    return write_drill_toml(
        folder, bucket.url, "\n".join(lines), endpoint_url=embedded_s3.endpoint_url
    )


def test_the_runbooks_bucket_is_drilled_green_with_its_times_right(
    tmp_path, s3_bucket, embedded_s3, dump_variants
):
    env = _aws_env(tmp_path)
    made = datetime.now(UTC)
    name = f"{DB}_{made.astimezone(ZoneInfo(ZONE)):%Y%m%d_%H%M%S}.sql.gz"
    dump = gzip.compress(dump_variants["plain"])
    (tmp_path / name).write_bytes(dump)
    s3_bucket.put_file(f"database/{name}", tmp_path / name)
    (tmp_path / f"{name}.gpg").write_bytes(gpg_symmetric(dump, PASSPHRASE))
    s3_bucket.put_file(f"encrypted/{name}.gpg", tmp_path / f"{name}.gpg")
    current = tmp_path / "current"
    for path, data in typed_uploads().items():
        (current / path).parent.mkdir(parents=True, exist_ok=True)
        (current / path).write_bytes(data)
    runbook_mirror(current, s3_bucket.bucket, embedded_s3.endpoint_url, env)

    for prefix, encrypted in (("database/", False), ("encrypted/", True)):
        config = _config(tmp_path, s3_bucket, embedded_s3, zone=True, prefix=prefix)
        database = run_drill(config, "database", env=env)
        assert database.exit == 0, database.output[-3000:]
        drill = database.drill("database")
        assert drill["backup"]["key"].startswith(prefix)
        assert drill["backup"]["encrypted"] is encrypted
        taken = datetime.fromisoformat(drill["backup"]["taken_at"])
        assert abs(taken - made) < timedelta(minutes=2), drill["backup"]
        assert drill["backup"]["time_source"] == "name"
        assert not [n for n in drill["notes"] if "after its bytes were written" in n]

    files = run_drill(config, "files", env=env)
    assert files.exit == 0, files.output[-3000:]
    mirror = files.drill("files")["backup"]
    assert (mirror["key"], mirror["format"]) == ("files/", "mirror")
    assert abs(datetime.fromisoformat(mirror["taken_at"]) - made) < timedelta(minutes=2)
    status = drill_cli("status", "--config", str(config), env=env, stdin=None)
    assert "files/" in status.stdout, status.stdout
    assert "encrypted/" in status.stdout, status.stdout

    # Without the zone, the name's time is nine hours in the future: the write time is taken
    # and the name noted, so the backup never looks fresher than its bytes.
    config = _config(tmp_path, s3_bucket, embedded_s3, zone=False, prefix="database/")
    utc = run_drill(config, "database", env=env)
    assert utc.exit == 0, utc.output[-3000:]
    drill = utc.drill("database")
    assert drill["backup"]["time_source"] != "name"
    assert abs(datetime.fromisoformat(drill["backup"]["taken_at"]) - made) < timedelta(minutes=2)
    assert datetime.fromisoformat(drill["backup"]["name_time"]) - made > timedelta(hours=8)
    assert [n for n in drill["notes"] if name in n and "after its bytes were written" in n], drill[
        "notes"
    ]
