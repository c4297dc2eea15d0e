"""Backups in a local directory (``file:///abs/dir``): reads, atomic writes, conditional ones."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from drills.config.errors import ConfigError, StorageError
from drills.storage.base import ObjectChanged, ObjectExists, ObjectInfo


class LocalStorage:
    """A backup directory on this machine; writes are atomic (temp file, then rename)."""

    endpoint_url: str | None = None

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise ConfigError(f"{root}: a local storage needs an absolute path")
        self.root = path
        self.url = path.as_uri()

    def __repr__(self) -> str:
        return f"LocalStorage({self.url})"

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every regular file whose key starts with `prefix`; symlinked directories are not
        followed (the seed's `files/current` may be one), in key order."""
        self.check()
        # walk only the directory that holds the prefix, not the whole tree
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base) if base else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=self._walk_error):
            dirnames.sort()
            for name in filenames:
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue  # removed while we walked
                if not os.path.isfile(full):
                    continue
                found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        yield from sorted(found, key=lambda info: info.key)

    def folders(self, prefix: str = "") -> list[str]:
        """The directories directly under `prefix` (not symlinks to one), empty ones too."""
        start = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            with os.scandir(start) as found:
                names = [e.name for e in found if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(prefix, exc) from None
        return sorted(f"{prefix}{name}/" for name in names)

    def open(self, key: str) -> BinaryIO:
        """The file, opened for binary reading."""
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._error(key, exc) from None

    def read_bytes(self, key: str) -> bytes:
        """The whole file."""
        with self.open(key) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        """Whether a regular file is stored under `key`."""
        return self._path(key).is_file()

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy `path` to `key` atomically, mode 0o600."""
        try:
            with open(path, "rb") as source:
                self._write_atomic(key, lambda out: shutil.copyfileobj(source, out, 1 << 20))
        except FileNotFoundError:
            raise StorageError(f"{path}: no such file to upload") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` to `key` atomically, mode 0o600."""
        self._write_atomic(key, lambda out: out.write(data))

    def create(self, key: str, data: bytes) -> str:
        """Write `data` to `key` unless a file is there: a hard link never replaces one."""
        target = self._path(key)
        tmp = self._temp_file(key, lambda out: out.write(data))
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise ObjectExists(f"{self.url.rstrip('/')}/{key}: exists already") from None
        except OSError as exc:
            raise self._error(key, exc) from None
        finally:
            _discard(tmp)
        return _tag(data)

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The file's bytes and their sha256 (the tag of a local object)."""
        data = self.read_bytes(key)
        return data, _tag(data)

    def replace(self, key: str, data: bytes, tag: str) -> str:
        """Swap in `data` if the file still holds the bytes tagged `tag`.

        The current file is renamed away first (a rename succeeds for one writer only), then
        checked; a file that changed meanwhile is put back and ObjectChanged raised.
        """
        old = self._take(key, tag)
        if old is None:
            raise ObjectChanged(f"{self.url.rstrip('/')}/{key}: gone since it was read")
        try:
            return self.create(key, data)
        finally:
            _discard(old)

    def delete(self, key: str, tag: str | None = None) -> None:
        """Remove the file (if it still holds the bytes tagged `tag`) and emptied directories."""
        target = self._path(key)
        if tag is not None:
            old = self._take(key, tag)
            if old is not None:
                _discard(old)
                self._prune_dirs(target.parent)
            return
        try:
            target.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(key, exc) from None
        self._prune_dirs(target.parent)

    def delete_all(self, keys: list[str]) -> None:
        """Delete every file in `keys`."""
        for key in keys:
            self.delete(key)

    def _take(self, key: str, tag: str) -> str | None:
        """Rename the file away if it holds the bytes tagged `tag`: its new path, None if there
        is no file; ObjectChanged if it holds other bytes."""
        target = self._path(key)
        moved = str(target.with_name(f".{target.name}.{uuid.uuid4().hex}.old"))
        where = f"{self.url.rstrip('/')}/{key}"
        try:
            os.rename(target, moved)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(key, exc) from None
        with open(moved, "rb") as stream:
            found = _tag(stream.read())
        if found != tag:
            with contextlib.suppress(OSError):
                os.link(moved, target)  # put it back, unless yet another writer is there
            _discard(moved)
            raise ObjectChanged(f"{where}: changed since it was read")
        return moved

    def _prune_dirs(self, directory: Path) -> None:
        """Remove directories a deletion emptied, up to (never including) the root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def check(self) -> None:
        """Raise StorageError unless the root is a readable directory."""
        if not self.root.exists():
            raise StorageError(f"{self.url}: no such directory")
        if not self.root.is_dir():
            raise StorageError(f"{self.url}: not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError(f"{self.url}: permission denied")

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or ".." in parts:
            raise StorageError(f"{self.url}: invalid key {key!r}")
        return self.root.joinpath(*parts)

    def _write_atomic(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        tmp = self._temp_file(key, write)
        try:
            os.replace(tmp, self._path(key))
        except OSError as exc:
            _discard(tmp)
            raise self._error(key, exc) from None

    def _temp_file(self, key: str, write: Callable[[BinaryIO], object]) -> str:
        """A complete, synced temporary file (mode 600) beside `key`, for a rename or link."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as exc:
            raise self._error(key, exc) from None
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
        except OSError as exc:
            _discard(tmp)
            raise self._error(key, exc) from None
        except BaseException:
            _discard(tmp)
            raise
        return tmp

    def _error(self, key: str, exc: OSError) -> StorageError:
        where = f"{self.url.rstrip('/')}/{key}"
        if exc.errno == errno.ENOENT:
            if not self.root.is_dir():
                return StorageError(f"{self.url}: no such directory")
            return StorageError(f"{where}: no such object (deleted after listing?)")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError(f"{where}: permission denied")
        if exc.errno == errno.EISDIR:
            return StorageError(f"{where}: is a directory, not an object")
        if exc.errno == errno.ENOSPC:
            return StorageError(f"{where}: no space left on device")
        return StorageError(f"{where}: {exc.strerror or exc}")

    def _walk_error(self, exc: OSError) -> None:
        raise StorageError(
            f"{self.url}: cannot list {exc.filename}: {exc.strerror or exc}"
        ) from None


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
