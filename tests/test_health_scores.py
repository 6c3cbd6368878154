"""Health scores kept where the data arrives (docs/health.md, "How scores are kept").

- POST /events on the real app and a real Temporal dev server, with a worker: urgent tickets lower the score and the
  band, the same event id twice counts once, a band change is the event health.score_changed that starts the
  playbook triggered by it and reaches a live run's wait_for; history and trend;
- the nightly recompute on the time-skipping server over 300 accounts in pages of 50 (continue-as-new every two
  pages): windows slide, so scores change without new events; a page whose first attempt did its work and then died
  is retried and nothing is counted, sent or written twice;
- PostgreSQL: the same bookkeeping (inserts, updates, the unique key of an event's values).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio import activity
from temporalio.client import ScheduleActionStartWorkflow, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.crm import BuiltinCrm, seed
from activities.hubspot_crm import HubSpotCrm
from activities.types import HealthPageRequest, HealthPageResult, HealthWrite
from api.app import create_app
from api.security import create_token
from engine.interpreter.health_nightly import HEALTH_NIGHTLY_WORKFLOW, NightlyInput, NightlyResult
from engine.interpreter.messages import Event
from engine.runtime import connect as rt
from engine.runtime import health
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.schedules import HEALTH_SCHEDULE_ID, health_cron, sync_schedules
from engine.runtime.settings import Settings
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session
from engine.testing import scenarios
from tests.asgi import serving
from tests.fakes import FakeHubSpot
from tests.fakes.fake_hubspot import TOKEN as HUBSPOT_TOKEN

SCORECARD = """\
id: support-health
title: Support health
segment: account.plan != "trial"
bands:
  - { name: red, below: 50 }
  - { name: yellow, below: 75 }
  - { name: green }
changes: { band: true }
measures:
  - id: urgent_tickets
    title: Urgent tickets, 30 days
    weight: 60
    events: { type: support.ticket_opened, window: 30d, where: 'event.data.priority == "urgent"' }
    score: [ { below: 1, score: 100 }, { below: 2, score: 60 }, { below: 3, score: 30 }, { otherwise: 0 } ]
  - id: mrr
    title: Monthly recurring revenue
    weight: 40
    field: account.mrr
    score: [ { below: 100, score: 30 }, { otherwise: 100 } ]
"""
# 0 urgent tickets: 100 (green); 1: 76 (green); 2: 58 (yellow); 3: 40 (red)
RISK = """\
id: health-risk
title: Red accounts get a call
trigger:
  event: health.score_changed
  when: event.data.band == "red"
enrollment:
  key: "{{ account.id }}"
  reenroll: after_exit
steps:
  - wait: 30d
"""
WATCH = """\
id: health-watch
title: Watch an account's health
trigger:
  event: account.flagged
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - id: changed
    wait_for: { event: health.score_changed, timeout: 30d }
"""


def _folders(home: Path, playbooks: dict[str, str]) -> tuple[Path, Path]:
    library, cards = home / "playbooks", home / "scorecards"
    library.mkdir()
    cards.mkdir()
    for name, text in playbooks.items():
        (library / f"{name}.yaml").write_text(text)
    (cards / "support-health.yaml").write_text(SCORECARD)
    return library, cards


def _received(db_url: str, type_: str) -> list[t.ReceivedEvent]:
    with session(db_url) as s:
        return list(s.scalars(select(t.ReceivedEvent).where(t.ReceivedEvent.type == type_)))


def _history(db_url: str, account_id: str) -> list[tuple[float | None, str | None]]:
    with session(db_url) as s:
        rows = s.execute(
            select(t.HealthHistory.score, t.HealthHistory.band)
            .where(t.HealthHistory.account_id == account_id).order_by(t.HealthHistory.id)
        ).all()
    return [(r.score, r.band) for r in rows]


# ------------------------------------------------------------------------------------------------- POST /events


@dataclass
class Stack:
    settings: Settings
    token: str


@pytest.fixture(scope="module")
def stack(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("health")
    library, cards = _folders(home, {"health-risk": RISK, "health-watch": WATCH})
    db_url = f"sqlite:///{home / 'engine.db'}"
    migrate(db_url)
    settings = Settings(
        environment="dev", database_url=db_url, library=str(library), scorecards=str(cards),
        task_queue=f"health-{uuid.uuid4().hex[:6]}", temporal_address=dev_server.address,
    )
    yield Stack(settings, create_token(db_url, "product", "system"))


def test_urgent_tickets_posted_as_events_turn_an_account_red_and_start_the_playbooks(
    stack: Stack,
) -> None:
    settings, db_url = stack.settings, stack.settings.db_url
    account = f"acc-{uuid.uuid4().hex[:6]}"
    seed(db_url, {"id": account, "name": "Kraus GmbH", "plan": "pro", "mrr": 500}, [], [])
    cards = health.read_scorecards(settings.scorecards_folder)
    # the nightly pass scored it 40 days ago (no ticket then): the trend's 30-day point
    with session(db_url) as s:
        first = health.recompute(s, {"id": account, "plan": "pro", "mrr": 500}, cards,
                                 datetime.now(UTC) - timedelta(days=40))
    assert [(c.score, c.band, c.notable) for c in first] == [(100.0, "green", False)]

    def ticket(priority: str, event_id: str | None = None) -> dict[str, Any]:
        return {"id": event_id or f"evt-{uuid.uuid4().hex[:10]}", "type": "support.ticket_opened",
                "account_id": account, "data": {"priority": priority}}

    auth = {"Authorization": f"Bearer {stack.token}"}

    async def scenario() -> dict[str, Any]:
        client = await rt.connect(settings, runtime=quiet_runtime())
        app = create_app(settings, client)
        async with build_worker(client, settings.task_queue, rt.activities(settings, client)), serving(app) as http:

            async def post(event: dict[str, Any]) -> dict[str, Any]:
                answer = await http.post("/events", json=event, headers=auth)
                assert answer.status_code == 200, answer.text
                return dict(answer.json())

            watch = await post({"id": f"evt-{uuid.uuid4().hex[:10]}", "type": "account.flagged",
                                "account_id": account, "data": {}})
            await post(ticket("low"))  # not urgent: the score stays 100
            await post(ticket("urgent"))  # 76, green
            second = ticket("urgent")
            await post(second)  # 58: yellow, a band change
            again = await post(second)  # the same event id: counted once
            await post(ticket("urgent"))  # 40: red
            handle = client.get_workflow_handle(watch["runs"][0]["run_id"])
            await asyncio.wait_for(handle.result(), 30)  # its wait_for got health.score_changed: it has ended
            risk = client.get_workflow_handle(f"health-risk/{account}")
            return {"watch": watch, "again": again, "risk": (await risk.describe()).status}

    outcome = asyncio.run(scenario())

    assert outcome["again"]["duplicate"] is True
    assert _history(db_url, account) == [(100.0, "green"), (76.0, "green"), (58.0, "yellow"), (40.0, "red")]
    sent = sorted(_received(db_url, "health.score_changed"), key=lambda r: r.received_at)
    watch_run = outcome["watch"]["runs"][0]["run_id"]
    assert [r.id.split("/")[:3] for r in sent] == [["health", account, "support-health"]] * 2
    yellow, red = (r.answer for r in sent)
    # green -> yellow reached the watching run's wait_for; yellow -> red started the risk playbook (the watching run
    # may have ended by then, or be ending)
    assert (yellow["runs"], yellow["delivered_to"]) == ([], [watch_run])
    assert red["runs"] == [{"playbook": "health-risk", "run_id": f"health-risk/{account}", "status": "started"}]
    assert red["delivered_to"] in ([], [watch_run])
    assert outcome["risk"] == WorkflowExecutionStatus.RUNNING

    with session(db_url) as s:
        [kept] = health.health_of(s, account)
        fields = s.get(t.Account, account).fields  # type: ignore[union-attr]
    assert (kept.score, kept.band, kept.previous, kept.previous_band) == (40.0, "red", 58.0, "yellow")
    assert (kept.thirty_days, kept.thirty_days_band) == (100.0, "green")
    assert [h["band"] for h in kept.history] == ["red", "yellow", "green", "green"]
    urgent = next(c for c in kept.components if c["measure_id"] == "urgent_tickets")
    assert (urgent["value"], urgent["score"]) == (3.0, 0.0)
    assert kept.reasons[0]["measure"] == "urgent_tickets" and kept.reasons[0]["points"] == -18.0
    assert (fields["health_score"], fields["health_band"]) == (40.0, "red")  # the built-in CRM's fields


def test_a_change_no_playbook_uses_is_kept_by_its_id_and_sent_once(dev_server: DevServer, tmp_path: Path) -> None:
    """With a library in which no playbook triggers on, waits for or exits on health.score_changed, a change is only
    recorded by its id (in the transaction of the event that caused it): posting that event again sends nothing."""
    library, cards = _folders(tmp_path, {})
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    settings = Settings(
        environment="dev", database_url=db_url, library=str(library), scorecards=str(cards),
        task_queue=f"health-{uuid.uuid4().hex[:6]}", temporal_address=dev_server.address,
    )
    account = f"acc-{uuid.uuid4().hex[:6]}"
    seed(db_url, {"id": account, "name": "Kraus GmbH", "plan": "pro", "mrr": 500}, [], [])
    auth = {"Authorization": f"Bearer {create_token(db_url, 'product', 'system')}"}
    tickets = [{"id": f"evt-{i}-{uuid.uuid4().hex[:8]}", "type": "support.ticket_opened", "account_id": account,
                "data": {"priority": "urgent"}} for i in range(3)]

    async def scenario() -> list[bool]:
        client = await rt.connect(settings, runtime=quiet_runtime())
        async with serving(create_app(settings, client)) as http:
            answers = [await http.post("/events", json=e, headers=auth) for e in [*tickets, *tickets]]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [bool(a.json().get("duplicate")) for a in answers]

    assert asyncio.run(scenario()) == [False] * 3 + [True] * 3
    # first score 76 green (not a change: no band to leave), then 58 yellow and 40 red: two changes, each once
    assert [h[1] for h in _history(db_url, account)] == ["green", "yellow", "red"]
    sent = _received(db_url, "health.score_changed")
    assert len(sent) == 2 and all(r.id.startswith(f"health/{account}/support-health/") for r in sent)
    assert all(not r.answer.get("runs") for r in sent)


def test_the_nightly_schedule_is_synced_with_the_playbooks_schedules(stack: Stack) -> None:
    settings = stack.settings

    async def sync() -> tuple[str, str, str]:
        client = await rt.connect(settings, runtime=quiet_runtime())
        on = await sync_schedules(client, {}, settings.task_queue, health_nightly=health_cron(settings))
        described = await client.get_schedule_handle(HEALTH_SCHEDULE_ID).describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == HEALTH_NIGHTLY_WORKFLOW
        # the server keeps a cron as a calendar: 02:00 every day
        [calendar] = described.schedule.spec.calendars
        assert ([r.start for r in calendar.hour], [r.start for r in calendar.minute]) == ([2], [0])
        off = await sync_schedules(client, {}, settings.task_queue, health_nightly="")
        return on.health, off.health, (await sync_schedules(client, {}, settings.task_queue, health_nightly="")).health

    assert asyncio.run(sync()) == ("created", "removed", "off")


def test_with_hubspot_the_scores_stay_in_the_engine_and_hubspot_gets_a_copy(
    dev_server: DevServer, tmp_path: Path,
) -> None:
    library, cards = _folders(tmp_path, {"health-risk": RISK})
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    hub = FakeHubSpot()
    hub.start()
    hub.company_properties["plan"] = ("string", "text", False, [])
    hub.company_properties["mrr"] = ("number", "number", False, [])
    settings = Settings(
        environment="dev", database_url=db_url, library=str(library), scorecards=str(cards),
        task_queue=f"health-{uuid.uuid4().hex[:6]}", temporal_address=dev_server.address,
        crm_provider="hubspot", hubspot_token=HUBSPOT_TOKEN, hubspot_base_url=hub.url,
    )
    account = f"acc-{uuid.uuid4().hex[:6]}"
    event = {"id": f"evt-{uuid.uuid4().hex[:10]}", "type": "support.ticket_opened", "account_id": account,
             "data": {"priority": "urgent"}, "account": {"name": "Fjord AS", "plan": "pro", "mrr": 500}}
    token = create_token(db_url, "product", "system")

    async def post() -> list[int]:
        client = await rt.connect(settings, runtime=quiet_runtime())
        async with serving(create_app(settings, client)) as http:
            return [(await http.post("/events", json=event, headers={"Authorization": f"Bearer {token}"})).status_code
                    for _ in range(2)]

    try:
        assert asyncio.run(post()) == [200, 200]
    finally:
        hub.stop()
    with session(db_url) as s:
        [kept] = health.health_of(s, account)
        accounts = s.scalar(select(func.count()).select_from(t.Account))
    assert (kept.score, kept.band) == (76.0, "green")  # judged on the company HubSpot read back: mrr 500
    assert accounts == 0  # nothing of the account in the engine's tables but its scores
    [update] = hub.requests_to("POST", "/crm/v3/objects/companies/batch/update")  # the repeated event: no write
    assert update.json["inputs"] == [{"id": account, "idProperty": "playbook_account_id", "properties": {
        "playbook_health_score": "76.0", "playbook_health_band": "green"}}]


# ------------------------------------------------------------------------------------------------- nightly

NIGHT = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)


class DyingOnce(health.HealthActivities):
    """The page after ``dies_after`` does its work and then dies on its first attempt (a worker lost before it
    answered): its retry must find what the first attempt wrote."""

    dies_after = "acc-0099"
    died = 0

    @activity.defn(name="recompute_health_page")
    async def recompute_health_page(self, req: HealthPageRequest) -> HealthPageResult:
        result = await super().recompute_health_page(req)
        if req.after == self.dies_after and activity.info().attempt == 1:
            type(self).died += 1
            raise RuntimeError("the worker died after the page's work")
        return result


def test_the_nightly_pass_recomputes_what_time_changed_in_pages_and_resumes(tmp_path: Path) -> None:
    library, cards_folder = _folders(tmp_path, {"health-risk": RISK})
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    cards = health.read_scorecards(cards_folder)
    accounts = [{"id": f"acc-{i:04d}", "name": f"Shop {i}", "plan": "pro", "mrr": 50} for i in range(300)]
    # 3 urgent tickets each: 0 + 12 = 12 points (red). The even accounts' tickets are 30.5 days old at the night (in
    # the window the day before, out of it that night): they turn green (100 x 0.6 + 30 x 0.4 = 72: yellow). The odd
    # accounts' are 2 days old: they stay red.
    with session(db_url) as s:
        for a in accounts:
            s.add(t.Account(id=a["id"], name=a["name"], fields={"plan": "pro", "mrr": 50}))
        s.flush()
        for i, a in enumerate(accounts):
            age = timedelta(days=30, hours=12) if i % 2 == 0 else timedelta(days=2)
            for n in range(3):
                event = Event("support.ticket_opened", {"priority": "urgent"}, f"t-{a['id']}-{n}",
                              (NIGHT - age).isoformat(), a["id"])
                health.update_for_event(s, a, event, cards, NIGHT - timedelta(days=1), fields_changed=False)
    assert _history(db_url, "acc-0000") == [(48.0, "red"), (30.0, "red"), (12.0, "red")]

    async def night() -> NightlyResult:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=scenarios.test_server_path(), runtime=quiet_runtime()
        ) as env:
            crm = BuiltinCrm(db_url)
            pages = DyingOnce(db_url, crm, env.client, str(library), cards_folder)
            acts = [pages.recompute_health_page, *health.health_activities(db_url, crm, env.client, str(library),
                                                                            cards_folder)[1:]]
            async with build_worker(env.client, "nightly", acts):
                # the runs health.score_changed starts go to a queue no worker polls: they stay started
                request = NightlyInput("no-worker", at=NIGHT.isoformat(), page_size=50, pages_per_run=2)
                return await env.client.execute_workflow(
                    HEALTH_NIGHTLY_WORKFLOW, request, id=f"night-{uuid.uuid4().hex[:6]}", task_queue="nightly",
                    result_type=NightlyResult,
                )

    result = asyncio.run(night())

    assert DyingOnce.died == 1
    # six full pages, then the empty one after the last cursor
    assert (result.pages, result.accounts, result.changed, result.emitted) == (7, 300, 150, 150)
    assert _history(db_url, "acc-0000")[-1] == (72.0, "yellow") and len(_history(db_url, "acc-0000")) == 4
    assert _history(db_url, "acc-0100") == _history(db_url, "acc-0000")  # on the page that died once: once
    assert len(_history(db_url, "acc-0001")) == 3  # still red: no new row
    sent = _received(db_url, "health.score_changed")
    assert len(sent) == 150 and len({r.id for r in sent}) == 150
    assert all(r.answer["runs"] == [] for r in sent)  # red -> yellow starts no risk run
    with session(db_url) as s:
        fields = {a.id: a.fields for a in s.scalars(select(t.Account))}
        rows = s.scalar(select(func.count()).select_from(t.HealthHistory))
        values = s.scalar(select(func.count()).select_from(t.HealthEventValue))
    assert (fields["acc-0100"]["health_score"], fields["acc-0100"]["health_band"]) == (72.0, "yellow")
    assert "health_score" not in fields["acc-0101"]  # not changed that night: not written
    assert rows == 300 * 3 + 150
    assert values == 150 * 3  # the tickets that left the window are forgotten; the odd accounts' stay


def test_the_nightly_pass_starts_the_runs_its_changes_trigger_and_reaches_waiting_runs(
    dev_server: DevServer, tmp_path: Path
) -> None:
    """A night's changes taken as a batch do what the intake does: a playbook triggered by health.score_changed
    starts once per account, and a live run waiting for it gets it (on the dev server: runs have search
    attributes). The runs go to a queue no worker polls: they stay started."""
    from engine.language.library import Library
    from engine.runtime.intake import take_event

    library, cards_folder = _folders(tmp_path, {"health-risk": RISK.replace('band == "red"', 'band == "yellow"'),
                                               "health-watch": WATCH})
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    cards = health.read_scorecards(cards_folder)
    tag = uuid.uuid4().hex[:6]
    accounts = [{"id": f"acc-{tag}-{i:02d}", "name": f"Shop {i}", "plan": "pro", "mrr": 50} for i in range(12)]
    with session(db_url) as s:  # 3 urgent tickets 30.5 days before the night: red the day before, yellow that night
        for a in accounts:
            s.add(t.Account(id=a["id"], name=a["name"], fields={"plan": "pro", "mrr": 50}))
        s.flush()
        for a in accounts:
            for n in range(3):
                event = Event("support.ticket_opened", {"priority": "urgent"}, f"t-{a['id']}-{n}",
                              (NIGHT - timedelta(days=30, hours=12)).isoformat(), a["id"])
                health.update_for_event(s, a, event, cards, NIGHT - timedelta(days=1), fields_changed=False)
    watched = accounts[0]["id"]

    async def night() -> tuple[str, NightlyResult]:
        client = await rt.connect(Settings(environment="dev", temporal_address=dev_server.address),
                                  runtime=quiet_runtime())
        playbooks = dict(Library.load(str(library)).playbooks)
        flagged = await take_event(client, "no-worker", db_url, playbooks,
                                   Event("account.flagged", {}, f"flag-{watched}", None, watched))
        crm = BuiltinCrm(db_url)
        queue = f"nightly-{tag}"
        async with build_worker(client, queue, health.health_activities(db_url, crm, client, str(library),
                                                                          cards_folder)):
            request = NightlyInput("no-worker", at=NIGHT.isoformat(), page_size=5, pages_per_run=2)
            result = await client.execute_workflow(
                HEALTH_NIGHTLY_WORKFLOW, request, id=f"night-{tag}", task_queue=queue, result_type=NightlyResult,
            )
        return flagged.runs[0].run_id, result

    watch_run, result = asyncio.run(night())

    assert (result.accounts, result.changed, result.emitted) == (12, 12, 12)
    sent = {r.account_id: r.answer for r in _received(db_url, "health.score_changed")}
    assert sorted(sent) == sorted(a["id"] for a in accounts)
    for account_id, answer in sent.items():
        assert answer["runs"] == [{"playbook": "health-risk", "run_id": f"health-risk/{account_id}",
                                   "status": "started"}]
        assert answer["delivered_to"] == ([watch_run] if account_id == watched else [])


# ------------------------------------------------------------------------------------------------- PostgreSQL


def test_scores_are_kept_on_postgresql(postgres: str, tmp_path: Path) -> None:
    _, cards_folder = _folders(tmp_path, {})
    cards = health.read_scorecards(cards_folder)
    account = {"id": f"acc-{uuid.uuid4().hex[:6]}", "plan": "pro", "mrr": 500}
    now = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)

    def ticket(n: int) -> Event:
        return Event("support.ticket_opened", {"priority": "urgent"}, f"pg-{account['id']}-{n}", None, account["id"])

    outcomes = []
    for n, event in enumerate([ticket(1), ticket(2), ticket(2), ticket(3)]):
        with session(postgres) as s:
            changes = health.update_for_event(s, account, event, cards, now + timedelta(minutes=n))
            outcomes.append([(c.score, c.band, c.previous, c.notable) for c in changes])
    # the repeated ticket 2 records nothing: it answers the change it made (its health.score_changed, by id: once)
    assert outcomes == [[(76.0, "green", None, False)], [(58.0, "yellow", 76.0, True)],
                        [(58.0, "yellow", 76.0, True)], [(40.0, "red", 58.0, True)]]
    with session(postgres) as s:
        [kept] = health.health_of(s, account["id"])
        values = s.scalar(select(func.count()).select_from(t.HealthEventValue)
                          .where(t.HealthEventValue.account_id == account["id"]))
    assert (kept.score, kept.previous, values) == (40.0, 58.0, 3)
    # a month and a day later the tickets have left the window: the nightly recompute finds it
    with session(postgres) as s:
        [later] = health.recompute(s, account, cards, now + timedelta(days=31), cause="nightly/x")
    assert (later.score, later.band, later.previous_band, later.notable) == (100.0, "green", "red", True)

    # two urgent tickets of one account at once, the first's transaction still open when the second updates: the
    # second waits for it (the score row locked) and counts both tickets
    busy = {"id": f"acc-{uuid.uuid4().hex[:6]}", "plan": "pro", "mrr": 500}
    with session(postgres) as s:
        health.recompute(s, busy, cards, now)
    first_done = threading.Event()

    def post(n: int) -> None:
        event = Event("support.ticket_opened", {"priority": "urgent"}, f"pg-busy-{busy['id']}-{n}", None, busy["id"])
        if n == 1:
            first_done.wait(5)
        with session(postgres) as s:
            health.update_for_event(s, busy, event, cards, now + timedelta(seconds=1 + n))
            if n == 0:
                first_done.set()
                time.sleep(0.5)  # the second starts and must wait for this commit

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(post, range(2)))
    assert [score for score, _ in _history(postgres, busy["id"])] == [100.0, 76.0, 58.0]


# ------------------------------------------------------------------------------------------------- HubSpot


def test_hubspot_gets_the_scores_as_company_properties_in_batches_of_100() -> None:
    sent: list[dict[str, Any]] = []

    def hubspot(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/crm/v3/objects/companies/batch/update")
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "COMPLETE", "results": []})

    crm = HubSpotCrm("token", transport=httpx.MockTransport(hubspot), health_score_property="cs_health",
                     health_band_property="cs_band")
    writes = [HealthWrite(f"acc-{i}", 40.5 if i % 2 else None, "red" if i % 2 else None) for i in range(150)]
    crm.write_health(writes, datetime(2026, 11, 10, tzinfo=UTC))

    assert [len(body["inputs"]) for body in sent] == [100, 50]
    assert sent[0]["inputs"][1] == {"id": "acc-1", "idProperty": "playbook_account_id",
                                    "properties": {"cs_health": "40.5", "cs_band": "red"}}
    assert sent[0]["inputs"][0]["properties"] == {"cs_health": "", "cs_band": ""}  # no score: the properties cleared
