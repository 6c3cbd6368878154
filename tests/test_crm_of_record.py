"""One CRM of record: in hubspot mode the intake, the triggers and the schedule segments read and write HubSpot.

The real app in-process (POST /events over httpx's ASGI transport) on a real Temporal dev server, with
PLAYBOOK_CRM_PROVIDER=hubspot against the fake HubSpot on 127.0.0.1 (tests/fakes/fake_hubspot.py): the event's
company and contacts land in the fake, triggers follow what the fake holds, a tick's segment is judged on companies
that exist only there, a HubSpot failure is a 503 with its reason and the same event can be sent again, and the
engine's own accounts tables stay empty. No worker runs the playbooks: a started run waits in its queue, which is
all these checks need. The built-in mode is covered by tests/test_intake.py, tests/test_schedules.py and
tests/test_api_e2e.py; its account_page is checked here.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.crm import BuiltinCrm, read_accounts, seed
from activities.hubspot_crm import HubSpotCrm
from activities.segments import SegmentActivities
from activities.types import AccountPage, AccountSnapshot
from api.app import create_app
from api.security import create_token
from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, PlaybookScheduleTick, TickInput, TickResult
from engine.runtime.devstack import DevServer
from engine.runtime.schedules import ScheduleActivities
from engine.runtime.settings import Settings
from engine.runtime.workers import sandbox_runner
from engine.storage.db import migrate, session
from tests.asgi import serving
from tests.fakes import FakeHubSpot
from tests.fakes.fake_hubspot import TOKEN

PRO_WELCOME = """\
id: pro-welcome
title: Pro welcome
trigger:
  event: account.signed_up
  when: account.plan == "pro"
enrollment:
  key: "{{ account.id }}"
  reenroll: always
steps:
  - wait: 30d
"""
UNOWNED = """\
id: unowned
title: Nobody owns it
trigger:
  event: account.pinged
  when: account.owner is none
enrollment:
  key: "{{ account.id }}"
  reenroll: always
steps:
  - wait: 30d
"""
PRO_SURVEY = """\
id: pro-survey
title: Pro survey
trigger:
  schedule:
    cron: "0 9 1 1 *"
    accounts: account.plan == "pro"
enrollment:
  key: "{{ account.id }}"
  reenroll: after_exit
steps:
  - wait: 30d
"""


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    client: Client
    hub: FakeHubSpot
    settings: Settings
    library: Path
    token: str

    def api(self, steps: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        """Runs ``steps`` against the app (its lifespan run: AppState builds its CRM provider from the settings)."""
        app = create_app(self.settings, self.client)

        async def go() -> Any:
            async with serving(app) as http:
                return await steps(http)

        return self.loop.run_until_complete(go())

    def post_events(self, *events: dict[str, Any]) -> list[httpx.Response]:
        auth = {"Authorization": f"Bearer {self.token}"}

        async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
            return [await http.post("/events", json=e, headers=auth) for e in events]

        return self.api(steps)

    def builtin_accounts(self) -> int:
        with session(self.settings.db_url) as s:
            return int(s.execute(_COUNT_ACCOUNTS).scalar_one()) + int(s.execute(_COUNT_CONTACTS).scalar_one())


_COUNT_ACCOUNTS = text("select count(*) from accounts")
_COUNT_CONTACTS = text("select count(*) from contacts")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("crm-of-record")
    library = home / "library"
    library.mkdir()
    for name, text_ in (("pro-welcome", PRO_WELCOME), ("unowned", UNOWNED), ("pro-survey", PRO_SURVEY)):
        (library / f"{name}.yaml").write_text(text_)
    db_url = f"sqlite:///{home / 'engine.db'}"
    migrate(db_url)
    hub = FakeHubSpot()
    hub.start()
    # the portal's admin created a "plan" company property for the playbooks
    hub.company_properties["plan"] = ("string", "text", False, [])
    hub.add_owner("101", "anna@vendor.example", "Anna", "Berg")
    server = DevServer(home / "temporal", port=0, ui_port=0)
    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(server.start())
        settings = Settings(
            environment="dev", database_url=db_url, library=str(library), task_queue="crm-of-record",
            crm_provider="hubspot", hubspot_token=TOKEN, hubspot_base_url=hub.url,
        )
        yield World(loop, client, hub, settings, library, create_token(db_url, "product", "system"))
    finally:
        server.stop()
        hub.stop()
        loop.close()


def _event(kind: str, account_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"evt-{uuid.uuid4().hex[:10]}", "type": kind, "account_id": account_id, "data": {}, **extra}


def _statuses(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {r["playbook"]: r["status"] for r in response.json()["runs"]}


def test_an_event_upserts_its_company_and_contacts_in_hubspot_and_starts_from_what_hubspot_holds(world: World):
    account = f"acc-{uuid.uuid4().hex[:6]}"
    event = _event(
        "account.signed_up", account,
        account={"name": "Nordlicht GmbH", "plan": "pro", "owner": "101"},
        contacts=[{"email": "eva@nordlicht.example", "first_name": "Eva"},
                  {"email": "ole@nordlicht.example", "first_name": "Ole"}],
    )
    first, again = world.post_events(event, event)

    assert _statuses(first) == {"pro-welcome": "started"}  # judged on the company read back: plan "pro"
    company_id = world.hub.company_by("playbook_account_id", account)
    assert company_id is not None
    company = world.hub.companies[company_id]
    assert (company["name"], company["plan"], company["hubspot_owner_id"]) == ("Nordlicht GmbH", "pro", "101")
    contacts = world.hub.contacts_of(company_id)
    assert [(c["email"], c["firstname"]) for c in contacts] == [
        ("eva@nordlicht.example", "Eva"), ("ole@nordlicht.example", "Ole")
    ]
    # the same event id again: answered from the engine's database, HubSpot is not written again
    upserts = len(world.hub.requests_to("POST", "/crm/v3/objects/companies/batch/upsert"))
    assert again.json()["duplicate"] is True and again.json()["runs"] == first.json()["runs"]
    assert len(world.hub.requests_to("POST", "/crm/v3/objects/companies/batch/upsert")) == upserts
    assert world.builtin_accounts() == 0  # nothing of accounts or contacts in the engine's tables


def test_a_trigger_follows_a_property_set_only_in_hubspot(world: World):
    account = f"acc-{uuid.uuid4().hex[:6]}"
    world.hub.add_company("7001", playbook_account_id=account, name="Fjord AS", plan="basic", hubspot_owner_id="101")
    world.hub.add_contact("7101", "7001", email="ida@fjord.example", firstname="Ida")

    [basic] = world.post_events(_event("account.signed_up", account))  # the event carries no account fields
    assert _statuses(basic) == {}  # HubSpot says basic: the trigger is false
    world.hub.companies["7001"]["plan"] = "pro"  # someone upgrades the company in HubSpot
    [pro] = world.post_events(_event("account.signed_up", account))
    assert _statuses(pro) == {"pro-welcome": "started"}
    # an owned company does not start the playbook for unowned accounts; an account HubSpot does not have does:
    # the trigger sees it as {"id", "owner": None}, as the built-in CRM shows an unknown account
    unknown = f"acc-{uuid.uuid4().hex[:6]}"
    owned, missing = world.post_events(_event("account.pinged", account), _event("account.pinged", unknown))
    assert _statuses(owned) == {}
    assert _statuses(missing) == {"unowned": "started"}
    assert world.hub.company_by("playbook_account_id", unknown) is None  # an event without fields creates nothing
    assert world.builtin_accounts() == 0


def test_hubspot_failing_during_intake_is_a_503_with_its_reason_and_the_event_can_be_sent_again(world: World):
    account = f"acc-{uuid.uuid4().hex[:6]}"
    event = _event("account.signed_up", account, account={"name": "Kraus KG", "plan": "pro"})
    upsert = "/crm/v3/objects/companies/batch/upsert"
    world.hub.fail_next(1, 503, body={"status": "error", "message": "Service Unavailable"}, path=upsert)
    [down] = world.post_events(event)
    assert down.status_code == 503, down.text
    assert down.headers["content-type"].startswith("application/problem+json")
    assert down.headers["retry-after"] == "5"
    detail = down.json()["detail"]
    assert "the CRM (hubspot) failed writing the account" in detail and "HubSpot answered 503" in detail
    assert "send the same event again" in detail

    # rate limited: the wait HubSpot asks for is the Retry-After of the 503
    limited = {"status": "error", "message": "You have reached your ten secondly limit.", "errorType": "RATE_LIMIT",
               "category": "RATE_LIMITS", "policyName": "TEN_SECONDLY_ROLLING"}
    world.hub.fail_next(1, 429, body=limited, headers={"Retry-After": "3"}, path=upsert)
    [throttled] = world.post_events(event)
    assert throttled.status_code == 503 and throttled.headers["retry-after"] == "3", throttled.text
    assert "TEN_SECONDLY_ROLLING" in throttled.json()["detail"]

    # the read after the write failing: a 503 too
    world.hub.fail_next(1, 502, path="/crm/v3/objects/companies/batch/read")
    [unreadable] = world.post_events(event)
    assert unreadable.status_code == 503 and "failed reading the account" in unreadable.json()["detail"]

    [sent_again] = world.post_events(event)  # nothing was remembered: the same event id starts the run now
    assert sent_again.json()["duplicate"] is False
    assert _statuses(sent_again) == {"pro-welcome": "started"}


def test_an_account_hubspot_refuses_is_a_422_with_its_reason(world: World):
    account = f"acc-{uuid.uuid4().hex[:6]}"
    [refused] = world.post_events(_event("account.signed_up", account, account={"name": "X", "owner": "999"}))
    assert refused.status_code == 422, refused.text
    assert "the CRM (hubspot) refused the account" in refused.json()["detail"]
    assert "999 is not a valid owner id" in refused.json()["detail"]


class ThreadRecordingCrm(HubSpotCrm):
    """HubSpotCrm that notes the thread each of its reads runs on (a spy: the calls go to the fake as they are)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[tuple[str, int]] = []

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
        self.threads.append(("get_accounts", threading.get_ident()))
        return super().get_accounts(account_ids)

    def account_page(self, after: str | None, limit: int) -> AccountPage:
        self.threads.append(("account_page", threading.get_ident()))
        return super().account_page(after, limit)


def test_a_tick_judges_its_segment_on_companies_that_exist_only_in_hubspot(world: World):
    tag = uuid.uuid4().hex[:4]
    for i in range(130):  # two search pages of 100
        world.hub.add_company(str(80_000 + i), playbook_account_id=f"seg-{tag}-{i:03d}", name=f"Shop {i}",
                              plan="pro" if i % 3 == 0 else "basic")
    world.hub.add_company("90000", name="Not a customer", plan="pro")  # no account id: not the product's
    expected = {c["playbook_account_id"] for c in world.hub.companies.values()
                if c.get("plan") == "pro" and c.get("playbook_account_id")}
    crm = ThreadRecordingCrm(TOKEN, base_url=world.hub.url, timeout=5)
    queue = f"ticks-{tag}"
    searches = len(world.hub.requests_to("POST", "/crm/v3/objects/companies/search"))

    async def scenario() -> tuple[TickResult, list[str], int]:
        acts = [SegmentActivities(world.settings.db_url, crm).segment_page,
                ScheduleActivities(crm, world.client, str(world.library)).start_scheduled_runs]
        async with Worker(world.client, task_queue=queue, workflows=[PlaybookScheduleTick], activities=acts,
                          activity_executor=ThreadPoolExecutor(4), workflow_runner=sandbox_runner()):
            handle = await world.client.start_workflow(
                TICK_WORKFLOW_NAME, TickInput("pro-survey", 'account.plan == "pro"', queue),
                id=f"tick/pro-survey-{tag}", task_queue=queue, result_type=TickResult,
            )
            result = await asyncio.wait_for(handle.result(), 60)  # a page failing retries for minutes
            pages = []
            async for event in handle.fetch_history_events():
                if event.HasField("activity_task_completed_event_attributes"):
                    pages += [p.data for p in event.activity_task_completed_event_attributes.result.payloads]

        async def started(account_id: str) -> bool:
            try:
                await world.client.get_workflow_handle(f"pro-survey/{account_id}").describe()
                return True
            except RPCError as err:
                assert err.status == RPCStatusCode.NOT_FOUND
                return False

        every = [f"seg-{tag}-{i:03d}" for i in range(130)]
        found = await asyncio.gather(*(started(a) for a in every))
        return result, [a for a, ok in zip(every, found, strict=True) if ok], max(len(p) for p in pages)

    result, started, biggest = world.loop.run_until_complete(scenario())
    ours = {a for a in expected if a.startswith(f"seg-{tag}-")}
    assert len(ours) == 44 and set(started) == ours
    assert result.started == len(expected) and result.skipped == 0  # the earlier tests' pro companies count too
    assert len(world.hub.requests_to("POST", "/crm/v3/objects/companies/search")) - searches >= 2  # paged
    # a page's result in the tick's history is ids and a cursor, not accounts: ~17 bytes an id
    assert biggest < 100 * 30, biggest
    # the provider is synchronous: never called on the worker's event loop (this thread runs it)
    loop_thread = threading.get_ident()
    assert {name for name, _ in crm.threads} == {"account_page", "get_accounts"}
    assert all(ident != loop_thread for _, ident in crm.threads), crm.threads
    assert world.builtin_accounts() == 0
    crm.close()


def test_builtin_account_page_keysets_by_id_and_reads_what_get_accounts_reads(tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(db_url)
    team = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"], "role": "lead"}]
    crm = BuiltinCrm(db_url)
    for i in range(5):
        seed(db_url, {"id": f"acc-{i}", "name": f"Shop {i}", "plan": "pro" if i % 2 else "basic",
                      **({"owner": "csm-1"} if i % 2 else {})},
             [{"email": f"owner{i}@shop.example", "first_name": f"O{i}"}], team)
    crm.add_tag("acc-3", "vip")
    at = datetime.now(UTC)
    crm.upsert_account({"id": "acc-5", "name": "Shop 5", "plan": "pro"}, [{"email": "x@shop.example"}], at)
    crm.upsert_account({"id": "acc-5", "plan": "basic"}, None, at)  # merged: the name and contacts stay

    pages, after = [], None
    while True:
        page = crm.account_page(after, 2)
        pages.append([a["id"] for a in page.accounts])
        accounts = {a["id"]: a for a in page.accounts}
        with session(db_url) as s:
            full = read_accounts(s, list(accounts))
        assert accounts == {i: snapshot.account for i, snapshot in full.items()}  # without the contacts
        if page.after is None:
            break
        after = page.after
    assert pages == [["acc-0", "acc-1"], ["acc-2", "acc-3"], ["acc-4", "acc-5"], []]
    assert crm.get_account("acc-3").account["tags"] == ["vip"]
    five = crm.get_account("acc-5")
    assert (five.account["name"], five.account["plan"]) == ("Shop 5", "basic")
    assert five.contacts == [{"email": "x@shop.example"}]
