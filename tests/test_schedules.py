"""A scheduled playbook becomes a Temporal Schedule; a tick starts one run per account in the segment."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from pathlib import Path

from activities.crm import seed
from engine.language.library import Library
from engine.runtime import connect as rt
from engine.runtime.devstack import DevServer
from engine.runtime.schedules import PREFIX, sync_schedules
from engine.runtime.settings import Settings
from engine.runtime.workers import build_worker
from engine.storage.db import migrate

SURVEY = """\
id: tiny-survey
title: Tiny survey
trigger:
  schedule:
    cron: "0 9 1 1,4,7,10 *"
    accounts: account.status == "active"
enrollment:
  key: "{{ account.id }}"
  reenroll: after_exit
steps:
  - id: ask
    email:
      to: "{{ contact.email }}"
      subject: "How likely are you to recommend us, {{ contact.first_name }}?"
      body: Reply with a number from 0 to 10.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schedule_created_ticked_and_removed(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "tiny-survey.yaml").write_text(SURVEY)
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    for i, status in enumerate(["active", "active", "churned"]):
        seed(db_url, {"id": f"acc-{i}", "name": f"Shop {i}", "status": status},
             [{"email": f"owner{i}@shop.example", "first_name": f"Owner{i}"}], [])

    async def scenario() -> tuple[list, list, list]:
        server = DevServer(tmp_path / "temporal", free_port(), free_port())
        client = await server.start()
        try:
            settings = Settings(environment="dev", database_url=db_url, library=str(library), task_queue="sched-test")
            worker = build_worker(client, settings.task_queue, rt.activities(settings, client))
            async with worker:
                playbooks = Library.load(library).playbooks
                first = await sync_schedules(client, playbooks, settings.task_queue)
                second = await sync_schedules(client, playbooks, settings.task_queue)
                handle = client.get_schedule_handle(f"{PREFIX}tiny-survey")
                description = await handle.describe()
                upcoming = description.info.next_action_times[0]
                assert (upcoming.day, upcoming.hour, upcoming.minute) == (1, 9, 0) and upcoming.month in (1, 4, 7, 10)
                await handle.trigger()
                deadline = time.time() + 60
                sent: list = []
                while time.time() < deadline:
                    with sqlite3.connect(tmp_path / "engine.db") as conn:
                        sent = conn.execute("select account_id, status from outbox order by account_id").fetchall()
                    if len(sent) >= 2:
                        break
                    await asyncio.sleep(0.3)
                await asyncio.sleep(1)  # nothing more arrives for the churned account
                with sqlite3.connect(tmp_path / "engine.db") as conn:
                    sent = conn.execute("select account_id, status from outbox order by account_id").fetchall()
                removed = await sync_schedules(client, {}, settings.task_queue)
                return [first, second], sent, [removed]
        finally:
            server.stop()

    (first, second), sent, (removed,) = asyncio.run(scenario())
    assert first.created == ["tiny-survey"] and second.updated == ["tiny-survey"]
    assert sent == [("acc-0", "sent"), ("acc-1", "sent")]
    assert removed.removed == ["tiny-survey"]
