"""Crash tests against the REAL Temporal dev server (`temporal server start-dev`, SQLite file), not the
time-skipping test server: workers are `python worker.py` processes killed with SIGKILL, and the dev server
itself is stopped and restarted on the same --db-filename. Emails go through the SendGrid provider to a
fake SendGrid on 127.0.0.1, so what reached "the provider" can be counted next to the outbox.

Waits are seconds long because the dev server runs in real time. What the timings come from:

* An activity whose worker died is retried when its 10 s heartbeat timeout expires (HEARTBEAT_TIMEOUT in
  engine/interpreter/core.py: a live worker beats for every running activity), then after the step's retry
  interval: about 11 s in the in-flight test, not the 30 s start-to-close timeout.
* A workflow task queued for the dead worker's sticky queue waits out the sticky schedule-to-start timeout
  (10 s, the SDK default) before the new worker gets it: runs resume about 10 s after a worker's crash.

With `pytest -s` each test prints what it observed (OBSERVED ...): requests the fake received and accepted,
rows, and the time from the crash or restart to the runs resuming and completing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from engine.interpreter.messages import OUTCOME_UPDATE, STATE_QUERY, Outcome, RunState
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.runs import start_run
from tests.durability_helpers import (
    Workers,
    call_tasks,
    eventually,
    history_facts,
    outbox,
    provider_accepted_ids,
    provider_message_ids,
    seed_accounts,
    worker_env,
    write_playbook,
)
from tests.fakes import FakeSendGrid

pytestmark = pytest.mark.timeout(180)

# What each test observed; printed at its end (pytest -s shows them).
OBSERVED: dict[str, dict[str, Any]] = {}


@dataclass
class Stack:
    home: Path
    library: Path
    db_url: str
    server: DevServer
    fake: FakeSendGrid
    workers: Workers
    task_queue: str

    async def client(self) -> Client:
        return await Client.connect(self.server.address, runtime=quiet_runtime())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    server = DevServer(tmp_path / "temporal", port=0, ui_port=0)
    fake = FakeSendGrid().start()
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    library = tmp_path / "library"
    library.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    task_queue = f"durability-{tmp_path.name}"
    workers: Workers | None = None
    try:
        asyncio.run(server.start())  # first: the server's free port is chosen as it starts
        env = worker_env(
            address=server.address, db_url=db_url, library=library, task_queue=task_queue, home=tmp_path / "home",
            sendgrid_url=fake.url,
        )
        workers = Workers(env, logs)
        yield Stack(tmp_path, library, db_url, server, fake, workers, task_queue)
    finally:
        if workers is not None:
            workers.kill_all()
        server.stop(kill=True)
        fake.stop()


# email → email. Every step retries after 1 s (not 10 s) so the test measures the engine, not the backoff.
IN_FLIGHT = """\
id: in-flight
title: Two emails, the first one in flight when the worker dies
steps:
  - id: first
    retry: { initial_interval: 1s, max_attempts: 5 }
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ account.name }}"
      body: "Hi {{ contact.first_name }}, welcome."
  - id: second
    retry: { initial_interval: 1s, max_attempts: 5 }
    email:
      to: "{{ contact.email }}"
      subject: "Getting started"
      body: "Hi {{ contact.first_name }}, here is how to start."
"""

# email → wait 3s → email → call_task (waits for an outcome, as long as the account's call_wait) → email
WAITS = """\
id: waits
title: Waits a worker can die in
steps:
  - id: welcome
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ account.name }}"
      body: "Hi {{ contact.first_name }}."
  - wait: 3s
  - id: follow_up
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "How is it going?"
      body: "Hi {{ contact.first_name }}, three seconds later."
  - id: call
    retry: { initial_interval: 1s }
    call_task:
      title: "Call {{ account.name }}"
      wait: true
      timeout: "{{ account.call_wait }}"
      outcomes: [reached, no_answer]
  - id: final
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "Thanks ({{ steps.call.outcome }})"
      body: "Hi {{ contact.first_name }}, that was the call."
"""

# email → wait 3s → email → call_task → email
SERVER_RESTART = """\
id: server-restart
title: Waits the Temporal server is restarted in
steps:
  - id: welcome
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ account.name }}"
      body: "Hi {{ contact.first_name }}."
  - wait: 3s
  - id: follow_up
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "Three seconds later"
      body: "Hi {{ contact.first_name }}."
  - id: call
    retry: { initial_interval: 1s }
    call_task:
      title: "Call {{ account.name }}"
  - id: final
    retry: { initial_interval: 1s }
    email:
      to: "{{ contact.email }}"
      subject: "Bye"
      body: "Hi {{ contact.first_name }}."
"""


def _sent_steps(db_url: str, step_id: str) -> int:
    return sum(1 for r in outbox(db_url).rows if r.step_id == step_id and r.status == "sent")


def _assert_every_email_once(stack: Stack, handles: list[WorkflowHandle[Any, Any]], steps: list[str]) -> None:
    box = outbox(stack.db_url)
    assert box.duplicate_keys() == []
    per_run = box.by_workflow()
    assert set(per_run) == {h.id for h in handles}
    for h in handles:
        rows = per_run[h.id]
        assert sorted(r.step_id for r in rows) == sorted(steps), h.id
        assert {r.status for r in rows} == {"sent"}, [(r.step_id, r.status) for r in rows]
        assert len({r.message_id for r in rows}) == len(steps)


async def _all_waiting(handles: list[WorkflowHandle[Any, Any]], kind: str, timeout: float = 30) -> None:
    """Until every run says (state query) it waits in a step of this kind: the effects before it are
    recorded in Temporal, not only in our tables (a row can be committed before its activity completes)."""

    async def waiting(handle: WorkflowHandle[Any, Any]) -> bool:
        state: RunState = await handle.query(STATE_QUERY, result_type=RunState)
        if kind == "call_task":
            return any(p.kind == "call_task" for p in state.pending)
        last = state.timeline[-1] if state.timeline else None
        return last is not None and last.kind == kind and last.status == "waiting"

    deadline = time.monotonic() + timeout
    while not all(await asyncio.gather(*(waiting(h) for h in handles))):
        assert time.monotonic() < deadline, f"not every run waits in a {kind} step after {timeout}s"
        await asyncio.sleep(0.1)


async def _results(handles: list[WorkflowHandle[Any, Any]], timeout: float) -> list[dict[str, Any]]:
    return await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout)


# 1 ------------------------------------------------------------------------------------------------


def test_worker_killed_while_send_email_is_in_flight(stack: Stack) -> None:
    """SIGKILL while SendGrid (the fake) holds the send_email request; a new worker finishes the runs.

    The outbox ends with each email once, 'sent'. The provider got the in-flight emails twice and accepted
    both: the window named in send_email (activities/playbook_activities.py) between the provider
    accepting and the row saying 'sent'. SendGrid's v3 mail/send has no idempotency key to close it.
    """
    asyncio.run(_in_flight(stack))


async def _in_flight(stack: Stack) -> None:
    playbook = write_playbook(stack.library, "in-flight", IN_FLIGHT)
    accounts = seed_accounts(stack.db_url, 3)
    client = await stack.client()
    first = stack.workers.start()
    await first.wait_ready()

    # The first email of each of the 3 runs reaches the fake, which answers only after 10 s.
    stack.fake.delay_next(10.0, count=3, method="POST", path="/v3/mail/send")
    handles = [await start_run(client, stack.task_queue, playbook, a) for a in accounts]
    await eventually(lambda: len(stack.fake.requests) >= 3, 20, what="3 send requests in flight")

    # Before the provider answers, the outbox rows are already committed as 'sending'.
    in_flight_rows = outbox(stack.db_url).rows
    assert [(r.step_id, r.status) for r in in_flight_rows] == [("first", "sending")] * 3
    in_flight_ids = {r.message_id for r in in_flight_rows}

    first.kill()
    killed_at = time.monotonic()
    assert stack.fake.sent == []  # the fake has not answered yet: the kill is inside the delay

    second = stack.workers.start()
    second_ready = await second.wait_ready()
    # The delayed answers go to dead sockets; the fake still accepts the mails, as SendGrid would once it
    # has the whole request.
    await eventually(lambda: len(stack.fake.sent) >= 3, 30, what="the delayed requests to be answered")
    assert [r.status for r in outbox(stack.db_url).rows] == ["sending"] * 3  # accepted, but the row can't know

    # Meanwhile Temporal still thinks the dead worker's attempts are running: the step stays current.
    query_started = time.monotonic()
    state: RunState = await handles[0].query(STATE_QUERY, result_type=RunState)
    query_took = time.monotonic() - query_started
    assert state.current == ["first"]

    retried_at = await eventually(
        lambda: all(provider_message_ids(stack.fake)[m] >= 2 for m in in_flight_ids), 90, what="the retries"
    )
    results = await _results(handles, 30)
    completed_at = time.monotonic()
    assert [r["outcome"] for r in results] == ["completed"] * 3

    # The outbox: every email exactly once, 'sent'.
    _assert_every_email_once(stack, handles, ["first", "second"])

    # Why the retry came when it did: attempt 2 of send_email, after attempt 1 stopped heartbeating (10 s).
    facts = [await history_facts(h) for h in handles]
    assert all(f["activity_retries"] == [(2, "TIMEOUT_TYPE_HEARTBEAT")] for f in facts), facts

    # The provider: the in-flight emails arrived twice and were accepted twice; the others once.
    requests = provider_message_ids(stack.fake)
    accepted = provider_accepted_ids(stack.fake)
    second_ids = {r.message_id for r in outbox(stack.db_url).rows if r.step_id == "second"}
    assert {m: requests[m] for m in in_flight_ids} == {m: 2 for m in in_flight_ids}
    assert {m: accepted[m] for m in in_flight_ids} == {m: 2 for m in in_flight_ids}  # KNOWN WINDOW: delivered twice
    assert {m: requests[m] for m in second_ids} == {m: 1 for m in second_ids}
    assert {m: accepted[m] for m in second_ids} == {m: 1 for m in second_ids}

    OBSERVED["in_flight"] = {
        "runs": len(handles),
        "outbox_rows": len(outbox(stack.db_url).rows),
        "provider_requests": sum(requests.values()),
        "provider_accepted": sum(accepted.values()),
        "accepted_per_in_flight_message": sorted(accepted[m] for m in in_flight_ids),
        "new_worker_ready_s": round(second_ready, 2),
        "state_query_while_dead_s": round(query_took, 2),
        "kill_to_retry_s": round(retried_at - killed_at, 2),
        "kill_to_all_completed_s": round(completed_at - killed_at, 2),
        "history": facts[0],
    }
    print("\nOBSERVED in_flight", OBSERVED["in_flight"])


# 2 ------------------------------------------------------------------------------------------------


def test_worker_killed_while_runs_wait_then_restarted(stack: Stack) -> None:
    """20 runs; SIGKILL while 10 wait for a call outcome and 10 sleep in `wait: 3s`; a new worker finishes all.

    Group A (10 runs) is in its call_task wait when the worker dies; nobody answers, so the 6 s timeout
    fires after the crash and the new worker closes the tasks as timed out. Group B (10 runs) is in
    `wait: 3s`; after the restart its calls are answered through the record_outcome update.
    """
    asyncio.run(_waiting(stack))


async def _waiting(stack: Stack) -> None:
    playbook = write_playbook(stack.library, "waits", WAITS)
    # Group A's calls time out after 6 s; group B's are answered, so they may wait long (60 s).
    accounts = seed_accounts(stack.db_url, 10, call_wait="6s")
    accounts += seed_accounts(stack.db_url, 10, first=10, call_wait="60s")
    client = await stack.client()
    w1 = stack.workers.start()
    await w1.wait_ready()

    group_a = [await start_run(client, stack.task_queue, playbook, a) for a in accounts[:10]]
    await _all_waiting(group_a, "call_task")
    group_b = [await start_run(client, stack.task_queue, playbook, a) for a in accounts[10:]]
    await _all_waiting(group_b, "wait")
    handles = group_a + group_b

    w1.kill()
    killed_at = time.monotonic()
    # Nothing was in flight: 10 + 10 welcomes and 10 follow-ups, each asked and accepted once.
    assert len(stack.fake.requests) == 30 and len(stack.fake.sent) == 30
    assert _sent_steps(stack.db_url, "follow_up") == 10 and _sent_steps(stack.db_url, "final") == 0

    w2 = stack.workers.start()
    w2_ready = await w2.wait_ready()

    # Group B: answer each call as soon as the run waits for it (then the runs are on the new worker).
    # Not as soon as the task's row exists: the row is written by the activity, and until the workflow
    # has the activity's result the update's validator answers "no tasks are waiting for step 'call'".
    async def answer(handle: WorkflowHandle[Any, Any]) -> float:
        await _all_waiting([handle], "call_task", timeout=60)
        await handle.execute_update(
            OUTCOME_UPDATE, Outcome(outcome="reached", by="csm-1", step_id="call"), result_type=str
        )
        return time.monotonic()

    answered_at = await asyncio.gather(*(answer(h) for h in group_b))
    results = await _results(handles, 60)
    completed_at = time.monotonic()
    assert [r["outcome"] for r in results] == ["completed"] * 20
    outcomes = [r["steps"]["call"]["result"]["outcome"] for r in results]
    assert outcomes == ["timed_out"] * 10 + ["reached"] * 10

    _assert_every_email_once(stack, handles, ["welcome", "follow_up", "final"])
    tasks = call_tasks(stack.db_url)
    assert len(tasks) == 20 and len({t.key for t in tasks}) == 20
    by_run = {t.workflow_id: t for t in tasks}
    assert set(by_run) == {h.id for h in handles}
    assert [by_run[h.id].status for h in handles] == ["timed_out"] * 10 + ["done"] * 10
    assert [by_run[h.id].outcome for h in group_b] == ["reached"] * 10
    # No activity was in flight at the kill: the provider saw every email exactly once.
    requests = provider_message_ids(stack.fake)
    assert len(requests) == 60 and set(requests.values()) == {1}
    assert Counter(provider_accepted_ids(stack.fake).values()) == Counter({1: 60})

    # The delay after the crash: workflow tasks queued for the dead worker wait out the sticky queue's
    # schedule-to-start timeout (10 s, the SDK default) before another worker may take them.
    facts = [await history_facts(h) for h in handles]
    retried = {h.id: f["activity_retries"] for h, f in zip(handles, facts, strict=True) if f["activity_retries"]}
    assert retried == {}, retried  # (attempt, why the attempt before it ended), per run
    sticky = Counter(f["workflow_task_timeouts"].get("TIMEOUT_TYPE_SCHEDULE_TO_START", 0) for f in facts)

    OBSERVED["waiting"] = {
        "runs": 20,
        "emails_per_run": 3,
        "outbox_rows": len(outbox(stack.db_url).rows),
        "call_tasks": len(tasks),
        "provider_requests": sum(requests.values()),
        "new_worker_ready_s": round(w2_ready, 2),
        "kill_to_first_update_answered_s": round(min(answered_at) - killed_at, 2),
        "kill_to_last_update_answered_s": round(max(answered_at) - killed_at, 2),
        "kill_to_all_completed_s": round(completed_at - killed_at, 2),
        "runs_by_sticky_schedule_to_start_timeouts": dict(sticky),
    }
    print("\nOBSERVED waiting", OBSERVED["waiting"])


# 3 ------------------------------------------------------------------------------------------------


def test_dev_server_restarted_on_same_db_while_runs_wait(stack: Stack) -> None:
    """DevServer.stop() (SIGTERM) while 10 runs sleep in `wait: 3s`, down past the timers, started again on
    the same --db-filename and port: the same worker reconnects and every run completes, each email once."""
    asyncio.run(_server_restart(stack))


async def _server_restart(stack: Stack) -> None:
    playbook = write_playbook(stack.library, "server-restart", SERVER_RESTART)
    accounts = seed_accounts(stack.db_url, 10)
    client = await stack.client()
    worker = stack.workers.start()
    await worker.wait_ready()
    handles = [await start_run(client, stack.task_queue, playbook, a) for a in accounts]
    await _all_waiting(handles, "wait")
    assert _sent_steps(stack.db_url, "welcome") == 10

    # When each run's `wait: 3s` comes due (the timeline says "until <moment>").
    states = [await h.query(STATE_QUERY, result_type=RunState) for h in handles]
    due = max(datetime.fromisoformat(s.timeline[-1].detail.removeprefix("until ")) for s in states)

    stopped_at = time.monotonic()
    stack.server.stop()
    stop_took = time.monotonic() - stopped_at
    # Down until every timer is half a second overdue: they come due while the server is down.
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 0.5))
    assert datetime.now(UTC) > due
    assert _sent_steps(stack.db_url, "follow_up") == 0  # nothing moves without the server
    restarted_at = time.monotonic()
    overdue_at_restart = (datetime.now(UTC) - due).total_seconds()
    client = await stack.server.start()
    start_took = time.monotonic() - restarted_at
    assert worker.alive, "the worker must survive the server's restart"

    first_resumed_at = await eventually(lambda: _sent_steps(stack.db_url, "follow_up") >= 1, 60, what="a follow-up")
    handles = [client.get_workflow_handle(h.id) for h in handles]
    results = await _results(handles, 60)
    completed_at = time.monotonic()
    assert [r["outcome"] for r in results] == ["completed"] * 10
    assert worker.alive and len(stack.workers.started) == 1  # the same worker process reconnected

    _assert_every_email_once(stack, handles, ["welcome", "follow_up", "final"])
    tasks = call_tasks(stack.db_url)
    assert len(tasks) == 10 and len({t.key for t in tasks}) == 10
    requests = provider_message_ids(stack.fake)
    assert len(requests) == 30 and set(requests.values()) == {1}
    facts = [await history_facts(h) for h in handles]
    assert all(f["activity_retries"] == [] for f in facts), facts

    OBSERVED["server_restart"] = {
        "runs": 10,
        "outbox_rows": len(outbox(stack.db_url).rows),
        "call_tasks": len(tasks),
        "provider_requests": sum(requests.values()),
        "server_stop_s": round(stop_took, 2),
        "server_down_s": round(restarted_at - stopped_at, 2),
        "timers_overdue_at_restart_s": round(overdue_at_restart, 2),
        "server_start_s": round(start_took, 2),
        "restart_to_first_follow_up_s": round(first_resumed_at - restarted_at, 2),
        "restart_to_all_completed_s": round(completed_at - restarted_at, 2),
        "workflow_task_timeouts": Counter(str(f["workflow_task_timeouts"]) for f in facts),
    }
    print("\nOBSERVED server_restart", OBSERVED["server_restart"])
