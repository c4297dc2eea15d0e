"""The embedded S3 server: a real boto3 round trip over HTTP, and its process lifecycle."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from drills.config.errors import EnvironmentProblem
from drills.storage.manifest import HashingReader, sha256_file
from drills.storage.s3 import MULTIPART_THRESHOLD, S3Storage
from drills.storage.s3server import EmbeddedS3


def test_round_trip_multipart_pagination_and_checksum(s3_bucket: S3Storage, tmp_path: Path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MULTIPART_THRESHOLD + 3 * 1024 * 1024))
    s3_bucket.put_file("database/big.bin", big)

    head = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="database/big.bin")
    # a multipart upload's ETag is "<md5 of the part md5s>-<part count>"
    assert head["ETag"].strip('"').endswith("-2")
    assert head["ContentLength"] == big.stat().st_size

    keys = [f"many/{i:05d}.txt" for i in range(1_050)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3_bucket.put_bytes(k, k.encode()), keys))
    listed = [info.key for info in s3_bucket.list("many/")]
    assert listed == keys  # all 1,050, not the first page of 1,000

    with s3_bucket.open("database/big.bin") as body:
        reader = HashingReader(body)
        while reader.read(1 << 20):
            pass
    assert reader.bytes_read == big.stat().st_size
    assert reader.sha256 == sha256_file(big)


def test_client_speaks_s3_on_loopback(embedded_s3: EmbeddedS3):
    assert embedded_s3.endpoint_url.startswith("http://127.0.0.1:")
    client = embedded_s3.client()
    client.create_bucket(Bucket="hello-bucket")
    client.put_object(Bucket="hello-bucket", Key="k", Body=b"payload")
    body = client.get_object(Bucket="hello-bucket", Key="k")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"payload").hexdigest()
    assert "hello-bucket" in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_stop_reaps_the_server_process():
    with EmbeddedS3() as server:
        pid = server.pid
        url = server.endpoint_url
        assert server.running
    assert not server.running
    assert pid is not None
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2)
    server.stop()  # idempotent


def test_readiness_timeout_explains_itself_and_cleans_up():
    server = EmbeddedS3(start_timeout=0.01)
    with pytest.raises(EnvironmentProblem, match=r"did not answer on http://127\.0\.0\.1:\d+"):
        server.start()
    assert not server.running
