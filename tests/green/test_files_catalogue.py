"""Run the green catalogue of uploads and config: each tree backed up as a user's producer or
runbook makes it, drilled green through `drill run`, then restored with `drill restore` and
compared with what was backed up under `diff -r --no-dereference` and `stat`.

Prints the rows as a table at the end and writes reports/green-files-catalogue.md.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from drills.storage.snapshot import read_tree
from fixtures.estate_backups import drill_cli, run_drill, stamp, write_drill_toml
from fixtures.upload_trees import (
    CONFIG_PATHS,
    change_host_file,
    config_tree,
    differences,
    every_shape,
    runbook_config_archive,
    runbook_snapshot,
)
from tests.tables import published

from .files_catalogue import ROWS, GreenTree, catalogue_markdown
from .test_catalogue import aws_env

RESULTS: list[dict] = []
BOUND_S = 300


@dataclass
class Estate:
    """A row's backed-up tree: the drill.toml, what to compare the restore with, and how."""

    config: Path
    original: Path
    how: dict


def _storage(row: GreenTree, tmp_path: Path, s3) -> tuple[str, str | None]:
    if row.store == "s3":
        bucket = f"green-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=bucket)
        return f"s3://{bucket}", s3.endpoint_url
    store = tmp_path / "store"
    store.mkdir()
    return store.as_uri(), None


def _uploads(row: GreenTree, tmp_path: Path, s3, env: dict) -> Estate:
    # moto answers 404 to a key with a newline (AWS S3 takes it): that name stays local
    source = every_shape(tmp_path / "uploads", tmp_path / "host.txt", newline=row.store != "s3")
    url, endpoint = _storage(row, tmp_path, s3)
    section = f'[files]\nsource_dir = "{source}"\n'
    if row.store == "s3":
        section += f'\n[backup]\nlocal_dir = "{tmp_path / "local"}"\n'
    config = write_drill_toml(tmp_path, url, section, endpoint_url=endpoint)
    if row.made_by == "runbook":
        store = Path(url.removeprefix("file://"))
        original = runbook_snapshot(source, store / "files", stamp(timedelta(minutes=5)))
        return Estate(config, original, {"link_counts": False})
    made = drill_cli("backup", "files", "--config", str(config), env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    return Estate(config, source, {})


def _config(row: GreenTree, tmp_path: Path, s3, env: dict) -> Estate:
    root = tmp_path / "server"
    paths = config_tree(root)
    url, endpoint = _storage(row, tmp_path, s3)
    listed = ", ".join(json.dumps(p) for p in paths)
    section = (
        f'[config]\npaths = [{listed}]\nrequired = [".env.production", "sites-enabled/app.conf"]\n'
    )
    config = write_drill_toml(tmp_path, url, section, endpoint_url=endpoint)
    if row.made_by == "runbook":
        archive = tmp_path / "config.tar.gz"
        assert runbook_config_archive(paths, archive) == 0
        name = f"config/config_{stamp(timedelta(minutes=5))}.tar.gz"
        store = Path(url.removeprefix("file://"))
        (store / name).parent.mkdir(parents=True)
        (store / name).write_bytes(archive.read_bytes())
    else:
        made = drill_cli("backup", "config", "--config", str(config), env=env)
        assert made.returncode == 0, made.stdout + made.stderr

    def configured(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in CONFIG_PATHS)

    how = {"only": configured, "whole_seconds": row.made_by == "runbook"}
    return Estate(config, root, how)


def _result(row: GreenTree) -> dict:
    result = {
        "name": row.name,
        "made": row.made,
        "store": "file://" if row.store == "file" else "embedded S3",
        "holds": row.holds,
        "got": "error",
        "cause": "",
    }
    RESULTS.append(result)
    return result


def _drill_problems(row: GreenTree, code: int, entry: dict, original: Path) -> list[str]:
    """What a user would notice is wrong with the drill of a good tree."""
    problems = []
    failed = [f"{c['name']}: {c['detail']}" for c in entry["checks"] if not c["passed"]]
    if entry["verdict"] != "pass" or code != 0:
        problems.append(f"verdict {entry['verdict']} (exit {code}): {entry['error'] or failed}")
    if row.kind == "files":
        outside = (entry.get("tree") or {}).get("links_outside")
        if outside != ["docs/host-file"]:
            problems.append(
                f"the link to the host file is not named as leaving the tree: {outside}"
            )
        tree = read_tree(original)
        carried = sum(e.size for e in tree.files.values() if e.hardlink is None)
        if (entry.get("restore") or {}).get("bytes_read") != carried:
            problems.append(
                f"bytes read {entry['restore'].get('bytes_read')}, the snapshot's files hold "
                f"{carried}: something outside the snapshot was read"
            )
    return problems


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_tree_is_green_and_restored_as_it_was(row: GreenTree, tmp_path, embedded_s3):
    result = _result(row)
    env = aws_env(embedded_s3)
    estate = (_uploads if row.kind == "files" else _config)(row, tmp_path, embedded_s3, env)
    if row.kind == "files":
        change_host_file(tmp_path / "host.txt")
    started = time.monotonic()
    outcome = run_drill(estate.config, row.kind, env=env, timeout=BOUND_S)
    entry = outcome.drill(row.kind)
    problems = _drill_problems(row, outcome.exit, entry, estate.original)
    target = tmp_path / "restored"
    done = drill_cli(
        "restore", row.kind, "--config", str(estate.config), "--to", str(target), env=env
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        problems.append(f"drill restore {row.kind}: exit {done.returncode}: {done.stderr.strip()}")
    else:
        back = target if row.kind == "files" else target / str(estate.original).lstrip("/")
        problems += differences(estate.original, back, **estate.how)[:10]
    result["got"] = (
        f"drill {entry['verdict']} (exit {outcome.exit}); restore exit {done.returncode}; "
        f"{'identical' if not problems else 'differs'}; {took:.0f} s"
    )
    result["cause"] = "; ".join(problems)
    assert not problems, "\n".join(problems) + "\n" + outcome.output[-2000:]


print_catalogue = published(
    RESULTS, catalogue_markdown, "green catalogue: uploads and config", "green-files-catalogue.md"
)
