"""A worker that stops while runs wait in its cache (a deploy, a scale-down) leaves their coroutines to the garbage
collector, which closes them later, outside their workflow (temporalio/sdk-python#494). The interpreter's cleanups
that await (a for_each's slices cancelled and waited for; a slice's report to its parent) must then do nothing:
awaiting there raised "coroutine ignored GeneratorExit" in whatever test or request ran next, and a command sent
there could reach another workflow's loop. The runs themselves go on from their history on the next worker."""

from __future__ import annotations

import asyncio
import gc
import sys
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import WORKFLOW_NAME, Event, RunInput
from engine.language.validator import validate_playbook_text
from engine.runtime.connect import quiet_runtime
from engine.runtime.workers import build_worker, with_payload_converter
from engine.storage.db import migrate
from engine.testing import scenarios

# 150 items: over 100, so in a slice (a child workflow); every item waits a month
PLAYBOOK = """\
id: slices-waiting
title: Items that wait
trigger: { event: account.signed_up }
steps:
  - id: items
    for_each:
      items: range(150) | list
      as: n
      steps:
        - id: pause
          wait: 30d
  - id: after
    crm: { tag: waited }
"""


async def _eventually(check: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _runs_left_in_a_stopped_workers_cache_are_collected_quietly(tmp_path: Path) -> None:
    checked = validate_playbook_text(PLAYBOOK, "slices-waiting.yaml")
    assert checked.playbook is not None, [p.header() for p in checked.problems]
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    seed(db_url, {"id": "acc-1", "name": "Acme", "owner": "csm-1"}, [], [{"id": "csm-1", "name": "Mia"}])
    queue = f"stop-{uuid.uuid4().hex[:8]}"
    unraisable: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}")
    try:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=scenarios.test_server_path(), runtime=quiet_runtime()
        ) as env:
            client = with_payload_converter(env.client)
            worker = build_worker(client, queue, PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider()).all())
            async with worker:
                run_id = f"slices-waiting/{queue}"
                event = Event("account.signed_up", {}, id="ev-1", account_id="acc-1")
                await client.start_workflow(WORKFLOW_NAME, RunInput(checked.playbook, "acc-1", event), id=run_id,
                                            task_queue=queue)
                slice_ids = [f"{run_id}/steps.0/0"]

                async def slices_waiting() -> bool:
                    for slice_id in slice_ids:
                        try:
                            described = await client.get_workflow_handle(slice_id).describe()
                        except Exception:  # noqa: BLE001 - not started yet
                            return False
                        if described.status != WorkflowExecutionStatus.RUNNING:
                            return False
                    return True

                await _eventually(slices_waiting, "the slice started, its items waiting")
                await asyncio.sleep(0.5)  # the slice's items reach their timers
            del worker
            for _ in range(3):
                gc.collect()
            # the run is still there, waiting, for the next worker
            described = await client.get_workflow_handle(run_id).describe()
            assert described.status == WorkflowExecutionStatus.RUNNING
    finally:
        sys.unraisablehook = hook
    assert unraisable == []


def test_runs_left_in_a_stopped_workers_cache_are_collected_quietly(tmp_path: Path) -> None:
    asyncio.run(_runs_left_in_a_stopped_workers_cache_are_collected_quietly(tmp_path))
