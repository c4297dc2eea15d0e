"""The local store checks: modes no looser than `[posture] file_mode`/`dir_mode`, and one
owner, the backup user; judged from a walk of each store (`drills.storage.posture.read_tree`)."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

from drills.checks.posture.finding import Finding
from drills.config.schema import PostureSettings
from drills.storage.posture import TreeFacts

SHOWN_PATHS = 5


def local_finding(
    name: str, trees: list[TreeFacts], missing: list[Path], settings: PostureSettings
) -> Finding:
    """The finding of one local check over every local store (`missing`: those absent)."""
    if missing:
        where = ", ".join(map(str, missing))
        return Finding(
            name,
            False,
            f"no such directory: {where}",
            "create it, or correct [storage] url / [backup] local_dir",
        )
    if not trees:
        return Finding(
            name,
            False,
            "the backups lie in no local directory (an s3:// storage and no [backup] local_dir)",
            "list this check only for a local store",
        )
    return _permissions(trees, settings) if name == "permissions" else _owner(trees, settings)


def _permissions(trees: list[TreeFacts], settings: PostureSettings) -> Finding:
    file_mode, dir_mode = int(settings.file_mode, 8), int(settings.dir_mode, 8)
    loose, parts, fixes = [], [], []
    for tree in trees:
        files = [e for e in tree.entries if not e.is_dir]
        dirs = [e for e in tree.entries if e.is_dir]
        bad = [e for e in tree.entries if e.mode & ~(dir_mode if e.is_dir else file_mode)]
        links = f", {tree.symlinks} symlinks not followed" if tree.symlinks else ""
        parts.append(f"{tree.root}: {len(files)} files, {len(dirs)} directories{links}")
        if bad:
            shown = ", ".join(f"{_shown(tree, e)} ({e.mode:03o})" for e in bad[:SHOWN_PATHS])
            more = f" and {len(bad) - SHOWN_PATHS} more" if len(bad) > SHOWN_PATHS else ""
            loose.append(f"{len(bad)} too open under {tree.root}: {shown}{more}")
            fixes.append(
                f"find {tree.root} -type f -exec chmod {_removal(file_mode)} {{}} + && find "
                f"{tree.root} -type d -exec chmod {_removal(dir_mode)} {{}} +"
            )
    allowed = f"files at most {settings.file_mode}, directories at most {settings.dir_mode}"
    evidence = f"{'; '.join(parts)}; allowed: {allowed}"
    if loose:
        fix = "; ".join(fixes) + " (and `umask 077` in the backup job, so new backups are made so)"
        return Finding("permissions", False, f"{'; '.join(loose)} ({evidence})", fix)
    return Finding("permissions", True, evidence)


def _removal(allowed: int) -> str:
    """The chmod that takes away every permission bit `allowed` lacks: 0o640 -> u-x,g-wx,o-rwx,
    0o700 -> go-rwx."""
    gone: dict[str, str] = {}
    for who, shift in (("u", 6), ("g", 3), ("o", 0)):
        bits = "".join(c for c, bit in (("r", 4), ("w", 2), ("x", 1)) if not allowed >> shift & bit)
        if bits:
            gone[bits] = gone.get(bits, "") + who
    return ",".join(f"{who}-{bits}" for bits, who in gone.items()) or "u+r"


def _owner(trees: list[TreeFacts], settings: PostureSettings) -> Finding:
    parts, wrong, fixes = [], [], []
    for tree in trees:
        expected = _uid(settings.owner) if settings.owner else tree.root_uid
        whose = (
            f"{settings.owner} ([posture] owner)"
            if settings.owner
            else f"{_user_name(expected)}, the owner of {tree.root}"
        )
        if expected is None:
            return Finding(
                "owner",
                False,
                f"[posture] owner {settings.owner}: no such user on this machine",
                "set [posture] owner to the backup user",
            )
        bad = [e for e in tree.entries if e.uid != expected]
        parts.append(f"{tree.root}: {len(tree.entries)} entries, expected owner {whose}")
        if bad:
            shown = ", ".join(f"{_shown(tree, e)} ({_user_name(e.uid)})" for e in bad[:SHOWN_PATHS])
            more = f" and {len(bad) - SHOWN_PATHS} more" if len(bad) > SHOWN_PATHS else ""
            wrong.append(f"{len(bad)} owned by another user under {tree.root}: {shown}{more}")
            fixes.append(f"chown -R {_user_name(expected)} {tree.root}")
    evidence = "; ".join(parts)
    if wrong:
        fix = "; ".join(fixes) + " (and run the backup job as that user)"
        return Finding("owner", False, f"{'; '.join(wrong)} ({evidence})", fix)
    return Finding("owner", True, evidence)


def _shown(tree: TreeFacts, entry: Any) -> str:
    return str(tree.root) if entry.path == "." else entry.path


def _uid(user: str) -> int | None:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
