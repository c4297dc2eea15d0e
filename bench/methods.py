"""The restore methods the benchmark measures, each into a fresh container of its own.

Raw tools run on the host, as a runbook runs them (client tools over the published port);
the drill's restore phase and the whole drill run the project's own code. Every method
returns the seconds it took and what else it measured; containers are started through the
runtime factory, labelled with the benchmark's run, and removed after each measurement.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.estate import DATABASE, ROLES, EstateDumps
from drills.restore import analyze_database, jobs, progress, restore_database
from drills.restore.common import Secrets
from drills.runtime.gpg import Passphrase, gpg_pipe
from drills.runtime.labels import RunSession
from drills.runtime.postgres import (
    RESTORE_ENVIRONMENT,
    RESTORE_TUNING,
    PostgresContainer,
    restore_memory_settings,
    start_postgres,
)
from drills.storage import LocalStorage, catalog

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 4 * 3600


def rotations(methods: Sequence, reps: int) -> Iterator[tuple[int, object]]:
    """(repetition, method) for every method `reps` times, the order rotated each
    repetition, so that no method always runs first on a cold cache or a fresh machine."""
    for rep in range(reps):
        shift = rep % len(methods)
        for method in [*methods[shift:], *methods[:shift]]:
            yield rep, method


@dataclass
class Measurement:
    """One run of one method: seconds, and whatever else it measured."""

    seconds: float
    start_seconds: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A named way to restore: how to run it once, and whether it is a raw tool."""

    name: str
    label: str
    raw: bool
    run: Callable[[RunSession, str, EstateDumps], Measurement]


class CpuMeter:
    """CPU seconds a measurement used (its container's cgroup, this process and its waited
    children) and what the rest of the machine used meanwhile (other people's work)."""

    def __init__(self, pg: PostgresContainer | None = None) -> None:
        self.pg = pg
        self.started = (_machine_busy(), _own_cpu(), _container_cpu(pg))

    def stop(self) -> dict:
        """{"cpu_s": ours, "others_cores": the average cores busy with other work}."""
        machine, own, container = _machine_busy(), _own_cpu(), _container_cpu(self.pg)
        busy = machine[0] - self.started[0][0]
        wall = machine[1] - self.started[0][1]
        ours = own - self.started[1]
        if container is not None and self.started[2] is not None:
            ours += container - self.started[2]
        others = max(0.0, busy - ours) / wall if wall > 0 else None
        return {
            "cpu_s": round(ours, 2),
            "others_cores": None if others is None else round(others, 2),
        }


def _machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall seconds) from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / tick, time.monotonic()


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _container_cpu(pg: PostgresContainer | None) -> float | None:
    """CPU seconds of a container so far (cgroup v1 or v2), None where unreadable."""
    if pg is None:
        return None
    cid = pg.get_wrapped_container().id
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e9),
        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e6),
    ):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            usage = dict(line.split() for line in text.splitlines())["usage_usec"]
            return int(usage) / scale
        return int(text) / scale
    return None


def _target(image: str, session: RunSession, tuning: str) -> PostgresContainer:
    """A server for a raw tool, with the estate's roles made beforehand (untimed), as an
    operator restoring by hand first runs `pg_dumpall --roles-only`; the drill finds and
    creates them itself, inside its measured restore."""
    pg = start_postgres(image, session, tuning=tuning, user="postgres", timeout=120)
    with pg.connect(autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
        for role in ROLES:
            conn.execute(f"CREATE ROLE {role} NOLOGIN")
    return pg


def _host_pipeline(pg: PostgresContainer, script: str) -> float:
    """Run a shell pipeline on the host against the container (pipefail); its seconds."""
    env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
        "PGDATABASE": DATABASE,
    }
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{script!r} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def runbook(session: RunSession, image: str, dumps: EstateDumps) -> Measurement:
    """The original runbook: ``gunzip -c dump.sql.gz | psql`` into a default-config server."""
    pg = _target(image, session, "default")
    try:
        dump = dumps.local_path("plain-gzip")
        meter = CpuMeter(pg)
        seconds = _host_pipeline(pg, f"gunzip -c '{dump}' | psql -X -q -v ON_ERROR_STOP=1")
        return Measurement(seconds, pg.ready_seconds, meter.stop())
    finally:
        pg.stop()


def pg_restore_raw(tuning: str) -> Callable[[RunSession, str, EstateDumps], Measurement]:
    """``pg_restore -j<cores>`` of the directory dump, from the host, into a server."""

    def run(session: RunSession, image: str, dumps: EstateDumps) -> Measurement:
        pg = _target(image, session, tuning)
        try:
            dump = dumps.local_path("directory-gzip")
            script = f"pg_restore --exit-on-error --jobs {jobs()} -d {DATABASE} '{dump}'"
            meter = CpuMeter(pg)
            seconds = _host_pipeline(pg, script)
            return Measurement(seconds, pg.ready_seconds, meter.stop())
        finally:
            pg.stop()

    return run


# The host server runs as an unprivileged user: PostgreSQL refuses to run as root.
HOST_UID = 65534


def pg_restore_host(session: RunSession, image: str, dumps: EstateDumps) -> Measurement:
    """``pg_restore -j<cores>`` of the directory dump into a Postgres running on the host,
    not in a container, with the restore target's settings: the machine's physical limit,
    beside which the container's cost shows. Its server listens on a private socket only."""
    bindir = _host_server_bin()
    work = Path(tempfile.mkdtemp(prefix="bench-host-pg-", dir="/var/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chown(work, HOST_UID, HOST_UID)
        as_user = ["setpriv", f"--reuid={HOST_UID}", f"--regid={HOST_UID}", "--clear-groups"]
    data, log = work / "data", work / "server.log"
    settings = {
        **RESTORE_TUNING,
        **restore_memory_settings(),
        "listen_addresses": "''",
        "unix_socket_directories": f"'{work}'",
    }
    options = " ".join(f"-c {key}={value}" for key, value in settings.items())
    env = {**os.environ, "PGHOST": str(work), "PGUSER": "postgres", "PGDATABASE": DATABASE}
    started = time.monotonic()
    _host(as_user, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--no-sync"])
    _host(
        as_user,
        [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
        {**os.environ, **RESTORE_ENVIRONMENT},  # as the restore target's server runs
    )
    ready = time.monotonic() - started
    try:
        roles = "".join(f"CREATE ROLE {role} NOLOGIN;" for role in ROLES)
        _host([], ["psql", "-X", "-q", "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}"], env)
        _host([], ["psql", "-X", "-q", "-d", "postgres", "-c", roles], env)
        dump = dumps.local_path("directory-gzip")
        before = _machine_busy()
        began = time.monotonic()
        _host(
            [],
            ["pg_restore", "--exit-on-error", "--jobs", str(jobs()), "-d", DATABASE, str(dump)],
            env,
        )
        seconds = time.monotonic() - began
        after = _machine_busy()
        # The server is no child of this process: its CPU is the machine's busy time.
        extra = {"cpu_s": round(after[0] - before[0], 2), "others_cores": None}
        return Measurement(seconds, ready, extra)
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)


def _host_server_bin() -> Path:
    """The host's PostgreSQL 15 server programs (the estate's major)."""
    bindir = Path("/usr/lib/postgresql/15/bin")
    if not (bindir / "initdb").exists():
        raise RuntimeError(f"no PostgreSQL 15 server on the host ({bindir}/initdb)")
    return bindir


def _host(as_user: list[str], argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [*as_user, *argv], env=env, capture_output=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-2000:]}")


def drill_restore(
    variant: str, s3: bool = False, shown: bool = False
) -> Callable[[RunSession, str, EstateDumps], Measurement]:
    """The drill's restore phase (`drills.restore.restore_database`) into a restore target,
    from the dumps' directory or (`s3`) from a bucket of the embedded S3 server; ANALYZE,
    a step of its own in the drill, is timed apart. `shown`: with the progress line drawn
    on a pseudo-terminal all along, as `drill run` draws it on the user's."""

    def run(session: RunSession, image: str, dumps: EstateDumps) -> Measurement:
        secrets = None
        if variant == ENCRYPTED:
            storage, secrets = _encrypted_copy(dumps), Secrets(PASSPHRASE_ENV)
        elif s3:
            storage = _s3_copy(dumps, variant)
        else:
            storage = LocalStorage(dumps.storage_root(variant))
        backup = catalog.latest(catalog.list_backups(storage, "database"))
        pg = start_postgres(image, session, tuning="restore", user="postgres", timeout=120)
        try:
            meter = CpuMeter(pg)
            started = time.monotonic()
            with _progress_on_a_terminal() if shown else contextlib.nullcontext() as display:
                result = restore_database(
                    storage, backup, pg, DATABASE, timeout=TIMEOUT, analyze=False, secrets=secrets
                )
            seconds = time.monotonic() - started
            extra = meter.stop()
            if display is not None:
                extra["progress"] = {"updates": display.drawn, "cpu_s": display.cpu_s}
            analyze_s = analyze_database(pg, DATABASE, timeout=TIMEOUT)
            extra["stages"] = {**result.stages, "analyze": analyze_s}
            extra["method"] = result.method
            return Measurement(seconds, pg.ready_seconds, extra)
        finally:
            pg.stop()

    return run


@contextlib.contextmanager
def _progress_on_a_terminal() -> Iterator[progress.Display]:
    """The progress display of `drill run`, drawing on a pseudo-terminal whose other side a
    thread reads, as a terminal emulator would."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))

    def read() -> None:
        with contextlib.suppress(OSError):
            while os.read(controller, 65536):
                pass

    reader = threading.Thread(target=read, daemon=True, name="terminal")
    reader.start()
    started = time.monotonic()
    display = progress.Display(terminal, lambda: ("restore", time.monotonic() - started))
    display.start()
    try:
        yield display
    finally:
        display.stop()
        os.close(terminal)
        reader.join(timeout=5)
        os.close(controller)


# The original runbook's encrypted copy of the plain gzip dump (`gpg --symmetric --cipher-algo
# AES256`), made once next to the dumps with a benchmark's own passphrase.
ENCRYPTED = "plain-gzip-gpg"
PASSPHRASE_ENV = "BENCH_DUMP_PASSPHRASE"


def _encrypted_copy(dumps: EstateDumps) -> LocalStorage:
    root = dumps.root / ENCRYPTED
    os.environ.setdefault(PASSPHRASE_ENV, "bench passphrase, not a secret")
    source = dumps.local_path("plain-gzip")
    target = root / "database" / f"{source.name}.gpg"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        passphrase = Passphrase.from_env(PASSPHRASE_ENV, target.name, PASSPHRASE_ENV)
        partial = target.with_suffix(".partial")
        with (
            open(source, "rb") as plain,
            gpg_pipe("encrypt", passphrase=passphrase, stdin=plain) as gpg,
            open(partial, "wb") as out,
        ):
            shutil.copyfileobj(gpg.proc.stdout, out, 1 << 20)
            if gpg.proc.wait() != 0:
                raise RuntimeError(f"gpg could not encrypt {source}")
        partial.rename(target)
    return LocalStorage(root)


_S3: dict = {}


def _s3_copy(dumps: EstateDumps, variant: str):
    """The variant's dump in a bucket of the embedded S3 server (started, filled once)."""
    from drills.storage import open_storage
    from drills.storage.s3server import EmbeddedS3

    server = _S3.get("server")
    if server is None:
        server = _S3["server"] = EmbeddedS3().start()
    key = (dumps.scale, variant)
    if key not in _S3:
        bucket = f"bench-{variant}-{len(_S3)}"
        server.client().create_bucket(Bucket=bucket)
        storage = open_storage(
            f"s3://{bucket}",
            server.endpoint_url,
            server.region,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
        )
        root = dumps.storage_root(variant)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            storage.put_file(path.relative_to(root).as_posix(), path)
        _S3[key] = storage
    return _S3[key]


def stop_s3() -> None:
    """Stop the embedded S3 server if a method started it."""
    server = _S3.pop("server", None)
    if server is not None:
        server.stop()
    _S3.clear()


def whole_drill(variant: str) -> Callable[[RunSession, str, EstateDumps], Measurement]:
    """`drill run` of the database drill (locate to last check) in a child process whose
    peak RSS is read from the kernel when it exits."""

    def run(session: RunSession, image: str, dumps: EstateDumps) -> Measurement:
        work = Path(tempfile.mkdtemp(prefix="bench-drill-"))
        try:
            config = work / "drill.toml"
            config.write_text(
                f'[storage]\nurl = "{dumps.storage_root(variant).as_uri()}"\n'
                f'[database]\nname = "{DATABASE}"\n'
                # the cached dumps are older than any RPO: the benchmark measures time
                '[targets.rpo]\ndatabase = "3650d"\n'
                f'[report]\ndir = "{work / "reports"}"\n'
                "html = false\njunit = false\npytest_html = false\nallure = false\n"
            )
            argv = [sys.executable, "-m", "drills.cli", "run", "--config", str(config)]
            argv += ["--only", "database", "-q"]
            started = time.monotonic()
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            peak = _HighWater(proc.pid)
            output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            peak.stop()
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.monotonic() - started
            document = json.loads((work / "reports" / "latest" / "drill.json").read_text())
            drill = next(d for d in document["drills"] if d["kind"] == "database")
            if drill["verdict"] != "pass":
                tail = output.decode(errors="replace")[-2000:]
                raise RuntimeError(f"the drill failed: {drill['error']}\n{tail}")
            extra = {
                "phases": drill["phases"],
                "wall_seconds": round(wall, 3),
                "peak_rss_mb": peak.mb,
                # wait4's maxrss starts from this process's own peak when the child was
                # spawned (Linux keeps the high-water mark across vfork and exec), so it
                # says more of the benchmark than of the drill: kept for comparison only.
                "wait4_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
                "restore": drill.get("restore"),
                "projection": drill.get("projection"),
            }
            provision = drill["phases"].get("provision")
            return Measurement(drill["rto"]["measured_s"], provision, extra)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return run


class _HighWater(threading.Thread):
    """The peak resident memory of one process (VmHWM of its own address space), sampled
    every 20 ms until it exits: the high-water mark only grows, so the last sample is the
    peak, unless it came in the process's last 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss")
        self.pid, self.kb, self._done = pid, 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.kb = max(self.kb, int(line.split()[1]))
            self._done.wait(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join()

    @property
    def mb(self) -> float:
        return round(self.kb / 1024, 1)


def in_process_rss_mb() -> float:
    """Peak RSS of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


METHODS = {
    "runbook": Method("runbook", "runbook: gunzip | psql, default server", True, runbook),
    "pg_restore-default": Method(
        "pg_restore-default",
        "pg_restore -j (directory), default server",
        True,
        pg_restore_raw("default"),
    ),
    "pg_restore-tuned": Method(
        "pg_restore-tuned",
        "pg_restore -j (directory), tuned server",
        True,
        pg_restore_raw("restore"),
    ),
    "pg_restore-host": Method(
        "pg_restore-host",
        "pg_restore -j (directory), tuned server on the host",
        False,  # the physical limit, beside the best raw tool into the same target as the drill
        pg_restore_host,
    ),
    "drill-restore": Method(
        "drill-restore",
        "drill restore phase (directory gzip)",
        False,
        drill_restore("directory-gzip"),
    ),
    "drill-restore-plain": Method(
        "drill-restore-plain",
        "drill restore phase (plain gzip)",
        False,
        drill_restore("plain-gzip"),
    ),
    "drill-restore-plain-progress": Method(
        "drill-restore-plain-progress",
        "drill restore phase (plain gzip), progress on a pty",
        False,
        drill_restore("plain-gzip", shown=True),
    ),
    "drill-restore-gpg": Method(
        "drill-restore-gpg",
        "drill restore phase (plain gzip, gpg-encrypted)",
        False,
        drill_restore(ENCRYPTED),
    ),
    "drill-restore-zstd": Method(
        "drill-restore-zstd",
        "drill restore phase (plain zstd)",
        False,
        drill_restore("plain-zstd"),
    ),
    "drill-restore-custom": Method(
        "drill-restore-custom",
        "drill restore phase (custom gzip)",
        False,
        drill_restore("custom-gzip"),
    ),
    "drill-restore-s3": Method(
        "drill-restore-s3",
        "drill restore phase (directory gzip, from S3)",
        False,
        drill_restore("directory-gzip", s3=True),
    ),
    "drill-restore-plain-s3": Method(
        "drill-restore-plain-s3",
        "drill restore phase (plain gzip, from S3)",
        False,
        drill_restore("plain-gzip", s3=True),
    ),
    "drill-restore-custom-s3": Method(
        "drill-restore-custom-s3",
        "drill restore phase (custom gzip, from S3)",
        False,
        drill_restore("custom-gzip", s3=True),
    ),
    "drill": Method(
        "drill",
        "whole drill (directory gzip), locate to last check",
        False,
        whole_drill("directory-gzip"),
    ),
    "drill-plain": Method(
        "drill-plain",
        "whole drill (plain gzip), locate to last check",
        False,
        whole_drill("plain-gzip"),
    ),
}
DEFAULT_METHODS = (
    "runbook",
    "pg_restore-default",
    "pg_restore-tuned",
    "drill-restore",
    "drill-restore-plain",
    "drill-restore-s3",
    "drill-restore-plain-s3",
    "drill-restore-gpg",
    "drill",
)
