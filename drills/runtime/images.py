"""Offline images: Postgres of a given major, and the sample application, with no registry.

The order for a Postgres major: an image of ours already present; the official
`postgres:<major>` if present or pullable within a short bound; else built from Debian
packages. The build runs `debootstrap --variant=minbase` of the suite that carries that major,
caches the root filesystem as a tarball under the user's cache directory, `docker import`s it
as a base image and adds a COPY-only layer with an entrypoint that honours the official
image's contract. The same base carries python3 and psycopg for the sample application.

    >>> tag = ensure_postgres_image(engine.connect(), 15)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors

from drills import __version__
from drills.config.errors import EnvironmentProblem

log = logging.getLogger(__name__)

# Which Debian suite carries which PostgreSQL major.
SUITES = {15: "bookworm", 17: "trixie"}
SUPPORTED_MAJORS = tuple(sorted(SUITES))

LABEL_BUILDER = "io.recovery-drills.built-by"
LABEL_PG_MAJOR = "io.recovery-drills.postgres-major"
LABEL_PG_VERSION = "io.recovery-drills.postgres-version"
LABEL_RECIPE = "io.recovery-drills.recipe"

POSTGRES_REPO = "recovery-drills/postgres"
BASE_REPO = "recovery-drills/base"
APP_REPO = "recovery-drills/app"

POSTGRES_CONTEXT = Path(__file__).with_name("postgres_image")
# The sample application the demo drills, shipped in the package (drills/runtime/demo_app).
APP_CONTEXT = Path(__file__).with_name("demo_app")

# Debian's mirror is debootstrap's own default; users behind a proxy or mirror set this.
MIRROR_ENV = "DRILL_DEBIAN_MIRROR"
PULL_ENV = "DRILL_IMAGE_PULL"  # "0" never tries a registry
PULL_TIMEOUT_S = 20.0
DEBOOTSTRAP_TIMEOUT_S = 1800.0


def base_packages(major: int) -> list[str]:
    """Debian packages of the base root filesystem for a Postgres major."""
    return [
        f"postgresql-{major}",
        f"postgresql-client-{major}",
        "python3",
        "python3-psycopg",
        "gzip",
        "zstd",
        "tar",
        "procps",
    ]


def cache_dir() -> Path:
    """Where root filesystem tarballs are cached between runs."""
    root = os.environ.get("DRILL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recovery-drills"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _recipe(major: int) -> str:
    """A short digest of everything that goes into an image, so a changed recipe rebuilds."""
    digest = hashlib.sha256()
    digest.update(SUITES[major].encode())
    digest.update(" ".join(base_packages(major)).encode())
    for context in (POSTGRES_CONTEXT,):
        for path in sorted(context.iterdir()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def postgres_tag(major: int) -> str:
    """The tag of our Postgres image for a major."""
    return f"{POSTGRES_REPO}:{major}"


def ensure_postgres_image(client: docker.DockerClient, major: int) -> str:
    """Return a local image tag that runs Postgres `major`, building it when needed."""
    if major not in SUITES:
        raise EnvironmentProblem(
            f"no image for PostgreSQL {major}: this harness builds majors "
            f"{', '.join(map(str, SUPPORTED_MAJORS))} offline; for another major, make "
            f"`postgres:{major}` available locally (docker load or a registry)"
        )
    tag = postgres_tag(major)
    recipe = _recipe(major)
    existing = _local(client, tag)
    if existing is not None and existing.labels.get(LABEL_RECIPE) == recipe:
        return tag
    official = f"postgres:{major}"
    if _local(client, official) is not None or _try_pull(official):
        return official
    with _lock(f"postgres-{major}"):
        existing = _local(client, tag)
        if existing is not None and existing.labels.get(LABEL_RECIPE) == recipe:
            return tag
        base, pg_version = _ensure_base(client, major)
        _build(
            client,
            POSTGRES_CONTEXT,
            tag,
            buildargs={"BASE": base, "PG_MAJOR": str(major)},
            labels={
                LABEL_BUILDER: f"recovery-drills {__version__}",
                LABEL_PG_MAJOR: str(major),
                LABEL_PG_VERSION: pg_version,
                LABEL_RECIPE: recipe,
            },
        )
    return tag


def ensure_app_image(client: docker.DockerClient) -> str:
    """Return the tag of the sample application's image, building it when needed."""
    major = 15
    return ensure_built(
        client, APP_CONTEXT, APP_REPO, lambda: _ensure_base(client, major)[0], _recipe(major)
    )


def ensure_built(
    client: docker.DockerClient,
    context: Path,
    repo: str,
    base: Callable[[], str],
    seed: str = "",
) -> str:
    """Return `repo:<recipe>`, an image built from `context`'s COPY-only Dockerfile FROM the
    local image `base()` names (its `BASE` build argument), building it when needed.

    The recipe is a digest of `seed` and the context's files, so a changed file rebuilds;
    older builds of the repository are removed.
    """
    digest = hashlib.sha256(seed.encode())
    for path in sorted(context.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    recipe = digest.hexdigest()[:12]
    tag = f"{repo}:{recipe}"
    if _local(client, tag) is not None:
        return tag
    with _lock(repo.replace("/", "-")):
        if _local(client, tag) is None:
            _build(
                client,
                context,
                tag,
                buildargs={"BASE": base()},
                labels={LABEL_BUILDER: f"recovery-drills {__version__}", LABEL_RECIPE: recipe},
            )
            _remove_stale(client, repo, keep=tag)
    return tag


def pulls_allowed(setting: bool = True) -> bool:
    """Whether a registry may be asked for an image: `[runtime] pull`, unless
    DRILL_IMAGE_PULL=0 says never."""
    return setting and os.environ.get(PULL_ENV, "1") != "0"


def require_image(client: docker.DockerClient, ref: str, what: str, *, pull: bool) -> str:
    """`ref`, when the image is on this machine (or, with `pull`, a short pull brought it).

    Else EnvironmentProblem (exit 3) naming `what` (e.g. "the app's image"), the image and
    how to get it; with `pull` off no registry is asked at all.
    """
    try:
        if _local(client, ref) is not None:
            return ref
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(
            f"{what} {ref}: the engine cannot tell if it is here: {exc}"
        ) from None
    if pull and _try_pull(ref):
        return ref
    why = (
        f"a pull from its registry failed or took over {PULL_TIMEOUT_S:.0f} s"
        if pull
        else "pulls are off ([runtime] pull = false or DRILL_IMAGE_PULL=0), so no registry "
        "was asked"
    )
    raise EnvironmentProblem(
        f"{what} {ref} is not on this machine and {why}: build it here (docker build -t "
        f"{ref} .) or load it (docker save {ref} > image.tar where it exists, then docker "
        "load -i image.tar here), then run the drill again"
    )


def _remove_stale(client: docker.DockerClient, repo: str, keep: str) -> None:
    """Remove our older builds of a repository (best effort: one in use stays)."""
    for image in client.images.list(name=repo):
        if keep in image.tags:
            continue
        for tag in image.tags:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(tag)


def image_postgres_version(client: docker.DockerClient, tag: str) -> str | None:
    """The full Postgres version an image of ours carries, from its label."""
    image = _local(client, tag)
    return None if image is None else image.labels.get(LABEL_PG_VERSION)


def _local(client: docker.DockerClient, tag: str):
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def _try_pull(ref: str) -> bool:
    """Try a registry pull with a short bound; a machine with no registry says no quickly."""
    if os.environ.get(PULL_ENV, "1") == "0":
        return False
    try:
        result = subprocess.run(
            ["docker", "pull", "--quiet", ref],
            capture_output=True,
            timeout=PULL_TIMEOUT_S,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        log.info("pull of %s gave up after %.0f s", ref, PULL_TIMEOUT_S)
        return False
    return result.returncode == 0


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """A file lock, so two runs on one machine do not build the same image at once."""
    path = cache_dir() / f"{name}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_base(client: docker.DockerClient, major: int) -> tuple[str, str]:
    """Import the cached root filesystem of a major as a base image; return (tag, pg version)."""
    suite = SUITES[major]
    digest = hashlib.sha256(f"{suite} {' '.join(base_packages(major))}".encode()).hexdigest()[:12]
    tag = f"{BASE_REPO}:{suite}-pg{major}-{digest}"
    image = _local(client, tag)
    if image is not None and image.labels.get(LABEL_PG_VERSION):
        return tag, image.labels[LABEL_PG_VERSION]
    tarball = cache_dir() / f"rootfs-{suite}-pg{major}-{digest}.tar"
    version_file = tarball.with_suffix(".version")
    with _lock(f"rootfs-{suite}-pg{major}"):
        if not tarball.exists() or not version_file.exists():
            _debootstrap(suite, major, tarball, version_file)
    pg_version = version_file.read_text().strip()
    changes = [
        f"LABEL {LABEL_BUILDER}=recovery-drills-{__version__}",
        f"LABEL {LABEL_PG_MAJOR}={major}",
        f"LABEL {LABEL_PG_VERSION}={pg_version}",
        "ENV LANG=C.UTF-8",
    ]
    cmd = ["docker", "import"]
    for change in changes:
        cmd += ["--change", change]
    cmd += [str(tarball), tag]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise EnvironmentProblem(f"docker import of {tarball} failed: {result.stderr.strip()}")
    return tag, pg_version


def _debootstrap(suite: str, major: int, tarball: Path, version_file: Path) -> None:
    """Build a minimal root filesystem with Debian's packages and cache it as a tarball."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"building the PostgreSQL {major} image needs root (debootstrap); run "
            "`sudo .venv/bin/drill images` once, or make postgres:{major} available locally"
        )
    if shutil.which("debootstrap") is None:
        raise EnvironmentProblem(
            f"cannot build the PostgreSQL {major} image: debootstrap is not installed "
            "(`apt-get install -y debootstrap`, which scripts/setup.sh does)"
        )
    started = time.monotonic()
    log_path = tarball.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix=f"rootfs-{suite}-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(base_packages(major))}",
            suite,
            str(root),
        ]
        mirror = os.environ.get(MIRROR_ENV)
        if mirror:
            cmd.append(mirror)
        log.info("building the %s root filesystem for PostgreSQL %s: %s", suite, major, cmd)
        with open(log_path, "w") as out:
            try:
                result = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                raise EnvironmentProblem(
                    f"debootstrap of {suite} did not finish within {DEBOOTSTRAP_TIMEOUT_S:.0f} s "
                    f"(log: {log_path})"
                ) from None
        if result.returncode != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-15:])
            raise EnvironmentProblem(
                f"debootstrap of {suite} for PostgreSQL {major} failed (exit {result.returncode}; "
                f"log: {log_path}); set {MIRROR_ENV} to use another Debian mirror.\n{tail}"
            )
        pg_version = _installed_version(root, f"postgresql-{major}")
        _trim(root, major)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
            check=True,
            timeout=600,
        )
        partial.replace(tarball)
        version_file.write_text(pg_version + "\n")
    log.info("root filesystem %s built in %.0f s", tarball, time.monotonic() - started)


def _installed_version(root: Path, package: str) -> str:
    """The upstream version of an installed Debian package, read from dpkg's status file."""
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    for block in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") == package:
            # "15.14-0+deb12u1" -> "15.14"
            return fields.get("Version", "unknown").split("-")[0]
    raise EnvironmentProblem(f"debootstrap finished but {package} is not installed")


def _trim(root: Path, major: int) -> None:
    """Drop what an image does not need: package caches and the cluster Debian created."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink()
    for path in (root / f"var/lib/postgresql/{major}", root / f"etc/postgresql/{major}"):
        shutil.rmtree(path, ignore_errors=True)
    (root / "docker-entrypoint-initdb.d").mkdir(exist_ok=True)


def _build(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
) -> None:
    try:
        client.images.build(
            path=str(context), tag=tag, buildargs=buildargs, labels=labels, rm=True, pull=False
        )
    except docker.errors.BuildError as exc:
        lines = [chunk.get("stream", "") or chunk.get("error", "") for chunk in exc.build_log]
        raise EnvironmentProblem(
            f"docker build of {tag} failed: {exc.msg}\n{''.join(lines)[-2000:]}"
        ) from None
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"docker build of {tag} failed: {exc}") from None
