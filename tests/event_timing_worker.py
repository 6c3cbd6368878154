"""The worker of tests/test_event_timing.py, in a child process of its own.

The same worker as production (``build_worker``, unversioned, the real ``PlaybookActivities`` over the test's
SQLite database and built-in CRM), with one difference: emails go to a slow outbox that takes SEND_SECONDS per send
and reports when each send started and ended, so the test can aim events at an activity or at the timer after it.

A process of its own because the workflow sandbox costs CPU (each new run builds a sandbox, ~0.1 s, on the worker's
event loop): in the test's process it held up the test's own posts and, under hundreds of runs, left workflow
tasks queued for tens of seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent

import structlog
from temporalio.client import Client

from activities.crm import BuiltinCrm
from activities.email import OutgoingEmail
from activities.playbook_activities import PlaybookActivities
from engine.runtime.connect import quiet_runtime
from engine.runtime.workers import build_worker

SEND_SECONDS = 0.3  # how long each email takes in its activity

Mark = tuple[tuple[str, str, str], float]  # (recipient, subject, "started" | "sent"), time.monotonic()


class SlowOutbox:
    """The embedded outbox (the row is the delivery), but each send takes SEND_SECONDS, and says when.

    time.monotonic() is the system's monotonic clock, the same in every process of the machine."""

    name = "outbox"

    def __init__(self, marks: Queue[Mark]) -> None:
        self.marks = marks

    def send(self, email: OutgoingEmail) -> str:
        self.marks.put(((email.to[0], email.subject, "started"), time.monotonic()))
        time.sleep(SEND_SECONDS)
        self.marks.put(((email.to[0], email.subject, "sent"), time.monotonic()))
        return email.message_id


def run_worker(address: str, task_queue: str, db_url: str, marks: Queue[Mark], ready: ProcessEvent,
               stop: ProcessEvent) -> None:
    """The child process's body: a worker until ``stop`` is set."""
    # hundreds of runs: the per-activity info lines are noise
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(_serve(address, task_queue, db_url, marks, ready, stop))


async def _serve(address: str, task_queue: str, db_url: str, marks: Queue[Mark], ready: ProcessEvent,
                 stop: ProcessEvent) -> None:
    client = await Client.connect(address, runtime=quiet_runtime())
    activities = PlaybookActivities(db_url, BuiltinCrm(db_url), SlowOutbox(marks))
    worker = build_worker(client, task_queue, activities.all(), max_concurrent_activities=100)
    async with worker:
        ready.set()
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, stop.wait, 1.0):
            pass
