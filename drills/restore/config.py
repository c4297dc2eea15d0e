"""Restore engine for config archives: fetch, decrypt, extract privately, check, remove.

The same engine serves drills and real recoveries. The archive streams from storage (hashed on
the way) through `gpg --decrypt` when it is encrypted, then through gzip to its clean end of
stream (CRC and length checked) into a tar reader that writes each member into a private
temporary directory (mode 700). Members that would land outside it (absolute paths, "..", or
below a link of the archive) are refused. Links are recorded, never created or followed there
(a recovery writes them as links); each file's mode, owner and time (to the nanosecond, from a
pax header) are recorded as archived; a hard link to an earlier member is that member's bytes;
devices and fifos are skipped and named.

Secrets: the passphrase is read from the environment variable that `[config] passphrase_env`
names and reaches gpg through a pipe (`--passphrase-fd`), never a command line, a file or a
log; gpg runs with a private temporary GNUPGHOME and without that variable in its environment.
Checks record names and counts, never a value. The temporary directory is always removed.

    >>> with restore_config(storage, backup, passphrase_env="PASS", timeout=600) as restored:
    ...     check_config(record, backup, restored, required=(".env.production",))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError, EnvironmentProblem, IntegrityError, StorageError
from drills.record import DrillRecord
from drills.restore.envfile import EnvSyntaxError, parse_env
from drills.runtime.gpg import private_home
from drills.storage import Storage
from drills.storage.catalog import Backup
from drills.storage.manifest import HashingReader
from drills.storage.snapshot import DIR, LINK, Entry

CHUNK = 1 << 20
SHOWN = 10
WRONG_PASSPHRASE = "wrong passphrase or not encrypted for it"
# The passphrase is written whole into a pipe before gpg starts: it must fit the pipe's buffer.
MAX_PASSPHRASE = 16384


class ConfigRestoreError(DrillError):
    """A config archive could not be opened: passphrase, decryption or archive problems."""


@dataclass(frozen=True)
class Member:
    """One extracted member: its size and sha256 (never its content), and its mode, owner and
    time as archived."""

    size: int
    sha256: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None


@dataclass
class RestoredConfig:
    """A config archive extracted into a private directory that exists only inside the `with`."""

    directory: Path
    members: dict[str, Member] = field(default_factory=dict)
    links: dict[str, Entry] = field(default_factory=dict)
    """Symlinks by name, with their targets: recorded, never created in the private directory."""
    directories: dict[str, Entry] = field(default_factory=dict)
    """Directories the archive holds, with their mode, owner and time."""
    skipped: list[str] = field(default_factory=list)
    bytes_read: int = 0
    sha256: str = ""
    passphrase_env: str | None = None  # the variable's NAME, when the archive was decrypted

    def path(self, member: str) -> Path:
        """Where an extracted member is, inside the private directory."""
        return self.directory.joinpath(*PurePosixPath(member).parts)

    @property
    def names(self) -> list[str]:
        """Every file and link the archive holds, by name (what a recovery writes)."""
        return sorted({*self.members, *self.links})


def restore_config(
    storage: Storage, backup: Backup, *, passphrase_env: str | None, timeout: float
) -> contextlib.AbstractContextManager[RestoredConfig]:
    """Fetch, decrypt and extract `backup` into a private temporary directory, removed on exit.

    The passphrase is read from the environment variable named `passphrase_env` when the
    archive is encrypted. Raises ConfigRestoreError (passphrase unset, wrong passphrase,
    corrupt archive, unsafe member), IntegrityError (the archive disagrees with its manifest),
    StorageError or StepTimeout, each naming the archive and the cause.
    """
    return _restore(storage, backup, passphrase_env, timeout)


def archive_names(
    storage: Storage, backup: Backup, *, passphrase_env: str | None, timeout: float
) -> list[str]:
    """The file names an archive holds, read by restoring it privately (the directory is
    removed at once): the listing of an archive that has no manifest."""
    with restore_config(storage, backup, passphrase_env=passphrase_env, timeout=timeout) as r:
        return r.names


class Secret:
    """A passphrase that never shows itself: its repr (in tracebacks, logs) is `<secret>`.

    Nothing that can appear in a failure's traceback holds the passphrase or the environment
    as a plain argument: pytest prints every frame's arguments.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def encoded(self) -> bytes:
        """The passphrase as bytes, for the pipe to gpg."""
        return self._value.encode()


def check_config(
    record: DrillRecord,
    backup: Backup,
    restored: RestoredConfig,
    required: tuple[str, ...] = (),
    *,
    paths: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    """Record the checks of a restored archive: names and counts only, never a value.

    Every configured path not `optional` must be in the archive as what it was when archived
    (the manifest says; without one, present at all); every `required` name must be there as
    a file, or as a link to a file the archive holds."""
    manifest = backup.manifest
    if manifest is not None and (manifest.sha256 or manifest.bytes is not None):
        record.check(
            "archive sha256 and size equal the manifest's",
            True,
            f"{restored.bytes_read} bytes, sha256 {restored.sha256[:16]}…",
        )
    if restored.passphrase_env:
        record.check(
            "decrypted with the configured passphrase",
            True,
            f"gpg --decrypt, passphrase from ${restored.passphrase_env}",
        )
    else:
        record.notes.append(f"{backup.key} is not encrypted")
    names = sorted(restored.members)
    record.check(
        "archive holds files",
        bool(names),
        f"{len(names)} file(s), {len(restored.links)} link(s)"
        if names
        else "the archive holds no files",
    )
    if restored.skipped:
        record.notes.append(f"special files not restored: {_names(restored.skipped)}")
    wanted = [p for p in paths if p not in optional]
    if wanted:
        problems = _path_problems(wanted, restored, manifest)
        record.check(
            "every configured path is in the archive, as what it was",
            not problems,
            "; ".join(problems[:SHOWN])
            + (f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
            if problems
            else f"{len(wanted)} of {len(wanted)} ([config] paths, optional ones aside)",
        )
    if required:
        problems = _required_problems(required, restored)
        record.check(
            "required files are present",
            not problems,
            "; ".join(problems) if problems else f"present: {', '.join(required)}",
        )
    env_files = [name for name in names if is_env_file(name)]
    for name in env_files:
        check = f"{name} parses as a .env file"
        try:
            count = count_variables(restored.path(name).read_bytes(), name)
        except EnvSyntaxError as exc:
            record.check(check, False, str(exc))
            continue
        record.check(check, True, f"{count} variables (values not shown)")
    if not env_files:
        record.notes.append("no .env-style file in the archive: nothing to parse")
    if manifest is not None and manifest.members:
        _members_against_manifest(record, restored, manifest)
    else:
        record.notes.append(
            f"{backup.key}: no member checksums in a manifest: the extracted files could not "
            "be compared with what was archived"
        )


def _path_problems(paths: list[str], restored: RestoredConfig, manifest) -> list[str]:
    """Each configured path missing from the archive, or there as another kind of object."""
    recorded = {p.path: p.kind for p in manifest.paths} if manifest is not None else {}
    problems = []
    for listed in paths:
        kind = _kind_in(_normal(listed), restored)
        was = recorded.get(listed)
        if kind is None:
            problems.append(f"missing from the archive: {listed}")
        elif was not in (None, "missing", kind):
            problems.append(f"{listed}: {_a(kind)} in the archive, {_a(was)} when archived")
    return problems


def _required_problems(required: tuple[str, ...], restored: RestoredConfig) -> list[str]:
    """Each required name that is not archived as a file, or as a link to an archived file."""
    missing, dangling = [], []
    for wanted in required:
        found = [n for n in restored.names if _matches(wanted, n)]
        if not found:
            missing.append(wanted)
        elif all(_resolve(n, restored) is None for n in found):
            link = restored.links[found[0]]
            dangling.append(
                f"{link.path}: a link to {link.target}, which the archive does not hold"
            )
    return ([f"missing: {', '.join(missing)}"] if missing else []) + dangling


def _kind_in(name: str, restored: RestoredConfig) -> str | None:
    """What the archive holds at `name` (or a name ending with it, or that it ends with: an
    archive made with relative paths): "file", "link", "dir", or None."""
    for names, kind in ((restored.members, "file"), (restored.links, "link")):
        if any(_same(name, n) for n in names):
            return kind
    below = [*restored.members, *restored.links, *restored.directories]
    if any(_same(name, n) for n in restored.directories) or any(
        _same(name, "/".join(n.split("/")[:i])) for n in below for i in range(1, n.count("/") + 1)
    ):
        return "dir"
    return None


def _same(configured: str, member: str) -> bool:
    return (
        configured == member
        or member.endswith("/" + configured)
        or configured.endswith("/" + member)
    )


def _resolve(name: str, restored: RestoredConfig) -> str | None:
    """The archived file a name ends at, following the archive's own links (8 at most)."""
    for _ in range(8):
        link = restored.links.get(name)
        if link is None:
            break
        target = link.target or ""
        joined = (
            target.lstrip("/")
            if target.startswith("/")
            else posixpath.join(posixpath.dirname(name), target)
        )
        name = posixpath.normpath(joined)
    return name if name in restored.members else None


def _normal(path: str) -> str:
    return "/".join(PurePosixPath(path.lstrip("/")).parts)


def _a(kind: str) -> str:
    return {"file": "a file", "link": "a link", "dir": "a directory"}.get(kind, kind)


def is_env_file(name: str) -> bool:
    """Whether a member is a .env-style file (.env, .env.production, app.env)."""
    base = name.rsplit("/", 1)[-1]
    return base == ".env" or base.startswith(".env.") or base.endswith(".env")


def count_variables(data: bytes, name: str) -> int:
    """Parse a .env-style file (`drills.restore.envfile`); return how many variables it sets.

    Raises EnvSyntaxError naming the line, never echoing its content.
    """
    return len(parse_env(data, name))


def find_member(restored: RestoredConfig, wanted: str, key: str) -> str:
    """The member `wanted` names (its path, or its end: ".env.production"), for `key`."""
    names = sorted(name for name in restored.members if _matches(wanted, name))
    if len(names) == 1:
        return names[0]
    if not names:
        held = _names(sorted(restored.members))
        raise DrillError(f"{key}: the config archive holds no {wanted} (it holds {held})")
    raise DrillError(
        f"{key}: {wanted} matches {_names(names)} in the config archive: give more of its path"
    )


def _matches(required: str, member: str) -> bool:
    wanted = required.strip("/")
    return member == wanted or member.endswith("/" + wanted)


def _members_against_manifest(record: DrillRecord, restored: RestoredConfig, manifest) -> None:
    expected = {entry.path.lstrip("/"): entry for entry in manifest.members}
    found = restored.members
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    altered = [
        path
        for path in sorted(set(expected) & set(found))
        if (found[path].sha256, found[path].size)
        != (expected[path].sha256.lower(), expected[path].size)
    ]
    problems = []
    if missing:
        problems.append(f"missing: {_names(missing)}")
    if altered:
        problems.append(f"altered: {_names(altered)}")
    if extra:
        problems.append(f"extra: {_names(extra)}")
    record.check(
        "members match the manifest's checksums",
        not problems,
        "; ".join(problems) or f"{len(expected)} members, sha256 and size equal",
    )
    if manifest.paths or manifest.links:
        differ = _facts_differ(restored, expected, manifest.links)
        record.check(
            "links, modes, owners and times equal the manifest's",
            not differ,
            f"differ: {_names(differ)}" if differ else f"{len(manifest.links)} links, every member",
        )


def _facts_differ(restored: RestoredConfig, expected: dict, links) -> list[str]:
    said = []
    for path, entry in expected.items():
        got = restored.members.get(path)
        if got is None:
            continue
        for fact in ("mode", "uid", "gid", "mtime_ns"):
            want = getattr(entry, fact)
            if want is not None and getattr(got, fact) != want:
                said.append(f"{path} ({fact} {getattr(got, fact)}, archived {want})")
                break
    for link in links:
        got = restored.links.get(link.path.lstrip("/"))
        if got is None:
            said.append(f"{link.path} (link missing)")
        elif got.target != link.target:
            said.append(f"{link.path} (a link to {got.target!r}, archived {link.target!r})")
    return said


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _passphrase(backup: Backup, env_name: str | None) -> Secret:
    if not env_name:
        raise ConfigRestoreError(
            f"{backup.key} is encrypted, but [config] passphrase_env is not set: name the "
            "environment variable that holds its passphrase"
        )
    if env_name not in os.environ:
        raise ConfigRestoreError(
            f"{backup.key} is encrypted, but the passphrase variable {env_name} is not set in "
            "the drill's environment"
        )
    secret = Secret(os.environ[env_name])
    size = len(secret.encoded())
    if size == 0:
        raise ConfigRestoreError(f"{backup.key} is encrypted, but {env_name} is empty")
    if size >= MAX_PASSPHRASE:
        raise ConfigRestoreError(f"the passphrase in {env_name} is too long for gpg's pipe")
    return secret


@contextlib.contextmanager
def _restore(
    storage: Storage, backup: Backup, passphrase_env: str | None, timeout: float
) -> Iterator[RestoredConfig]:
    manifest = backup.manifest  # a bad manifest fails here, before anything is fetched
    passphrase = _passphrase(backup, passphrase_env) if backup.encrypted else None
    directory = Path(tempfile.mkdtemp(prefix="drill-config-"))  # mode 700
    try:
        restored = RestoredConfig(directory)
        feeder = _Feeder(storage, backup.key)
        if passphrase is None:
            causes = _pipeline(backup, feeder, None, restored, timeout)
        else:
            with _gpg(passphrase, passphrase_env or "") as gpg:
                passphrase = None
                causes = _pipeline(backup, feeder, gpg, restored, timeout)
            restored.passphrase_env = passphrase_env
        reader = feeder.reader
        timed_out = bool(causes) and isinstance(causes[0], StepTimeout)
        if feeder.error is not None and not timed_out:
            causes.insert(0, feeder.error)
        elif manifest is not None and not timed_out:
            try:
                reader.verify(manifest.sha256, manifest.bytes, backup.key)
            except IntegrityError as exc:
                # Blamed before gpg's or tar's complaints: those follow from the bad bytes.
                causes.insert(0, IntegrityError(f"{exc} (the archive is corrupt)"))
        if causes:
            then = [str(c).removeprefix(f"{backup.key}: ") for c in causes[1:]]
            raise type(causes[0])("; then ".join([str(causes[0]), *then]))
        restored.bytes_read, restored.sha256 = reader.bytes_read, reader.sha256
        yield restored
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _pipeline(
    backup: Backup,
    feeder: _Feeder,
    gpg: _GpgProcess | None,
    restored: RestoredConfig,
    timeout: float,
) -> list[DrillError]:
    """storage -> [gpg] -> gzip -> tar -> files, bounded; return the causes of failure seen."""
    deadline = time.monotonic() + timeout
    if gpg is None:
        read_fd, write_fd = os.pipe()
        plain: BinaryIO = os.fdopen(read_fd, "rb")
        # Unbuffered: abort() may close it while the feeder is blocked, with no lock to wait on.
        feeder.sink = os.fdopen(write_fd, "wb", buffering=0)
    else:
        plain, feeder.sink = gpg.proc.stdout, gpg.proc.stdin  # type: ignore[assignment]
    extractor = _Extractor(backup, plain, restored)
    with plain:
        feeder.start()
        extractor.start()
        extractor.join(timeout)
        try:
            if gpg is not None:
                gpg.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        feeder.join(max(0.1, deadline - time.monotonic()))
        hung = extractor.is_alive() or feeder.is_alive()
        if gpg is not None and gpg.proc.poll() is None:
            hung = True
        if hung:
            # Stopping the producers ends every blocked read with an EOF or a broken pipe.
            if gpg is not None:
                gpg.proc.kill()
            feeder.abort()
            extractor.join(5)
            return [
                StepTimeout(
                    f"restore of {backup.key} did not finish within its bound of {timeout:.0f} s"
                )
            ]
    if gpg is not None and gpg.proc.returncode != 0:
        return [gpg.error(backup.key)]  # what tar made of gpg's partial output adds nothing
    return [] if extractor.error is None else [extractor.error]


class _Feeder(threading.Thread):
    """Reads the archive from storage into a pipe, hashing every byte; keeps the first error.

    When the consumer stops early (gpg rejected the passphrase, the archive ended) it reads
    on to the end anyway, so the checksum can still tell a corrupt archive from a wrong key.
    """

    def __init__(self, storage: Storage, key: str) -> None:
        super().__init__(daemon=True, name=f"fetch {key}")
        self.storage, self.key = storage, key
        self.sink: BinaryIO | None = None
        self.reader = HashingReader(_Empty())
        self.error: DrillError | None = None
        self._aborted = False

    def abort(self) -> None:
        """Stop feeding (past the bound): the consumer sees the end of its input."""
        self._aborted = True
        self._close_sink()

    def run(self) -> None:
        try:
            self.reader = HashingReader(self.storage.open(self.key))
            with self.reader:
                while not self._aborted and (chunk := self.reader.read(CHUNK)):
                    self._write(chunk)
        except StorageError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.key}: reading from storage failed: {exc}")
        finally:
            self._close_sink()

    def _write(self, chunk: bytes) -> None:
        if self.sink is None:
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[self.sink.write(view) or 0 :]
        except (OSError, ValueError, AttributeError):
            self._close_sink()  # the consumer stopped; its own status says why

    def _close_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            with contextlib.suppress(OSError, ValueError):
                sink.close()


class _Extractor(threading.Thread):
    """Reads the plain archive to its end, writing members into the private directory."""

    def __init__(self, backup: Backup, plain: BinaryIO, restored: RestoredConfig) -> None:
        super().__init__(daemon=True, name=f"extract {backup.key}")
        self.backup, self.plain, self.restored = backup, plain, restored
        self.error: DrillError | None = None

    def run(self) -> None:
        try:
            _extract(self.backup, self.plain, self.restored)
        except DrillError as exc:
            self.error = exc
        except Exception as exc:
            self.error = ConfigRestoreError(f"{self.backup.key}: reading the archive failed: {exc}")
        with contextlib.suppress(OSError, ValueError):
            while self.plain.read(CHUNK):
                pass  # whatever follows, so that gpg is never stuck on a full pipe


def _extract(backup: Backup, plain: BinaryIO, restored: RestoredConfig) -> None:
    key = backup.key
    if backup.compression == "gzip":
        stream: BinaryIO = gzip.GzipFile(fileobj=plain, mode="rb")  # type: ignore[assignment]
    elif backup.compression == "none":
        stream = plain
    else:
        raise ConfigRestoreError(
            f"{key}: {backup.compression} config archives are not supported (gzip or none)"
        )
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _member(key, tar, member, restored)
        while stream.read(CHUNK):
            pass  # to the compressor's clean end: gzip checks its CRC and length there
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ConfigRestoreError(
            f"{key}: the archive is corrupt or truncated ({_short(exc)})"
        ) from None


def _member(key: str, tar: tarfile.TarFile, member: tarfile.TarInfo, restored: RestoredConfig):
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or (not path.parts and not member.isdir()):
        raise ConfigRestoreError(
            f"{key}: member {member.name!r} would land outside the extraction directory "
            "(path traversal); refused"
        )
    if not path.parts:
        return  # the archive's own "./"
    name = "/".join(path.parts)
    for i in range(1, len(path.parts)):
        if "/".join(path.parts[:i]) in restored.links:
            raise ConfigRestoreError(
                f"{key}: member {name!r} lies below the link {'/'.join(path.parts[:i])!r}: "
                "extracting it would write where the link points; refused"
            )
    target = restored.directory.joinpath(*path.parts)
    facts = {
        "uid": member.uid,
        "gid": member.gid,
        "mtime_ns": _mtime_ns(member),
    }
    if member.isdir():
        _write_guard(name, lambda: target.mkdir(mode=0o700, parents=True, exist_ok=True))
        restored.directories[name] = Entry(name, DIR, mode=member.mode, **facts)
        return
    if member.issym():
        restored.links[name] = Entry(name, LINK, target=member.linkname, **facts)
        return
    if member.islnk():
        first = "/".join(PurePosixPath(member.linkname).parts)
        if first not in restored.members:
            restored.skipped.append(f"{name} (a hard link to {first}, which is not archived)")
            return
        _write_guard(name, lambda: _copy_member(restored.path(first), target))
        restored.members[name] = restored.members[first]
        return
    if not member.isfile():
        restored.skipped.append(name)
        return
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has a reader
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW

    def create() -> int:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(target, flags, 0o600)

    digest, size = hashlib.sha256(), 0
    with os.fdopen(_write_guard(name, create), "wb") as out:
        while block := source.read(CHUNK):  # read errors: the archive's, raised to _extract
            digest.update(block)
            size += len(block)
            _write_guard(name, lambda b=block: out.write(b))
    restored.members[name] = Member(size, digest.hexdigest(), mode=member.mode, **facts)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's time to the nanosecond: a pax header's exact text, else the header's."""
    text = member.pax_headers.get("mtime")
    if text:
        negative = text.startswith("-")
        seconds, _, fraction = text.lstrip("-").partition(".")
        with contextlib.suppress(ValueError):
            value = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
            return -value if negative else value
    return int(member.mtime * 1_000_000_000)


def _copy_member(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as stream:
        shutil.copyfileobj(stream, out, CHUNK)


def _write_guard(name: str, action):
    try:
        return action()
    except OSError as exc:
        raise ConfigRestoreError(
            f"{name}: cannot write the extracted file: {exc.strerror or exc}"
        ) from None


@dataclass
class _GpgProcess:
    proc: subprocess.Popen
    stderr: BinaryIO

    def error(self, key: str) -> ConfigRestoreError:
        """gpg's failure as a named cause."""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit {self.proc.returncode}"
        if "bad session key" in text.lower() or "bad passphrase" in text.lower():
            cause = f"gpg could not decrypt it: {WRONG_PASSPHRASE} ({last})"
        elif "no valid openpgp data" in text.lower():
            cause = f"not gpg-encrypted, though its name or manifest says it is ({last})"
        else:
            cause = f"gpg failed (exit {self.proc.returncode}): {last}; corrupt or truncated?"
        return ConfigRestoreError(f"{key}: {cause}")


def gpg_decrypt_argv(passphrase_fd: int, homedir: str | os.PathLike[str]) -> list[str]:
    """The gpg command line that decrypts stdin to stdout, the passphrase read from a pipe."""
    return [
        "gpg",
        "--homedir",
        os.fspath(homedir),
        "--batch",
        "--yes",
        "--no-tty",
        "--quiet",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        str(passphrase_fd),
        "--no-symkey-cache",
        "--decrypt",
    ]


@contextlib.contextmanager
def _gpg(passphrase: Secret, env_name: str) -> Iterator[_GpgProcess]:
    """gpg --decrypt in a private GNUPGHOME; the passphrase through a pipe, then forgotten."""
    with private_home() as home, tempfile.TemporaryFile() as stderr:
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, passphrase.encoded() + b"\n")  # fits: MAX_PASSPHRASE
            os.close(write_fd)
            proc = subprocess.Popen(
                gpg_decrypt_argv(read_fd, home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                pass_fds=(read_fd,),
                env=_gpg_environment(env_name, home),
            )
        except FileNotFoundError:
            raise EnvironmentProblem(
                "gpg: not found on PATH; install it to drill encrypted config archives"
            ) from None
        finally:
            os.close(read_fd)
            with contextlib.suppress(OSError):
                os.close(write_fd)
        del passphrase  # this frame is on every traceback raised inside the `with`
        try:
            yield _GpgProcess(proc, stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()  # type: ignore[union-attr]


def _gpg_environment(env_name: str, home: Path) -> dict[str, str]:
    """The drill's environment for gpg, without the passphrase variable."""
    env = {k: v for k, v in os.environ.items() if k != env_name}
    env["GNUPGHOME"] = str(home)
    return env


class _Empty:
    def read(self, _size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
