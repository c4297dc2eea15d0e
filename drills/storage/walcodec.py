"""Read WAL files compressed as people archive them: gzip, zstd, lz4, or not at all.

`archive_command = 'gzip < %p > /archive/%f.gz'`, `pg_receivewal --compress=lz4` and the
like leave compressed files; the shipper reads them from an archive directory, the drill from
a storage. gzip is inflated in process; zstd and lz4 by their command-line tools (the Debian
packages `zstd` and `lz4`). A stream that is corrupt or ends early is an `IntegrityError`
naming the file: a WAL file that cannot be read is never skipped.

    >>> for block in chunks(Path("/archive/000000010000000000000003.gz"), "gzip"):  # doctest: +SKIP
    ...     digest.update(block)
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

from drills.config.errors import EnvironmentProblem, IntegrityError

CHUNK = 1 << 20
TOOLS = {"zstd": ["zstd", "-dc", "-q"], "lz4": ["lz4", "-dc", "-q"]}


def chunks(path: Path, compression: str) -> Iterator[bytes]:
    """The decompressed bytes of a local file, block by block; raises at a bad stream."""
    if compression == "none":
        yield from _plain(path)
    elif compression == "gzip":
        yield from _inflate(_plain(path), str(path))
    else:
        yield from _tool(path, compression)


def decompress(data: bytes, compression: str, source: str) -> bytes:
    """The decompressed bytes of an object read whole (`source` names it in errors)."""
    if compression == "none":
        return data
    if compression == "gzip":
        return b"".join(_inflate(iter((data,)), source))
    argv = _argv(compression, source)
    result = subprocess.run(argv, input=data, capture_output=True, timeout=300, check=False)
    if result.returncode != 0:
        raise IntegrityError(f"{source}: {compression} stream is corrupt or ends early "
                             f"({_first_line(result.stderr)})")  # fmt: skip
    return result.stdout


def _plain(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            yield block


def _inflate(blocks: Iterator[bytes], source: str) -> Iterator[bytes]:
    """gzip members one after another (as `cat a.gz b.gz` makes), each to its clean end."""
    inflater = zlib.decompressobj(31)
    fresh = True  # no byte of the current member read yet
    try:
        for block in blocks:
            while block:
                fresh = False
                yield inflater.decompress(block)
                if not inflater.eof:
                    break
                block = inflater.unused_data
                inflater, fresh = zlib.decompressobj(31), True
    except zlib.error as exc:
        raise IntegrityError(f"{source}: gzip stream is corrupt ({exc})") from None
    if not fresh:
        raise IntegrityError(f"{source}: gzip stream ends early (a cut or unfinished copy?)")


def _tool(path: Path, compression: str) -> Iterator[bytes]:
    argv = _argv(compression, str(path))
    proc = subprocess.Popen(
        [*argv, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        while block := proc.stdout.read(CHUNK):
            yield block
        errors = proc.stderr.read()
        if proc.wait(timeout=60) != 0:
            raise IntegrityError(
                f"{path}: {compression} stream is corrupt or ends early ({_first_line(errors)})"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _argv(compression: str, source: str) -> list[str]:
    argv = TOOLS.get(compression)
    if argv is None:
        raise IntegrityError(f"{source}: unknown compression {compression!r}")
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(
            f"{source}: reading {compression}-compressed WAL needs the `{argv[0]}` command "
            f"(apt-get install {argv[0]})"
        )
    return argv


def _first_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[0].strip() if lines else "no message"
