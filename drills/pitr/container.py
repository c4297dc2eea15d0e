"""The container a point-in-time recovery runs in, and the feed of WAL into it.

`RecoveryContainer` is a labelled Postgres container (the runtime's `PostgresContainer`,
so it is swept like every other) whose server does not start at once: its command waits
until the harness has laid a base backup into ``$PGDATA`` and says go, then runs the image's
own entrypoint, which skips initdb because ``PG_VERSION`` exists. That works with our image
and with the official ``postgres:<major>``.

`WalFeed` delivers archived WAL into the container while recovery runs: fetched from the
storage in replay order, checked against its manifests, written as ``<name>`` then the marker
``<name>.ok``. The container's ``restore_command`` waits for the marker (bounded) and answers
"not available" for a file outside the plan or after the feed ended, which is how recovery
learns where the archive ends. The feed stays at most `LOOKAHEAD` segments ahead of what
recovery asked for, so a target far back in a long archive does not fill the disk.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import threading
import time

import docker.errors

from drills.config.errors import DrillError
from drills.pitr.catalog import WalArchive, WalPlan
from drills.runtime.labels import RunSession
from drills.runtime.postgres import PostgresContainer
from drills.storage import Storage
from drills.storage.walfile import read_header

WORK = "/var/lib/postgresql/drill-pitr"
WAL_DIR = f"{WORK}/wal"
SCAN_DIR = f"{WORK}/scan"
LOOKAHEAD = 16
POLL_S = 0.05

# Settings given on the server's command line, above anything the production configuration
# in the base backup says: the restore must not archive into production's archive, must listen
# where the harness connects, and must not need production's certificates or passwords.
SETTINGS = {
    "archive_mode": "off",
    "hot_standby": "off",
    "listen_addresses": "*",
    "port": "5432",
    "unix_socket_directories": "/var/run/postgresql",
    "hba_file": f"{WORK}/pg_hba.conf",
    "ssl": "off",
    "logging_collector": "off",
    "log_destination": "stderr",
    "log_timezone": "UTC",
    "log_line_prefix": "%m [%p] ",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}

# Trust on a throwaway container whose port is published on 127.0.0.1 only: the restored
# roles keep production's passwords, which the drill does not have.
HBA = "local all all trust\nhost all all all trust\n"

WAIT = f"""
until [ -e {WORK}/go ]; do sleep 0.1; done
exec docker-entrypoint.sh "$@"
"""

RESTORE_COMMAND = """#!/bin/sh
# restore_command of a recovery drill: copy WAL file $1 to $2 once the harness delivered it.
# Outside the plan, or never delivered before the feed ended: "not available" (exit 1).
dir={work}; f=$1; p=$2; n=0
grep -qxF "$f" "$dir/plan" || exit 1
echo "$f" >> "$dir/requested"
until [ -e "$dir/wal/$f.ok" ]; do
    if [ -e "$dir/end" ] && [ ! -e "$dir/wal/$f.ok" ]; then exit 1; fi
    n=$((n + 1))
    if [ "$n" -gt {ticks} ]; then
        echo "restore_command: $f not delivered within {bound} s" >&2
        exit 1
    fi
    sleep {poll}
done
exec cp "$dir/wal/$f" "$p"
"""


class RecoveryContainer(PostgresContainer):
    """A Postgres container whose server starts only on `go()`, on a data directory we fill.

    >>> pg = RecoveryContainer(image, session, user="postgres").start_waiting()  # doctest: +SKIP
    >>> pg.sh('tar -xzf - -C "$PGDATA"', stdin=stream)  # doctest: +SKIP
    >>> pg.go(); pg.wait_recovered(600)  # doctest: +SKIP
    """

    def __init__(self, image: str, session: RunSession, *, user: str, dbname: str = "postgres"):
        super().__init__(image, session, user=user, dbname=dbname, settings=SETTINGS)
        command = ["postgres"]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        self.with_command(["sh", "-c", WAIT, "sh", *command])

    def start_waiting(self, timeout: float = 60) -> RecoveryContainer:
        """Start the container (not yet the server); remove it if it does not come up."""
        what = f"recovery container ({self.image})"
        self.start_or_clean(lambda: self.wait_ready(self._alive, timeout, what))
        return self

    def _alive(self) -> bool:
        return self.sh("true", timeout=10).returncode == 0

    def sh(
        self,
        script: str,
        *args: str,
        user: str = "root",
        timeout: float = 120,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a shell script in the container (``$PGDATA`` is set); bounded."""
        argv = ["docker", "exec", "-u", user, "-e", "TZ=UTC"]
        argv += ["-i"] if stdin is not None else []
        argv += [self.get_wrapped_container().id, "sh", "-c", script, "sh", *args]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise DrillError(f"in the recovery container: {script.split()[0]} ran past "
                             f"{timeout:.0f} s") from None  # fmt: skip

    def sh_argv(self, script: str, *args: str, user: str = "root") -> list[str]:
        """The `docker exec -i` command line of a script that reads stdin."""
        cid = self.get_wrapped_container().id
        return ["docker", "exec", "-i", "-u", user, cid, "sh", "-c", script, "sh", *args]

    def put(self, directory: str, files: dict[str, bytes], mode: int = 0o644) -> None:
        """Write files into a directory of the container, in the order given."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        try:
            self.get_wrapped_container().put_archive(directory, buffer.getvalue())
        except docker.errors.APIError as exc:
            raise DrillError(f"cannot write into {directory} of the container: {exc}") from None

    def go(self) -> None:
        """Let the server start on the data directory as it is now."""
        self.put(WORK, {"go": b""})

    def logs_text(self) -> str:
        """The server's whole log so far."""
        try:
            return self.get_wrapped_container().logs().decode(errors="replace")
        except docker.errors.DockerException:
            return ""


class WalFeed(threading.Thread):
    """Delivers a plan's WAL into the container in replay order; remembers the first error."""

    def __init__(
        self,
        storage: Storage,
        archive: WalArchive,
        plan: WalPlan,
        container: RecoveryContainer,
        *,
        ahead_of: str | None = None,
    ) -> None:
        super().__init__(daemon=True, name="wal feed")
        self.storage, self.archive, self.plan, self.container = storage, archive, plan, container
        self.names = plan.names()
        self.index = {name: i for i, name in enumerate(self.names)}
        # never held back before this file: what pg_verifybackup needs before recovery asks
        self.floor = self.index.get(ahead_of, 0) if ahead_of else 0
        self.delivered: list[str] = []
        self.bytes = 0
        self.fetch_s = 0.0
        self.error: DrillError | None = None
        self._stop = threading.Event()
        self._done = threading.Condition()

    def stop(self) -> None:
        """Stop fetching (recovery is over)."""
        self._stop.set()

    def run(self) -> None:
        try:
            for i, name in enumerate(self.names):
                while not self._stop.is_set() and i > max(self.floor, self._asked()) + LOOKAHEAD:
                    self._stop.wait(0.2)
                if self._stop.is_set():
                    return
                started = time.monotonic()
                data = self._fetch(name)
                self.fetch_s += time.monotonic() - started
                self.container.put(WAL_DIR, {name: data, f"{name}.ok": b""})
                self.bytes += len(data)
                with self._done:
                    self.delivered.append(name)
                    self._done.notify_all()
        except DrillError as exc:
            self.error = exc
        except Exception as exc:  # the feed's thread must report, never die silently
            self.error = DrillError(f"WAL feed: {type(exc).__name__}: {exc}")
        finally:
            self._end()

    def _fetch(self, name: str) -> bytes:
        data, _ = self.archive.read(self.storage, name, list(self.plan.path))
        if name in self.plan.segments:
            system = str(read_header(data).system_identifier)
            if system != self.plan.base.system_identifier:
                raise DrillError(
                    f"{self.archive.key(name)}: from database system {system}, the base backup "
                    f"{self.plan.base.key} from {self.plan.base.system_identifier}"
                )
        return data

    def _asked(self) -> int:
        """Index in the plan of the newest file recovery asked for, -1 if none yet."""
        result = self.container.sh(f"tail -n 1 {WORK}/requested 2>/dev/null", timeout=10)
        name = result.stdout.decode(errors="replace").strip()
        return self.index.get(name, -1)

    def _end(self) -> None:
        with contextlib.suppress(DrillError):  # the container is gone: nobody waits for it
            self.container.put(WORK, {"end": b""})
        with self._done:
            self._done.notify_all()

    def wait_for(self, name: str, timeout: float) -> None:
        """Block until `name` is delivered; raise the feed's error, or on the bound."""
        deadline = time.monotonic() + timeout
        with self._done:
            while name not in self.delivered:
                if self.error is not None:
                    raise self.error
                if not self.is_alive():
                    raise DrillError(f"{self.archive.key(name)}: the WAL feed ended without it")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DrillError(
                        f"{self.archive.key(name)}: not fetched within {timeout:.0f} s"
                    )
                self._done.wait(min(left, 1.0))


def restore_command_script(bound: float) -> bytes:
    """The restore_command script with its wait bounded by `bound` seconds."""
    ticks = max(1, int(bound / POLL_S))
    text = RESTORE_COMMAND.format(work=WORK, ticks=ticks, bound=int(bound), poll=POLL_S)
    return text.encode()
