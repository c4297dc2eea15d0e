"""Both Postgres majors the offline builder supports build and run."""

from __future__ import annotations

import pytest

from drills.runtime import images


@pytest.mark.slow
@pytest.mark.parametrize("major", images.SUPPORTED_MAJORS)
def test_each_supported_major_builds_and_runs(major, docker_client, postgres_factory):
    tag = images.ensure_postgres_image(docker_client, major)
    image = docker_client.images.get(tag)
    if tag.startswith(images.POSTGRES_REPO):
        assert image.labels[images.LABEL_PG_MAJOR] == str(major)
        assert image.labels[images.LABEL_BUILDER].startswith("recovery-drills")
    pg = postgres_factory(image=tag)
    assert pg.server_version().split(".")[0] == str(major)
    # The restore tools inside the image are of the server's own major.
    result = pg.run(["pg_restore", "--version"])
    assert f"pg_restore (PostgreSQL) {major}." in result.stdout.decode()


def test_unsupported_major_is_an_environment_error(docker_client):
    with pytest.raises(images.EnvironmentProblem, match="no image for PostgreSQL 9"):
        images.ensure_postgres_image(docker_client, 9)
