"""An answer accepted in the same workflow activation as its timeout counts.

On the real dev server: the worker is stopped while the run waits, the timeout passes (the timer fires on
the server), the CSM's answer is sent, and only then does a worker come back: its first activation holds both the
timer and the answer, and the answer must count. The interpreter takes an answer accepted by then even
when the timeout resolved first (core.wait_until). temporalio 1.35 applies updates before timers within an
activation, so this test passes with either order of resolution; it pins what the CSM sees (an answer
told "recorded" is used), not the SDK's ordering.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateStage

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import (
    DECIDE_UPDATE,
    OUTCOME_UPDATE,
    STATE_QUERY,
    Decision,
    Outcome,
    RunInput,
    RunResult,
    RunState,
)
from engine.language.validator import validate_playbook_text
from engine.runtime.devstack import DevServer
from engine.runtime.workers import build_worker
from engine.storage.db import migrate

PLAYBOOK = """\
id: lost-answer
title: An answer at the timeout's edge
steps:
  - id: ok
    approval:
      approvers: [owner]
      timeout: 3s
      on_timeout: reject
  - id: call
    call_task:
      title: Call them
      wait: true
      timeout: 3s
      outcomes: [reached, unreachable]
"""


def _playbook():  # type: ignore[no-untyped-def]
    checked = validate_playbook_text(PLAYBOOK, "<lost-answer>")
    assert checked.playbook is not None, [p.header() for p in checked.problems]
    return checked.playbook


async def _pending(handle, kind: str) -> str:  # type: ignore[no-untyped-def]
    for _ in range(200):
        state: RunState = await handle.query(STATE_QUERY, result_type=RunState)
        asks = [p for p in state.pending if p.kind == kind]
        if asks:
            return asks[0].id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} became pending")


async def _answer_at_the_timeout(make_worker, handle, kind: str, answer) -> None:  # type: ignore[no-untyped-def]
    """Stops the worker while the run waits, fires the timer, sends the answer, starts a worker again."""
    async with make_worker():
        ask_id = await _pending(handle, kind)
    # no worker now: the timer fires on the server and the answer waits in the same workflow task
    await asyncio.sleep(4)
    name = DECIDE_UPDATE if kind == "approval" else OUTCOME_UPDATE
    if kind == "approval":
        answer.approval_id = ask_id
    else:
        answer.task_id = ask_id
    update = asyncio.create_task(
        handle.start_update(name, answer, wait_for_stage=WorkflowUpdateStage.ACCEPTED, result_type=None)
    )
    await asyncio.sleep(0.5)  # the update request is with the server before any worker polls
    async with make_worker():
        await (await update).result()


def test_an_answer_taken_with_its_timeout_counts() -> None:
    async def scenario() -> None:
        home = Path(tempfile.mkdtemp(prefix="lost-answer-"))
        db_url = f"sqlite:///{home / 'playbook.db'}"
        migrate(db_url)
        seed(
            db_url,
            {"id": "acc-1", "name": "Kraus GmbH", "owner": "csm-1"},
            [],
            [{"id": "csm-1", "name": "Jonas", "email": "jonas@success.example", "languages": ["de"]}],
        )
        try:
            server = DevServer(home / "temporal", port=0, ui_port=0)
            client = await server.start()
            try:
                queue = f"lost-answer-{uuid.uuid4().hex[:8]}"
                activities = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())

                def make_worker():  # type: ignore[no-untyped-def]
                    return build_worker(client, queue, activities.all())

                handle = await client.start_workflow(
                    "PlaybookRun",
                    RunInput(playbook=_playbook(), account_id="acc-1"),
                    id=f"lost-answer/{queue}",
                    task_queue=queue,
                    result_type=RunResult,
                )
                await _answer_at_the_timeout(make_worker, handle, "approval", Decision(decision="approve", by="csm-1"))
                await _answer_at_the_timeout(make_worker, handle, "call_task", Outcome(outcome="reached", by="csm-1"))
                async with make_worker():
                    result: RunResult = await handle.result()
                history = await handle.fetch_history()
            finally:
                server.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)

        # each answer was taken in the workflow task that also saw its timer fire: TIMER_FIRED, then one
        # workflow task (scheduled, started, completed), then the update accepted by that task
        kinds = [e.event_type for e in history.events]
        fired = [i for i, k in enumerate(kinds) if k == EventType.EVENT_TYPE_TIMER_FIRED]
        assert len(fired) == 2
        for i in fired:
            assert kinds[i + 1 : i + 5] == [
                EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
                EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            ], kinds[i : i + 6]
        assert result.outcome == "completed", result.reason
        assert result.steps["ok"]["result"]["decision"] == "approved"
        assert result.steps["call"]["result"]["outcome"] == "reached"

    asyncio.run(scenario())
