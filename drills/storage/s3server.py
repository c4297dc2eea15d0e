"""An embedded S3 endpoint: moto's server mode, run as its own process on 127.0.0.1.

The same protocol as AWS S3, Backblaze B2 or MinIO, so the code a drill runs against it is the
code a real recovery runs against a real bucket. It runs in its own process (not in a thread of
the drill's interpreter) so that serving a download does not compete with the drill for the GIL.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

import boto3
from botocore.config import Config

from drills.config.errors import EnvironmentProblem

_PORT_ATTEMPTS = 3
_LOG_TAIL = 4000


class EmbeddedS3:
    """A moto S3 server in a child process, on a free port of 127.0.0.1.

    Example::

        from drills.storage.s3server import EmbeddedS3

        with EmbeddedS3() as s3:
            client = s3.client()
            client.create_bucket(Bucket="backups")
            client.put_object(Bucket="backups", Key="hello.txt", Body=b"hi")
            assert client.get_object(Bucket="backups", Key="hello.txt")["Body"].read() == b"hi"
    """

    access_key_id = "testing"
    secret_access_key = "testing"
    region = "us-east-1"

    def __init__(self, host: str = "127.0.0.1", start_timeout: float = 15.0) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        if self.port is None:
            raise EnvironmentProblem("embedded S3: not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedS3:
        """Start the server and wait until it answers HTTP; return self."""
        if self.running:
            return self
        last = ""
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
            except _PortTaken as exc:
                # another process took the port between our probe and moto's bind: try another
                last = str(exc)
                self.stop()
                continue
            except BaseException:
                self.stop()
                raise
            atexit.register(self.stop)
            return self
        raise EnvironmentProblem(
            f"embedded S3: no free port after {_PORT_ATTEMPTS} attempts; last output:\n{last}"
        )

    def client(self) -> Any:
        """A boto3 S3 client of this server (dummy credentials, path-style addressing)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 3},
                proxies={},
            ),
        )

    def set_restore_delay(self, seconds: float) -> None:
        """How long a restore of an archived object (GLACIER, DEEP_ARCHIVE) stays in progress
        from its request; 0 (moto's default): restored at once. A simulated retrieval time:
        AWS's are minutes to hours (`drills.storage.tiers`)."""
        transition = (
            {"progression": "time", "seconds": seconds}
            if seconds > 0
            else {"progression": "immediate"}
        )
        body = json.dumps({"model_name": "s3::keyrestore", "transition": transition}).encode()
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/state-manager/set-transition", data=body, method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5.0) as response:
            if response.status not in (200, 201):
                raise EnvironmentProblem(
                    f"embedded S3: setting the restore delay answered HTTP {response.status}"
                )

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (kill it after `timeout` seconds) and reap it. Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.endpoint_url if self.running else "stopped"
        return f"EmbeddedS3({state})"

    def _spawn(self) -> None:
        if self._log is not None:
            self._log.close()
        # a file, not a pipe: moto logs every request and nobody reads a pipe while it runs
        self._log = tempfile.TemporaryFile(prefix="embedded-s3-")  # noqa: SIM115 - closed in stop()
        # moto's server, its restores from an archive class timed from the request.
        cmd = [sys.executable, "-m", "drills.storage.moto_main", "-H", self.host]
        cmd += ["-p", str(self.port)]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        # bypass any HTTP proxy from the environment: the server is on loopback
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        probe = f"{self.endpoint_url}/moto-api/data.json"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                output = self.output()
                if "address already in use" in output.lower():
                    raise _PortTaken(output)
                raise EnvironmentProblem(
                    f"embedded S3: moto server exited with code {self._proc.returncode} "
                    f"before answering on {self.endpoint_url}; output:\n{output}"
                )
            try:
                with opener.open(probe, timeout=1.0) as response:
                    if response.status == 200 and self._proc.poll() is None:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise EnvironmentProblem(
            f"embedded S3: moto server did not answer on {self.endpoint_url} within "
            f"{self.start_timeout:g} s; output:\n{self.output()}"
        )

    def output(self, tail: int = _LOG_TAIL) -> str:
        """The last `tail` characters the server printed (one line per request it served)."""
        if self._log is None:
            return ""
        # pread leaves the file offset alone: the server shares it and writes at it
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - tail * 4)
        text = os.pread(fd, size - start, start).decode("utf-8", "replace")
        return text[-tail:].strip() or "(no output)"


class _PortTaken(Exception):
    """The chosen port was taken before moto could bind it."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # the server leads its own session (start_new_session), so its group id is its pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
