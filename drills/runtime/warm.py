"""Pre-initialised Postgres images, so a throwaway restore target is ready in about a second.

Most of a new Postgres container's start is initdb (bootstrapping the catalogs takes well
over a second of CPU) and the entrypoint's temporary server. A *warm* image is the same image
plus a data directory initialised once, by the same entrypoint, for one superuser name (with
one spare empty database, see `SPARE_DATABASE`) and committed as a layer: a container of it
starts the final server at once. Each container then
gets its own password (the template's random one was never kept), set over the container's
Unix socket before the readiness probe's TCP login, so nothing else changes for its users.

Only drill restore targets use warm images. Images that keep their data directory in a
declared volume (the official ``postgres:<major>``) gain nothing from a commit; they are
started cold. Any failure to make a warm image falls back to the cold start.

It knows no container class: the caller hands it `template`, a factory of the container that
initialises the data directory (`drills.runtime.postgres` passes its own).

    >>> warm_image(client, image, "postgres", "--no-sync", PGDATA,
    ...            template=make_template)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors

from drills.runtime.images import cache_dir

log = logging.getLogger(__name__)

REPO = "recovery-drills/postgres-warm"
LABEL_SOURCE = "io.recovery-drills.warm-source"
LABEL_USER = "io.recovery-drills.warm-user"
# Bump when what goes into a warm data directory changes.
RECIPE = "3"
# An empty database made with the template: a restore renames it instead of paying for a
# CREATE DATABASE (hundreds of ms on a fresh server) when the drill is already timed.
SPARE_DATABASE = "drill_spare"


def warm_image(
    client: docker.DockerClient,
    image: str,
    user: str,
    initdb_args: str,
    data_dir: str,
    *,
    template: Callable[[], Any],
) -> str | None:
    """The warm image of `image` for superuser `user`, made now if missing; None if the
    image cannot have one (its data directory is a volume) or making it failed.

    `template()` gives a new, unstarted Postgres container of `image` for `user` (with
    `with_env`, `on_network`, `start_ready`, `connect`, `get_wrapped_container`, `stop`)."""
    try:
        source = client.images.get(image)
    except docker.errors.DockerException:
        return None
    if data_dir in (source.attrs.get("Config", {}).get("Volumes") or {}):
        return None
    key = hashlib.sha256(f"{RECIPE} {source.id} {user} {initdb_args}".encode()).hexdigest()[:12]
    tag = f"{REPO}:{key}"
    if _exists(client, tag):
        return tag
    try:
        with _lock(key):
            if not _exists(client, tag):
                _make(template(), image, source, user, initdb_args, tag)
    except (docker.errors.DockerException, OSError, RuntimeError) as exc:
        log.warning("no warm image of %s (starting cold): %s", image, exc)
        return None
    _remove_older(client, image, user, tag)
    return tag


def _make(template: Any, image: str, source, user: str, initdb_args: str, tag: str) -> None:
    template.with_env("POSTGRES_INITDB_ARGS", initdb_args)
    template.on_network(None)
    template.start_ready(120)
    try:
        with template.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{SPARE_DATABASE}"')
        container = template.get_wrapped_container()
        container.stop(timeout=60)  # STOPSIGNAL SIGINT: a fast, clean shutdown
        config = source.attrs.get("Config", {})
        # `docker commit` merges the template container's configuration into what it is
        # given: its run's labels and its environment (with the template's password) are
        # blanked here so that they do not live on in the image.
        own = container.attrs.get("Config", {})
        labels = {key: "" for key in own.get("Labels") or {}}
        labels.update(config.get("Labels") or {})
        labels.update({LABEL_SOURCE: image, LABEL_USER: user})
        names = {entry.split("=", 1)[0] for entry in config.get("Env") or []}
        env = list(config.get("Env") or [])
        env += [
            f"{entry.split('=', 1)[0]}="
            for entry in own.get("Env") or []
            if entry.split("=", 1)[0] not in names
        ]
        repo, _, name = tag.partition(":")
        conf = {
            "Env": env,
            "Cmd": config.get("Cmd"),
            "Entrypoint": config.get("Entrypoint"),
            "ExposedPorts": config.get("ExposedPorts"),
            "WorkingDir": config.get("WorkingDir"),
            "User": config.get("User"),
            "StopSignal": config.get("StopSignal"),
            "Labels": labels,
        }
        container.commit(repository=repo, tag=name, conf=conf)
    finally:
        template.stop()


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _remove_older(client: docker.DockerClient, image: str, user: str, keep: str) -> None:
    """Drop warm images of an earlier build of the same image (best effort)."""
    selector = {"label": [f"{LABEL_SOURCE}={image}", f"{LABEL_USER}={user}"]}
    with contextlib.suppress(docker.errors.DockerException):
        for old in client.images.list(name=REPO, filters=selector):
            if keep not in old.tags:
                with contextlib.suppress(docker.errors.DockerException):
                    client.images.remove(old.id)


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """Two runs on one machine do not make the same warm image at once."""
    with open(cache_dir() / f"warm-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
