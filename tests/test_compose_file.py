"""The rewrite of a restored compose file for a drill: nothing of the host it runs on is
touched (ports, names, networks, volumes, paths, the Docker socket), the database is the
restored one, the uploads are the restored ones, and a file that cannot be drilled says why.

The input is what `docker compose config` prints; compose v1 prints short syntax, v2 long
syntax, and both are fed here.
"""

from __future__ import annotations

import pytest

from drills.runtime.compose_file import UPLOADS, ComposeFileError, Plan, rewrite

LABELS = {"io.recovery-drills.project": "recovery-drills", "io.recovery-drills.run": "r1"}


def plan(tmp_path, **kwargs) -> Plan:
    defaults = {
        "directory": tmp_path,
        "network": "drill-r1-net",
        "labels": LABELS,
        "app_port": 8000,
    }
    return Plan(**{**defaults, "uploads_volume": "drill-r1-uploads", **kwargs})


def production(tmp_path) -> dict:
    """A production compose model, short and long syntax mixed as compose prints them."""
    existing = tmp_path.parent / "host-etc"
    existing.mkdir(exist_ok=True)
    return {
        "version": "3.9",
        "services": {
            "web": {
                "image": "shop/web:1",
                "container_name": "shop-web",
                "build": {"context": "."},
                "ports": [{"target": 8000, "published": 8000}, "127.0.0.1:9000:9000/udp"],
                "volumes": [
                    "/srv/shop/media:/srv/media:rw",
                    f"{tmp_path}/nginx.conf:/etc/nginx.conf:ro",
                    f"{existing}:/etc/host:rw",
                    "/var/run/docker.sock:/var/run/docker.sock",
                ],
                "depends_on": {"db": {"condition": "service_healthy"}},
                "links": ["db:database"],
                "networks": {"front": {"aliases": ["shop"]}, "back": None},
                "environment": {"DATABASE_URL": "postgresql://prod@db/shop", "PRICE": "5$$"},
            },
            "worker": {
                "image": "shop/web:1",
                "command": ["worker"],
                "volumes": [
                    {"type": "bind", "source": "/srv/shop/media", "target": "/srv/media"},
                    {"type": "volume", "source": "cache", "target": "/cache"},
                    "/srv/not-here/anywhere:/data",
                ],
                "network_mode": "host",
                "restart": "unless-stopped",
            },
            "migrate": {"image": "shop/web:1", "command": ["migrate"]},
            "db": {"image": "docker.io/library/postgres:16-alpine", "volumes": ["pgdata:/x"]},
        },
        "volumes": {"cache": {"external": True, "name": "prod_cache"}, "pgdata": {}},
        "networks": {"front": {}, "back": {}},
    }


def test_the_database_is_replaced_and_nothing_refers_to_it(tmp_path):
    drill = rewrite(production(tmp_path), plan(tmp_path))
    assert drill.replaced == ["db"]
    services = drill.model["services"]
    assert "db" not in services
    assert "depends_on" not in services["web"]
    assert "links" not in services["web"]
    assert "pgdata" not in drill.model.get("volumes", {})
    assert any("db: replaced by the restored database" in n for n in drill.notes)


def test_only_loopback_ports_and_only_the_drill_network(tmp_path):
    services = rewrite(production(tmp_path), plan(tmp_path)).model["services"]
    assert services["web"]["ports"] == ["127.0.0.1::8000/tcp", "127.0.0.1::9000/udp"]
    assert services["web"]["networks"] == {"drill": {"aliases": ["shop"]}}
    assert services["worker"]["networks"] == {"drill": None}
    for name in ("container_name", "network_mode", "build"):
        assert all(name not in s for s in services.values())
    model = rewrite(production(tmp_path), plan(tmp_path)).model
    assert model["networks"] == {"drill": {"external": True, "name": "drill-r1-net"}}


def test_uploads_everywhere_are_the_restored_ones_and_production_paths_are_safe(tmp_path):
    drill = rewrite(production(tmp_path), plan(tmp_path, uploads_dir="/srv/media"))
    web = {m["target"]: m for m in drill.model["services"]["web"]["volumes"]}
    worker = {m["target"]: m for m in drill.model["services"]["worker"]["volumes"]}
    assert web["/srv/media"]["source"] == worker["/srv/media"]["source"] == UPLOADS
    assert drill.model["volumes"][UPLOADS] == {"external": True, "name": "drill-r1-uploads"}
    assert web["/etc/nginx.conf"]["source"] == f"{tmp_path}/nginx.conf"  # the restored config
    assert web["/etc/host"]["read_only"] is True  # a host path outside it: read-only
    assert "/var/run/docker.sock" not in web
    assert worker["/data"]["type"] == "volume"  # a host path that does not exist: a volume
    assert worker["/cache"]["source"] == "cache"
    assert drill.model["volumes"]["cache"] == {"labels": LABELS}  # not production's own
    assert any("external volume cache replaced" in n for n in drill.notes)


def test_every_container_and_volume_is_labelled_and_named_by_role(tmp_path):
    drill = rewrite(production(tmp_path), plan(tmp_path, app_port=8000))
    assert drill.app == "web"
    for name, service in drill.model["services"].items():
        assert LABELS.items() <= service["labels"].items()
        role = "api (compose service web)" if name == "web" else f"compose service {name}"
        assert service["labels"]["io.recovery-drills.name"] == role
    for name, volume in drill.model["volumes"].items():
        assert volume.get("external") or LABELS.items() <= volume["labels"].items(), name


def test_the_drill_environment_reaches_every_service_escaped(tmp_path):
    env = {"DATABASE_URL": "postgresql://postgres:pa$s@db:5432/shop"}
    services = rewrite(production(tmp_path), plan(tmp_path, app_env=env)).model["services"]
    for service in services.values():
        assert service["environment"]["DATABASE_URL"] == "postgresql://postgres:pa$$s@db:5432/shop"
    assert services["web"]["environment"]["PRICE"] == "5$$"  # compose's own escaping kept


def test_a_job_may_finish_but_the_app_may_not(tmp_path):
    drill = rewrite(production(tmp_path), plan(tmp_path, app_port=8000))
    assert drill.one_shot("migrate")
    assert not drill.one_shot("worker")  # restarts: a long-running service
    assert not drill.one_shot("web")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"app_service": "api"}, "[app] service is 'api', but the compose file's services"),
        ({"database_service": "pg"}, "[app] database_service is 'pg'"),
        ({"app_port": 1234}, "cannot tell which compose service serves the app on port 1234"),
    ],
)
def test_a_file_that_cannot_be_drilled_says_why(tmp_path, change, words):
    with pytest.raises(ComposeFileError) as caught:
        rewrite(production(tmp_path), plan(tmp_path, **change))
    assert words in str(caught.value)


def test_a_service_built_from_source_needs_an_image(tmp_path):
    model = {"services": {"api": {"build": {"context": "."}, "ports": ["3001:3001"]}}}
    with pytest.raises(ComposeFileError, match="compose service api names no image"):
        rewrite(model, plan(tmp_path))
    drill = rewrite(model, plan(tmp_path, app_image="shop/api:local"))
    assert drill.images() == {"api": "shop/api:local"}
