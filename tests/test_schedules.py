"""A scheduled playbook becomes a Temporal Schedule; a tick starts one run per account in the segment."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.crm import BuiltinCrm, seed, write_account
from activities.segments import SegmentActivities
from activities.types import StartRunsRequest, StartRunsResult
from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, PlaybookScheduleTick, TickInput, TickResult
from engine.language.library import Library
from engine.runtime import connect as rt
from engine.runtime import schedules
from engine.runtime.devstack import DevServer
from engine.runtime.intake import StartedRun
from engine.runtime.schedules import PREFIX, ScheduleActivities, sync_schedules
from engine.runtime.settings import Settings
from engine.runtime.workers import build_worker, sandbox_runner
from engine.storage.db import migrate, session

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
        server = DevServer(tmp_path / "temporal", port=0, ui_port=0)
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


# a tick at full speed: pages read in one go, starts concurrent, the library read once, pages resumable ---------

SEGMENTED = SURVEY.replace("tiny-survey", "big-survey")


def seed_many(db_url: str, count: int) -> list[str]:
    """Accounts acc-0000..; every third one churned (out of the segment)."""
    team = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]
    seed(db_url, {"id": "acc-seed", "name": "Seed", "status": "churned"}, [], team)
    with session(db_url) as s:
        for i in range(count):
            status = "churned" if i % 3 == 0 else "active"
            write_account(s, {"id": f"acc-{i:04d}", "name": f"Shop {i}", "status": status,
                              "owner": "csm-1" if i % 2 else None},
                          [{"email": f"owner{i}@shop.example", "first_name": f"Owner{i}"}] if i % 5 else [])
    return [f"acc-{i:04d}" for i in range(count) if i % 3]


def test_a_tick_over_hundreds_of_accounts_starts_one_run_per_account_of_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "big-survey.yaml").write_text(SEGMENTED)
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    members = seed_many(db_url, 450)  # three pages of 200
    loads: list[str] = []
    load = Library.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Library], root: str | Path) -> Library:
        loads.append(str(root))
        return load(cls, root)

    async def scenario() -> tuple[dict, set[str]]:
        server = DevServer(tmp_path / "temporal", port=0, ui_port=0)
        client = await server.start()
        try:
            crm = BuiltinCrm(db_url)
            acts = [SegmentActivities(db_url, crm).segment_page,
                    ScheduleActivities(crm, client, str(library)).start_scheduled_runs]
            # only the tick: the runs it starts wait in the queue, nothing else runs meanwhile
            async with Worker(client, task_queue="ticks", workflows=[PlaybookScheduleTick], activities=acts,
                              activity_executor=ThreadPoolExecutor(4), workflow_runner=sandbox_runner()):
                playbook = Library.load(library).playbooks["big-survey"]
                monkeypatch.setattr(Library, "load", classmethod(counted))
                result = await client.execute_workflow(
                    TICK_WORKFLOW_NAME, TickInput("big-survey", playbook.trigger.accounts, "ticks"),
                    id="tick/big-survey", task_queue="ticks", result_type=TickResult,
                )
                started = set()
                for i in range(450):
                    try:
                        await client.get_workflow_handle(f"big-survey/acc-{i:04d}").describe()
                        started.add(f"acc-{i:04d}")
                    except RPCError as err:
                        assert err.status == RPCStatusCode.NOT_FOUND
                return {"started": result.started, "skipped": result.skipped}, started
        finally:
            server.stop()

    result, started = asyncio.run(scenario())
    assert result == {"started": len(members), "skipped": 0}
    assert started == set(members)
    assert loads == [str(library)]  # once for the tick's three pages


def test_get_accounts_reads_what_get_account_reads(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    seed_many(db_url, 30)
    seed(db_url, {"id": "acc-0001", "name": "", "plan": "pro"},
         [{"email": "b@x.example", "first_name": "", "role": "cto"}, {"email": "a@x.example", "first_name": "A"}], [])
    crm = BuiltinCrm(db_url)
    crm.add_tag("acc-0001", "vip")
    crm.add_tag("acc-0001", "at-risk")
    ids = ["acc-0029", "acc-0001", "nope", "acc-0005", "acc-0002", "acc-0001"]

    many = crm.get_accounts(ids)

    assert list(many) == ["acc-0029", "acc-0001", "acc-0005", "acc-0002"]
    assert many == {i: crm.get_account(i) for i in many}
    assert many["acc-0001"].account["tags"] == ["at-risk", "vip"] and many["acc-0001"].account["owner"]["id"] == "csm-1"
    assert crm.get_accounts([]) == {}


def _started(status: str) -> StartedRun:
    return StartedRun("big-survey", "", status)


def test_a_page_killed_midway_resumes_after_its_last_heartbeat_and_starts_nobody_twice(
    tmp_path: Path, monkeypatch
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "big-survey.yaml").write_text(SEGMENTED)
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    members = seed_many(db_url, 300)[:200]
    calls: list[str] = []
    fail_at = {1: 57}  # attempt -> the start that fails (the worker "dies" there)

    async def fake_start(client, task_queue, playbook, account_id, key, event) -> StartedRun:  # noqa: ANN001
        await asyncio.sleep(0.001 * (len(calls) % 7))  # starts complete out of order, as they do
        if len(calls) + 1 == fail_at.get(activity.info().attempt):
            calls.append("boom")
            raise RuntimeError("the worker died")
        calls.append(account_id)
        return _started("started" if account_id != "acc-0005" else "already_running")

    monkeypatch.setattr(schedules, "start_enrolled", fake_start)
    activities = ScheduleActivities(BuiltinCrm(db_url), client=object(), library_root=str(library))  # type: ignore[arg-type]
    request = StartRunsRequest("big-survey", members, "2026-01-01T09:00:00+00:00", "ticks")
    heartbeats: list[dict] = []

    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    with pytest.raises(RuntimeError, match="died"):
        asyncio.run(env.run(activities.start_scheduled_runs, request))
    first = [c for c in calls if c != "boom"]
    last = heartbeats[-1]
    # Start 57 failed; starts already in flight beside it may still have finished. Every start done is in the
    # last heartbeat, and none after the failure was begun.
    assert 56 <= len(first) <= 56 + schedules.START_CONCURRENCY
    assert last["next"] + len(last["beyond"]) == len(first)

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[last])
    calls.clear()
    result = asyncio.run(env.run(activities.start_scheduled_runs, request))

    assert sorted(first + calls) == sorted(members)  # each account once across both attempts
    assert not set(first) & set(calls)
    assert result == StartRunsResult(len(members) - 1, 1)  # acc-0005's run was there already
