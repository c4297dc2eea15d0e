"""Containers for drills: the engine check, offline images, Postgres and API containers,
networks, labels and the sweep of leftovers.

testcontainers reads its settings when it is first imported, so they are set here, before any
module of this package imports it:

- Ryuk, its reaper, needs an image from a registry; we label and sweep ourselves instead.
- The machines this runs on carry /.dockerenv, so testcontainers would connect through the
  bridge gateway; `docker_host` mode makes it use published ports on the Docker host, i.e.
  127.0.0.1, so test traffic stays on loopback.

Besides: `estate` (the embedded demo "production"), `gpg` (a private gpg home), `facts` (the
run's containers described into a drill record). It may import `drills.record` and
`drills.config` only; it never imports `drills.storage` (a sibling) or anything above it.
"""

import os

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
