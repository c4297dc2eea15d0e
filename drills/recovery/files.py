"""`drill restore files`: restore an uploads snapshot beside the live directory, then swap.

The runbook it carries out:

1. plan: choose the snapshot (a key, or the latest; an empty one is refused), the owners and
   modes (`[files] owner` and `mode` override; else the ones the snapshot records, else the
   replaced directory's owner), check free space;
2. restore with the drills' engine (`drills.restore.files.restore_files`: storage -> tar stream
   -> a fresh labelled volume, every object hashed on the way, links written as links and
   never followed, modes, owners, nanosecond times, empty directories and hard links kept);
3. copy it into a sibling directory ``<dir>.restore_<ts>`` (same file system, so the swap is a
   rename) with ``cp -a``, then apply the overrides; with ``--skip-damaged`` the files whose
   bytes disagree with the manifest (or that the storage lost) are left out;
4. verify the sibling with the drills' checks against the snapshot (every entry and every
   fact it records: content, kind, link target, mode, owner, time, hard links);
5. swap: an atomic exchange of the two directories (renameat2 RENAME_EXCHANGE; two renames
   where the file system cannot), the previous directory, if there was one, kept as
   ``<dir>.before_<ts>``.

A failure before the swap removes the sibling and leaves the directory as it was. Damaged
files stop the recovery, each named with the snapshots that share it and the newest snapshot
that holds it intact; ``--skip-damaged`` restores everything else, lists them, and exits 1.
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
from drills.restore.tree_diff import dir_mode
from drills.runtime import images
from drills.runtime.labels import RunSession
from drills.storage import LocalStorage, Storage, catalog
from drills.storage.catalog import Backup
from drills.storage.snapshot import ROOT, Snapshot

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
    exists: bool
    """Whether there was a directory to replace when the plan was made."""
    recorded: bool = False
    """Whether the snapshot records owners and modes (else the plan's owner is given)."""
    override: bool = False
    """Whether `[files] owner` is set: the plan's owner for every entry."""
    skip_damaged: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def owner(self) -> tuple[int, int] | None:
        """The owner every restored entry gets; None: each keeps the one recorded."""
        return None if self.recorded and not self.override else (self.uid, self.gid)

    def lines(self, now: datetime) -> list[str]:
        """The plan for people."""
        manifest = self.backup.manifest
        listed = manifest is not None and bool(manifest.files)
        count = f"{len(manifest.files)} files in its manifest" if listed else "no manifest"
        against = "the manifest" if listed else "the stored snapshot (no manifest)"
        out = [
            f"  snapshot:   {describe_backup(self.backup, now)}",
            f"              chosen: {self.why}; {count}",
            f"  target:     {self.target}"
            + ("" if self.exists else " (does not exist yet: it is created)"),
            f"  restore:    into {self.sibling}, checked against {against}, then swapped in",
        ]
        if self.exists:
            out.append(f"  keeps:      the current directory as {self.kept}")
        if self.skip_damaged:
            out.append("  damaged:    files that fail their checksum are left out and listed")
        mode = (
            f"files {self.mode:03o}, directories {dir_mode(self.mode):03o}"
            if self.mode is not None
            else "the snapshot's"
        )
        who = (
            f"{self.uid}:{self.gid} ({self.owner_source})"
            if self.owner is not None
            else "as recorded in the snapshot"
        )
        out.append(f"  owner:      {who}; mode: {mode}")
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
    skipped: list[str] = field(default_factory=list)
    """Damaged or lost files left out (--skip-damaged), each with where to take it from."""


def plan_files(
    config: Config,
    storage: Storage,
    to: str,
    *,
    key: str | None,
    now: datetime,
    skip_damaged: bool = False,
) -> FilesPlan:
    """Choose the snapshot and where it goes; change nothing."""
    backups = catalog.list_backups(storage, "files", config.storage.prefixes.files)
    backup, why = choose(backups, "files", key=key)
    manifest = backup.manifest  # a bad manifest stops the plan
    if not backup.objects and not (manifest and manifest.files):
        earlier = [b for b in backups if (b.taken_at, b.key) < (backup.taken_at, backup.key)]
        hint = f" (--snapshot {max(earlier, key=lambda b: b.taken_at).key})" if earlier else ""
        raise FilesRecoveryFailed(
            f"{backup.key} holds no files (an empty snapshot: the uploads directory was empty "
            f"or not mounted when it was taken); restoring it would replace the uploads with "
            f"nothing. Choose an earlier snapshot{hint}; nothing was replaced"
        )
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
    spec = settings.owner if settings else None
    uid, gid, source = _owner(spec, target)
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
        exists=target.exists(),
        recorded=bool(manifest and manifest.records_tree) or isinstance(storage, LocalStorage),
        override=bool(spec),
        skip_damaged=skip_damaged,
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
            skipped = restored.unusable if plan.skip_damaged else []
            started = time.monotonic()
            say(f"copying into {plan.sibling}")
            _copy_in(client, session, image, restored.volume, plan, bound)
            for path in skipped:
                _drop(plan.sibling, path, restored.expected)
            timings["copy"] = time.monotonic() - started
            started = time.monotonic()
            record = DrillRecord("recovery")
            landed = landed_files(client, session, str(plan.sibling), image=image, timeout=bound)
            check_files(
                record,
                plan.backup,
                restored,
                landed,
                owner=plan.owner,
                mode=plan.mode,
                skipped=skipped,
            )
            timings["validate"] = time.monotonic() - started
            if record.failed_checks:
                causes = "; ".join(f"{c.name}: {c.detail}" for c in record.failed_checks)
                hint = (
                    " (--skip-damaged restores the rest and lists them)"
                    if restored.unusable and not plan.skip_damaged
                    else ""
                )
                raise FilesRecoveryFailed(f"the restored copy failed verification: {causes}{hint}")
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
    notes = [n for n in record.notes if "integrity" in n or "outside the snapshot" in n]
    outcome = FilesOutcome(
        plan, len(landed), restored.bytes_read, len(record.checks), timings, notes=notes
    )
    for path in skipped:
        cause = restored.damaged.get(path) or restored.missing.get(path, "")
        trace = restored.traces.get(path)
        outcome.skipped.append(f"{path} ({cause}; {trace.words() if trace else 'not traced'})")
    return outcome


def summary(outcome: FilesOutcome) -> list[str]:
    """What the user reads at the end."""
    plan = outcome.plan
    lines = [
        f"restored {plan.target} from {plan.backup.key}: {outcome.files} files, "
        f"{size(outcome.bytes)}; {outcome.checks} checks passed"
    ]
    if plan.exists:
        lines.append(
            f"the previous directory is kept as {plan.kept}; remove it when you are sure: "
            f"rm -rf '{plan.kept}'"
        )
        lines.append(
            "processes that hold the old directory open (a running container's bind mount, "
            "a chdir) still see it until they are restarted"
        )
    if outcome.skipped:
        lines.append(
            f"NOT restored: {len(outcome.skipped)} damaged or lost files, left out "
            "(--skip-damaged); take each from the snapshot named:"
        )
        lines += [f"  {line}" for line in outcome.skipped]
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
    script = ["set -euo pipefail", "cp -a /from/. /to/"]
    if plan.owner is not None:
        script.append(f"chown -R -h {plan.owner[0]}:{plan.owner[1]} /to")
    if plan.mode is not None:
        script.append(f"find /to -type f -exec chmod {plan.mode:o} {{}} +")
        script.append(f"find /to -type d -exec chmod {dir_mode(plan.mode):o} {{}} +")
    elif not plan.recorded:
        top = stat.S_IMODE(plan.target.stat().st_mode) if plan.exists else 0o755
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


def _drop(root: Path, path: str, want: Snapshot) -> None:
    """Remove one file left out (damaged) from the restored copy, through directory handles
    that never follow a link, and give its directory back the time the snapshot records."""
    *parents, name = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parents:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
        parent = want.entries.get("/".join(parents) or ROOT)
        if parent is not None and parent.mtime_ns is not None:
            os.utime(fd, ns=(parent.mtime_ns, parent.mtime_ns))
    except FileNotFoundError:
        pass  # its directory was not restored either
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
