"""Frequency caps hold when many runs mail one person at once, across workers, on SQLite and on PostgreSQL.

Twenty runs of a one-email playbook start at the same moment for one account, on the REAL Temporal dev server,
with two workers polling the task queue (each with its own activities and thread pool, over the same database),
under a policy of at most 3 marketing emails a week per person. Exactly three emails go out; the other
seventeen runs finish with their email `capped`, and the caps' ledger holds three rows. Both workers take part
(each loads accounts for some of the runs), and each send is held a moment, so the admissions overlap.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider, OutgoingEmail
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import WORKFLOW_NAME, RunInput, RunResult
from engine.language.policy_file import build_policy
from engine.language.validator import validate_playbook_text
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.postgres import empty

pytestmark = pytest.mark.timeout(180)

RUNS = 20
CAP = 3
ACCOUNT = {"id": "acc-caps", "name": "Cap GmbH", "language": "en", "timezone": "UTC", "owner": "csm-1"}
CONTACTS = [{"email": "ada@cap.example", "first_name": "Ada"}]
TEAM = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]
PLAYBOOK = """
id: caps-race
title: One marketing email
trigger: { manual: true }
steps:
  - id: news
    email:
      category: marketing
      to: "{{ contact.email }}"
      subject: News
      body: Hi {{ contact.first_name }}.
"""
POLICY = {
    "default_category": "marketing",
    "categories": {"transactional": {"unsubscribe": False, "capped": False}, "marketing": {}},
    "caps": [{"channel": "email", "categories": ["marketing"], "max": CAP, "per": "7d"}],
}


class CountingCrm(BuiltinCrm):
    """The built-in CRM, counting the accounts its worker loaded (one per run it started)."""

    def __init__(self, db_url: str) -> None:
        super().__init__(db_url)
        self.loads = 0

    def get_account(self, account_id: str):  # type: ignore[no-untyped-def]
        self.loads += 1
        return super().get_account(account_id)


class SlowOutbox(OutboxProvider):
    """The outbox, counting its sends and holding each a moment, so that the admissions of other runs overlap."""

    def __init__(self) -> None:
        self.sent = 0
        self.lock = threading.Lock()

    def send(self, email: OutgoingEmail) -> str:
        time.sleep(0.05)
        with self.lock:
            self.sent += 1
        return super().send(email)




@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'playbook.db'}"
        migrate(url)
        return url
    return empty(request.getfixturevalue("postgres"))


def test_twenty_runs_on_two_workers_send_exactly_the_cap(dev_server: DevServer, db_url: str) -> None:
    seed(db_url, dict(ACCOUNT), [dict(c) for c in CONTACTS], [dict(m) for m in TEAM])
    checked = validate_playbook_text(PLAYBOOK, "<caps-race>")
    assert checked.ok and checked.playbook is not None, [p.header() for p in checked.problems]
    playbook = replace(checked.playbook, policy=build_policy(POLICY))
    outboxes = [SlowOutbox(), SlowOutbox()]
    crms = [CountingCrm(db_url), CountingCrm(db_url)]

    async def race() -> list[RunResult]:
        # a client each, as two worker processes have (Temporal allows one worker per client and task queue)
        clients = [await Client.connect(dev_server.address, runtime=quiet_runtime()) for _ in crms]
        client = clients[0]
        queue = f"caps-{uuid.uuid4().hex[:8]}"
        workers = [
            build_worker(worker_client, queue, PlaybookActivities(db_url, crm, outbox).all())
            for worker_client, crm, outbox in zip(clients, crms, outboxes, strict=True)
        ]
        async with workers[0], workers[1]:
            handles = await asyncio.gather(
                *(
                    client.start_workflow(
                        WORKFLOW_NAME, RunInput(playbook=playbook, account_id=ACCOUNT["id"]),
                        id=f"caps/{queue}/{n}", task_queue=queue, result_type=RunResult,
                    )
                    for n in range(RUNS)
                )
            )
            return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120))

    results = asyncio.run(race())

    statuses = sorted(r.steps["news"]["result"]["status"] for r in results)
    assert statuses == ["capped"] * (RUNS - CAP) + ["sent"] * CAP
    with session(db_url) as s:
        rows = dict(s.execute(select(t.OutboxEmail.status, func.count()).group_by(t.OutboxEmail.status)).all())
        counted = s.scalar(select(func.count()).select_from(t.EmailDelivery).where(t.EmailDelivery.status == "sent"))
    assert rows == {"sent": CAP, "capped": RUNS - CAP}
    assert counted == CAP
    assert sum(o.sent for o in outboxes) == CAP
    assert all(r.outcome == "completed" for r in results)
    assert all(crm.loads > 0 for crm in crms), [crm.loads for crm in crms]  # both workers ran some of the runs
