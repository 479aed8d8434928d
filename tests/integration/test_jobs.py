"""A job on real engines (issue 21, item 5): a compose service others wait for with condition
service_completed_successfully runs to completion once per change, its dependants start after it is
done, it is never run again while its spec stays, and a failing one fails the sync saying so."""

from __future__ import annotations

import pytest

from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

COMPOSE = """\
services:
  migrate:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "sleep 2; echo SCHEMA > /data/schema"]
    volumes: [data:/data]
    deploy: {placement: {constraints: ["node.labels.role == db"]}}
  app:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "cat /data/schema > /tmp/seen; trap 'exit 0' TERM; sleep 3600 & wait"]
    volumes: ["data:/data:ro"]
    depends_on:
      migrate: {condition: service_completed_successfully}
    deploy: {placement: {constraints: ["node.labels.role == db"]}}
volumes:
  data: {}
"""


def test_a_job_runs_to_completion_before_its_dependants_once_per_change_and_a_failing_one_fails_the_sync(fleet: Fleet) -> None:
    fleet.repo.write("shop/compose.yaml", COMPOSE.replace("SCHEMA", "v1"))
    fleet.repo.commit("a migration, and the app after it")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    api = fleet.clients["h3"]
    job = api.inspect_container(f"{fleet.agent}_migrate-0")
    assert job["State"]["Status"] == "exited" and job["State"]["ExitCode"] == 0
    ex = api.exec_create(f"{fleet.agent}_app-0", ["cat", "/tmp/seen"])
    assert api.exec_start(ex["Id"]).decode() == "v1\n"  # the app started after the job was done
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "= migrate: 1/1 replicas up to date" in r.out, r.out  # done: not run again
    started = job["State"]["StartedAt"]

    fleet.repo.write("shop/compose.yaml", COMPOSE.replace("SCHEMA", "v1").replace("sleep 2; echo v1 > /data/schema", "exit 3"))
    fleet.repo.commit("a migration that fails")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code != 0 and "job replica 0 exited with code 3" in r.out + r.err, r.out + r.err
    assert api.inspect_container(f"{fleet.agent}_migrate-0")["State"]["StartedAt"] != started
