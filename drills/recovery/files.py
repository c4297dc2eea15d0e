"""`drill restore files`: restore an uploads snapshot beside the live directory, then swap.

The runbook it carries out:

1. plan: choose the snapshot (a key, or the latest), the owner and mode (`[files] owner` and
   `mode`, else the replaced directory's owner and the snapshot's modes), check free space;
2. restore with the drills' engine (`drills.restore.files.restore_files`: storage -> tar stream
   -> a fresh labelled volume, every object hashed on the way);
3. copy it into a sibling directory ``<dir>.restore_<ts>`` (same file system, so the swap is a
   rename), give it the owner and mode;
4. verify the sibling with the drills' check against the manifest (every file, its size and
   sha256; missing and extra files named);
5. swap: an atomic exchange of the two directories (renameat2 RENAME_EXCHANGE; two renames
   where the file system cannot), the previous directory kept as ``<dir>.before_<ts>``.

A failure before the swap removes the sibling and leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import pwd
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import docker
import docker.errors
import requests

from drills.config import Config
from drills.config.clock import StepTimeout, human
from drills.config.errors import ConfigError, DrillError
from drills.record import DrillRecord
from drills.recovery.common import Workspace, choose, describe_backup, need_space, size, stamp
from drills.restore.files import check_files, landed_files, restore_files
from drills.runtime import images
from drills.runtime.labels import RunSession
from drills.storage import Storage, catalog
from drills.storage.catalog import Backup

HELPER_MAJOR = 15  # any image with bash, cp, find and sha256sum serves; ours is always there
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

Say = Callable[[str], None]


class FilesRecoveryFailed(DrillError):
    """The files restore or its verification failed; the directory was not touched."""


@dataclass
class FilesPlan:
    """Everything decided before anything changes."""

    backup: Backup
    why: str
    target: Path
    sibling: Path
    kept: Path
    uid: int
    gid: int
    owner_source: str
    mode: int | None
    free: int
    notes: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        """Whether there is a directory to replace."""
        return self.target.exists()

    def lines(self, now: datetime) -> list[str]:
        """The plan for people."""
        manifest = self.backup.manifest
        count = f"{len(manifest.files)} files in its manifest" if manifest else "no manifest"
        out = [
            f"  snapshot:   {describe_backup(self.backup, now)}",
            f"              chosen: {self.why}; {count}",
            f"  target:     {self.target}"
            + ("" if self.exists else " (does not exist yet: it is created)"),
            f"  restore:    into {self.sibling}, checked against the manifest, then swapped in",
        ]
        if self.exists:
            out.append(f"  keeps:      the current directory as {self.kept}")
        mode = (
            f"files {self.mode:03o}, directories {_dir_mode(self.mode):03o}"
            if self.mode is not None
            else "the snapshot's"
        )
        out.append(f"  owner:      {self.uid}:{self.gid} ({self.owner_source}); mode: {mode}")
        out += [f"  note:       {note}" for note in self.notes]
        return out


@dataclass
class FilesOutcome:
    """What a finished files recovery did."""

    plan: FilesPlan
    files: int
    bytes: int
    checks: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def plan_files(
    config: Config, storage: Storage, to: str, *, key: str | None, now: datetime
) -> FilesPlan:
    """Choose the snapshot and where it goes; change nothing."""
    backups = catalog.list_backups(storage, "files", config.storage.prefixes.files)
    backup, why = choose(backups, "files", key=key)
    manifest = backup.manifest  # a bad manifest stops the plan
    target = Path(to).absolute()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--to {target}: exists and is not a directory")
    if target.exists() and os.path.ismount(target):
        raise ConfigError(
            f"--to {target}: is a mount point, which a rename cannot replace; restore into a "
            "directory inside it"
        )
    if not target.parent.is_dir():
        raise ConfigError(f"--to {target}: its parent directory {target.parent} does not exist")
    settings = config.files
    uid, gid, source = _owner(settings.owner if settings else None, target)
    mode = int(settings.mode, 8) if settings and settings.mode else None
    needed = manifest.bytes if manifest and manifest.bytes is not None else backup.size
    free = need_space(
        target.parent, needed, f"the restored copy of {backup.key}", "free some space first"
    )
    ts = stamp(now)
    for taken in (f"{target.name}.restore_{ts}", f"{target.name}.before_{ts}"):
        if target.with_name(taken).exists():
            raise ConfigError(f"{target.with_name(taken)} exists already; try again")
    plan = FilesPlan(
        backup=backup,
        why=why,
        target=target,
        sibling=target.with_name(f"{target.name}.restore_{ts}"),
        kept=target.with_name(f"{target.name}.before_{ts}"),
        uid=uid,
        gid=gid,
        owner_source=source,
        mode=mode,
        free=free,
    )
    if manifest is None or not manifest.files:
        plan.notes.append(
            f"{backup.key} has no file list in a manifest: checksums cannot be verified"
        )
    return plan


def run_files(
    plan: FilesPlan, config: Config, storage: Storage, *, say: Say, workspace: Workspace
) -> FilesOutcome:
    """Carry out the plan; raise with the cause. Before the swap, a failure removes the
    sibling and leaves the directory as it was."""
    bound = config.targets.rto.files
    timings: dict[str, float] = {}
    client, session = workspace.client, workspace.session
    restored = None
    try:
        image = images.ensure_postgres_image(client, HELPER_MAJOR)
        try:
            say(f"restoring {plan.backup.key} (each object hashed on the way)")
            restored = restore_files(
                client, session, storage, plan.backup, image=image, timeout=bound
            )
            timings["restore"] = restored.seconds
            started = time.monotonic()
            say(f"copying into {plan.sibling}")
            _copy_in(client, session, image, restored.volume, plan, bound)
            timings["copy"] = time.monotonic() - started
            started = time.monotonic()
            record = DrillRecord("recovery")
            landed = landed_files(client, session, str(plan.sibling), image=image, timeout=bound)
            check_files(record, plan.backup, restored, landed)
            timings["validate"] = time.monotonic() - started
            if record.failed_checks:
                causes = "; ".join(f"{c.name}: {c.detail}" for c in record.failed_checks)
                raise FilesRecoveryFailed(f"the restored copy failed verification: {causes}")
            say(f"verified: {len(record.checks)} checks passed ({len(landed)} files)")
            _swap(plan)
        except BaseException as exc:
            _remove_tree(plan.sibling)
            if isinstance(exc, DrillError):
                raise FilesRecoveryFailed(
                    f"{exc}; nothing was replaced: {plan.target} is as it was"
                ) from None
            raise
    finally:
        if restored is not None:
            restored.remove()
    notes = [n for n in record.notes if "integrity" in n]
    return FilesOutcome(
        plan, len(landed), restored.bytes_read, len(record.checks), timings, notes=notes
    )


def summary(outcome: FilesOutcome) -> list[str]:
    """What the user reads at the end."""
    plan = outcome.plan
    lines = [
        f"restored {plan.target} from {plan.backup.key}: {outcome.files} files, "
        f"{size(outcome.bytes)}; {outcome.checks} checks passed"
    ]
    if plan.exists or plan.kept.exists():
        lines.append(
            f"the previous directory is kept as {plan.kept}; remove it when you are sure: "
            f"rm -rf '{plan.kept}'"
        )
        lines.append(
            "processes that hold the old directory open (a running container's bind mount, "
            "a chdir) still see it until they are restarted"
        )
    lines += [f"note: {note}" for note in outcome.notes]
    return lines


def _owner(spec: str | None, target: Path) -> tuple[int, int, str]:
    """uid, gid and where they came from: [files] owner, the replaced directory, or us."""
    if spec:
        user, _, group = spec.partition(":")
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid, default_gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            if not user.isdigit():
                raise ConfigError(
                    f"[files] owner {spec!r}: no user {user!r} on this host"
                ) from None
            uid = default_gid = int(user)
        if not group:
            return uid, default_gid, f"[files] owner {spec}"
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"[files] owner {spec!r}: no group {group!r} on this host") from None
        return uid, gid, f"[files] owner {spec}"
    if target.exists():
        st = target.stat()
        return st.st_uid, st.st_gid, "as the replaced directory"
    return os.getuid(), os.getgid(), "this user's, as [files] owner is unset"


def _dir_mode(mode: int) -> int:
    """A directory's mode for a file mode: x wherever r is (640 -> 750)."""
    return mode | ((mode & 0o444) >> 2)


def _copy_in(
    client: docker.DockerClient,
    session: RunSession,
    image: str,
    volume: str,
    plan: FilesPlan,
    timeout: float,
) -> None:
    """Copy the restored volume into the sibling directory, then set its owner and mode."""
    try:
        plan.sibling.mkdir(mode=0o700)
    except OSError as exc:
        raise FilesRecoveryFailed(f"{plan.sibling}: cannot create it: {exc.strerror}") from None
    top = stat.S_IMODE(plan.target.stat().st_mode) if plan.exists else 0o755
    script = ["set -euo pipefail", "cp -a /from/. /to/", f"chown -R {plan.uid}:{plan.gid} /to"]
    if plan.mode is not None:
        top = _dir_mode(plan.mode)
        script.append(f"find /to -type f -exec chmod {plan.mode:o} {{}} +")
        script.append(f"find /to -type d -exec chmod {top:o} {{}} +")
    script.append(f"chmod {top:o} /to")
    try:
        container = client.containers.run(
            image,
            entrypoint=["bash", "-c"],
            command=["; ".join(script)],
            detach=True,
            user="root",
            network_mode="none",
            labels=session.labels("files-copy"),
            volumes={
                volume: {"bind": "/from", "mode": "ro"},
                str(plan.sibling): {"bind": "/to", "mode": "rw"},
            },
        )
    except docker.errors.DockerException as exc:
        raise FilesRecoveryFailed(f"cannot start the copy container: {exc}") from None
    try:
        try:
            status = container.wait(timeout=timeout)
        except (requests.exceptions.RequestException, docker.errors.APIError):
            raise StepTimeout(
                f"the copy into {plan.sibling} did not finish within its bound of {human(timeout)}"
            ) from None
        if status.get("StatusCode") != 0:
            logs = container.logs().decode(errors="replace").strip().splitlines()
            raise FilesRecoveryFailed(
                f"the copy into {plan.sibling} failed (exit {status.get('StatusCode')}): "
                f"{' | '.join(logs[-3:]) or 'no message'}"
            )
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)


def _swap(plan: FilesPlan) -> None:
    """Exchange the sibling and the target in one step; keep the old one beside them."""
    target, sibling, kept = plan.target, plan.sibling, plan.kept
    try:
        if not target.exists():
            os.rename(sibling, target)
        elif _exchange(sibling, target):
            os.rename(sibling, kept)  # the sibling's name now holds the previous directory
        else:
            os.rename(target, kept)
            try:
                os.rename(sibling, target)
            except OSError:
                os.rename(kept, target)
                raise
    except OSError as exc:
        raise FilesRecoveryFailed(
            f"swapping {sibling} in for {target} failed: {exc.strerror}"
        ) from None


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically; False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
