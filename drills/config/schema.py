"""The drill.toml schema: one frozen dataclass per section, every setting documented here.

Each setting is a `knob`: its default, its one-line meaning and, where a type is not enough,
a check of its value. `drills.config` loads and resolves these; `docs/configuration.md` is the
reference for users. Conventions the loader relies on:

- a `float` setting is a duration in seconds (written "90s", "15m", "2h", "1d", "1h30m" or a
  number of seconds);
- a `tuple[str, ...]` setting is a TOML array of strings;
- a section typed `X | None` is a drill: left out of every source, it is `None` (not drilled).
"""

# knob() is a dataclasses.field() with a doc; ruff cannot tell it from a mutable default call.
# ruff: noqa: RUF009

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drills.config.picking import pick_problem

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR

Check = Callable[[Any], str | None]


def knob(
    default: Any = MISSING,
    doc: str = "",
    *,
    check: Check | None = None,
    factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A setting: its default (or `factory`), its meaning, and an optional check of a value.

    A check returns None when the value is fine, else the end of a sentence that starts with
    the key's name, e.g. 'must start with "/", got "health"'.
    """
    return field(default=default, default_factory=factory, metadata={"doc": doc, "check": check})


def show(value: Any) -> str:
    """A value as a user wrote it, for error messages: strings quoted, passwords hidden."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + redact_text(value).replace('"', '\\"') + '"'
    return redact_text(repr(value))


def _storage_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return "must not carry credentials; give them through the environment or a profile"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return f"needs an absolute path, e.g. file:///var/backups/drishti, got {show(url)}"
    elif parts.scheme == "s3":
        if not parts.netloc:
            return f"needs a bucket, e.g. s3://drishti-backups/prod, got {show(url)}"
    else:
        return f"must be file:///abs/dir or s3://bucket/prefix, got {show(url)}"
    return None


def _http_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return f"must be an http:// or https:// URL, got {show(url)}"


def _env_name(name: str) -> str | None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return None
    # The value is not echoed: a user who misread the key may have written the secret here.
    return "must be the name of an environment variable (letters, digits, _), not a secret"


def _prefix(prefix: str) -> str | None:
    if prefix == "" or prefix.endswith("/"):
        return None
    return f'must end with "/" (or be "" for the root), got {show(prefix)}'


def _absolute(path: str) -> str | None:
    return None if path.startswith("/") else f'must start with "/", got {show(path)}'


def _port(port: int) -> str | None:
    return None if 1 <= port <= 65535 else f"must be a port between 1 and 65535, got {port}"


def _positive(number: int) -> str | None:
    return None if number > 0 else f"must be greater than 0, got {number}"


def _not_negative(number: int) -> str | None:
    return None if number >= 0 else f"must not be negative, got {number}"


def _zone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"must be an IANA time zone such as Europe/Berlin, got {show(name)}"
    return None


def _percent(number: int) -> str | None:
    return None if 0 <= number <= 100 else f"must be a percentage from 0 to 100, got {number}"


OBJECT_KINDS = (
    "schema",
    "extension",
    "foreign table",
    "view",
    "materialized view",
    "sequence",
    "index",
    "primary key",
    "unique constraint",
    "exclusion constraint",
    "foreign key",
    "check constraint",
    "trigger",
    "function",
    "procedure",
    "aggregate",
    "type",
    "domain",
    "policy",
    "large object",
)


def _object_kinds(kinds: tuple[str, ...]) -> str | None:
    unknown = [k for k in kinds if k not in OBJECT_KINDS]
    if not unknown:
        return None
    known = ", ".join(OBJECT_KINDS)
    listed = ", ".join(map(show, unknown))
    return f"holds unknown object kinds {listed} (known: {known}; a table may never vanish)"


def _major(major: int) -> str | None:
    return None if major >= 10 else f"must be a PostgreSQL major such as 15 or 17, got {major}"


def _majors(majors: tuple[int, ...]) -> str | None:
    return next((f"holds one that {p}" for m in majors if (p := _major(m))), None)


def _owner(owner: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", owner):
        return None
    return f'must be "user" or "user:group" (names or numeric ids), got {show(owner)}'


def _mode(mode: str) -> str | None:
    if re.fullmatch(r"0?[0-7]{3}", mode):
        return None
    return f'must be an octal file mode such as "640", got {show(mode)}'


def _relative(path: str) -> str | None:
    if path.startswith("/") or ".." in path.split("/"):
        return f"must be a path inside the config archive (relative, no ..), got {show(path)}"
    return None


def _status(status: int) -> str | None:
    return None if 100 <= status <= 599 else f"must be an HTTP status, got {status}"


def _url_prefix(prefix: str) -> str | None:
    if prefix.startswith("/") and prefix.endswith("/"):
        return None
    return f'must start and end with "/" (e.g. "/media/"), got {show(prefix)}'


def _env_table(table: dict[str, str]) -> str | None:
    bad = [name for name in table if _env_name(name)]
    return f"holds names that are not variable names: {', '.join(map(show, bad))}" if bad else None


def _header_table(table: dict[str, str]) -> str | None:
    for header, variable in table.items():
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            return f"holds {show(header)}, which is not a header name"
        if _env_name(variable):
            # Never echoed: a value that is not a variable name may be the secret itself.
            return f"[{header}] {_env_name(variable)}"
    return None


def _iso_time(text: str) -> str | None:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return f"must be an ISO-8601 time such as 2025-01-15T02:00:00Z, got {show(text)}"
    if when.tzinfo is None:
        # Postgres would read a naive time in the server's zone: a silently different target.
        return f"needs a UTC offset (Z or +02:00), got {show(text)}"
    return None


@dataclass(frozen=True)
class EstateSettings:
    """[estate]: the estate being drilled (the application and its data)."""

    name: str = knob("estate", "Name of the estate, shown in reports and evidence.")


@dataclass(frozen=True)
class StoragePrefixes:
    """[storage.prefixes]: where each kind of backup lives under the storage URL."""

    database: str = knob("database/", "Database dumps and their manifests.", check=_prefix)
    files: str = knob("files/", "Upload snapshots (current/ and dated copies).", check=_prefix)
    config: str = knob("config/", "Config archives (.tar.gz, or .tar.gz.gpg).", check=_prefix)
    wal: str = knob("wal/", "Archived WAL segments, for point-in-time recovery.", check=_prefix)
    base: str = knob("base/", "Base backups, where point-in-time recovery starts.", check=_prefix)


@dataclass(frozen=True)
class StorageSettings:
    """[storage]: where the backups are (the producers write there, the drills read)."""

    url: str | None = knob(
        None,
        "file:///abs/dir or s3://bucket/prefix; required when any drill is configured.",
        check=_storage_url,
    )
    endpoint_url: str | None = knob(
        None, "S3 endpoint (MinIO, Backblaze B2, moto); unset means AWS.", check=_http_url
    )
    region: str | None = knob(None, "S3 region; unset leaves it to boto3 (AWS_REGION, profile).")
    name_timezone: str | None = knob(
        None,
        "IANA time zone (DST-aware, e.g. Europe/Berlin) the times in backup names are written "
        "in; unset: UTC. Names made by `date +%Y%m%d_%H%M%S` on a server not kept in UTC need it.",
        check=_zone,
    )
    sse: Literal["AES256", "aws:kms"] | None = knob(
        None, "Server-side encryption the producers ask for on upload; unset asks for none."
    )
    prefixes: StoragePrefixes = knob(factory=StoragePrefixes, doc="Key prefix of each kind.")
    thaw: Literal["Expedited", "Standard", "Bulk"] | None = knob(
        None,
        "Retrieval tier of the restore request a drill issues for a backup in an archive class "
        "(GLACIER, DEEP_ARCHIVE), waited for as the phase thaw; unset: such a backup fails as "
        "unreadable.",
    )
    thaw_timeout: float | None = knob(
        None, "Bound on the thaw phase; unset: the drill's RTO target."
    )


@dataclass(frozen=True)
class RtoTargets:
    """[targets.rto]: recovery time objectives, the longest each recovery may take."""

    database: float = knob(2 * HOUR, "Restore the database from its backup.")
    application: float = knob(HOUR, "Bring the application up on the restored data.")
    files: float = knob(4 * HOUR, "Restore the uploaded files.")
    full_system: float = knob(8 * HOUR, "Restore database, files and config, then the app.")
    config: float = knob(HOUR, "Restore the configuration files.")


@dataclass(frozen=True)
class RpoTargets:
    """[targets.rpo]: recovery point objectives, the most data each kind may lose.

    Measured as the age of the newest backup (or, with WAL, the recovered point). Daily dumps
    cannot meet a 1 h database RPO, and a weekly config backup cannot meet 24 h.
    """

    database: float = knob(HOUR, "Newest database backup (or recovered WAL point) age.")
    files: float = knob(DAY, "Newest upload snapshot age.")
    config: float = knob(DAY, "Newest config archive age.")


@dataclass(frozen=True)
class TargetSettings:
    """[targets]: RTO and RPO targets each drill is judged against."""

    rto: RtoTargets = knob(factory=RtoTargets, doc="Recovery time objectives.")
    rpo: RpoTargets = knob(factory=RpoTargets, doc="Recovery point objectives.")
    enforce_projection: bool = knob(
        False,
        "Fail when the restore time projected to [database] production_bytes exceeds the RTO "
        "(false: report the projection only).",
    )


@dataclass(frozen=True)
class DrillSettings:
    """[drill]: which backup each drill restores, inside which promised window."""

    pick: str = knob(
        "latest",
        'Which backup: "latest", "oldest" (the oldest inside the window), "random" (uniform '
        'among those inside the window, its seed recorded), "random:<seed>" (replay a draw), '
        '"at:<ISO time>" (the newest at or before it).',
        check=pick_problem,
    )
    retention_days: int | None = knob(
        None,
        "Days of backups the estate promises to restore (the window oldest and random pick "
        "from); unset: [backup] retention_days.",
        check=_positive,
    )


@dataclass(frozen=True)
class DatabaseSettings:
    """[database]: the database drill (restore the latest dump, check it)."""

    name: str = knob(doc="The database's name, as in its dump names (<name>_YYYYMMDD_HHMMSS...).")
    checks: tuple[str, ...] = knob((), "SQL invariants run on the restore; each must return true.")
    dsn: str | None = knob(None, "libpq DSN the producer dumps from; unset uses PG* variables.")
    format: Literal["plain", "custom", "directory"] = knob(
        "directory",
        "Dump format the producer writes: directory restores fastest (pg_restore --jobs, "
        "streamed; measured in bench/); plain is pg_dump | gzip, as the original scripts.",
    )
    compression: Literal["gzip", "zstd", "none"] = knob("gzip", "Compression the producer uses.")
    exact_count_max_bytes: int = knob(
        100_000_000,
        "Tables larger than this get estimated row counts in manifests.",
        check=_not_negative,
    )
    major: int | None = knob(
        None, "Force the restore container's Postgres major; unset detects it.", check=_major
    )
    production_bytes: int | None = knob(
        None, "Production database size, to project the restore time to.", check=_not_negative
    )
    restore_timeout: float | None = knob(
        None, "Bound on a hung restore; unset derives it from [targets.rto] database."
    )
    passphrase_env: str | None = knob(
        None,
        "NAME of the environment variable holding the gpg passphrase of encrypted dumps "
        "(`.sql.gz.gpg`, never the passphrase itself); the producer encrypts with it when "
        "`encrypt` is on.",
        check=_env_name,
    )
    gpg_home: str | None = knob(
        None,
        "A GnuPG home whose keyring holds the secret key of dumps made with `gpg --encrypt -r` "
        "(and, for the producer, the recipient's public key).",
        check=_absolute,
    )
    encrypt: bool = knob(
        False,
        "The producer encrypts its plain dumps with gpg (AES256 with the passphrase, or to "
        "`gpg_recipient`): `<db>_<ts>.sql.gz.gpg`.",
    )
    gpg_recipient: str | None = knob(
        None, "Encrypt to this key of `gpg_home` instead of with the passphrase."
    )
    tables_without_data: tuple[str, ...] = knob(
        (),
        'Tables ("schema.table") your dumps carry without data on purpose (pg_dump '
        "--exclude-table-data); any other table without data fails the drill.",
    )
    amcheck_timeout: float = knob(
        10 * MINUTE,
        "Time amcheck may take (btree indexes, then tables with verify_heapam); what it "
        "leaves unchecked is counted in the report.",
    )
    max_shrink: int = knob(
        50,
        "Plausibility: percent by which total rows, or the database's bytes, may drop "
        "against the last passing drill or the backup before.",
        check=_percent,
    )
    max_table_shrink: int = knob(
        90, "Plausibility: percent of its rows one table may lose.", check=_percent
    )
    shrink_min_rows: int = knob(
        1000,
        "Plausibility: tables (and totals) smaller than this many rows are not judged.",
        check=_not_negative,
    )
    min_size_percent: int = knob(
        10,
        "Plausibility: a dump smaller than this percent of the one before it (same format) "
        "fails as suspect.",
        check=_percent,
    )
    volatile_tables: tuple[str, ...] = knob(
        (),
        'Tables ("schema.table") whose row count swings by design (sessions, job queues): '
        "not judged one by one.",
    )
    allow_vanished: tuple[str, ...] = knob(
        (),
        'Object kinds that may vanish between backups without failing ("index", "function", '
        '"view", ...); a vanished table always fails.',
        check=_object_kinds,
    )
    pre_restore: tuple[str, ...] = knob(
        (), "Shell commands `drill restore database` runs just before the swap (stop the app)."
    )
    post_restore: tuple[str, ...] = knob(
        (), "Shell commands run after the swap, also when it failed (start the app)."
    )
    rehearse_majors: tuple[int, ...] = knob(
        (),
        "Newer PostgreSQL majors the drilled dump is also restored into, after the verdict, "
        "with the same checks timed; what differs is reported (an upgrade rehearsal).",
        check=_majors,
    )
    rehearsal_gates: bool = knob(
        False,
        "Fail the drill when a rehearsal into a newer major fails (errors, failed checks, "
        "objects that did not restore); false: report it only.",
    )


@dataclass(frozen=True)
class FilesSettings:
    """[files]: the uploaded-files drill; the section, even empty, turns it on."""

    source_dir: str | None = knob(None, "Uploads directory the producer snapshots.")
    owner: str | None = knob(
        None,
        'user:group `drill restore files` gives restored files, e.g. "app:app"; unset: the '
        "replaced directory's owner.",
        check=_owner,
    )
    mode: str | None = knob(
        None,
        'Octal mode of restored files, e.g. "640" (directories also get x where r is); unset: '
        "the snapshot's modes.",
        check=_mode,
    )
    max_shrink: int = knob(
        50,
        "Plausibility: percent by which the file count, or the uploads' bytes, may drop "
        "against the last passing drill or the snapshot before.",
        check=_percent,
    )
    max_encrypted: int = knob(
        30,
        "Plausibility: percent of the uploads that may change since the snapshot before (or "
        "the last passing drill) and look encrypted.",
        check=_percent,
    )


@dataclass(frozen=True)
class ConfigFilesSettings:
    """[config]: the configuration-files drill (restore the latest archive, check it)."""

    paths: tuple[str, ...] = knob((), "Files the producer archives.")
    optional: tuple[str, ...] = knob((), "Those of `paths` that may be missing at backup time.")
    passphrase_env: str | None = knob(
        None,
        "NAME of the environment variable holding the archives' gpg passphrase (never the "
        "passphrase itself); needed for encrypted archives.",
        check=_env_name,
    )
    required: tuple[str, ...] = knob((), "Names that must be in a restored archive (.env...).")
    allow_vanished: tuple[str, ...] = knob(
        (),
        "Plausibility: files that may be gone from the newest archive though the last passing "
        "drill or the archive before had them; any other vanished file fails.",
    )


@dataclass(frozen=True)
class SmokeRequest:
    """One request of `[app] smoke`: a GET that must answer `status` (and hold `contains`)."""

    path: str = knob(doc="GET path of the request.", check=_absolute)
    status: int = knob(200, "Status it must answer.", check=_status)
    contains: str | None = knob(None, "Text its body must contain; unset: any body.")


@dataclass(frozen=True)
class AppSettings:
    """[app]: the application, started on restored data by the full-system drill."""

    image: str | None = knob(
        None,
        "The app's image (with compose_file: the image of its `service`); unset means the "
        "sample app built locally, or the compose file's own image.",
    )
    compose_file: str | None = knob(
        None,
        "The compose file inside the config archive (docker-compose.yml); set, the drill "
        "brings the restored stack up instead of one container.",
        check=_relative,
    )
    service: str | None = knob(
        None,
        "The compose service that serves the app's HTTP; unset: the one publishing `port`, "
        "else the only one left.",
    )
    database_service: str | None = knob(
        None,
        "The compose service the restored database stands in for; unset: every service "
        "running a Postgres image.",
    )
    env_file: str | None = knob(
        None,
        "An env file inside the config archive (.env.production) the app gets its "
        "environment from (without compose_file).",
        check=_relative,
    )
    env: dict[str, str] = knob(
        factory=dict,
        doc="Environment overrides for the app: {database_url}, {db_host}, {db_port}, "
        "{db_name}, {db_user}, {db_password}, {uploads_dir} and ${NAME} are filled in.",
        check=_env_table,
    )
    port: int = knob(3001, "Port the API listens on inside its container.", check=_port)
    health_path: str = knob("/health", "GET path that must answer 200.", check=_absolute)
    headers: dict[str, str] = knob(
        factory=dict,
        doc="Headers of every request to the app: header name -> NAME of the environment "
        "variable holding its value (never the value).",
        check=_header_table,
    )
    uploads_dir: str = knob("/app/uploads", "Where restored uploads are mounted.", check=_absolute)
    uploads_url_path: str | None = knob(
        "/uploads/",
        'URL prefix under which the app serves an upload by its relative path; "": not checked.',
        check=_url_prefix,
    )
    database_env: str = knob(
        "DATABASE_URL", "Environment variable the app reads its database URL from.", check=_env_name
    )
    count_sql: str | None = knob(
        None,
        "SQL giving the row count the app reports at count_path; unset: the users table's, "
        "when there is one.",
    )
    count_path: str | None = knob(
        "/users/count",
        'GET path answering {"count": N} (or N), compared with count_sql; "": not checked.',
        check=_absolute,
    )
    smoke: tuple[SmokeRequest, ...] = knob(
        (), "More requests, each a named check: [{path, status, contains}]."
    )
    start_timeout: float = knob(MINUTE, "How long the app may take to answer its health path.")
    soak: float = knob(
        10.0,
        "How long the app must stay healthy after its first healthy answer (polled; an exit, "
        "a restart or a bad answer fails).",
    )


@dataclass(frozen=True)
class PitrSettings:
    """[pitr]: point-in-time recovery from a base backup and archived WAL."""

    target: str | None = knob(
        None,
        "ISO-8601 time with offset to recover to; unset: a random point in the recoverable "
        "window, recorded in the report so the drill can be replayed.",
        check=_iso_time,
    )
    heartbeat_interval: float = knob(MINUTE, "How often `drill heartbeat` writes a row.")
    database: str | None = knob(
        None, "Database the heartbeat writes to and the drill checks; unset: [database] name."
    )
    dsn: str | None = knob(
        None, "libpq DSN for `drill backup base` and `drill heartbeat`; unset: [database] dsn."
    )
    archive_dir: str | None = knob(
        None,
        "Directory archive_command copies WAL into; `drill backup wal` ships it.",
        check=_absolute,
    )
    remove_shipped: bool = knob(
        False, "`drill backup wal` deletes files from archive_dir once they are stored."
    )
    accept_gaps_before: str | None = knob(
        None,
        "ISO-8601 time with offset: holes in the WAL archive wholly before it are accepted, and "
        "the promised window starts there; unset: from the oldest base backup's end.",
        check=_iso_time,
    )
    base_max_age: float = knob(
        8 * DAY,
        "How old the newest base backup may be (freshness, status); older, a recovery replays "
        "ever more WAL.",
    )


@dataclass(frozen=True)
class RecoverySettings:
    """[recovery]: the drill of the recovery commands themselves; the section turns it on."""

    scale: int = knob(
        1, "Size of the throwaway production the recovery drill restores into.", check=_positive
    )


POSTURE_BUCKET_CHECKS = ("versioning", "object_lock", "encryption", "public_access", "tls_only",
                         "lifecycle")  # fmt: skip
POSTURE_LOCAL_CHECKS = ("permissions", "owner")
POSTURE_CHECKS = POSTURE_BUCKET_CHECKS + POSTURE_LOCAL_CHECKS


def _user(user: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", user):
        return None
    return f"must be a user name or numeric uid, got {show(user)}"


def _posture_checks(names: tuple[str, ...]) -> str | None:
    unknown = [name for name in names if name not in POSTURE_CHECKS]
    if not unknown:
        return None
    listed, known = ", ".join(map(show, unknown)), ", ".join(POSTURE_CHECKS)
    return f"holds unknown checks {listed} (known: {known})"


@dataclass(frozen=True)
class PostureSettings:
    """[posture]: the storage posture drill (kind `storage`); the section turns it on.

    It reads how the storage itself protects the backups: a bucket's versioning, Object Lock,
    default encryption, public access block, TLS-only policy and lifecycle rules; a local
    store's file modes and owner.
    """

    required: tuple[str, ...] | None = knob(
        None,
        "Checks that fail the drill; unset: every bucket check on an s3:// storage, and "
        "permissions and owner wherever backups lie in a local directory.",
        check=_posture_checks,
    )
    informative: tuple[str, ...] = knob(
        (), "Checks run and reported that never fail the drill.", check=_posture_checks
    )
    owner: str | None = knob(
        None,
        "The backup user (name or numeric uid) every local backup file must belong to; unset: "
        "the owner of the store's root directory.",
        check=_user,
    )
    file_mode: str = knob(
        "600", "Loosest mode a local backup file may have (the runbook asks for 600).", check=_mode
    )
    dir_mode: str = knob("700", "Loosest mode a local backup directory may have.", check=_mode)
    accept_governance: bool = knob(
        False,
        "Accept Object Lock in GOVERNANCE mode (a user allowed s3:BypassGovernanceRetention can "
        "still delete); false: only COMPLIANCE protects against stolen credentials.",
    )


@dataclass(frozen=True)
class BackupSettings:
    """[backup]: the producers: local copies, staging, retention, bounds."""

    local_dir: str | None = knob(None, "Where producers keep local copies; unset: storage only.")
    staging_dir: str | None = knob(
        None,
        "Where a backup is built when there is no local_dir; unset: $TMPDIR, else /tmp "
        "(often a RAM-backed tmpfs: a dump may not fit).",
    )
    prune: bool = knob(
        False,
        "Remove this producer's own backups of this estate older than retention_days, in the "
        "storage and local_dir, after a new good backup is stored; off: nothing is removed.",
    )
    retention_days: int = knob(30, "Days a backup is kept when prune is on.", check=_positive)
    keep_min: int = knob(
        7, "Good backups pruning always keeps per series, whatever their age.", check=_positive
    )
    lock_timeout: float = knob(
        5 * MINUTE,
        "How long the database producer's queries and pg_dump wait for a table lock before "
        "failing with the blocking session named.",
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """[runtime]: containers and external steps."""

    postgres_image: str | None = knob(None, "Restore into this image instead of ours.")
    pull: bool = knob(True, "Try a short registry pull before building an image offline.")
    step_timeout: float = knob(30 * MINUTE, "Bound on any external step with no bound of its own.")
    engines: tuple[str, ...] = knob(
        (),
        "Docker engines that `drill run` with several estates spreads them over (unix://, "
        "tcp://, ssh:// URLs, as DOCKER_HOST takes them; DRILL_ENGINES, comma-separated, "
        "overrides); empty: the default engine.",
    )


@dataclass(frozen=True)
class ReportSettings:
    """[report]: what a run writes, and where."""

    dir: str = knob("reports", "Directory of the run reports (<dir>/<UTC timestamp>/).")
    html: bool = knob(True, "Write the HTML drill report.")
    junit: bool = knob(True, "Write JUnit XML.")
    pytest_html: bool = knob(True, "Write pytest-html's report.")
    allure: bool = knob(True, "Write Allure results.")
    signing_key_env: str | None = knob(
        None, "NAME of the environment variable holding the evidence signing key.", check=_env_name
    )
    signing_key_path: str | None = knob(None, "File holding the evidence signing key.")


@dataclass(frozen=True)
class RunSettings:
    """[run]: what `drill run` runs beside the built-in drills."""

    scenarios: tuple[str, ...] = knob(
        (),
        "The team's own checks, run with the drills: pytest files or directories (relative to "
        'the configuration file), e.g. ["drills/"]; see docs/custom-checks.md.',
    )


def _textfile(path: str) -> str | None:
    if not path.startswith("/"):
        return f"must be an absolute path, got {show(path)}"
    if not path.endswith(".prom"):
        # node_exporter's textfile collector reads only *.prom files.
        return f'must end with ".prom" (the textfile collector reads only those), got {show(path)}'
    return None


def _address(address: str) -> str | None:
    if re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
        return None
    return f"must be an e-mail address such as drills@example.com, got {show(address)}"


def _addresses(addresses: tuple[str, ...]) -> str | None:
    return next((f"holds one that {p}" for a in addresses if (p := _address(a))), None)


@dataclass(frozen=True)
class NotifySettings:
    """[notify]: who hears of a run: a chat webhook, an e-mail, a dead-man's switch.

    No channel is on until its URL or host is set. A notification carries the verdict, the
    failed drills and their causes and where the report is, never a secret; a channel that
    fails is reported and never changes the run's exit code.
    """

    when: Literal["failure", "always"] = knob(
        "failure", "When the webhook and the e-mail are sent: on a failed run, or after every run."
    )
    timeout: float = knob(
        10.0, "Bound on each channel (the channels run side by side): a hung one is given up."
    )
    report_url: str | None = knob(
        None,
        "Where people open the run's report (its run directory published by CI, say), {run} "
        "replaced by the run's name; unset: the report's path on this machine.",
        check=_http_url,
    )
    webhook_url: str | None = knob(
        None,
        "Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat...) posted a JSON "
        "message; it holds a token: prefer DRILL_NOTIFY_WEBHOOK_URL in the environment.",
        check=_http_url,
    )
    ping_url: str | None = knob(
        None,
        "Dead-man's switch (healthchecks.io, Cronitor...) fetched after a passing run only; its "
        "silence is the alarm.",
        check=_http_url,
    )
    smtp_host: str | None = knob(None, "SMTP server the e-mail goes through; unset: no e-mail.")
    smtp_port: int = knob(587, "Its port.", check=_port)
    smtp_starttls: bool = knob(True, "Upgrade the connection with STARTTLS before anything else.")
    smtp_from: str | None = knob(None, "The e-mail's sender address.", check=_address)
    smtp_to: tuple[str, ...] = knob((), "Its recipients.", check=_addresses)
    smtp_username_env: str | None = knob(
        None, "NAME of the environment variable holding the SMTP user name.", check=_env_name
    )
    smtp_password_env: str | None = knob(
        None, "NAME of the environment variable holding the SMTP password.", check=_env_name
    )


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: Prometheus metrics of each run, for dashboards and alerts."""

    textfile: str | None = knob(
        None,
        "File for node_exporter's textfile collector (…/textfile_collector/drills.prom), "
        "replaced atomically after each run.",
        check=_textfile,
    )
    pushgateway_url: str | None = knob(
        None, "Pushgateway the metrics are PUT to (http://host:9091).", check=_http_url
    )
    job: str = knob("recovery_drills", "The job label of the pushed group.")
    timeout: float = knob(10.0, "Bound on the push.")


@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run; build it with `drills.config.load_config`.

    >>> cfg = load_config("drill.toml", overrides={"report.dir": "out"})  # doctest: +SKIP
    >>> cfg.configured_drills()  # doctest: +SKIP
    ['database', 'files', 'config', 'system', 'freshness']
    """

    estate: EstateSettings = knob(factory=EstateSettings, doc="The estate.")
    storage: StorageSettings = knob(factory=StorageSettings, doc="Backup storage.")
    targets: TargetSettings = knob(factory=TargetSettings, doc="RTO/RPO targets.")
    drill: DrillSettings = knob(factory=DrillSettings, doc="Which backup is drilled.")
    database: DatabaseSettings | None = knob(None, "The database drill; None: not drilled.")
    files: FilesSettings | None = knob(None, "The files drill; None: not drilled.")
    config: ConfigFilesSettings | None = knob(None, "The config drill; None: not drilled.")
    app: AppSettings | None = knob(None, "The application; None: no full-system drill.")
    pitr: PitrSettings | None = knob(None, "Point-in-time recovery; None: not drilled.")
    recovery: RecoverySettings | None = knob(None, "The recovery commands' drill; None: not run.")
    posture: PostureSettings | None = knob(None, "The storage posture drill; None: not run.")
    backup: BackupSettings = knob(factory=BackupSettings, doc="The producers' local side.")
    runtime: RuntimeSettings = knob(factory=RuntimeSettings, doc="Containers and steps.")
    report: ReportSettings = knob(factory=ReportSettings, doc="Reports.")
    run: RunSettings = knob(factory=RunSettings, doc="The team's own checks.")
    notify: NotifySettings = knob(factory=NotifySettings, doc="Notifications.")
    metrics: MetricsSettings = knob(factory=MetricsSettings, doc="Prometheus metrics.")
    source: Path | None = knob(None, "The file the settings were read from; None: no file.")

    def promised_days(self) -> int:
        """How many days of backups the estate promises to restore: `[drill] retention_days`,
        else `[backup] retention_days` (the producers prune nothing younger)."""
        return self.drill.retention_days or self.backup.retention_days

    def configured_drills(self) -> list[str]:
        """The drills this configuration asks for, in the order they run."""
        drills = [kind for kind in ("database", "files", "config") if getattr(self, kind)]
        if self.app is not None and self.database is not None:
            drills.append("system")
        if self.pitr is not None:
            drills.append("pitr")
        if drills or self.pitr is not None:
            drills.append("freshness")
        if self.posture is not None:
            drills.append("storage")  # opt-in: how the storage itself protects the backups
        if self.recovery is not None:
            drills.append("recovery")  # opt-in: it stands up its own throwaway production
        return drills

    def redacted(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict for reports, secrets replaced by "***"."""
        return _redact(_plain(self))


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


_SECRET_KEY = re.compile(r"password|secret|token|passphrase|key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^@/\s]*@", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&']+)", re.I)


def redact_text(text: str) -> str:
    """`text` with passwords in URLs (scheme://user:PASS@host) and `password=...` hidden."""
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


# URLs whose path is the credential (a chat webhook's token, a dead-man's switch's id).
TOKEN_URLS = ("webhook_url", "ping_url")


def hide_url_path(url: str) -> str:
    """`url` with only its scheme and host left: https://hooks.slack.com/***."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}/***"


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if key in TOKEN_URLS and isinstance(value, str):
        return hide_url_path(value)
    if value is not None and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
