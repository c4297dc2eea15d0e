"""`drill backup database|files|config|wal|base`: take one backup, as cron runs it.

Settings come from drill.toml (`--config`), the environment and these options, in the
usual order (options first). Prints what was made on stdout (one line, then one per thing
cleaned, uploaded late or pruned); a failure is one line on stderr and a non-zero exit (1 a
backup failed or is suspect, 2 configuration error, 3 a tool is missing). A suspect backup
is stored, and still exits 1 with its causes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from drills.backup import backup_config, backup_database, backup_files, destination
from drills.backup.common import BackupResult, Destination, human_size, os_error
from drills.backup.source import Bounds
from drills.config import Config, load_config
from drills.config.errors import ConfigError
from drills.runtime.gpg import Encryption

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `drill backup` and its kinds to the command's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="drill.toml (default: ./drill.toml)")
    common.add_argument("--storage-url", default=None, help="upload to this storage URL")
    common.add_argument("--local-dir", default=None, help="keep local copies here")
    common.add_argument(
        "--no-upload", action="store_true", help="keep the backup locally only (needs a local dir)"
    )
    common.add_argument(
        "--retention-days", default=None, help="with [backup] prune: remove backups older than this"
    )
    common.add_argument(
        "--dry-run-prune",
        action="store_true",
        help="take the backup, then list what pruning would remove instead of removing it",
    )

    parser = commands.add_parser("backup", help="take a backup with its manifest (for cron)")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    database = kinds.add_parser("database", parents=[common], help="pg_dump the database")
    database.add_argument("--dsn", default=None, help="libpq DSN (default: config, then PG*)")
    database.add_argument("--name", default=None, help="database name used in file names")
    database.add_argument("--format", choices=("plain", "custom", "directory"), default=None)
    database.add_argument("--compression", choices=("gzip", "zstd", "none"), default=None)

    files = kinds.add_parser("files", parents=[common], help="snapshot the uploads directory")
    files.add_argument("--source", default=None, help="the uploads directory")
    files.add_argument(
        "--mirror",
        action="store_true",
        help="after `aws s3 sync <uploads>/ s3://<bucket>/files/ --delete`: write the mirror's "
        "sync marker (its time, exact) instead of taking a snapshot",
    )

    kinds.add_parser("config", parents=[common], help="archive the config files")

    wal = kinds.add_parser("wal", parents=[common], help="ship archived WAL, exactly once")
    wal.add_argument("--archive-dir", default=None, help="where archive_command copies WAL")
    wal.add_argument(
        "--remove-shipped", action="store_true", default=None, help="delete files once stored"
    )
    wal.add_argument(
        "--import",
        dest="import_dir",
        default=None,
        metavar="DIR",
        help="ship an existing archive directory once (same checks; nothing removed)",
    )
    base = kinds.add_parser("base", parents=[common], help="pg_basebackup for point-in-time")
    base.add_argument("--dsn", default=None, help="libpq DSN (default: [pitr] dsn, then PG*)")
    base.add_argument("--fast-checkpoint", action="store_true", help="checkpoint at once")
    base.add_argument(
        "--import",
        dest="import_path",
        default=None,
        metavar="PATH",
        help="store a pg_basebackup made elsewhere (-Fp or -Ft, -z, -X stream) as a base backup",
    )
    base.add_argument(
        "--superuser",
        default=None,
        help="with --import: the cluster's bootstrap superuser (default: read from the backup)",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Take the backup the arguments ask for; return the exit code."""
    config = load_config(args.config, overrides=_overrides(args))
    if args.kind == "wal":
        shipped = _ship(config, args.import_dir)
        print(shipped.summary())
        for line in shipped.problems:
            print(f"drill: {line}", file=sys.stderr)
        return 1 if shipped.problems else 0
    if getattr(args, "mirror", False):
        from drills.backup.mirror import mark_mirror

        storage = destination(config, "files").storage
        print(mark_mirror(storage, config.storage.prefixes.files).summary())
        return 0
    try:
        result = _produce(
            args.kind,
            config,
            upload=not args.no_upload,
            fast_checkpoint=getattr(args, "fast_checkpoint", False),
            dry_run_prune=args.dry_run_prune,
            imported=(getattr(args, "import_path", None), getattr(args, "superuser", None)),
        )
    except OSError as exc:  # the producers name their own failures; this is the last net
        raise os_error(exc.filename or args.kind, exc) from None
    print("\n".join(_report(result)))
    for line in _failures(result):
        print(f"drill: {line}", file=sys.stderr)
    return 0 if result.good else 1


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    overrides = {
        "storage.url": args.storage_url,
        "backup.local_dir": args.local_dir,
        "backup.retention_days": args.retention_days,
    }
    if args.kind == "database":
        overrides |= {
            "database.dsn": args.dsn,
            "database.name": args.name,
            "database.format": args.format,
            "database.compression": args.compression,
        }
    elif args.kind == "files":
        overrides["files.source_dir"] = args.source
    elif args.kind == "wal":
        overrides["pitr.archive_dir"] = args.archive_dir
        overrides["pitr.remove_shipped"] = "true" if args.remove_shipped else None
    elif args.kind == "base":
        overrides["pitr.dsn"] = args.dsn
    if args.no_upload and args.local_dir and not args.storage_url:
        # nothing is uploaded: the local directory stands in for a storage the config needs
        overrides["storage.url"] = Path(args.local_dir).absolute().as_uri()
    return overrides


def _ship(config: Config, import_dir: str | None):
    from drills.backup.archiver import archiver_state
    from drills.backup.wal import ship_wal
    from drills.commands.heartbeat import resolve_dsn

    storage = destination(config, "wal").storage
    prefix = config.storage.prefixes.wal
    if import_dir is not None:
        return ship_wal(storage, prefix, import_dir, importing=True)
    settings = config.pitr
    if settings is None or not settings.archive_dir:
        raise ConfigError("[pitr] archive_dir is not set (or --archive-dir)")
    dsn = resolve_dsn(config, None)
    return ship_wal(
        storage,
        prefix,
        settings.archive_dir,
        remove=settings.remove_shipped,
        server=lambda: archiver_state(dsn),
        stall_after=config.targets.rpo.database,
    )


def _produce(
    kind: str,
    config: Config,
    *,
    upload: bool,
    fast_checkpoint: bool = False,
    dry_run_prune: bool = False,
    imported: tuple[str | None, str | None] = (None, None),
) -> BackupResult:
    def dest(of: str) -> Destination:
        found = destination(config, of, upload=upload)
        return dataclasses.replace(found, dry_run_prune=dry_run_prune)

    if kind == "database":
        if config.database is None:
            raise ConfigError("[database] is not configured: set its name (or --name)")
        settings = config.database
        encryption = None
        if settings.encrypt:
            encryption = Encryption(
                settings.passphrase_env, settings.gpg_home, settings.gpg_recipient
            )
        return backup_database(
            dest("database"),
            settings.name,
            dsn=settings.dsn,
            format=settings.format,
            compression=settings.compression,
            exact_count_max_bytes=settings.exact_count_max_bytes,
            bounds=Bounds(config.backup.lock_timeout, config.runtime.step_timeout),
            encryption=encryption,
        )
    if kind == "files":
        if config.files is None or not config.files.source_dir:
            raise ConfigError("[files] source_dir is not set (or --source)")
        return backup_files(dest("files"), config.files.source_dir)
    if kind == "base" and imported[0] is not None:
        from drills.backup.base_import import import_base

        return import_base(
            dest("base"),
            imported[0],
            superuser=imported[1],
            storage=destination(config, "wal", upload=upload).storage,
            wal_prefix=config.storage.prefixes.wal,
            archive_dir=config.pitr.archive_dir if config.pitr else None,
            timeout=config.runtime.step_timeout,
        )
    if kind == "base":
        from drills.backup.base import backup_base
        from drills.commands.heartbeat import resolve_dsn

        return backup_base(
            dest("base"),
            dsn=resolve_dsn(config, None),
            fast_checkpoint=fast_checkpoint,
            timeout=config.runtime.step_timeout,
        )
    if config.config is None or not config.config.paths:
        raise ConfigError("[config] paths is not set: no config files to archive")
    return backup_config(
        dest("config"),
        config.config.paths,
        optional=config.config.optional,
        passphrase=_passphrase(config.config.passphrase_env),
    )


def _passphrase(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"${name} is not set: [config] passphrase_env names it as the archives' passphrase"
        )
    return value


def _report(result: BackupResult) -> list[str]:
    """What was made, then one line per thing cleaned, uploaded late and pruned."""
    manifest = result.manifest
    what = human_size(manifest.bytes or 0)
    if manifest.kind == "files":
        what = f"{len(manifest.files)} files, {what}"
    if manifest.sha256:
        what += f", sha256 {manifest.sha256[:12]}"
    where = [str(result.local_path)] if result.local_path else []
    local_uri = result.local_path.as_uri() if result.local_path else ""
    if result.stored_at and not local_uri.startswith(result.stored_at.rstrip("/") + "/"):
        where.append(result.stored_at)  # not when the local copy is the stored one
    line = f"{result.kind}: {result.key} ({what}) -> {', '.join(where)}"
    if result.copied:
        line += f"; {result.uploaded} uploaded, {result.copied} unchanged copied"
    if result.suspect:
        line += "; SUSPECT"
    lines = [line]
    lines += [f"  cleaned: {note}" for note in result.cleaned]
    lines += [f"  uploaded an earlier run's local copy: {key}" for key in result.caught_up]
    lines += [f"  pruned: {where}" for where in result.pruned]
    lines += [f"  would prune (--dry-run-prune): {where}" for where in result.would_prune]
    if result.prune_note:
        lines.append(f"  prune: {result.prune_note}")
    return lines


def _failures(result: BackupResult) -> list[str]:
    """Why a run that stored its backup still failed, one line each."""
    lines = []
    if result.suspect:
        causes = "; ".join(result.suspect)
        lines.append(
            f"{result.key}: stored, but SUSPECT: {causes} (marked in its manifest; it does "
            "not count as a good backup and nothing was pruned)"
        )
    return lines + list(result.problems)
