"""The application under drill, planned before the long part and started on restored data.

`plan_app()` settles how the app runs, from `[app]` and the restored config: one container
of `[app] image` (else the sample app, built locally), or the restored compose stack
(`[app] compose_file`). Every image it needs must be on this machine, checked at once: a
missing one is an EnvironmentProblem (exit 3) naming it and how to get it, before any
restore starts, and with pulls off no registry is asked. `AppPlan.start()` starts it, on
the drill's network, its database URL pointing at the restored database.

    >>> plan = plan_app(settings, client, session, compose_file=None, pull=False)
    ...                                                                   # doctest: +SKIP
    >>> app = plan.start(session, client, network, database, env, uploads_volume=vol)
    ...                                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
from testcontainers.core.network import Network

from drills.config.schema import AppSettings
from drills.runtime import images
from drills.runtime.api import DatabaseAddress, RunningApp, app_environment, start_api
from drills.runtime.compose_file import Plan, Rewritten
from drills.runtime.labels import RunSession
from drills.runtime.stack import ComposeProject


@dataclass
class AppPlan:
    """How the app will run: one container of `image`, or the compose `project`."""

    settings: AppSettings
    image: str | None = None
    project: ComposeProject | None = None
    draft: Rewritten | None = None
    """The compose file as the drill will run it (images, the app's service, notes)."""

    @property
    def database_names(self) -> tuple[str, ...]:
        """The names the restored database must answer under (compose database services)."""
        return tuple(self.draft.replaced) if self.draft else ()

    @property
    def notes(self) -> list[str]:
        """What the rewrite of the compose file changed, for the report."""
        return list(self.draft.notes) if self.draft else []

    def describe(self) -> dict:
        """What drill.json says of it."""
        if self.draft is None:
            return {"form": "container", "image": self.image}
        return {
            "form": "compose",
            "compose_file": self.settings.compose_file,
            "app_service": self.draft.app,
            "images": self.draft.images(),
            "replaced_by_the_restored_database": self.draft.replaced,
        }

    def start(
        self,
        session: RunSession,
        client: docker.DockerClient,
        network: Network,
        database: DatabaseAddress,
        env: Mapping[str, str],
        *,
        uploads_volume: str | None,
    ) -> RunningApp:
        """Start the app on the restored data and wait until it answers HTTP at all."""
        settings = self.settings
        environment = app_environment(
            env, settings.database_env, database, settings.env, uploads_dir=settings.uploads_dir
        )
        if self.project is None:
            assert self.image is not None
            return start_api(
                self.image,
                session,
                network=network,
                env=environment,
                port=settings.port,
                uploads_dir=settings.uploads_dir,
                uploads_volume=uploads_volume,
                timeout=settings.start_timeout,
            )
        overrides = {k: environment[k] for k in (settings.database_env, *settings.env)}
        plan = _plan(settings, self.project.file.parent, network.name, overrides, uploads_volume)
        stack = self.project.stack(plan, session, client)
        return stack.start_ready(settings.start_timeout)


def plan_app(
    settings: AppSettings,
    client: docker.DockerClient,
    session: RunSession,
    *,
    compose_file: Path | None,
    pull: bool,
) -> AppPlan:
    """Settle how the app runs and check that every image it needs is on this machine."""
    if compose_file is None:
        image = settings.image or images.ensure_app_image(client)
        images.require_image(client, image, "the app's image", pull=pull)
        return AppPlan(settings, image=image)
    project = ComposeProject.read(compose_file, session, timeout=settings.start_timeout)
    draft = project.rewrite(_plan(settings, compose_file.parent, "drill", {}, "uploads"), session)
    for service, image in draft.images().items():
        images.require_image(client, image, f"the image of compose service {service}", pull=pull)
    return AppPlan(settings, project=project, draft=draft)


def _plan(
    settings: AppSettings,
    directory: Path,
    network: str,
    env: Mapping[str, str],
    uploads_volume: str | None,
) -> Plan:
    return Plan(
        directory=directory,
        network=network,
        uploads_volume=uploads_volume,
        uploads_dir=settings.uploads_dir,
        app_port=settings.port,
        app_service=settings.service,
        database_service=settings.database_service,
        app_image=settings.image,
        app_env=env,
    )
