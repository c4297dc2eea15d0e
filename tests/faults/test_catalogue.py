"""Run the fault catalogue: every row through `drill run`, red for the right reason.

Prints the catalogue as a table (fault, expected, got, cause seen) at the end and fails any
row where the drill passed or the cause was not named.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from drills.runtime import labels
from drills.storage import LocalStorage
from fixtures.estate_backups import run_drill, write_drill_toml
from fixtures.storage import s3_storage_on
from tests.tables import published

from .catalogue import FAULTS, S3_MIRROR_ROWS, Case, Fault, catalogue_markdown, wait_until
from .s3_proxy import FaultyS3Proxy

ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[dict] = []
S3_AREAS = {"storage"}
S3_ROWS = {"a snapshot file unreadable", "uploads mass-encrypted in place"} | S3_MIRROR_ROWS


@pytest.fixture(scope="module")
def dumps(dump_variants):
    """The session's real dumps (fixtures/estate_backups.py)."""
    return dump_variants


class Ctx:
    """What a row's maker may use: the storage, the dumps, and real ways to break things."""

    def __init__(self, tmp_path, dumps, storage, s3, docker_client, url, request=None):
        self.tmp_path, self.dumps, self.storage = tmp_path, dumps, storage
        self.s3, self.client, self.url = s3, docker_client, url
        self._proxy: FaultyS3Proxy | None = None
        self._request = request

    def pitr(self):
        """The session's real failover archive (fixtures/pitr.py), made on first use."""
        return self._request.getfixturevalue("promoted_archive")

    def drill_now(self, sections: str, kind: str = "database") -> None:
        """One passing `drill run` before the fault (a history, as monthly drills leave)."""
        endpoint = self.s3.endpoint_url if self.url.startswith("s3") else None
        config = write_drill_toml(self.tmp_path, self.url, sections, endpoint_url=endpoint)
        outcome = run_drill(config, kind, env={**os.environ, **self.s3_env()})
        assert outcome.exit == 0, f"the drill before the fault failed:\n{outcome.output[-3000:]}"

    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
            "AWS_DEFAULT_REGION": self.s3.region,
        }

    def proxy(self) -> FaultyS3Proxy:
        self._proxy = FaultyS3Proxy(self.s3.endpoint_url).__enter__()
        return self._proxy

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.__exit__(None, None, None)

    def closed_port(self) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def archive(self, key: str) -> None:
        """Move an object to the GLACIER class, where a GET answers InvalidObjectState."""
        client, bucket = self.storage.client, self.storage.bucket
        client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            StorageClass="GLACIER",
        )

    def storage_delete(self, key: str) -> None:
        if isinstance(self.storage, LocalStorage):
            (self.storage.root / key).unlink()
        else:
            self.storage.client.delete_object(Bucket=self.storage.bucket, Key=key)

    def _targets(self, pid: int) -> list:
        selector = {"label": [f"{labels.PID}={pid}", f"{labels.ROLE}=postgres"]}
        return labels.list_containers(self.client, selector)

    def wait_for_container(self, pid: int) -> None:
        wait_until(lambda: self._targets(pid), 120, "the restore target to be created")

    def kill_restore_target(self, pid: int) -> None:
        def restoring():
            for container in self._targets(pid):
                if container.status != "running":
                    continue
                try:
                    top = container.top().get("Processes") or []
                except docker.errors.NotFound:
                    continue  # a short-lived container of the run (a warm-image template)
                if any("ON_ERROR_STOP" in " ".join(p) for p in top):
                    return container
            return None

        container = wait_until(restoring, 120, "the restore to start")
        with contextlib.suppress(docker.errors.APIError):
            container.kill()


def _storage_for(fault: Fault, tmp_path: Path, s3):
    """A fresh storage for the row: a bucket on the embedded S3, or a local directory."""
    if fault.area in S3_AREAS or fault.name in S3_ROWS:
        bucket = f"faults-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=bucket)
        return s3_storage_on(s3, f"s3://{bucket}"), f"s3://{bucket}"
    root = tmp_path / "backups"
    root.mkdir()
    return LocalStorage(root), f"file://{root}"


def _run(config: Path, kind: str, case: Case, env: dict) -> tuple[int, dict | None, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "--only", kind, "-q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if case.during is not None:
            case.during(proc.pid)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    document = config.parent / "reports" / "latest" / "drill.json"
    data = json.loads(document.read_text()) if document.exists() else None
    return proc.returncode, data, output


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault(fault: Fault, tmp_path, dumps, embedded_s3, docker_client, request):
    storage, url = _storage_for(fault, tmp_path, embedded_s3)
    ctx = Ctx(tmp_path, dumps, storage, embedded_s3, docker_client, url, request)
    row = {
        "name": fault.name,
        "injection": fault.injection,
        "drill": fault.drill,
        "expected": f"{fault.expect} (exit {fault.exit})",
        "got": "error",
        "cause": "",
    }
    RESULTS.append(row)
    try:
        case = fault.make(ctx)
        endpoint = case.endpoint_url or (embedded_s3.endpoint_url if url.startswith("s3") else None)
        config = write_drill_toml(tmp_path, url, case.sections, endpoint_url=endpoint)
        env = {**os.environ, **ctx.s3_env(), **case.env}
        code, document, output = _run(config, fault.drill, case, env)
    finally:
        ctx.close()
    assert document is not None, f"no drill.json (exit {code}):\n{output[-3000:]}"
    entry = next(d for d in document["drills"] if d["kind"] == fault.drill)
    row["got"] = f"{entry['verdict']} (exit {code})"
    row["cause"] = entry["error"] or ""
    assert entry["verdict"] == fault.expect, output[-3000:]
    assert code == fault.exit, output[-3000:]
    assert fault.words.lower() in row["cause"].lower(), row["cause"]
    if fault.absent:
        assert fault.absent.lower() not in row["cause"].lower(), row["cause"]


print_catalogue = published(RESULTS, catalogue_markdown, "fault catalogue", "fault-catalogue.md")
