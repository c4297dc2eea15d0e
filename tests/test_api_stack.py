"""The application under drill: the sample API in one container, and the sample app's own
compose file brought up as a drill brings it, on real Docker.

The compose stack must run on the drill's private network only, publish on 127.0.0.1 only,
carry the run's labels on every container and volume, reach the restored database under
the name its database service had, and leave nothing behind when it is taken down; an
image that is not on the machine is named before anything starts.
"""

from __future__ import annotations

import pytest
import requests

from drills.config.errors import EnvironmentProblem
from drills.config.schema import AppSettings
from drills.runtime import labels
from drills.runtime.api import start_api
from drills.runtime.app import plan_app
from drills.runtime.compose_file import Plan
from drills.runtime.estate import write_config_files
from drills.runtime.stack import ComposeProject


def test_health_follows_the_database(postgres_factory, network, run_session, app_image):
    pg = postgres_factory(network=network, aliases=("db",), dbname="drishti")
    with pg.connect("drishti") as conn:
        conn.execute("CREATE TABLE users (id int)")
        conn.execute("INSERT INTO users VALUES (1), (2), (3)")
    api = start_api(
        app_image,
        run_session,
        network=network,
        env={"DATABASE_URL": f"postgresql://{pg.user}:{pg.password}@db:5432/drishti"},
    )
    try:
        assert api.display == "api"
        assert api.observe().status == "running"
        health = requests.get(api.url("/health"), timeout=10)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert requests.get(api.url("/users/count"), timeout=10).json() == {"count": 3}

        pg.get_wrapped_container().stop(timeout=10)
        down = requests.get(api.url("/health"), timeout=15)
        assert down.status_code == 503
        assert down.json()["reason"].startswith("database:")
    finally:
        api.stop()


def test_the_compose_stack_runs_on_the_drill_network_only_and_leaves_nothing(
    tmp_path, postgres_factory, network, run_session, app_image, docker_client
):
    restored = tmp_path / "restored"
    write_config_files(restored, "production-secret-not-real", app_image)
    pg = postgres_factory(network=network, aliases=("db",), dbname="drishti")
    with pg.connect("drishti") as conn:
        conn.execute("CREATE TABLE users (id int)")
    url = f"postgresql://{pg.user}:{pg.password}@db:5432/drishti"
    project = ComposeProject.read(restored / "docker-compose.yml", run_session)
    plan = Plan(directory=restored, network=network.name, app_env={"DATABASE_URL": url})
    stack = project.stack(plan, run_session, docker_client)
    assert stack.rewritten.replaced == ["db"]
    try:
        stack.start_ready(60)
        health = requests.get(stack.url("/health"), timeout=10)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        [api] = stack.containers().values()
        api.reload()
        assert api.labels[labels.RUN] == run_session.run_id
        assert api.labels[labels.NAME] == "api (compose service api)"
        assert set(api.attrs["NetworkSettings"]["Networks"]) == {network.name}
        bindings = [b for found in api.ports.values() for b in found or []]
        assert bindings
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
        assert all(b["HostPort"] != "3001" for b in bindings)  # never the host's own port
        volumes = docker_client.volumes.list(
            filters={"label": f"{labels.RUN}={run_session.run_id}"}
        )
        assert any(v.name.startswith(project.project) for v in volumes)  # uploads, labelled
        assert [s.status for s in stack.states()] == ["running"]
    finally:
        stack.stop()
    selector = {"label": f"com.docker.compose.project={project.project}"}
    assert docker_client.containers.list(all=True, filters=selector) == []
    assert not [v for v in docker_client.volumes.list() if v.name.startswith(project.project)], (
        "the stack's volumes are removed with it"
    )


def test_a_compose_service_whose_image_is_not_here_is_named_before_anything_starts(
    tmp_path, run_session, app_image, docker_client
):
    restored = tmp_path / "restored"
    write_config_files(restored, "production-secret-not-real", app_image)
    compose = restored / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace(
            "volumes:\n  uploads:", "  cache:\n    image: redis:7-not-here\n\nvolumes:\n  uploads:"
        )
    )
    settings = AppSettings(compose_file="docker-compose.yml")
    with pytest.raises(EnvironmentProblem) as caught:
        plan_app(settings, docker_client, run_session, compose_file=compose, pull=False)
    message = str(caught.value)
    assert "the image of compose service cache redis:7-not-here is not on this machine" in message
    assert "no registry was asked" in message
    assert (
        docker_client.containers.list(
            all=True, filters={"label": f"{labels.RUN}={run_session.run_id}", "name": "cache"}
        )
        == []
    )
