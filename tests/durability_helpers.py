"""Helpers for tests/test_durability.py: the real Temporal dev server, workers as real processes.

Everything runs on 127.0.0.1 with free ports and files under a temp dir. Workers are ``python worker.py``
subprocesses configured only through PLAYBOOK_* variables, so SIGKILL kills a real process mid-flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import WorkflowHandle

from activities.crm import seed
from engine.language.library import Library
from engine.language.model import Playbook
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.fakes import FakeSendGrid
from tests.fakes.fake_sendgrid import API_KEY
from tests.paths import ROOT

TEAM = [{"id": "csm-1", "name": "Casey", "email": "casey@success.example", "languages": ["en"]}]


def write_playbook(library: Path, name: str, text: str) -> Playbook:
    """Writes a playbook into the library folder and returns its validated model."""
    library.mkdir(parents=True, exist_ok=True)
    (library / f"{name}.yaml").write_text(text, encoding="utf-8")
    lib = Library.load(library)
    if name not in lib.playbooks:
        problems = [p for r in lib.results for p in getattr(r, "problems", [])]
        raise AssertionError(f"playbook {name} is not valid: {problems}")
    return lib.playbooks[name]


def seed_accounts(db_url: str, count: int, *, first: int = 0, **fields: Any) -> list[str]:
    """Accounts acc-<first>.. in the built-in CRM, owned by csm-1, each with one contact (and ``fields``)."""
    migrate(db_url)
    ids = []
    for i in range(first, first + count):
        account_id = f"acc-{i:02d}"
        seed(
            db_url,
            {"id": account_id, "name": f"Account {i:02d}", "owner": "csm-1", "language": "en", **fields},
            [{"email": f"buyer{i:02d}@customer{i:02d}.example", "first_name": f"Buyer{i:02d}"}],
            TEAM,
        )
        ids.append(account_id)
    return ids


@dataclass
class Outbox:
    rows: list[t.OutboxEmail]

    def by_workflow(self) -> dict[str, list[t.OutboxEmail]]:
        out: dict[str, list[t.OutboxEmail]] = {}
        for row in self.rows:
            out.setdefault(row.workflow_id, []).append(row)
        return out

    def duplicate_keys(self) -> list[str]:
        return [k for k, n in Counter(r.key for r in self.rows).items() if n > 1]


def outbox(db_url: str) -> Outbox:
    with session(db_url) as s:
        return Outbox(list(s.scalars(select(t.OutboxEmail).order_by(t.OutboxEmail.id))))


def call_tasks(db_url: str) -> list[t.CallTask]:
    with session(db_url) as s:
        return list(s.scalars(select(t.CallTask).order_by(t.CallTask.id)))


def provider_message_ids(fake: FakeSendGrid) -> Counter[str]:
    """How many requests reached the fake per playbook message id (every request, answered or not)."""
    ids: Counter[str] = Counter()
    for r in fake.requests_to("POST", "/v3/mail/send"):
        ids[(r.json or {}).get("custom_args", {}).get("playbook_message_id", "?")] += 1
    return ids


def provider_accepted_ids(fake: FakeSendGrid) -> Counter[str]:
    """How many of those the fake accepted (202): what a real provider would deliver."""
    return Counter(m.get("custom_args", {}).get("playbook_message_id", "?") for m in fake.sent)


@dataclass
class WorkerProcess:
    """``python worker.py`` as a child process; kill() is a real SIGKILL."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py")],
                cwd=str(ROOT),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.started_at = time.monotonic()
        return self

    async def wait_ready(self, timeout: float = 30) -> float:
        """Waits for the worker's 'worker started' log line; returns the seconds since start()."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"worker exited ({self.process.returncode}):\n{log}")
            if "worker started" in self.log_path.read_text(errors="replace"):
                return time.monotonic() - self.started_at
            await asyncio.sleep(0.05)
        log = self.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"worker not ready after {timeout}s:\n{log}")

    def kill(self) -> None:
        """SIGKILL: no signal handler, no graceful shutdown, no activity completion."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Workers:
    """Every worker a test started, so the fixture can kill whatever is left."""

    env: dict[str, str]
    logs: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.logs / f"worker-{len(self.started) + 1}.log").start()
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()


def worker_env(
    *, address: str, db_url: str, library: Path, task_queue: str, home: Path, sendgrid_url: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_")}
    env.update(
        PLAYBOOK_ENVIRONMENT="dev",  # SQLite and the built-in CRM: refused by the production checks (the default)
        PLAYBOOK_TEMPORAL_ADDRESS=address,
        PLAYBOOK_DATABASE_URL=db_url,
        PLAYBOOK_LIBRARY=str(library),
        PLAYBOOK_TASK_QUEUE=task_queue,
        PLAYBOOK_HOME=str(home),
        PLAYBOOK_EMAIL_PROVIDER="sendgrid",
        PLAYBOOK_SENDGRID_HOST=sendgrid_url,
        PLAYBOOK_SENDGRID_API_KEY=API_KEY,  # the fake's key: a dummy, never a real one
        PLAYBOOK_LOG_FORMAT="console",
        PYTHONUNBUFFERED="1",
    )
    return env


async def eventually(
    check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> float:
    """Polls check() until it is truthy; returns the moment (time.monotonic()) it was."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached after {timeout}s")
        await asyncio.sleep(interval)


async def history_facts(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """What a crash leaves in a run's history: workflow tasks that timed out (by kind), activity retries."""
    history = await handle.fetch_history()
    wft_timeouts: Counter[str] = Counter()
    retried: list[tuple[int, str]] = []  # (attempt, why the previous attempt ended)
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            wft_timeouts[TimeoutType.Name(event.workflow_task_timed_out_event_attributes.timeout_type)] += 1
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            if attrs.attempt > 1:
                failure = attrs.last_failure
                why = (
                    TimeoutType.Name(failure.timeout_failure_info.timeout_type)
                    if failure.HasField("timeout_failure_info")
                    else failure.message
                )
                retried.append((attrs.attempt, why))
    return {"workflow_task_timeouts": dict(wft_timeouts), "activity_retries": retried}
