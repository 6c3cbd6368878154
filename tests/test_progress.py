"""The funnel's projection as runs write it (run_progress, run_step_progress): on Temporal's time-skipping server
with the real activities over SQLite, each run's row and step statuses say where the run is and how it ended,
as it moves: finished, waiting, exited, reaching a goal, failed, cancelled, held out, split, continued as new,
re-enrolled under the same workflow id; and a report that cannot be written does not stop the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from activities.types import (
    ApprovalCreated,
    ApprovalRequest,
    CallTaskRequest,
    CallTaskResult,
    Done,
    ProgressReport,
)
from engine.interpreter import core
from engine.interpreter.messages import EVENT_SIGNAL, WORKFLOW_NAME, Carried, Event, RunInput, RunResult
from engine.interpreter.workflow import PlaybookForEachChunk, PlaybookRun
from engine.language.groups import held_out
from engine.language.model import Playbook
from engine.language.validator import validate_playbook_text
from engine.runtime.connect import quiet_runtime
from engine.runtime.workers import DATA_CONVERTER, build_worker, sandbox_runner
from engine.storage import models as t
from engine.storage import progress
from engine.storage.db import migrate, session
from engine.testing import scenarios
from tests.postgres import empty
from tests.split_history import split_after_local_activities

pytestmark = pytest.mark.timeout(60)

# two accounts on either side of progress-groups' 50% control group (the draw is by enrollment key: the account id)
HELD = next(f"acc-{i}" for i in range(100) if held_out("progress-groups", f"acc-{i}", 50))
TREATED = next(f"acc-{i}" for i in range(100) if not held_out("progress-groups", f"acc-{i}", 50))
TEAM = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]

FLOW = """\
id: progress-flow
title: Progress
trigger: { manual: true }
exit_when:
  - { event: account.activated, goal: true }
  - { event: account.churned }
steps:
  - id: welcome
    email: { to: "{{ contact.email }}", subject: Welcome, body: Hello. }
  - id: never
    when: account.plan == "none"
    crm: { tag: never }
  - id: route
    switch:
      - when: account.plan == "pro"
        steps:
          - id: pro_tag
            crm: { tag: pro }
      - else:
          - id: other_tag
            crm: { tag: other }
  - id: pause
    wait_for: { event: usage.reported, timeout: 3d }
  - id: nudge
    email: { to: "{{ contact.email }}", subject: Nudge, body: Still there? }
"""

FAILING = """\
id: progress-failing
title: Fails
trigger: { manual: true }
steps:
  - id: first
    crm: { tag: first }
  - id: broken
    crm: { update: { segment: "{{ account.segment_code }}" } }
  - id: later
    crm: { tag: later }
"""

GROUPS = """\
id: progress-groups
title: Held out and split
trigger: { manual: true }
settings: { control: 50% }
steps:
  - id: test
    split:
      paths:
        - { name: a, weight: 1, steps: [ { id: a_email, email: { to: "{{ contact.email }}", subject: A, body: A. } } ] }
        - { name: b, weight: 1, steps: [ { id: b_email, email: { to: "{{ contact.email }}", subject: B, body: B. } } ] }
  - id: tag
    crm: { tag: done }
"""


def playbook(text: str) -> Playbook:
    checked = validate_playbook_text(text, "<test>")
    assert checked.ok and checked.playbook is not None, [p.header() for p in checked.problems]
    return checked.playbook


@dataclass
class Lab:
    env: WorkflowEnvironment
    queue: str
    db_url: str

    @property
    def client(self) -> Client:
        return self.env.client

    async def start(
        self, pb: Playbook, account: str = "acc-1", workflow_id: str | None = None, carried: Carried | None = None
    ) -> WorkflowHandle[Any, RunResult]:
        return await self.client.start_workflow(
            WORKFLOW_NAME, RunInput(playbook=pb, account_id=account, carried=carried),
            id=workflow_id or f"progress/{uuid.uuid4().hex[:10]}", task_queue=self.queue, result_type=RunResult,
        )

    async def event(self, handle: WorkflowHandle[Any, RunResult], kind: str) -> None:
        await handle.signal(EVENT_SIGNAL, Event(type=kind, id=f"evt-{uuid.uuid4().hex[:8]}", account_id="acc-1"))

    def row(self, run_key: str) -> t.RunProgress | None:
        with session(self.db_url) as s:
            return s.get(t.RunProgress, run_key)

    def rows(self, workflow_id: str) -> list[t.RunProgress]:
        with session(self.db_url) as s:
            query = select(t.RunProgress).where(t.RunProgress.workflow_id == workflow_id)
            return list(s.scalars(query.order_by(t.RunProgress.started_at)))

    def steps(self, run_key: str) -> dict[str, str]:
        with session(self.db_url) as s:
            query = select(t.RunStepProgress).where(t.RunStepProgress.run_key == run_key)
            return {row.step_id: row.status for row in s.scalars(query)}

    async def row_when(self, run_key: str, ok: Callable[[t.RunProgress], bool], timeout: float = 10) -> t.RunProgress:
        """The run's row once ``ok`` holds for it (the run writes it as it moves; time does not skip meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(run_key)
            if row is not None and ok(row):
                return row
            assert time.monotonic() < deadline, f"run_progress of {run_key}: {row and vars(row)}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def lab(tmp_path: Path, activities: list[Any] | None = None) -> AsyncIterator[Lab]:
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    for account_id, plan in (("acc-1", "pro"), ("acc-2", "basic"), (HELD, "basic"), (TREATED, "basic")):
        account = {"id": account_id, "name": "Kraus GmbH", "plan": plan, "owner": "csm-1"}
        seed(db_url, account, [{"email": f"anna@{account_id}.example", "first_name": "Anna"}], TEAM)
    acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=scenarios.test_server_path(), runtime=quiet_runtime()
    ) as env:
        queue = f"progress-{uuid.uuid4().hex[:8]}"
        async with build_worker(env.client, queue, activities if activities is not None else acts.all()):
            yield Lab(env, queue, db_url)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def replays(*handles: WorkflowHandle[Any, Any]) -> None:
    """The runs' histories, reports and all, replay on the same code (the reports are deterministic), also as a
    worker may have written them: each local activity's result in one workflow task, its use in the next
    (tests/split_history.py)."""
    replayer = Replayer(
        workflows=[PlaybookRun, PlaybookForEachChunk], workflow_runner=sandbox_runner(), data_converter=DATA_CONVERTER
    )
    for handle in handles:
        written = await handle.fetch_history()
        split, _ = split_after_local_activities(written)
        for history in (written, split):
            result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
            assert result.replay_failure is None, result.replay_failure


# ------------------------------------------------------------------ runs as they move


def test_a_finished_run_has_every_step_status_and_its_end(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            handle = await world.start(playbook(FLOW))
            result = await handle.result()  # time skips: the wait_for times out after 3 days
            assert result.outcome == "completed"
            key = handle.first_execution_run_id
            assert key is not None
            row = world.row(key)
            assert row is not None
            assert (row.status, row.reason, row.exit_event, row.current) == ("completed", "", None, [])
            assert (row.playbook_id, row.version, row.account_id, row.workflow_id) == (
                "progress-flow", playbook(FLOW).version, "acc-1", handle.id,
            )
            assert row.ended_at is not None and (row.ended_at - row.started_at).days == 3
            assert world.steps(key) == {
                "welcome": "done", "never": "skipped", "route": "done", "pro_tag": "done", "other_tag": "not_run",
                "pause": "done", "nudge": "done",
            }
            assert world.steps(key) == {k: v["status"] for k, v in result.steps.items()}

    run(scenario())


def test_a_waiting_run_is_where_it_waits_then_reaches_its_goal_or_exits(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            pb = playbook(FLOW)
            goal, exits = await world.start(pb), await world.start(pb, "acc-2")
            for handle in (goal, exits):
                key = handle.first_execution_run_id
                assert key is not None
                row = await world.row_when(key, lambda r: r.current == ["pause"])
                assert (row.status, row.ended_at) == ("running", None)
                assert world.steps(key)["welcome"] == "done" and "pause" not in world.steps(key)
            await world.event(goal, "account.activated")
            await world.event(exits, "account.churned")
            assert (await goal.result()).outcome == "goal"
            assert (await exits.result()).outcome == "exited"
            for handle, status, event in ((goal, "goal", "account.activated"), (exits, "exited", "account.churned")):
                key = handle.first_execution_run_id
                assert key is not None
                row = world.row(key)
                assert row is not None
                assert (row.status, row.exit_event, row.current, row.reason) == (status, event, [], "")
                assert row.ended_at is not None and row.ended_at >= row.started_at
                assert "pause" not in world.steps(key) and "nudge" not in world.steps(key)
            await replays(goal, exits)

    run(scenario())


def test_a_failed_step_gives_the_reason_and_a_cancelled_run_says_so(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            failing = await world.start(playbook(FAILING))
            with pytest.raises(WorkflowFailureError):
                await failing.result()
            key = failing.first_execution_run_id
            assert key is not None
            row = world.row(key)
            assert row is not None and row.status == "failed" and row.ended_at is not None
            assert "step broken failed" in row.reason and "segment_code" in row.reason, row.reason
            assert world.steps(key) == {"first": "done", "broken": "failed"}

            waiting = await world.start(playbook(FLOW))
            key = waiting.first_execution_run_id
            assert key is not None
            await world.row_when(key, lambda r: r.current == ["pause"])
            await waiting.cancel()
            with pytest.raises(WorkflowFailureError):
                await waiting.result()
            row = world.row(key)
            assert row is not None
            assert (row.status, row.current, row.exit_event) == ("cancelled", [], None) and row.ended_at is not None
            await replays(failing, waiting)

    run(scenario())


ASKING = """\
id: progress-asking
title: Waits for a call and an approval at once
trigger: { manual: true }
steps:
  - id: both
    parallel:
      - steps:
          - id: call
            call_task: { assignee: owner, title: Call them, wait: true, timeout: 5d, outcomes: [reached] }
      - steps:
          - id: ok
            approval: { approvers: [owner], message: Go on?, timeout: 5d }
"""


def test_a_cancelled_run_closes_its_open_call_task_and_approval(tmp_path):
    """A cancel request (the API, the Web UI, `playbook runs cancel`) takes the run's open call task and approval
    out of the inbox as cancelled, as an exit does; the run's row says cancelled."""

    async def scenario() -> None:
        async with lab(tmp_path) as world:
            handle = await world.start(playbook(ASKING))
            key = handle.first_execution_run_id
            assert key is not None
            await world.row_when(key, lambda r: {"call", "ok"} <= set(r.current))
            with session(world.db_url) as s:
                assert [x.status for x in s.scalars(select(t.CallTask))] == ["open"]
                assert [x.status for x in s.scalars(select(t.Approval))] == ["pending"]
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            with session(world.db_url) as s:
                assert [x.status for x in s.scalars(select(t.CallTask))] == ["cancelled"]
                assert [x.status for x in s.scalars(select(t.Approval))] == ["cancelled"]
            row = world.row(key)
            assert row is not None and row.status == "cancelled"
            await replays(handle)

    run(scenario())


class HeldCreations:
    """The real create_call_task and create_approval, held at their start until released: a run can be stopped
    while they run. Each still writes its row when released, as an activity the run no longer waits for does."""

    def __init__(self, db_url: str) -> None:
        self.acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def all(self) -> list[Any]:
        held = {"create_call_task": self.create_call_task, "create_approval": self.create_approval}
        return [held.get(activity._Definition.must_from_callable(a).name, a) for a in self.acts.all()]

    def hold(self) -> None:
        self.started.release()
        assert self.release.wait(20)

    @activity.defn(name="create_call_task")
    def create_call_task(self, req: CallTaskRequest) -> CallTaskResult:
        self.hold()
        return self.acts.create_call_task(req)

    @activity.defn(name="create_approval")
    def create_approval(self, req: ApprovalRequest) -> ApprovalCreated:
        self.hold()
        return self.acts.create_approval(req)

    async def have_started(self, count: int) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.started.acquire, True, 10)


async def handled(handle: WorkflowHandle[Any, Any], event_type: EventType.ValueType) -> None:
    """Until the run's worker has completed a workflow task after the latest event of this type."""
    deadline = time.monotonic() + 10
    while True:
        kinds = [e.event_type for e in (await handle.fetch_history()).events]
        if event_type in kinds and EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds[
            len(kinds) - kinds[::-1].index(event_type):
        ]:
            return
        assert time.monotonic() < deadline, f"no workflow task completed after {event_type}"
        await asyncio.sleep(0.05)


EXITING_ASKS = ASKING.replace("id: progress-asking", "id: progress-exiting-asks").replace(
    "trigger: { manual: true }", "trigger: { manual: true }\nexit_when:\n  - { event: account.churned }"
)


@pytest.mark.parametrize("stop", ["cancel", "exit"])
def test_a_run_stopped_while_its_call_task_and_approval_are_being_created_closes_them(tmp_path, stop):
    """The run is cancelled, or an exit event comes, while the activities creating its call task and approval still
    run: they finish (the rows are written), and the run closes both as cancelled before it ends; neither stays in
    the inbox. Before, the creations were cancelled with the run and the rows they wrote stayed open."""

    async def scenario() -> None:
        held = HeldCreations(f"sqlite:///{tmp_path / 'playbook.db'}")
        async with lab(tmp_path, held.all()) as world:
            handle = await world.start(playbook(ASKING if stop == "cancel" else EXITING_ASKS))
            await held.have_started(2)
            if stop == "cancel":
                await handle.cancel()
                await handled(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
            else:
                await world.event(handle, "account.churned")
                await handled(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
            with session(world.db_url) as s:  # nothing written yet: both creations are held
                assert s.scalars(select(t.CallTask)).all() == [] and s.scalars(select(t.Approval)).all() == []
            held.release.set()
            if stop == "cancel":
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
            else:
                assert (await handle.result()).outcome == "exited"
            with session(world.db_url) as s:
                assert [x.status for x in s.scalars(select(t.CallTask))] == ["cancelled"]
                assert [x.status for x in s.scalars(select(t.Approval))] == ["cancelled"]
            key = handle.first_execution_run_id
            assert key is not None
            row = world.row(key)
            assert row is not None and row.status == ("cancelled" if stop == "cancel" else "exited")
            await replays(handle)

    run(scenario())


SLICED_ASKS = """\
id: progress-sliced-asks
title: An approval per item, in a slice
trigger: { manual: true }
exit_when:
  - { event: account.churned }
steps:
  - id: items
    for_each:
      items: range(120) | list
      as: n
      concurrency: 120
      steps:
        - id: ok
          approval: { approvers: [owner], message: "Go on with {{ n }}?", timeout: 5d }
"""


def test_an_exit_while_a_slices_approvals_are_being_created_closes_every_one(tmp_path):
    """120 items run in a slice (a child workflow); the exit comes while their creations run (the worker's 50
    activity threads held, the rest queued). The slice lets every creation finish, then closes them all: no
    approval is left pending, whichever moment its creation had reached."""

    async def scenario() -> None:
        held = HeldCreations(f"sqlite:///{tmp_path / 'playbook.db'}")
        async with lab(tmp_path, held.all()) as world:
            handle = await world.start(playbook(SLICED_ASKS))
            await held.have_started(50)
            await world.event(handle, "account.churned")
            await handled(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
            held.release.set()
            result = await handle.result()
            assert result.outcome == "exited"
            with session(world.db_url) as s:
                statuses = Counter(x.status for x in s.scalars(select(t.Approval)))
            assert set(statuses) == {"cancelled"} and statuses["cancelled"] >= 50, statuses
            await replays(handle)

    run(scenario())


def test_held_out_and_treated_runs_and_the_paths_they_took(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            pb = playbook(GROUPS)
            runs = {account: await world.start(pb, account) for account in (HELD, TREATED)}
            for account, handle in runs.items():
                result = await handle.result()
                key = handle.first_execution_run_id
                assert key is not None
                row = world.row(key)
                assert row is not None and row.status == "completed"
                assert row.control is (account == HELD) is result.control
                path = result.steps["test"]["result"]["path"]
                assert row.paths == {"test": path}
                other = "b" if path == "a" else "a"
                steps = world.steps(key)
                assert steps[f"{other}_email"] == "not_run" and steps["test"] == "done"
                assert steps[f"{path}_email"] == ("skipped" if row.control else "done")

    run(scenario())


LARGE = """\
id: progress-large
title: A for_each in slices
trigger: { manual: true }
steps:
  - id: many
    for_each:
      items: range(150) | list
      as: n
      steps:
        - id: item_wait
          wait: 1d
        - id: item_tag
          when: n == 0
          crm: { tag: first-item }
  - id: after
    crm: { tag: after }
"""


def test_a_for_each_in_slices_is_the_parents_to_report(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            handle = await world.start(playbook(LARGE))
            key = handle.first_execution_run_id
            assert key is not None
            row = await world.row_when(key, lambda r: r.current == ["many"])  # the parent waits for its slices
            assert row.status == "running"
            assert (await handle.result()).outcome == "completed"
            with session(world.db_url) as s:
                assert [r.run_key for r in s.scalars(select(t.RunProgress))] == [key], "the slices write no row"
            assert world.steps(key) == {"many": "done", "after": "done"}  # an item's steps are its own

    run(scenario())


# ------------------------------------------------------------------ chains and enrollments


def test_a_run_continued_as_new_keeps_one_row_and_its_statuses(tmp_path, monkeypatch):
    # a short history budget, so the waiting step rolls over after a few events (core is shared with the sandbox)
    monkeypatch.setattr(core, "HISTORY_EVENTS_BUDGET", 40)

    async def scenario() -> None:
        async with lab(tmp_path) as world:
            handle = await world.start(playbook(FLOW))
            key = handle.first_execution_run_id
            assert key is not None
            await world.row_when(key, lambda r: r.current == ["pause"])
            deadline = time.monotonic() + 15
            while (await handle.describe()).run_id == key:  # noise until the chain continues as new
                assert time.monotonic() < deadline, "no continue-as-new"
                await world.event(handle, "noise")
                await asyncio.sleep(0.05)
            await world.event(handle, "usage.reported")
            assert (await handle.result()).outcome == "completed"
            rows = world.rows(handle.id)
            assert [r.run_key for r in rows] == [key]
            assert rows[0].status == "completed" and rows[0].seq >= 2
            first = world.client.get_workflow_handle(handle.id, run_id=key)
            await replays(first, handle)  # the run that continued as new, and the one that ended
            assert world.steps(key) == {
                "welcome": "done", "never": "skipped", "route": "done", "pro_tag": "done", "other_tag": "not_run",
                "pause": "done", "nudge": "done",
            }

    run(scenario())


def test_a_chain_begun_before_runs_reported_writes_everything_at_its_first_report(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            pb = playbook(FLOW)
            done = {"status": "done", "result": {}}
            # what a run of the code before this change carries into its next run: no run_key, nothing reported
            carried = Carried(
                next_step=3, since=0, account={"id": "acc-1", "plan": "pro", "owner": None},
                contacts=[{"email": "anna@acc-1.example"}], event=None, timezone="UTC", vars={},
                steps={"welcome": done, "route": done, "pro_tag": done},
                statuses={"welcome": done, "never": {"status": "skipped", "result": {}}, "route": done,
                          "pro_tag": done, "other_tag": {"status": "not_run", "result": {}}},
                timeline=[], timeline_dropped=0, deadlines={}, seq=0, events=[], started_at="2026-03-02T09:00:00+00:00",
            )
            handle = await world.start(pb, carried=carried)
            key = handle.first_execution_run_id
            assert key is not None
            row = await world.row_when(key, lambda r: r.current == ["pause"])
            assert row.started_at.replace(tzinfo=UTC) == datetime(2026, 3, 2, 9, tzinfo=UTC)
            assert world.steps(key) == {
                "welcome": "done", "never": "skipped", "route": "done", "pro_tag": "done", "other_tag": "not_run",
            }
            await world.event(handle, "usage.reported")
            assert (await handle.result()).outcome == "completed"
            assert [r.status for r in world.rows(handle.id)] == ["completed"]
            assert world.steps(key)["nudge"] == "done"

    run(scenario())


def test_a_reenrollment_under_the_same_workflow_id_is_a_second_row(tmp_path):
    async def scenario() -> None:
        async with lab(tmp_path) as world:
            pb = playbook(FLOW)
            workflow_id = f"progress-flow/acc-1/{uuid.uuid4().hex[:6]}"
            first = await world.start(pb, workflow_id=workflow_id)
            await world.row_when(first.first_execution_run_id or "", lambda r: r.current == ["pause"])
            await world.event(first, "account.churned")
            assert (await first.result()).outcome == "exited"
            second = await world.start(pb, workflow_id=workflow_id)  # reenroll: after_exit, as the intake does
            await world.row_when(second.first_execution_run_id or "", lambda r: r.current == ["pause"])
            rows = world.rows(workflow_id)
            assert [r.run_key for r in rows] == [first.first_execution_run_id, second.first_execution_run_id]
            assert [r.status for r in rows] == ["exited", "running"]
            await world.event(second, "account.activated")
            assert (await second.result()).outcome == "goal"
            assert [r.status for r in world.rows(workflow_id)] == ["exited", "goal"]

    run(scenario())


# ------------------------------------------------------------------ reports that cannot be written


class DownDatabase:
    """record_progress as it answers when the database is down for good (the retries are the policy's; the
    answer here is final, so the test does not wait them out)."""

    @activity.defn(name="record_progress")
    def record_progress(self, req: ProgressReport) -> Done:
        raise ApplicationError("database is down", non_retryable=True)


def test_a_report_that_cannot_be_written_does_not_stop_the_run(tmp_path):
    async def scenario() -> None:
        db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
        acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
        others = [a for a in acts.all() if a.__name__ != "record_progress"]
        async with lab(tmp_path, [*others, DownDatabase().record_progress]) as world:
            handle = await world.start(playbook(FLOW))
            assert (await handle.result()).outcome == "completed"
            row = world.row(handle.first_execution_run_id or "")
            assert row is not None and row.status == "running", "registered by load_account, never reported"

    run(scenario())


# ------------------------------------------------------------------ the write side alone


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return empty(request.getfixturevalue("postgres"))
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    return db_url


def test_an_older_report_changes_nothing_and_a_missing_row_is_inserted(database):
    db_url = database

    def report(seq: int, status: str, steps: dict[str, str]) -> ProgressReport:
        return ProgressReport(
            run_key="r1", workflow_id="w1", playbook_id="p", version="v1", account_id="acc-1",
            at=f"2026-03-0{seq}T09:00:00+01:00", seq=seq, status=status, steps=steps,
            started_at="2026-03-01T08:00:00+00:00",
        )

    with session(db_url) as s:
        assert progress.apply(s, report(2, "running", {"a": "done", "b": "skipped"}))  # no row yet: inserted
    with session(db_url) as s:
        assert progress.apply(s, report(3, "completed", {"c": "done"}))
        assert not progress.apply(s, report(2, "running", {"a": "failed"}))  # late: nothing changes
        assert not progress.apply(s, report(3, "completed", {"c": "done"}))  # a retry: nothing changes
        progress.register(s, "r1", "w1", "p", "v1", "acc-1", datetime(2026, 3, 9, tzinfo=UTC))  # already there
    with session(db_url) as s:
        row = s.get(t.RunProgress, "r1")
        assert row is not None and (row.status, row.seq) == ("completed", 3)
        assert row.started_at.replace(tzinfo=UTC) == datetime(2026, 3, 1, 8, tzinfo=UTC)
        assert row.ended_at is not None
        assert row.ended_at.replace(tzinfo=UTC) == datetime(2026, 3, 3, 8, tzinfo=UTC)  # stored in UTC
    with session(db_url) as s:  # a run reset to an earlier point numbers its reports from there, on a later clock
        later = dataclasses.replace(report(2, "running", {"c": "failed"}), at="2026-03-04T09:00:00+00:00")
        assert progress.apply(s, later)
    with session(db_url) as s:
        row = s.get(t.RunProgress, "r1")
        assert row is not None and (row.status, row.seq, row.ended_at) == ("running", 2, None)
        steps = {r.step_id: r.status for r in s.scalars(select(t.RunStepProgress))}
        assert steps == {"a": "done", "b": "skipped", "c": "failed"}
