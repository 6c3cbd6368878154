"""Heartbeats: a worker SIGKILLed mid-activity loses its step to another worker within the heartbeat timeout.

Real pieces only: the Temporal dev server, two `python worker.py` processes, SQLite, the SendGrid provider against
a fake SendGrid on 127.0.0.1. The fake holds the first mail send (the activity is running, blocked on the provider)
until the worker that sent it has been killed, then answers it 503, as SendGrid does when it did not take a mail:
so the one delivery is the retry's, and "sent exactly once" is what the provider and the outbox both say.

Without heartbeats the step would move only when its 30 s start-to-close timeout expired (ACTIVITY_TIMEOUT);
with them (engine.runtime.workers.KeepAlive, HEARTBEAT_TIMEOUT) within about 10 s plus the step's 1 s retry interval.
The run is not awaited to its end: its next workflow task waits out the dead worker's sticky queue (10 s, the SDK's
default), which is Temporal's, not the heartbeats'; tests/test_durability.py covers runs resuming after a crash.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from engine.interpreter.core import ACTIVITY_TIMEOUT, HEARTBEAT_TIMEOUT
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.runs import start_run
from engine.runtime.workers import build_worker
from tests.durability_helpers import (
    WorkerProcess,
    Workers,
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
from tests.fakes._server import Recorded, Reply

pytestmark = pytest.mark.timeout(90)

ONE_EMAIL = """\
id: one-email
title: One email, in flight when its worker dies
steps:
  - id: welcome
    retry: { initial_interval: 1s, max_attempts: 5 }
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ account.name }}"
      body: "Hi {{ contact.first_name }}, welcome."
"""

# The retry must reach the provider within the heartbeat timeout (counted from the last beat, which is before the
# kill), the step's 1 s retry interval, and the server's timer and task dispatch: a few seconds of margin.
MARGIN_S = 4.0


class HoldingSendGrid(FakeSendGrid):
    """The fake SendGrid, holding the first mail send until `release()`, then refusing it with a 503."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self._released = threading.Event()
        self._held_one = False

    def answer(self, request: Recorded) -> Reply:
        with self._lock:
            hold, self._held_one = not self._held_one, True
        if not hold:
            return super().answer(request)
        self.holding.set()
        self._released.wait(timeout=60)
        return Reply(503, {"errors": [{"message": "service unavailable", "field": None, "help": None}]})

    def release(self) -> None:
        self._released.set()




@pytest.fixture
def fake() -> Iterator[HoldingSendGrid]:
    server = HoldingSendGrid()
    server.start()
    try:
        yield server
    finally:
        server.release()
        server.stop()


def test_a_killed_workers_activity_moves_to_another_worker_within_the_heartbeat_timeout(
    tmp_path: Path, dev_server: DevServer, fake: HoldingSendGrid
) -> None:
    asyncio.run(_killed_mid_send(tmp_path, dev_server, fake))


async def _killed_mid_send(tmp_path: Path, server: DevServer, fake: HoldingSendGrid) -> None:
    assert HEARTBEAT_TIMEOUT.total_seconds() + MARGIN_S < ACTIVITY_TIMEOUT.total_seconds()  # else nothing is shown
    library, db_url, logs = tmp_path / "library", f"sqlite:///{tmp_path / 'playbook.db'}", tmp_path / "logs"
    logs.mkdir()
    task_queue = f"heartbeats-{tmp_path.name}"
    workers: Workers | None = None
    try:
        env = worker_env(
            address=server.address, db_url=db_url, library=library, task_queue=task_queue, home=tmp_path / "home",
            sendgrid_url=fake.url,
        )
        workers = Workers(env, logs)
        playbook = write_playbook(library, "one-email", ONE_EMAIL)
        [account] = seed_accounts(db_url, 1)
        # Two workers polling the same queue, as in production: the one that takes the send is killed.
        pair = [workers.start(), workers.start()]
        await asyncio.gather(*(w.wait_ready(timeout=60) for w in pair))
        client = await Client.connect(server.address, runtime=quiet_runtime())

        handle = await start_run(client, task_queue, playbook, account)
        await asyncio.to_thread(fake.holding.wait, 30)
        assert fake.holding.is_set(), "the send never reached the provider"
        [row] = outbox(db_url).rows
        assert row.status == "sending"  # committed before the provider call, as send_email does

        holder = await _worker_running_the_activity(handle, pair)
        survivor = next(w for w in pair if w is not holder)
        holder.kill()
        killed_at = time.monotonic()
        fake.release()  # the held send is answered 503 to a dead socket: that attempt delivered nothing

        # The retry reaches the provider from the surviving worker.
        retried_at = await eventually(
            lambda: len(provider_message_ids(fake)) == 1 and sum(provider_message_ids(fake).values()) == 2,
            HEARTBEAT_TIMEOUT.total_seconds() + 20, what="the retried send",
        )
        resumed_s = retried_at - killed_at
        await eventually(lambda: outbox(db_url).rows[0].status == "sent", 10, what="the row to say sent")
        assert survivor.alive

        # Exactly once: one row, sent; the provider asked twice (the held attempt, the retry), accepted once.
        rows = outbox(db_url).rows
        assert [(r.step_id, r.status) for r in rows] == [("welcome", "sent")]
        assert dict(provider_accepted_ids(fake)) == {rows[0].message_id: 1}
        assert len(fake.deliveries()) == 1

        # The step moved because its heartbeats stopped, not because its 30 s timeout ran out, and in seconds.
        facts = await _history_once_completed(handle)
        assert facts["activity_retries"] == [(2, "TIMEOUT_TYPE_HEARTBEAT")], facts
        assert resumed_s < HEARTBEAT_TIMEOUT.total_seconds() + MARGIN_S, resumed_s
        print(f"\nOBSERVED heartbeats: kill -> retry at the provider {resumed_s:.1f} s "
              f"(heartbeat timeout {HEARTBEAT_TIMEOUT.total_seconds():g} s, start-to-close "
              f"{ACTIVITY_TIMEOUT.total_seconds():g} s)")
    finally:
        fake.release()
        if workers is not None:
            workers.kill_all()


async def _worker_running_the_activity(handle: WorkflowHandle[Any, Any], pair: list[WorkerProcess]) -> WorkerProcess:
    """The worker process whose identity (pid@host, the SDK's default) Temporal has on the running activity."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            pid = pending.last_worker_identity.partition("@")[0]
            for worker in pair:
                if worker.process is not None and str(worker.process.pid) == pid:
                    return worker
        await asyncio.sleep(0.1)
    raise AssertionError("no running activity names one of the two workers")


async def _history_once_completed(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    # A retried activity's started event is written when the attempt ends: wait for it in the history.
    deadline = time.monotonic() + 10
    while True:
        facts = await history_facts(handle)
        if facts["activity_retries"] or time.monotonic() > deadline:
            return facts
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------------------ the keep-alive itself

PROBE_HEARTBEAT_TIMEOUT = timedelta(seconds=1)
PROBE_SILENCE_S = 3.0  # three heartbeat timeouts without a word from the activity itself


@activity.defn(name="silent_probe", no_thread_cancel_exception=True)
def silent_probe(silence: float) -> list[Any]:
    """Attempt 1 reports progress once, then says nothing for `silence` seconds (blocked, as a provider call is) and
    fails; attempt 2 answers what it was told: its attempt number and the heartbeat details it started with."""
    info = activity.info()
    if info.attempt == 1:
        activity.heartbeat("progress: 7 of 10")
        time.sleep(silence)
        raise ApplicationError("attempt 1 fails on purpose, after its silence")
    return [info.attempt, list(info.heartbeat_details)]


@workflow.defn(name="SilentProbe", sandboxed=False)
class SilentProbe:
    @workflow.run
    async def run(self, silence: float) -> list[Any]:
        result: list[Any] = await workflow.execute_activity(
            "silent_probe", silence, start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=PROBE_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=2),
        )
        return result


def test_the_worker_keeps_a_silent_activity_alive_and_its_progress_for_the_retry(dev_server: DevServer) -> None:
    """A sync activity silent for three heartbeat timeouts is not timed out (the worker beats for it), and the beats
    in between keep the progress it reported: the retry reads it."""
    asyncio.run(_silent(dev_server))


async def _silent(server: DevServer) -> None:
    client = await Client.connect(server.address, runtime=quiet_runtime())
    queue = f"keep-alive-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, queue, [silent_probe], extra_workflows=[SilentProbe]):
        handle = await client.start_workflow(SilentProbe.run, PROBE_SILENCE_S, id=queue, task_queue=queue)
        result = await asyncio.wait_for(handle.result(), 30)
        facts = await history_facts(handle)
    # attempt 2 came from attempt 1's own failure, not from a heartbeat timeout during the silence
    assert facts["activity_retries"] == [(2, "attempt 1 fails on purpose, after its silence")], facts
    assert result == [2, ["progress: 7 of 10"]]
