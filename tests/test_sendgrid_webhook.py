"""POST /webhooks/sendgrid, signed as SendGrid signs it: ECDSA P-256 over the timestamp header and the raw body,
SHA-256, the signature base64 DER (sendgrid.helpers.eventwebhook). The key pair is made here; the public key
is configured as SendGrid shows it (base64 DER).

The database effects run in process on real SQLite (no Temporal: those events reach no run). Delivering
opens to a run runs on a real Temporal dev server with a real worker: a playbook that waits for email.opened
finishes when SendGrid reports the open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from api.app import create_app
from engine.language.library import Library
from engine.runtime.settings import Settings
from engine.storage import governance as gov
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.asgi import call
from tests.paths import PLAYBOOKS

PRIVATE = ec.generate_private_key(ec.SECP256R1())
PUBLIC_KEY = base64.b64encode(
    PRIVATE.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()
OTHER = ec.generate_private_key(ec.SECP256R1())
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def signed(body: bytes, key: ec.EllipticCurvePrivateKey = PRIVATE, at: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if at is None else at)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: stamp, "Content-Type": "application/json"}


def event(kind: str, email: str = "anna@kraus.example", **extra: Any) -> dict[str, Any]:
    return {"event": kind, "email": email, "timestamp": int(time.time()), "sg_event_id": uuid.uuid4().hex,
            "sg_message_id": "msg.filter0001", **extra}


@pytest.fixture
def app_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS),
                        sendgrid_webhook_public_key=PUBLIC_KEY)
    migrate(settings.db_url)
    return create_app(settings, client=object()), settings.db_url  # type: ignore[arg-type]


def post(app: Any, events: Any, headers: dict[str, str] | None = None, body: bytes | None = None) -> httpx.Response:
    raw = body if body is not None else json.dumps(events).encode()

    async def steps(http: httpx.AsyncClient) -> httpx.Response:
        sent = headers if headers is not None else signed(raw)
        return await http.post("/webhooks/sendgrid", content=raw, headers=sent)

    return call(app, steps)


def suppressions(db_url: str) -> dict[str, tuple[str, str]]:
    with session(db_url) as s:
        return {v.email: (v.reason, v.source) for v in gov.list_suppressions(s)}


def consent(db_url: str, email: str) -> dict[str, str]:
    with session(db_url) as s:
        return {c.category: c.status for c in gov.consents(s, email)}


# ------------------------------------------------------------------------------------------- the signature


def test_a_valid_signature_is_accepted(app_db) -> None:  # type: ignore[no-untyped-def]
    app, db_url = app_db
    answer = post(app, [event("processed")])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"events": 1, "suppressed": 0, "unsubscribed": 0, "delivered_to_runs": 0,
                             "duplicates": 0, "ignored": 1}


def test_a_bad_or_stale_signature_is_refused_and_changes_nothing(app_db) -> None:  # type: ignore[no-untyped-def]
    app, db_url = app_db
    body = json.dumps([event("bounce", "bob@acme.example")]).encode()
    cases = {
        "another key": signed(body, OTHER),
        "another body": signed(body + b" "),
        "eleven minutes old": signed(body, at=int(time.time()) - 660),
        "from the future": signed(body, at=int(time.time()) + 600),
        "no signature": {TIMESTAMP: str(int(time.time()))},
        "garbage signature": {**signed(body), SIGNATURE: "not base64!"},
        "timestamp not a number": {**signed(body), TIMESTAMP: "soon"},
    }
    for case, headers in cases.items():
        answer = post(app, None, headers=headers, body=body)
        assert answer.status_code == 401, (case, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["detail"], case
    assert "minutes away from now" in post(app, None, headers=cases["eleven minutes old"], body=body).json()["detail"]
    assert suppressions(db_url) == {}
    # a signature from nine minutes ago is still taken (SendGrid's own delivery may be slow)
    assert post(app, None, headers=signed(body, at=int(time.time()) - 540), body=body).status_code == 200


def test_without_a_key_the_webhook_is_refused_with_a_reason(tmp_path: Path) -> None:
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS))
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    answer = post(app, [event("bounce")])
    assert answer.status_code == 404 and "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY" in answer.json()["detail"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "the body is not JSON"),
    (b'{"event": "bounce"}', "the body must be a JSON array of events"),
    (b"[1]", "[0]: an event is a JSON object"),
    (b'[{"email": "a@b.example"}]', "[0].event: missing (the event type)"),
    (b'[{"event": "open", "timestamp": "yesterday"}]', "[0].timestamp: must be a number (unix seconds)"),
    (b'[{"event": "group_unsubscribe", "asm_group_id": "4"}]', "[0].asm_group_id: must be an integer"),
    (b'[{"event": "open", "custom_args": []}]', "[0].custom_args: must be an object"),
    (b"\xff\xfe", "the signature does not match the body"),  # no UTF-8: not what SendGrid signs
])
def test_a_malformed_batch_is_a_400_with_the_reason(app_db, body: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    app, _db_url = app_db
    answer = post(app, None, body=body)
    assert answer.status_code == (401 if body == b"\xff\xfe" else 400), answer.text
    assert answer.json()["detail"] == reason


# ---------------------------------------------------------------------------------------- what events do


def test_bounces_drops_and_spam_reports_suppress_the_address(app_db) -> None:  # type: ignore[no-untyped-def]
    app, db_url = app_db
    answer = post(app, [
        event("bounce", "Bob <BOB@acme.example>", type="bounce", reason="550 5.1.1 no such user"),
        event("dropped", "carl@acme.example", reason="Invalid"),
        event("spamreport", "dora@acme.example"),
        event("bounce", "eve@acme.example", type="blocked", reason="try later"),  # soft: nothing changes
        event("bounce", "not an address"),
    ])
    assert answer.status_code == 200, answer.text
    assert answer.json()["suppressed"] == 3 and answer.json()["ignored"] == 2
    assert suppressions(db_url) == {
        "bob@acme.example": ("bounced", "sendgrid"),
        "carl@acme.example": ("dropped", "sendgrid"),
        "dora@acme.example": ("spam_report", "sendgrid"),
    }
    with session(db_url) as s:
        [bob] = gov.list_suppressions(s, email="bob@acme.example")
    assert bob.detail == "550 5.1.1 no such user"


def test_a_redelivered_event_changes_nothing_twice(app_db) -> None:  # type: ignore[no-untyped-def]
    app, db_url = app_db
    bounce = event("bounce", "bob@acme.example", type="bounce")
    first = post(app, [bounce])
    assert first.json()["suppressed"] == 1
    with session(db_url) as s:
        gov.unsuppress(s, "bob@acme.example")  # ops took it off the list since
    again = post(app, [bounce])  # SendGrid redelivers the same batch
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["suppressed"] == 0
    assert suppressions(db_url) == {}  # the old bounce did not put it back
    with session(db_url) as s:
        assert s.get(t.WebhookEvent, bounce["sg_event_id"]) is not None


def test_unsubscribes_change_consent_by_category_and_group(app_db) -> None:  # type: ignore[no-untyped-def]
    app, db_url = app_db
    answer = post(app, [
        event("unsubscribe", "anna@kraus.example", custom_args={"category": "marketing"}),
        event("group_unsubscribe", "bob@acme.example", asm_group_id=4242, custom_args={"category": "onboarding"}),
        event("unsubscribe", "carl@acme.example"),  # no category: every one people may leave
        # as SendGrid really posts them: custom args as top-level fields, `category` as its list of categories
        event("unsubscribe", "dora@acme.example", category=["onboarding"], workflow_id="w-1"),
    ])
    assert answer.status_code == 200 and answer.json()["unsubscribed"] == 4
    assert consent(db_url, "dora@acme.example") == {"onboarding": "unsubscribed"}
    assert consent(db_url, "anna@kraus.example") == {"marketing": "unsubscribed"}
    # the bundled policy maps no SendGrid group to a category: the email's own category is used
    assert consent(db_url, "bob@acme.example") == {"onboarding": "unsubscribed"}
    may_leave = Library.load(PLAYBOOKS).policy.opt_out_categories()  # type: ignore[union-attr]
    assert "marketing" in may_leave and "transactional" not in may_leave
    assert consent(db_url, "carl@acme.example") == dict.fromkeys(may_leave, "unsubscribed")


def test_a_group_unsubscribe_finds_the_category_of_its_suppression_group(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "policy.yaml").write_text(
        "default_category: marketing\n"
        "categories:\n"
        "  transactional: { unsubscribe: false, capped: false }\n"
        "  onboarding: {}\n"
        "  marketing: { sendgrid_group: 4242 }\n"
    )
    settings = Settings(environment="dev", home=str(tmp_path), library=str(library),
                        sendgrid_webhook_public_key=PUBLIC_KEY)
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    answer = post(app, [event("group_unsubscribe", "bob@acme.example", asm_group_id=4242,
                              custom_args={"category": "onboarding"})])
    assert answer.status_code == 200, answer.text
    assert consent(settings.db_url, "bob@acme.example") == {"marketing": "unsubscribed"}


def test_opens_without_a_run_are_taken_and_ignored(app_db) -> None:  # type: ignore[no-untyped-def]
    app, _db_url = app_db
    answer = post(app, [event("open"), event("click", url="https://x.example"), event("delivered")])
    assert answer.status_code == 200 and answer.json()["ignored"] == 3


# ------------------------------------------------------------------------------------ opens reach their run

WAITS_FOR_THE_OPEN = """\
id: opened-check
title: Waits for the open
trigger:
  event: account.signed_up
enrollment:
  key: "{{ account.id }}"
steps:
  - id: await_open
    wait_for: { event: email.opened, timeout: 30d }
"""


@pytest.mark.timeout(180)
def test_an_open_reaches_the_run_that_sent_the_email_and_ends_its_wait() -> None:
    from activities.crm import seed
    from engine.language.validator import validate_playbook_text
    from engine.runtime import connect as rt
    from engine.runtime.devstack import DevServer
    from engine.runtime.runs import run_state, start_run
    from engine.runtime.workers import build_worker

    home = Path(tempfile.mkdtemp(prefix="sendgrid-webhook-"))
    server = DevServer(home / "temporal", port=0, ui_port=0)
    queue = f"webhook-{uuid.uuid4().hex[:6]}"
    library = home / "library"
    library.mkdir()
    (library / "opened-check.yaml").write_text(WAITS_FOR_THE_OPEN)
    settings = Settings(environment="dev", home=str(home), library=str(library), task_queue=queue,
                        sendgrid_webhook_public_key=PUBLIC_KEY)
    migrate(settings.db_url)
    seed(settings.db_url, {"id": "acc-open", "name": "Kraus GmbH"}, [], [])
    result = validate_playbook_text(WAITS_FOR_THE_OPEN, "<test>")
    assert result.ok and result.playbook is not None, [p.header() for p in result.problems]
    playbook = result.playbook

    async def scenario() -> None:
        client = await server.start()
        app = create_app(settings, client=client)
        worker = build_worker(client, queue, rt.activities(settings, client))
        async with worker, app.router.lifespan_context(app):
            handle = await start_run(client, queue, playbook, "acc-open", workflow_id="opened-check/acc-open")
            opened = event("open", custom_args={
                "workflow_id": handle.id, "account_id": "acc-open", "step_id": "welcome", "message_id": "m-1",
                "category": "onboarding"})
            body = json.dumps([event("delivered", custom_args={"workflow_id": handle.id}), opened]).encode()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                answer = await http.post("/webhooks/sendgrid", content=body, headers=signed(body))
                assert answer.status_code == 200, answer.text
                # the open reaches the run; the delivery does not: the playbook neither waits for nor exits on it
                assert (answer.json()["delivered_to_runs"], answer.json()["ignored"]) == (1, 1)
                await asyncio.wait_for(handle.result(), 60)  # the wait_for ended: the run is done
                again = await http.post("/webhooks/sendgrid", content=body, headers=signed(body))
                assert again.json()["duplicates"] == 2 and again.json()["delivered_to_runs"] == 0
            history = [e async for e in handle.fetch_history_events()]
            signals = [e for e in history if e.HasField("workflow_execution_signaled_event_attributes")]
            assert len(signals) == 1  # the open, once: not the delivery, not the redelivered open
            state, status = await run_state(client, handle.id)
            assert status == "completed"
            steps = [(e.step_id, e.status, e.detail) for e in state.timeline]
            assert ("await_open", "done", "timed_out=False") in steps, steps  # the open ended it, not the timeout

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- PostgreSQL


def test_a_batch_redelivered_ten_times_at_once_changes_things_once_on_postgresql(postgres, tmp_path: Path) -> None:
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS), database_url=postgres,
                        sendgrid_webhook_public_key=PUBLIC_KEY)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    batch = [event("spamreport", "race@acme.example"),
             event("unsubscribe", "race@acme.example", custom_args={"category": "marketing"})]
    body = json.dumps(batch).encode()

    async def steps(http: httpx.AsyncClient) -> list[dict[str, int]]:
        answers = await asyncio.gather(*(
            http.post("/webhooks/sendgrid", content=body, headers=signed(body)) for _ in range(10)))
        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        return [a.json() for a in answers]

    answers = call(app, steps)
    assert sum(a["suppressed"] for a in answers) == 1 and sum(a["unsubscribed"] for a in answers) == 1
    assert sum(a["duplicates"] for a in answers) == 18
    assert suppressions(postgres) == {"race@acme.example": ("spam_report", "sendgrid")}
    assert consent(postgres, "race@acme.example") == {"marketing": "unsubscribed"}
