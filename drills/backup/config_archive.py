"""`drill backup config`: a tar.gz of the configured files, encrypted with gpg when asked.

Members are stored under their path without the leading "/" (as GNU tar stores absolute paths),
so two files with the same base name do not collide and a restore knows where each one lived. As
``tar -czf`` does, a symlink is archived as a link (never followed: a symlinked nginx site stays
a link to its target), a directory with everything in it, every member with its mode, owner and
modification time (to the nanosecond, in pax headers). The manifest records each member with
those facts, every link and directory, and what each configured path was (file, link, directory,
or missing when optional), for the drill to check. With a passphrase the archive is
``config_<ts>.tar.gz.gpg``, made as the seed's ``gpg --symmetric --cipher-algo AES256`` made it,
so ``gpg --decrypt`` opens it. The plain archive is never written to disk: the tar stream goes
straight into gpg. The passphrase reaches gpg through a pipe (``--passphrase-fd``), never a
command line, a file or a log, and gpg runs with a private, temporary GNUPGHOME. The manifest
lists members and checksums, never contents.

Example::

    result = backup_config(dest, ["/srv/app/.env.production"], passphrase=os.environ["PASS"])
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, BinaryIO

from drills import __version__
from drills.backup.common import (
    BackupResult,
    Destination,
    HashingWriter,
    atomic_file,
    os_error,
    utcnow,
)
from drills.backup.plausibility import size_causes
from drills.backup.run import Run
from drills.backup.series import Series
from drills.config.errors import ConfigError, DrillError, EnvironmentProblem
from drills.runtime.gpg import private_home
from drills.storage.manifest import (
    DirEntry,
    HashingReader,
    LinkEntry,
    Manifest,
    MemberEntry,
    PathEntry,
)
from drills.storage.snapshot import (
    DIR,
    FILE,
    LINK,
    ROOT,
    Entry,
    order_key,
    pax_time,
    read_entry,
    read_tree,
)

log = logging.getLogger(__name__)

CIPHER = "AES256"
CHUNK = 1 << 20


def gpg_encrypt_argv(passphrase_fd: int, homedir: str | os.PathLike[str]) -> list[str]:
    """The gpg command line that encrypts stdin to stdout, as the seed's runbook did."""
    return [
        "gpg",
        "--homedir",
        os.fspath(homedir),
        "--batch",
        "--yes",
        "--no-tty",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        str(passphrase_fd),
        "--no-symkey-cache",
        "--symmetric",
        "--cipher-algo",
        CIPHER,
        "--output",
        "-",
    ]


def backup_config(
    dest: Destination,
    paths: Iterable[str],
    *,
    optional: Iterable[str] = (),
    passphrase: str | None = None,
) -> BackupResult:
    """Archive `paths` (files, or directories taken whole) as ``config_<ts>.tar.gz[.gpg]``.

    A missing path is an error naming it, unless it is in `optional` (then it is skipped
    with a warning). An empty `passphrase` is refused rather than used.
    """
    sources = _sources(list(paths), set(optional))
    if passphrase is not None and not passphrase:
        raise ConfigError("the config archive's passphrase is empty")
    ext = ".tar.gz.gpg" if passphrase else ".tar.gz"
    if passphrase:
        _need("gpg")
    with Run(dest, Series("config", dest.prefix, "config_")) as run, dest.workdir() as work:
        run.check_space(work)
        started = utcnow()
        filename = run.name(started, ext)
        final = work / filename
        with atomic_file(final) as out:
            writer = HashingWriter(out)
            if passphrase:
                recorded = _encrypted(sources, writer, passphrase, filename)
            else:
                recorded = _archive(sources, writer)
        manifest = Manifest(
            kind="config",
            started_at=started,
            finished_at=utcnow(),
            format="tar",
            compression="gzip",
            bytes=writer.bytes,
            sha256=writer.sha256,
            producer_version=__version__,
            members=tuple(recorded.members),
            links=tuple(recorded.links),
            directories=tuple(recorded.directories),
            paths=recorded.paths,
            encrypted=bool(passphrase),
            extra={"cipher": CIPHER} if passphrase else {},
        )
        causes = size_causes(writer.bytes, run.previous())
        return run.finish(final, run.mark(manifest, causes), {"": writer.digests.etag})


def _sources(paths: list[str], optional: set[str]) -> _Sources:
    """Every entry to archive, by member name, and what each configured path was."""
    if not paths:
        raise ConfigError("[config] paths is empty: no config files to archive")
    found = _Sources()
    for listed in paths:
        path = Path(listed)
        if not os.path.lexists(path):
            if listed in optional:
                log.warning("%s: missing, skipped (it is optional)", listed)
                found.paths.append(PathEntry(listed, "missing"))
                continue
            raise DrillError(
                f"{listed}: listed config file is missing (mark it optional in [config] "
                "optional if it may be); nothing backed up"
            )
        name = _member_name(path)
        if path.is_dir() and not path.is_symlink():
            for entry in read_tree(path).ordered():
                member = name if entry.path == ROOT else f"{name}/{entry.path}"
                found.add(path / entry.path if entry.path != ROOT else path, member, entry)
            found.paths.append(PathEntry(listed, "dir"))
            continue
        entry = read_entry(path, name)
        if entry is None:
            raise DrillError(f"{listed}: not a file, link or directory; nothing backed up")
        found.add(path, name, entry)
        found.paths.append(PathEntry(listed, "link" if entry.kind == LINK else "file"))
    if not any(e.kind == FILE for _, e in found.entries.values()):
        raise DrillError("no config file to archive: every listed file is missing")
    return found


class _Sources:
    """What `_sources` found: (where it is, its facts) by member name; the configured paths."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Path, Entry]] = {}
        self.paths: list[PathEntry] = []

    def add(self, path: Path, member: str, entry: Entry) -> None:
        self.entries.setdefault(member, (path, entry))


def _member_name(path: Path) -> str:
    return os.path.normpath(path.as_posix()).lstrip("/")


def _archive(sources: _Sources, out: IO[bytes] | HashingWriter) -> _Recorded:
    """Write the tar.gz stream of `sources` to `out`; each file hashed as it is read."""
    recorded = _Recorded(paths=tuple(sources.paths))
    with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
        for name, (path, entry) in sorted(sources.entries.items(), key=lambda i: order_key(i[0])):
            info = tarfile.TarInfo(name)
            info.uid, info.gid = entry.uid or 0, entry.gid or 0
            info.mode = entry.mode or 0
            ns = entry.mtime_ns or 0
            info.mtime = max(0, ns // 1_000_000_000)
            info.pax_headers = {"mtime": pax_time(ns)}
            if entry.kind == DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                recorded.directories.append(
                    DirEntry(name, info.mode, entry.mtime_ns, entry.uid, entry.gid)
                )
            elif entry.kind == LINK:
                info.type, info.linkname = tarfile.SYMTYPE, entry.target or ""
                tar.addfile(info)
                recorded.links.append(
                    LinkEntry(name, info.linkname, entry.mtime_ns, entry.uid, entry.gid)
                )
            else:
                recorded.members.append(_add_file(tar, info, path, entry))
    return recorded


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path, entry: Entry):
    """One regular file, as it is now (its size read from the open file, not the listing)."""
    try:
        with open(path, "rb") as stream:
            info.size = os.fstat(stream.fileno()).st_size
            reader = HashingReader(stream)
            tar.addfile(info, reader)
    except OSError as exc:
        raise os_error(path, exc) from None
    return MemberEntry(
        info.name, info.size, reader.sha256, info.mode, entry.mtime_ns, entry.uid, entry.gid
    )


class _Recorded:
    """What an archive holds, for its manifest."""

    def __init__(self, paths: tuple[PathEntry, ...] = ()) -> None:
        self.members: list[MemberEntry] = []
        self.links: list[LinkEntry] = []
        self.directories: list[DirEntry] = []
        self.paths = paths


def _encrypted(sources: _Sources, out: HashingWriter, passphrase: str, filename: str) -> _Recorded:
    """tar.gz | gpg --symmetric > out, with both ends checked."""
    with private_home() as home, tempfile.TemporaryFile() as err:
        read_fd, write_fd = os.pipe()
        try:
            # a passphrase is far smaller than a pipe's buffer: this write cannot block
            os.write(write_fd, passphrase.encode() + b"\n")
        finally:
            os.close(write_fd)
        try:
            gpg = subprocess.Popen(
                gpg_encrypt_argv(read_fd, home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                pass_fds=(read_fd,),
                env={**os.environ, "GNUPGHOME": str(home)},
            )
        finally:
            os.close(read_fd)
        pump = _Pump(gpg.stdout, out)
        members = _Recorded()
        try:
            try:
                members = _archive(sources, gpg.stdin)  # type: ignore[arg-type]
            except BrokenPipeError:
                pass  # gpg stopped reading; its exit code and message say why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    gpg.stdin.close()  # type: ignore[union-attr]
            pump.join()
            code = gpg.wait()
        except BaseException:
            gpg.kill()
            gpg.wait()
            pump.join()
            raise
        if pump.error is not None:
            raise pump.error
        if code != 0:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines()]
            cause = next((ln for ln in reversed(lines) if ln), "no message")
            raise DrillError(f"{filename}: gpg failed (exit {code}): {cause}; nothing backed up")
    return members


class _Pump(threading.Thread):
    """Copies a process's output to a writer in the background; keeps the first error."""

    def __init__(self, source: BinaryIO | None, out: HashingWriter) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.out = out
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        assert self.source is not None
        try:
            while block := self.source.read(CHUNK):
                if self.error is None:
                    try:
                        self.out.write(block)
                    except BaseException as exc:  # handed to the main thread, which raises it
                        self.error = exc
                # after an error keep reading, so gpg is never stuck on a full pipe
        finally:
            self.source.close()


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise EnvironmentProblem(f"{tool}: not found on PATH; install it to encrypt config backups")
