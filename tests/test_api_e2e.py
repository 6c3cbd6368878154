"""The HTTP API end to end: `playbook dev` (real Temporal dev server, worker, API) in a subprocess, driven over HTTP.

A signed signup starts repricer-onboarding; the same event again starts nothing; a bad signature is
refused; a CSM records a call outcome and approves an edited email, which is what goes out; an
account.cancelled event ends a live run.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from api.security import sign
from tests.dev_stack import SECRET, Stack, daytime_zone


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def signup(account_id: str, tz: str) -> dict:
    return {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "account.signed_up",
        "account_id": account_id,
        "data": {"product": "repricer", "plan": "pro"},
        "account": {
            "name": "Nordlicht GmbH", "language": "de", "timezone": tz, "seller_type": "private_label", "sku_count": 30
        },
        "contacts": [{"email": "eva@nordlicht.example", "first_name": "Eva"}],
    }


def test_signed_signup_starts_the_playbook_once(stack):
    event = signup("acc-e2e-1", daytime_zone())
    first = stack.post_event(event)
    assert first.status_code == 200, first.text
    started = {r["playbook"]: r for r in first.json()["runs"]}
    assert started["repricer-onboarding"]["status"] == "started"
    assert started["repricer-onboarding"]["run_id"] == "repricer-onboarding/acc-e2e-1"
    # the run really runs: the welcome email is in the outbox, to the contact the event carried
    welcome = "select \"to\", subject from outbox where account_id = ? and step_id = 'welcome'"
    rows = stack.wait_for(lambda: stack.db(welcome, "acc-e2e-1"))
    assert json.loads(rows[0][0]) == ["eva@nordlicht.example"]

    again = stack.post_event(event)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["runs"] == first.json()["runs"]
    # a new event for the same account while the run lives: one live run per enrollment key
    other = stack.post_event({**event, "id": f"evt-{uuid.uuid4().hex[:10]}"})
    assert {r["playbook"]: r["status"] for r in other.json()["runs"]}["repricer-onboarding"] == "already_running"
    assert len(stack.db("select 1 from outbox where account_id = ? and step_id = 'welcome'", "acc-e2e-1")) == 1


def test_bad_or_missing_signature_is_refused(stack):
    event = signup("acc-e2e-2", "UTC")
    wrong = stack.post_event(event, secret="not-the-secret")
    assert wrong.status_code == 401
    assert wrong.headers["content-type"].startswith("application/problem+json")
    assert wrong.json()["detail"] == "the signature does not match the body"
    an_hour_ago = int(time.time()) - 3600
    stale = stack.post_event(event, signature=sign(SECRET, json.dumps(event).encode(), timestamp=an_hour_ago))
    assert stale.status_code == 401 and "replayed" in stale.json()["detail"]
    unsigned = stack.http.post("/events", json=event)
    assert unsigned.status_code == 401
    assert stack.db("select 1 from received_events where account_id = 'acc-e2e-2'") == []


def test_csm_records_the_call_and_approves_an_edited_email(stack):
    ops = stack.token("ops")
    jonas = stack.token("csm", "csm-de")
    mia = stack.token("csm", "csm-en")
    tz = daytime_zone()
    event = {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "account.admin_changed",
        "account_id": "acc-e2e-3",
        "data": {"new_admin_email": "lars@fjord.example", "new_admin_first_name": "Lars", "previous_admin_name": "Ida"},
        "account": {"name": "Fjord AS", "language": "de", "timezone": tz, "owner": "csm-de"},
        "contacts": [{"email": "ida@fjord.example", "first_name": "Ida"}],
    }
    assert stack.post_event(event).status_code == 200

    as_jonas = {"Authorization": f"Bearer {jonas}"}
    tasks = stack.wait_for(
        lambda: [x for x in stack.http.get("/tasks", headers=as_jonas).json() if x["account_id"] == "acc-e2e-3"]
    )
    task = tasks[0]
    assert task["step"] == "intro_call" and task["assignee"] == "csm-de"
    # Mia sees none of it, and may not answer it
    as_mia = {"Authorization": f"Bearer {mia}"}
    assert [x for x in stack.http.get("/tasks", headers=as_mia).json() if x["account_id"] == "acc-e2e-3"] == []
    refused = stack.http.post(f"/tasks/{task['id']}/outcome", json={"outcome": "connected"}, headers=as_mia)
    assert refused.status_code == 403
    bad = stack.http.post(f"/tasks/{task['id']}/outcome", json={"outcome": "maybe"}, headers=as_jonas)
    assert bad.status_code == 422 and "connected, left_voicemail, wrong_person" in bad.json()["detail"]
    done = stack.http.post(f"/tasks/{task['id']}/outcome", json={"outcome": "connected"}, headers=as_jonas)
    assert done.status_code == 200, done.text
    twice = stack.http.post(f"/tasks/{task['id']}/outcome", json={"outcome": "connected"}, headers=as_jonas)
    assert twice.status_code == 409

    approvals = stack.wait_for(
        lambda: [a for a in stack.http.get("/approvals", headers=as_jonas).json() if a["account_id"] == "acc-e2e-3"]
    )
    approval = approvals[0]
    assert approval["draft"]["subject"] == "Your Repricer account at Fjord AS: a quick hello"
    by_mia = stack.http.post(f"/approvals/{approval['id']}", json={"decision": "approve"}, headers=as_mia)
    assert by_mia.status_code == 403
    edited = {"subject": "Lars, your Repricer account at Fjord AS", "body": "Hi Lars, as discussed on the phone: ..."}
    ok = stack.http.post(
        f"/approvals/{approval['id']}",
        json={"decision": "approve", "comment": "after our call", "edits": edited},
        headers=as_jonas,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"id": approval["id"], "decision": "approve"}
    as_ops = {"Authorization": f"Bearer {ops}"}
    again = stack.http.post(f"/approvals/{approval['id']}", json={"decision": "reject"}, headers=as_ops)
    assert again.status_code == 409

    outreach = "select subject, body, status from outbox where account_id = 'acc-e2e-3' and step_id = 'outreach'"
    sent = stack.wait_for(lambda: stack.db(outreach))
    [(subject, body, status)] = sent
    # the edited text, then the unsubscribe footer the outreach's category (customer_success) allows
    assert (subject, status) == (edited["subject"], "sent")
    assert body.startswith(edited["body"] + "\n\n--\n") and "/u/" in body


def test_cancelled_event_ends_the_live_run(stack):
    ops = {"Authorization": f"Bearer {stack.token('ops')}"}
    event = signup("acc-e2e-4", daytime_zone())
    run_id = {r["playbook"]: r for r in stack.post_event(event).json()["runs"]}["repricer-onboarding"]["run_id"]
    stack.wait_for(lambda: stack.http.get(f"/runs/{run_id}", headers=ops).json().get("current") == ["onboarding_call"])
    cancelled = {
        "id": f"evt-{uuid.uuid4().hex[:10]}", "type": "account.cancelled", "account_id": "acc-e2e-4", "data": {}
    }
    answer = stack.post_event(cancelled).json()
    assert run_id in answer["delivered_to"]
    detail = stack.wait_for(
        lambda: (d := stack.http.get(f"/runs/{run_id}", headers=ops).json())["status"] == "completed" and d
    )
    assert detail["timeline"][-1]["status"] == "exited"
    assert detail["timeline"][-1]["detail"] == "exit on event account.cancelled"


def test_bad_requests_are_4xx_problems(stack):
    ops = {"Authorization": f"Bearer {stack.token('ops')}"}
    assert stack.http.get("/runs").status_code == 401
    assert stack.http.get("/runs/no-such-run", headers=ops).status_code == 404
    missing = stack.http.post("/runs", json={"playbook": "nope", "account_id": "acc-1"}, headers=ops)
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    invalid = stack.post_event({"id": "x", "type": "NotDotted", "account_id": "a"})
    assert invalid.status_code == 422 and "type" in invalid.json()["detail"]
    # an owner the engine does not know: refused before anything is written or started
    unknown_owner = signup("acc-e2e-owner", "UTC")
    unknown_owner["account"]["owner"] = "csm-nobody"
    refused = stack.post_event(unknown_owner)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [
        {"location": "account.owner", "message": "no CSM 'csm-nobody' is known to the engine"}
    ]
    assert stack.db("select 1 from accounts where id = 'acc-e2e-owner'") == []
    assert stack.db("select 1 from received_events where account_id = 'acc-e2e-owner'") == []
    check = stack.http.post("/playbooks/validate", json={"text": "id: x\nsteps:\n  - wait: 3 days\n"}, headers=ops)
    assert check.status_code == 200
    assert check.json()["problems"][0]["line"] == 3 and "duration" in check.json()["problems"][0]["message"]
    # JSON can carry a lone surrogate, which no file can: refused with the reason, not a 500
    surrogate = stack.http.post(
        "/playbooks/validate", content=b'{"text": "id: x\\ntitle: \\ud800"}',
        headers={**ops, "Content-Type": "application/json"},
    )
    assert surrogate.status_code == 422, surrogate.text
    assert surrogate.json()["errors"][0]["location"] == "body.text"
