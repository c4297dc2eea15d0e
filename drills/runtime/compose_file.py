"""A restored compose file, rewritten so that bringing it up for a drill touches nothing else.

The input is the model `docker compose config` prints (interpolated, env_file merged into
`environment`, relative paths made absolute), as a dict; `rewrite()` returns the drill's
model and the notes a report should carry. For every service:

- the services the restored database stands in for are left out (named, or every service
  running a Postgres image); the restored database answers under their names on the drill's
  network, and `depends_on`, `links` and `volumes_from` naming them are dropped;
- every service joins only the drill's private network, under its own name and aliases;
  `network_mode`, `container_name`, `external_links` and host `pid`/`ipc` are dropped
  (a drill may run on the production host itself: it must not take its names or ports);
- ports are published on 127.0.0.1 on random ports, never on the host's own port;
- the volume (or host directory) the app mounts at its uploads directory is replaced, in
  every service, by the restored uploads volume;
- other host paths are mounted read-only (those inside the restored config directory as
  they were), a missing one or a volume declared external (production's own) is replaced by
  an empty volume, and the Docker socket is never mounted;
- `build` is dropped: a drill builds nothing, every image must be on this machine;
- containers and volumes carry the run's labels, so the sweep finds what a killed run left.

Every service gets the drill's environment over its own (the database URL of the restored
database, `[app] env`): workers need the restored database as much as the app does.

    >>> drill, notes = rewrite(model, plan)                              # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drills.config.errors import DrillError
from drills.runtime.labels import NAME, ROLE

NETWORK = "drill"
UPLOADS = "drill_uploads"
LOOPBACK = "127.0.0.1"
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
# Images of Postgres and its common distributions, by the last part of the repository.
_POSTGRES = re.compile(r"^(postgres|postgis|timescaledb|pgvector|postgresql)", re.I)


class ComposeFileError(DrillError):
    """The restored compose file cannot be drilled as it is; the message says why."""


@dataclass(frozen=True)
class Plan:
    """What the drill's stack must be: where it runs, what it replaces, what the app gets."""

    directory: Path
    """The restored config directory: host paths inside it are the restored files."""
    network: str
    """The drill's private network (created by the drill, external to the stack)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The run's labels, for every container and volume (`ComposeStack.prepare` sets them)."""
    uploads_volume: str | None = None
    uploads_dir: str = "/app/uploads"
    app_port: int = 3001
    app_service: str | None = None
    database_service: str | None = None
    app_image: str | None = None
    app_env: Mapping[str, str] = field(default_factory=dict)
    """The drill's environment for every service: the database URL, `[app] env`."""


@dataclass
class Rewritten:
    """The drill's compose model, and what the rewrite decided."""

    model: dict[str, Any]
    app: str
    """The service that serves the app's HTTP."""
    replaced: list[str]
    """The services the restored database stands in for."""
    notes: list[str] = field(default_factory=list)

    def images(self) -> dict[str, str]:
        """Each service's image."""
        return {name: s["image"] for name, s in self.model["services"].items()}

    def one_shot(self, service: str) -> bool:
        """Whether a service may run to completion (a job: no restart policy, not the app)."""
        policy = self.model["services"][service].get("restart") or "no"
        return service != self.app and policy == "no"


def rewrite(model: Mapping[str, Any], plan: Plan) -> Rewritten:
    """The drill's compose model of `model` (see the module's docstring)."""
    services = dict(model.get("services") or {})
    if not services:
        raise ComposeFileError("the compose file defines no services")
    replaced = _database_services(services, plan.database_service)
    kept = {name: dict(s) for name, s in services.items() if name not in replaced}
    if not kept:
        raise ComposeFileError(
            f"every service of the compose file ({', '.join(services)}) is the database: "
            "nothing is left to run the app"
        )
    app = _app_service(kept, plan)
    out = Rewritten({}, app, replaced)
    declared = dict(model.get("volumes") or {})
    uploads = _uploads_source(kept[app], plan.uploads_dir)
    volumes: dict[str, Any] = {}
    for name, service in kept.items():
        _service(name, service, plan, replaced, declared, uploads, volumes, out)
        env = _as_dict(service.get("environment"))
        # Values are interpolated once more when compose reads the drill's file.
        env.update({key: value.replace("$", "$$") for key, value in plan.app_env.items()})
        service["environment"] = env
    if plan.uploads_volume and uploads is None:
        mount = {"type": "volume", "source": UPLOADS, "target": plan.uploads_dir}
        kept[app]["volumes"] = [*(kept[app].get("volumes") or []), mount]
    if plan.uploads_volume:
        volumes[UPLOADS] = {"external": True, "name": plan.uploads_volume}
    out.model = {key: model[key] for key in ("version",) if key in model}
    out.model["services"] = kept
    out.model["networks"] = {NETWORK: {"external": True, "name": plan.network}}
    if volumes:
        out.model["volumes"] = volumes
    if replaced:
        names = "their names" if len(replaced) > 1 else "that name"
        out.notes.append(
            f"compose service{'s' if len(replaced) > 1 else ''} {', '.join(replaced)}: replaced "
            f"by the restored database, which answers under {names}"
        )
    return out


def _database_services(services: dict[str, Any], named: str | None) -> list[str]:
    if named is not None:
        if named not in services:
            raise ComposeFileError(
                f"[app] database_service is {named!r}, but the compose file's services are "
                f"{', '.join(services)}"
            )
        return [named]
    return [name for name, s in services.items() if _is_postgres(s.get("image") or "")]


def _is_postgres(image: str) -> bool:
    repository = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return bool(_POSTGRES.match(repository))


def _app_service(services: dict[str, Any], plan: Plan) -> str:
    if plan.app_service is not None:
        if plan.app_service not in services:
            raise ComposeFileError(
                f"[app] service is {plan.app_service!r}, but the compose file's services "
                f"(the database left out) are {', '.join(services)}"
            )
        return plan.app_service
    serving = [name for name, s in services.items() if plan.app_port in _container_ports(s)]
    if len(serving) == 1:
        return serving[0]
    if len(services) == 1:
        return next(iter(services))
    candidates = serving or list(services)
    raise ComposeFileError(
        f"cannot tell which compose service serves the app on port {plan.app_port}: "
        f"{', '.join(candidates)}; set [app] service"
    )


def _container_ports(service: Mapping[str, Any]) -> set[int]:
    found = set()
    for port in [*(service.get("ports") or []), *(service.get("expose") or [])]:
        target = _target_port(port)[0]
        if target.isdigit():
            found.add(int(target))
    return found


def _target_port(port: Any) -> tuple[str, str]:
    """(container port or range, protocol) of a ports/expose entry, in either syntax."""
    if isinstance(port, Mapping):
        return str(port.get("target", "")), str(port.get("protocol") or "tcp")
    text = str(port)
    text, _, protocol = text.partition("/")
    return text.rsplit(":", 1)[-1], protocol or "tcp"


def _uploads_source(service: Mapping[str, Any], uploads_dir: str) -> str | None:
    for mount in service.get("volumes") or []:
        parsed = _mount(mount)
        if str(parsed.get("target", "")).rstrip("/") == uploads_dir.rstrip("/"):
            return parsed.get("source")
    return None


def _mount(mount: Any) -> dict[str, Any]:
    """A `volumes` entry of a service in long syntax."""
    if isinstance(mount, Mapping):
        return dict(mount)
    parts = str(mount).split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0].rstrip("/")}
    source, target = parts[0], parts[1].rstrip("/") or "/"
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    parsed: dict[str, Any] = {"type": kind, "source": source, "target": target}
    if len(parts) > 2 and "ro" in parts[2].split(","):
        parsed["read_only"] = True
    return parsed


def _service(
    name: str,
    service: dict[str, Any],
    plan: Plan,
    replaced: list[str],
    declared: dict[str, Any],
    uploads: str | None,
    volumes: dict[str, Any],
    out: Rewritten,
) -> None:
    _drop_host_ties(name, service, out)
    service.pop("build", None)
    image = plan.app_image if name == out.app and plan.app_image else service.get("image")
    if not image:
        raise ComposeFileError(
            f"compose service {name} names no image (it is built with `build:`); a drill "
            "builds nothing: give it an `image:` that is on this machine"
        )
    service["image"] = image
    service["networks"] = {NETWORK: _aliases(service.get("networks"))}
    service["ports"] = [_loopback(port) for port in service.get("ports") or []]
    _drop_references(service, replaced)
    mounts = []
    for mount in service.get("volumes") or []:
        mounts.append(_volume(name, _mount(mount), plan, declared, uploads, volumes, out))
    service["volumes"] = [m for m in mounts if m is not None]
    for key in ("ports", "volumes"):
        if not service[key]:
            service.pop(key)
    display = f"api (compose service {name})" if name == out.app else f"compose service {name}"
    role = "api" if name == out.app else "compose"
    labels = {**_as_dict(service.get("labels")), **plan.labels}
    service["labels"] = {**labels, ROLE: role, NAME: display}


def _drop_host_ties(name: str, service: dict[str, Any], out: Rewritten) -> None:
    """Drop what would tie the service to this host: its names, its networks, its processes."""
    dropped = [k for k in ("container_name", "network_mode", "external_links") if k in service]
    dropped += [key for key in ("pid", "ipc") if service.get(key) == "host"]
    for key in dropped:
        service.pop(key)
    if dropped:
        out.notes.append(f"compose service {name}: {', '.join(dropped)} dropped for the drill")


def _aliases(networks: Any) -> dict[str, list[str]] | None:
    found: set[str] = set()
    for network in (networks or {}).values() if isinstance(networks, Mapping) else ():
        if isinstance(network, Mapping):
            found.update(network.get("aliases") or [])
    return {"aliases": sorted(found)} if found else None


def _loopback(port: Any) -> str:
    target, protocol = _target_port(port)
    return f"{LOOPBACK}::{target}/{protocol}"


def _drop_references(service: dict[str, Any], replaced: list[str]) -> None:
    depends = service.get("depends_on")
    if isinstance(depends, Mapping):
        depends = {k: v for k, v in depends.items() if k not in replaced}
    elif isinstance(depends, list):
        depends = [k for k in depends if k not in replaced]
    if depends:
        service["depends_on"] = depends
    else:
        service.pop("depends_on", None)
    for key in ("links", "volumes_from"):
        kept = [
            item
            for item in service.get(key) or []
            if str(item).split(":")[0] not in replaced and not str(item).startswith("container:")
        ]
        if kept:
            service[key] = kept
        else:
            service.pop(key, None)


def _volume(
    service: str,
    mount: dict[str, Any],
    plan: Plan,
    declared: dict[str, Any],
    uploads: str | None,
    volumes: dict[str, Any],
    out: Rewritten,
) -> dict[str, Any] | None:
    source, kind = mount.get("source"), mount.get("type", "volume")
    if kind not in ("volume", "bind") or not source:
        return mount  # tmpfs, anonymous volumes: the container's own
    if uploads is not None and source == uploads:
        if plan.uploads_volume:
            return {**mount, "type": "volume", "source": UPLOADS}
        # No snapshot restored: production's own uploads must not stand in for it.
        volumes[UPLOADS] = {"labels": dict(plan.labels)}
        return {**mount, "type": "volume", "source": UPLOADS}
    if kind == "volume":
        definition = declared.get(source) or {}
        if isinstance(definition, Mapping) and definition.get("external"):
            out.notes.append(
                f"compose service {service}: external volume {source} replaced by an empty "
                "volume (a drill never mounts production's volumes)"
            )
            definition = {}
        volumes[source] = {**_plain_volume(definition), "labels": dict(plan.labels)}
        return {**mount, "type": "volume"}
    path = Path(str(source)).expanduser()
    if str(path) in DOCKER_SOCKETS:
        out.notes.append(f"compose service {service}: the Docker socket is not mounted in a drill")
        return None
    if path.resolve().is_relative_to(plan.directory.resolve()):
        return {**mount, "source": str(path)}
    if not path.exists():
        name = f"drill_host_{len(volumes)}"
        volumes[name] = {"labels": dict(plan.labels)}
        out.notes.append(
            f"compose service {service}: host path {path} does not exist here; an empty "
            "volume stands in for it"
        )
        return {"type": "volume", "source": name, "target": mount["target"]}
    out.notes.append(f"compose service {service}: host path {path} mounted read-only")
    return {**mount, "source": str(path), "read_only": True}


def _plain_volume(definition: Any) -> dict[str, Any]:
    if not isinstance(definition, Mapping):
        return {}
    return {k: v for k, v in definition.items() if k in ("driver", "driver_opts")}


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    result: dict[str, Any] = {}
    for item in value or []:
        key, sep, rest = str(item).partition("=")
        result[key] = rest if sep else None
    return result
