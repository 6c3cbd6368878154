"""POST /webhooks/hubspot, signed as HubSpot signs it (v3): base64 of HMAC-SHA256 with the app's client secret over
method + URI + body + timestamp (milliseconds), computed here the way HubSpot's docs say, and checked against the
worked example HubSpot publishes with its official Python client (hubspot/utils/signature.py's tests).

The refusals run the real app in process without Temporal (nothing reaches it). Events that start and reach runs
run on a real Temporal dev server (no worker: a started run stays running with its first task pending, which is
all starting and delivering need).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.service import RPCError, RPCStatusCode

from api import hubspot_events as hs
from api.app import create_app
from engine.runtime.settings import Settings
from engine.storage.db import migrate
from tests.asgi import call, serving
from tests.fakes import FakeHubSpot, closed_port_url, fake_hubspot_fixture  # noqa: F401 - the fixture
from tests.fakes.fake_hubspot import TOKEN
from tests.paths import PLAYBOOKS

SECRET = "3e0f7a2c-5b1d-4c8e-9f6a-1d2b3c4d5e6f"  # a HubSpot app's client secret
URL = "http://testserver/webhooks/hubspot"
SIGNATURE = "X-HubSpot-Signature-v3"
TIMESTAMP = "X-HubSpot-Request-Timestamp"


def now_ms() -> int:
    return int(time.time() * 1000)


def sign(body: bytes, uri: str = URL, at_ms: int | None = None, secret: str = SECRET,
         method: str = "POST") -> dict[str, str]:
    """The headers HubSpot sends: its docs' steps, written out here rather than taken from the code under test."""
    stamp = str(now_ms() if at_ms is None else at_ms)
    source = f"{method}{uri}".encode() + body + stamp.encode()  # requestMethod + requestUri + requestBody + timestamp
    digest = hmac.new(secret.encode(), source, hashlib.sha256).digest()
    return {SIGNATURE: base64.b64encode(digest).decode(), TIMESTAMP: stamp, "Content-Type": "application/json"}


def change(object_id: int, prop: str, value: str | None, event_id: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"eventId": event_id or uuid.uuid4().int % 10**9, "subscriptionId": 2468, "portalId": 62515,
            "appId": 1357, "occurredAt": now_ms() - 2000, "subscriptionType": "company.propertyChange",
            "attemptNumber": 0, "objectId": object_id, "propertyName": prop, "propertyValue": value,
            "changeSource": "CRM_UI", **extra}


def created(object_id: int, event_id: int | None = None) -> dict[str, Any]:
    return {"eventId": event_id or uuid.uuid4().int % 10**9, "subscriptionId": 1234, "portalId": 62515,
            "appId": 1357, "occurredAt": now_ms() - 2000, "subscriptionType": "company.creation",
            "attemptNumber": 0, "objectId": object_id, "changeFlag": "CREATED", "changeSource": "CRM_UI"}


def app_for(tmp_path: Path, **settings: Any) -> Any:
    values: dict[str, Any] = {"environment": "dev", "home": str(tmp_path), "library": str(PLAYBOOKS),
                              "hubspot_webhook_secret": SECRET, **settings}
    config = Settings(**values)
    migrate(config.db_url)
    return create_app(config, client=object())  # type: ignore[arg-type]  # nothing here reaches Temporal


def post(
    app: Any, body: bytes, headers: dict[str, Any] | None = None, path: str = "/webhooks/hubspot"
) -> httpx.Response:
    async def steps(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, content=body, headers=sign(body) if headers is None else headers)

    return call(app, steps)


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return app_for(tmp_path)


# ------------------------------------------------------------------------------------------- the signature


def test_the_signature_is_hubspots_own_worked_example() -> None:
    # the vector of HubSpot's official Python client (tests/spec/utils/test_signature.py, test_get_signature__v3)
    secret, body, uri, stamp = ("yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy", b"{'example_field':'example_value'}",
                                "https://www.example.com/webhook_uri", "1693657560000")
    published = "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
    assert hs.signature(secret, "POST", uri, body, stamp) == published
    assert sign(body, uri, int(stamp), secret)[SIGNATURE] == published  # and this test's own signer agrees
    at = int(stamp)
    assert hs.check_signature(secret, "POST", uri, body, published, stamp, now_ms=at + 1000) is None
    assert "more than 5 minutes ago" in (hs.check_signature(secret, "POST", uri, body, published, stamp,
                                                             now_ms=at + 300_001) or "")
    assert "does not match" in (hs.check_signature(secret, "POST", uri, body + b" ", published, stamp,
                                                    now_ms=at + 1000) or "")


def test_the_uri_is_decoded_as_hubspots_docs_list() -> None:
    # %3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B are decoded (either case); every other encoding stays
    own = "https://api.example.com/webhooks/hubspot?a=%3A%2f%3F%40%21%24%27%28%29%2A%2C%3B&b=x%20y%26z"
    assert hs.signed_uri(None, "", "", own) == "https://api.example.com/webhooks/hubspot?a=:/?@!$'()*,;&b=x%20y%26z"
    # behind a proxy: the public address, this path and the query as they came
    assert hs.signed_uri("https://cs.example.com/engine/", "/webhooks/hubspot", "t=%40", "http://10.0.0.7:8000/x") == \
        "https://cs.example.com/engine/webhooks/hubspot?t=@"


def test_a_valid_signature_is_accepted(app: Any) -> None:
    body = json.dumps([
        {"eventId": 1, "subscriptionType": "deal.creation", "objectId": 77, "portalId": 62515},
        {"eventId": 2, "subscriptionType": "contact.propertyChange", "objectId": 78, "propertyName": "email",
         "propertyValue": "anna@kraus.example"},
        # an association change has no objectId (fromObjectId, toObjectId): ignored, not a 400 for the request
        {"eventId": 3, "subscriptionType": "contact.associationChange", "fromObjectId": 78, "toObjectId": 4711,
         "associationType": "CONTACT_TO_COMPANY", "associationRemoved": False},
    ]).encode()
    answer = post(app, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"events": 3, "taken": 0, "runs_started": 0, "delivered_to_runs": 0, "duplicates": 0,
                             "skipped": 0, "ignored": 3}
    # a request HubSpot signed four minutes ago (a slow delivery) is still taken
    assert post(app, body, sign(body, at_ms=now_ms() - 240_000)).status_code == 200
    assert post(app, b"[]").json()["events"] == 0


def test_bad_stale_and_future_signatures_are_refused(app: Any) -> None:
    body = json.dumps([{"eventId": 1, "subscriptionType": "deal.creation", "objectId": 77}]).encode()
    cases: dict[str, dict[str, Any]] = {
        "another secret": sign(body, secret="not-the-client-secret"),
        "body changed after signing": sign(body.replace(b"77", b"78")),
        "another URI": sign(body, uri="https://elsewhere.example/webhooks/hubspot"),
        "another method": sign(body, method="PUT"),
        "six minutes old": sign(body, at_ms=now_ms() - 360_000),
        "five minutes in the future": sign(body, at_ms=now_ms() + 300_000),
        "seconds, not milliseconds": sign(body, at_ms=int(time.time())),
        "no signature": {TIMESTAMP: str(now_ms())},
        "no timestamp": {SIGNATURE: sign(body)[SIGNATURE]},
        "timestamp not a number": {**sign(body), TIMESTAMP: "soon"},
        "a timestamp of 5,000 digits": {**sign(body), TIMESTAMP: "9" * 5000},
        "garbage signature": {**sign(body), SIGNATURE: "not base64 ✓".encode()},  # raw UTF-8 bytes
    }
    for case, headers in cases.items():
        answer = post(app, body, headers)
        assert answer.status_code == 401, (case, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json"), case
        assert answer.json()["detail"], case
    assert "more than 5 minutes ago" in post(app, body, cases["six minutes old"]).json()["detail"]
    assert "in the future" in post(app, body, cases["five minutes in the future"]).json()["detail"]
    # the signature covers the body byte for byte: HubSpot's own bytes were signed, not a re-serialization
    assert post(app, body, sign(body)).status_code == 200


def test_without_a_secret_the_webhook_is_refused_with_a_reason(tmp_path: Path) -> None:
    app = app_for(tmp_path, hubspot_webhook_secret=None)
    answer = post(app, b"[]")
    assert answer.status_code == 404 and "PLAYBOOK_HUBSPOT_WEBHOOK_SECRET" in answer.json()["detail"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "the body is not JSON"),
    (b'{"eventId": 1}', "the body must be a JSON array of HubSpot events"),
    (b"[1]", "[0]: Input should be an object"),
    (b'[{"subscriptionType": "company.creation", "objectId": 5}]', "[0].eventId: Field required"),
    (b'[{"eventId": 1, "subscriptionType": "company.creation"}]', "[0].objectId: Field required for company.creation"),
    (b'[{"eventId": 1, "subscriptionType": "company.creation", "objectId": "acme"}]', "[0].objectId: Input should be"),
    (b'[{"eventId": 1, "subscriptionType": "", "objectId": 5}]', "[0].subscriptionType: String should have"),
    (b'[{"eventId": 1, "subscriptionType": "company.creation", "objectId": 5, "occurredAt": "today"}]',
     "[0].occurredAt: Input should be"),
])
def test_a_malformed_body_is_a_400_with_the_reason(app: Any, body: bytes, reason: str) -> None:
    answer = post(app, body)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["detail"], answer.json()
    assert answer.json()["errors"], answer.json()


def test_behind_a_proxy_the_public_url_is_what_hubspot_signed(tmp_path: Path) -> None:
    app = app_for(tmp_path, public_url="https://cs.example.com/engine")
    body = b"[]"
    public = sign(body, uri="https://cs.example.com/engine/webhooks/hubspot")
    assert post(app, body, public).status_code == 200
    assert post(app, body, sign(body, uri=URL)).status_code == 401  # the address the proxy called is not it
    # a query string HubSpot was given in the target URL is part of what it signs (with its listed encodings decoded)
    with_query = sign(body, uri="https://cs.example.com/engine/webhooks/hubspot?portal=62515&tag=a:b")
    assert post(app, body, with_query, path="/webhooks/hubspot?portal=62515&tag=a%3Ab").status_code == 200


def test_the_event_id_is_the_same_for_every_delivery_and_differs_between_events() -> None:
    first = hs.parse_batch(json.dumps([change(4711, "lifecyclestage", "customer", event_id=99)]).encode())[0]
    retried = hs.parse_batch(json.dumps([change(4711, "lifecyclestage", "customer", event_id=99,
                                                attemptNumber=3)]).encode())[0]
    other_property = hs.parse_batch(json.dumps([change(4711, "name", "Kraus", event_id=99)]).encode())[0]
    assert hs.engine_event_id(first) == hs.engine_event_id(retried) == "hubspot:62515:2468:99:4711:lifecyclestage"
    assert hs.engine_event_id(other_property) != hs.engine_event_id(first)
    event = hs.to_event(first, "acc-kraus")
    assert (event.type, event.account_id) == ("crm.company_changed", "acc-kraus")
    assert event.data["property"] == "lifecyclestage" and event.data["value"] == "customer"
    assert event.data["hubspot_id"] == "4711" and event.data["source"] == "CRM_UI"
    assert event.occurred_at == event.data["occurred_at"] and event.occurred_at.endswith("+00:00")
    # the developer platform's generic subscriptions name companies by object type id
    generic = hs.parse_batch(json.dumps([{**change(4711, "lifecyclestage", "lead"),
                                          "subscriptionType": "object.propertyChange",
                                          "objectTypeId": "0-2"}]).encode())[0]
    assert hs.engine_type(generic) == "crm.company_changed"
    assert hs.engine_type(generic.model_copy(update={"object_type_id": "0-1"})) is None  # a contact: ignored
    # HubSpot sends values as text; should a number come, it is the text it would be
    number = hs.parse_batch(json.dumps([{**change(4711, "health_score", "x"), "propertyValue": 42}]).encode())[0]
    assert hs.to_event(number, "acc-kraus").data["value"] == "42"
    cleared = hs.parse_batch(json.dumps([change(4711, "health_score", "")]).encode())[0]
    assert hs.to_event(cleared, "acc-kraus").data["value"] is None


# ------------------------------------------------------------------------------- events that start runs

LIFECYCLE = """\
id: lifecycle-stage
title: Lifecycle stage changed
trigger:
  event: crm.company_changed
  when: event.data.property == "lifecyclestage"
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - id: next_change
    wait_for: { event: crm.company_changed, timeout: 30d }
"""
HEALTH = """\
id: health-drop
title: Health score under 50
trigger:
  event: crm.company_changed
  when: event.data.property == "health_score" and event.data.value is not none and event.data.value | float < 50
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - wait: 30d
"""
AT_RISK = """\
id: at-risk
title: Health score under 50, as the CRM has it
trigger:
  event: crm.company_changed
  when: event.data.property == "health_score" and account.health_score < 50
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - wait: 30d
"""
WELCOME = """\
id: new-company
title: A new company in the CRM
trigger:
  event: crm.company_created
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - wait: 30d
"""


@pytest.fixture(scope="module")
def temporal() -> Iterator[tuple[asyncio.AbstractEventLoop, Any]]:
    from engine.runtime.devstack import DevServer

    home = Path(tempfile.mkdtemp(prefix="hubspot-webhook-"))
    server = DevServer(home / "temporal", port=0, ui_port=0)
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(server.start())
    try:
        yield loop, client
    finally:
        server.stop()
        loop.close()
        shutil.rmtree(home, ignore_errors=True)


def engine_app(tmp_path: Path, client: Any, **settings: Any) -> Any:
    library = tmp_path / "library"
    library.mkdir()
    (library / "lifecycle-stage.yaml").write_text(LIFECYCLE)
    (library / "new-company.yaml").write_text(WELCOME)
    (library / "health-drop.yaml").write_text(HEALTH)
    (library / "at-risk.yaml").write_text(AT_RISK)
    config = Settings(environment="dev", home=str(tmp_path), library=str(library),
                      task_queue=f"hubspot-{uuid.uuid4().hex[:6]}", hubspot_webhook_secret=SECRET, **settings)
    migrate(config.db_url)
    return create_app(config, client=client)


async def signals_of(client: Any, workflow_id: str) -> int:
    history = [e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
    return sum(1 for e in history if e.HasField("workflow_execution_signaled_event_attributes"))


@pytest.mark.timeout(120)
def test_a_lifecycle_stage_change_starts_its_playbook_once(temporal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    loop, client = temporal
    app = engine_app(tmp_path, client)
    company = 4711  # with the built-in CRM, HubSpot's objectId is the account id
    batch = [
        change(company, "lifecyclestage", "customer", event_id=501),
        change(company, "name", "Kraus GmbH", event_id=502),  # not the trigger's property: reaches the run it started
        created(company + 1, event_id=503),
        {"eventId": 504, "subscriptionType": "contact.creation", "objectId": 99, "portalId": 62515},
    ]
    body = json.dumps(batch).encode()

    async def scenario() -> None:
        async with serving(app) as http:
            started = time.monotonic()
            answer = await http.post("/webhooks/hubspot", content=body, headers=sign(body))
            took = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"events": 4, "taken": 3, "runs_started": 2, "delivered_to_runs": 1,
                                     "duplicates": 0, "skipped": 0, "ignored": 1}
            assert took < 5, took  # HubSpot waits five seconds for the answer
            run = client.get_workflow_handle(f"lifecycle-stage/{company}")
            assert (await run.describe()).status.name == "RUNNING"
            assert (await client.get_workflow_handle(f"new-company/{company + 1}").describe()).status.name == \
                "RUNNING"
            assert await signals_of(client, run.id) == 1  # the name change, after the stage change started it

            # HubSpot redelivers the request (attempt 1, signed afresh): nothing starts, nothing reaches the run
            again = json.dumps([{**e, "attemptNumber": 1} for e in batch]).encode()
            answer = await http.post("/webhooks/hubspot", content=again, headers=sign(again))
            assert answer.json() == {"events": 4, "taken": 0, "runs_started": 0, "delivered_to_runs": 0,
                                     "duplicates": 3, "skipped": 0, "ignored": 1}
            assert await signals_of(client, run.id) == 1

            # another stage change later is a new event: it reaches the live run, and starts nothing
            later = json.dumps([change(company, "lifecyclestage", "evangelist", event_id=601)]).encode()
            answer = await http.post("/webhooks/hubspot", content=later, headers=sign(later))
            assert answer.json()["runs_started"] == 0 and answer.json()["delivered_to_runs"] == 1
            assert await signals_of(client, run.id) == 2

    loop.run_until_complete(scenario())


@pytest.mark.timeout(120)
def test_a_property_value_is_text_that_a_trigger_can_read_as_a_number(temporal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    loop, client = temporal
    app = engine_app(tmp_path, client)
    # HubSpot sends every value as text, and empty text when a property is cleared (null here)
    body = json.dumps([change(815, "health_score", "42"), change(816, "health_score", "80"),
                       change(817, "health_score", ""), change(818, "mrr", "12"),
                       change(819, "health_score", None)]).encode()

    async def scenario() -> dict[str, int]:
        async with serving(app) as http:
            answer = await http.post("/webhooks/hubspot", content=body, headers=sign(body))
            assert answer.status_code == 200, answer.text
            assert (await client.get_workflow_handle("health-drop/815").describe()).status.name == "RUNNING"
            return dict(answer.json())

    assert loop.run_until_complete(scenario()) == {"events": 5, "taken": 5, "runs_started": 1,
                                                   "delivered_to_runs": 0, "duplicates": 0, "skipped": 0,
                                                   "ignored": 0}


# ------------------------------------------------------------------------------------- with HubSpot as the CRM


@pytest.mark.timeout(120)
def test_with_hubspot_a_company_is_its_account_id_property_and_one_without_is_skipped(  # type: ignore[no-untyped-def]
    temporal, fake_hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    loop, client = temporal
    fake_hubspot.add_company("4711", name="Kraus GmbH", playbook_account_id="acc-kraus", lifecyclestage="customer")
    fake_hubspot.add_company("4712", name="No Id AG", lifecyclestage="customer")  # not (yet) known to the product
    app = engine_app(tmp_path, client, crm_provider="hubspot", hubspot_token=TOKEN,
                     hubspot_base_url=fake_hubspot.url)
    body = json.dumps([change(4711, "lifecyclestage", "customer"), change(4712, "lifecyclestage", "customer"),
                       change(4711, "name", "Kraus GmbH & Co. KG")]).encode()

    async def scenario() -> dict[str, int]:
        async with serving(app) as http:
            answer = await http.post("/webhooks/hubspot", content=body, headers=sign(body))
            assert answer.status_code == 200, answer.text
            run = client.get_workflow_handle("lifecycle-stage/acc-kraus")
            assert (await run.describe()).status.name == "RUNNING"
            assert await signals_of(client, run.id) == 1  # the name change reached it
            return dict(answer.json())

    assert loop.run_until_complete(scenario()) == {"events": 3, "taken": 2, "runs_started": 1,
                                                   "delivered_to_runs": 1, "duplicates": 0, "skipped": 1,
                                                   "ignored": 0}
    # the account ids of the request's companies came from one batch read
    reads = [r for r in fake_hubspot.requests if r.path == "/crm/v3/objects/companies/batch/read"
             and [i["id"] for i in (r.json or {}).get("inputs", [])] == ["4711", "4712"]]
    assert len(reads) == 1, [(r.method, r.path) for r in fake_hubspot.requests]


def test_when_hubspot_does_not_answer_the_request_is_a_503_hubspot_retries(tmp_path: Path) -> None:
    app = app_for(tmp_path, crm_provider="hubspot", hubspot_token=TOKEN, hubspot_base_url=closed_port_url())
    body = json.dumps([change(4711, "lifecyclestage", "customer")]).encode()
    answer = post(app, body)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] and "HubSpot sends the request again" in answer.json()["detail"]
    assert answer.headers["content-type"].startswith("application/problem+json")
    # events that need no account id do not need HubSpot
    ignored = json.dumps([{"eventId": 9, "subscriptionType": "contact.creation", "objectId": 5}]).encode()
    assert post(app, ignored).status_code == 200


@pytest.mark.timeout(120)
def test_with_hubspot_a_trigger_sees_the_account_as_hubspot_has_it_typed(  # type: ignore[no-untyped-def]
    temporal, fake_hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    loop, client = temporal
    fake_hubspot.add_company("5001", name="Low GmbH", playbook_account_id="acc-low", health_score="42")
    fake_hubspot.add_company("5002", name="High AG", playbook_account_id="acc-high", health_score="91")
    app = engine_app(tmp_path, client, crm_provider="hubspot", hubspot_token=TOKEN,
                     hubspot_base_url=fake_hubspot.url)
    body = json.dumps([change(5001, "health_score", "42"), change(5002, "health_score", "91")]).encode()

    async def scenario() -> list[str]:
        async with serving(app) as http:
            answer = await http.post("/webhooks/hubspot", content=body, headers=sign(body))
            assert answer.status_code == 200, answer.text
            assert answer.json()["runs_started"] == 2, answer.json()  # at-risk and health-drop, for acc-low
            started = []
            for workflow_id in ("at-risk/acc-low", "at-risk/acc-high"):
                try:
                    await client.get_workflow_handle(workflow_id).describe()
                    started.append(workflow_id)
                except RPCError as err:
                    assert err.status == RPCStatusCode.NOT_FOUND, err
            return started

    # account.health_score is HubSpot's number, read through the CRM when the event was taken
    assert loop.run_until_complete(scenario()) == ["at-risk/acc-low"]
