"""`drill backup base`: a `pg_basebackup` in tar format, with our manifest beside it.

Point-in-time recovery starts from a base backup and replays archived WAL up to the target.
This producer runs the host's `pg_basebackup` (the same major as the server, or newer) with
``-Ft -z -X none --manifest-checksums=SHA256``: no WAL inside the backup, because the WAL
archive (`drill backup wal`) holds it and a drill proves exactly that; PostgreSQL's own
``backup_manifest`` lists every data file with its SHA-256, for `pg_verifybackup`.

Layout: ``base/<YYYYMMDD_HHMMSS>/`` holds ``base.tar.gz`` and ``backup_manifest``;
``base/<YYYYMMDD_HHMMSS>.manifest.json`` (ours, uploaded last) records the start and end
times, the WAL range and timeline, the server version, the system identifier and the
bootstrap superuser the restore logs in as, and each file's size and SHA-256.

Example::

    result = backup_base(destination(config, "base"), dsn="host=db user=replicator")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drills import __version__
from drills.backup.common import BackupResult, Destination, atomic_path, utcnow
from drills.backup.plausibility import size_causes
from drills.backup.run import Run
from drills.backup.series import Series
from drills.backup.verify import file_digests
from drills.config import redact_text
from drills.config.errors import ConfigError, DrillError, EnvironmentProblem
from drills.storage.manifest import FileEntry, Manifest
from drills.storage.walfile import format_lsn, lsn_segno, parse_lsn, segment_name

CONNECT_TIMEOUT = "10"
BASE_TAR = "base.tar.gz"
PG_MANIFEST = "backup_manifest"
_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")

_FACTS = """
SELECT current_setting('server_version'),
       current_setting('server_version_num')::int,
       current_setting('archive_mode'),
       current_setting('wal_level'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT rolname FROM pg_roles WHERE oid = 10),
       (SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')),
       current_user,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
"""


@dataclass(frozen=True)
class ServerFacts:
    """What the producer asks the server before a base backup."""

    version: str
    major: int
    archive_mode: str
    wal_level: str
    segment_size: int
    superuser: str
    tablespaces: int
    role: str = ""
    replication: bool = True


def backup_base(
    dest: Destination,
    *,
    dsn: str | None = None,
    fast_checkpoint: bool = False,
    timeout: float = 1800.0,
    pg_basebackup: str | None = None,
) -> BackupResult:
    """Take a base backup of the cluster `dsn` points at into ``base/<ts>/`` of `dest`.

    `dsn` is a libpq connection string (its database does not matter: a base backup copies
    the whole cluster); unset, the PG* environment applies. The role needs the REPLICATION
    attribute and pg_hba.conf must allow it a `replication` connection. `fast_checkpoint`
    asks for an immediate checkpoint (an I/O burst on the server) instead of a spread one.
    """
    params, password = _params(dsn)
    facts = _server_facts(params, password)
    if facts.archive_mode == "off":
        raise ConfigError(
            f"{_where(params)}: archive_mode is off: without archived WAL a base backup cannot "
            "be recovered to a point in time (see docs/pitr.md)"
        )
    if not facts.replication:
        raise DrillError(
            f"{_where(params)}: role {facts.role} has no REPLICATION attribute: "
            "pg_basebackup would fail, so nothing was copied (ALTER ROLE ... REPLICATION)"
        )
    tool, tool_version = find_tool("pg_basebackup", facts.major, pg_basebackup)
    with Run(dest, Series("base", dest.prefix)) as run, dest.workdir() as work:
        run.check_space(work)
        started = utcnow()
        name = run.name(started, directory=True)
        final = work / name
        with atomic_path(final, directory=True) as partial:
            _run(tool, params, password, partial, name, fast_checkpoint, timeout)
            # the server's clock, which commit times and heartbeats are written in
            server_ended_at = _server_now(params, password)
            wal = wal_range(partial / PG_MANIFEST)
            sysid = _system_identifier(partial / BASE_TAR)
            files, etags = seal(partial)
        manifest = base_manifest(
            started=started,
            finished=utcnow(),
            server_version=facts.version,
            files=files,
            wal=wal,
            segment_size=facts.segment_size,
            system_identifier=sysid,
            superuser=facts.superuser,
            ended_at=server_ended_at,
            extra={
                "tablespaces": facts.tablespaces,
                "pg_basebackup_version": tool_version,
                "label": f"drill {name}",
            },
        )
        return finish_base(run, final, manifest, etags)


def seal(directory: Path) -> tuple[tuple[FileEntry, ...], dict[str, str | None]]:
    """The files of a finished base backup directory (mode 600) and their S3 ETags."""
    digests = {p.name: file_digests(p) for p in sorted(directory.iterdir()) if p.is_file()}
    files = tuple(FileEntry(rel, d.bytes, 0o600, d.sha256) for rel, d in digests.items())
    for path in directory.iterdir():
        path.chmod(0o600)
    return files, {rel: d.etag for rel, d in digests.items()}


def base_manifest(
    *,
    started: datetime,
    finished: datetime,
    server_version: str,
    files: tuple[FileEntry, ...],
    wal: dict[str, int],
    segment_size: int,
    system_identifier: int,
    superuser: str,
    ended_at: datetime,
    extra: dict,
) -> Manifest:
    """Our manifest of a base backup: the facts a point-in-time recovery is planned by."""
    seg = segment_size
    return Manifest(
        kind="base",
        started_at=started,
        finished_at=finished,
        format="tar",
        compression="gzip",
        bytes=sum(f.size for f in files),
        producer_version=__version__,
        server_version=server_version,
        files=files,
        extra={
            "start_lsn": format_lsn(wal["start"]),
            "end_lsn": format_lsn(wal["end"]),
            "timeline": wal["timeline"],
            "end_timeline": wal["end_timeline"],
            "start_wal": segment_name(wal["timeline"], lsn_segno(wal["start"], seg), seg),
            "end_wal": segment_name(wal["end_timeline"], lsn_segno(wal["end"], seg), seg),
            "segment_size": seg,
            "system_identifier": str(system_identifier),
            "superuser": superuser,
            **extra,
            "server_ended_at": ended_at.isoformat().replace("+00:00", "Z"),
        },
    )


def finish_base(
    run: Run, final: Path, manifest: Manifest, etags: dict[str, str | None]
) -> BackupResult:
    """Store the base backup with its manifest; suspect when it shrank implausibly."""
    causes = size_causes(manifest.bytes or 0, run.previous())
    return run.finish(final, run.mark(manifest, causes), etags)


def _params(dsn: str | None) -> tuple[dict[str, str], str | None]:
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn or "").items()}
    except psycopg.ProgrammingError as exc:
        cause = redact_text(str(exc).strip().splitlines()[0])
        raise ConfigError(f"pitr dsn: not a libpq connection string or URI ({cause})") from None
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        params["connect_timeout"] = CONNECT_TIMEOUT
    return params, params.pop("password", None)


def _where(params: dict[str, str]) -> str:
    host = params.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = params.get("port") or os.environ.get("PGPORT")
    return f"server at {host}{':' + port if port else ''}"


def _server_facts(params: dict[str, str], password: str | None) -> ServerFacts:
    try:
        with psycopg.connect(
            make_conninfo("", **params), password=password, application_name="drill-backup-base"
        ) as conn:
            row = conn.execute(_FACTS).fetchone()
    except psycopg.Error as exc:
        cause = redact_text(" ".join(str(exc).split()).removeprefix("connection failed: "))
        raise DrillError(f"{_where(params)}: cannot connect: {cause}") from None
    version, num, archive_mode, wal_level, seg, superuser, tablespaces, role, replication = row
    return ServerFacts(
        str(version).split()[0], int(num) // 10000, archive_mode, wal_level, int(seg),
        str(superuser), int(tablespaces), str(role), bool(replication),
    )  # fmt: skip


def _server_now(params: dict[str, str], password: str | None) -> datetime:
    try:
        with psycopg.connect(make_conninfo("", **params), password=password) as conn:
            return conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(UTC)
    except psycopg.Error as exc:
        cause = redact_text(" ".join(str(exc).split()))
        raise DrillError(f"{_where(params)}: cannot read the server's clock: {cause}") from None


def find_tool(tool: str, major: int, explicit: str | None = None) -> tuple[str, str]:
    """A client tool of the server's major (or newer): explicit, the major's own, PATH's."""
    candidates = [explicit] if explicit else []
    candidates += [f"/usr/lib/postgresql/{major}/bin/{tool}", tool]
    seen = []
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        version = _version(path)
        seen.append(f"{path} {version}")
        tool_major = int(_VERSION.match(version).group(1)) if _VERSION.match(version) else 0
        if tool_major >= major:
            return path, version
    found = f"; found {', '.join(seen)}" if seen else "; none found"
    raise EnvironmentProblem(
        f"{tool} of PostgreSQL {major} or newer is needed for this server{found} "
        f"(install postgresql-client-{major})"
    )


def _version(tool: str) -> str:
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"\d+(?:\.\d+)+|\d+", out)
    return match.group(0) if match else "unknown"


def _run(
    tool: str,
    params: dict[str, str],
    password: str | None,
    partial: Path,
    name: str,
    fast: bool,
    timeout: float,
) -> None:
    argv = [tool, f"--dbname={make_conninfo('', **params)}", f"--pgdata={partial}"]
    argv += ["--format=tar", "--gzip", "--wal-method=none", "--manifest-checksums=SHA256"]
    argv += [f"--label=drill {name}", "--no-password"]
    argv += ["--checkpoint=fast"] if fast else []
    env = dict(os.environ, PGAPPNAME="drill-backup-base")
    if password is not None:
        env["PGPASSWORD"] = password
    with tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run(argv, stderr=err, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DrillError(
                f"base/{name}: pg_basebackup did not finish within {timeout:.0f} s (it waits "
                "until the backup's WAL is archived: is archive_command failing? see "
                "pg_stat_archiver); nothing was kept under that name"
            ) from None
        if code.returncode != 0:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines()]
            errors = [ln for ln in lines if "error:" in ln] or [ln for ln in lines if ln]
            cause = redact_text(errors[-1] if errors else "no message")
            raise DrillError(
                f"base/{name}: pg_basebackup failed (exit {code.returncode}): {cause}; "
                "nothing was kept under that name"
            )
    if not (partial / BASE_TAR).is_file() or not (partial / PG_MANIFEST).is_file():
        raise DrillError(f"base/{name}: pg_basebackup wrote no {BASE_TAR} and {PG_MANIFEST}")


def wal_range(path: Path) -> dict[str, int]:
    """Start and end LSN and timelines from PostgreSQL's backup_manifest."""
    try:
        ranges = json.loads(path.read_text())["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return {
            "start": parse_lsn(first["Start-LSN"]),
            "end": parse_lsn(last["End-LSN"]),
            "timeline": int(first["Timeline"]),
            "end_timeline": int(last["Timeline"]),
        }
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DrillError(f"{path}: no WAL range in the backup manifest ({exc})") from None


def _system_identifier(base_tar: Path) -> int:
    """The cluster's system identifier: the first 8 bytes of global/pg_control."""
    try:
        with tarfile.open(base_tar, "r:gz") as tar:
            for member in tar:
                if member.name.lstrip("./") == "global/pg_control":
                    return system_identifier(tar.extractfile(member).read(8))
    except (OSError, tarfile.TarError) as exc:
        raise DrillError(f"{base_tar}: cannot read global/pg_control ({exc})") from None
    raise DrillError(f"{base_tar}: no global/pg_control (not a base backup?)")


def system_identifier(pg_control: bytes) -> int:
    """The system identifier at the start of a cluster's global/pg_control."""
    return int.from_bytes(pg_control[:8], "little")
