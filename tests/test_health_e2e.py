"""Health scores end to end on the dev stack: `playbook dev` (real Temporal dev server, worker, API) in a subprocess,
with the bundled library and its scorecards (scorecards/repricer-health.yaml beside playbooks/).

Urgent tickets posted as signed events lower the account's score; the third turns it red, the intake takes the
health.score_changed that change emits, risk-intervention-health starts, and the CSM's call task in the inbox says
the score and what moved it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.dev_stack import Stack, daytime_zone


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("health-stack")) as s:
        yield s


def ticket(account_id: str, n: int, account: dict | None = None) -> dict:
    event = {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "support.ticket_opened",
        "account_id": account_id,
        "data": {"priority": "urgent", "ticket_id": f"T-{n}"},
    }
    if account:
        event["account"] = account
        event["contacts"] = [{"email": "ines@kuestenhandel.example", "first_name": "Ines"}]
    return event


def test_urgent_tickets_turn_the_account_red_and_start_the_intervention(stack):
    now = datetime.now(UTC)
    account = {
        "name": "Küstenhandel KG", "language": "de", "timezone": daytime_zone(), "owner": "csm-de", "plan": "pro",
        "mrr": 400, "renews_on": (now + timedelta(days=120)).date().isoformat(),
        "last_login_at": (now - timedelta(days=2)).isoformat(),
    }
    ops = {"Authorization": f"Bearer {stack.token('ops')}"}
    jonas_token = stack.token("csm", "csm-de")
    jonas = {"Authorization": f"Bearer {jonas_token}"}
    run_id = "risk-intervention-health/acc-health-e2e"

    def health() -> dict:
        answer = stack.http.get("/accounts/acc-health-e2e/health", headers=ops)
        assert answer.status_code == 200, answer.text
        scores = answer.json()
        scores = scores.get("scores", scores) if isinstance(scores, dict) else scores
        [card] = [h for h in scores if h["scorecard"] == "repricer-health"]
        return card

    first = stack.post_event(ticket("acc-health-e2e", 1, account))
    assert first.status_code == 200, first.text
    assert (health()["score"], health()["band"]) == (78.9, "green")  # taken with the event: no waiting

    second = stack.post_event(ticket("acc-health-e2e", 2))
    assert (health()["score"], health()["band"]) == (65.6, "yellow")  # a band change, but not to red: no run
    assert run_id not in {r["run_id"] for r in second.json()["runs"]}

    third = stack.post_event(ticket("acc-health-e2e", 3))
    assert third.status_code == 200, third.text
    scored = health()
    assert (scored["score"], scored["band"], scored["trend"]["previous"]) == (45.6, "red", 65.6)

    # the health.score_changed of that change went through the intake and started the intervention
    detail = stack.wait_for(
        lambda: (r := stack.http.get(f"/runs/{run_id}", headers=ops)).status_code == 200 and r.json()
    )
    assert detail["playbook"] == "risk-intervention-health"

    tasks = stack.wait_for(
        lambda: [t for t in stack.http.get("/tasks", headers=jonas).json()
                 if t["account_id"] == "acc-health-e2e" and t["step"] == "diagnose_call"]
    )
    [task] = tasks
    assert task["assignee"] == "csm-de"
    assert "dropped to 45.6" in task["title"]
    # what moved it: the urgent tickets, by the measure's title
    assert "Urgent tickets, 30 days" in task["notes"]
    assert "Health went from 65.6 to 45.6." in task["notes"]
    # Jonas's inbox (signed in with his token) shows the score and its top reasons on the task's card
    form = stack.http.get("/inbox/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    page = stack.http.post("/inbox/login", data={"token": jonas_token, "csrf": csrf}, follow_redirects=True)
    assert page.status_code == 200
    [card] = [c for c in re.split(r'id="task-\d+"', page.text)[1:] if task["title"] in c]  # other tasks may be there
    assert re.search(r'Health:\s*<strong>45.6</strong><span class="of"> of 100</span>, <span class="band">red</span>',
                     card), card
    assert "Top reasons</span>" in card and "Urgent tickets, 30 days: 3 (" in card

    # the same ticket posted again counts once
    again = stack.post_event({**ticket("acc-health-e2e", 3), "id": third.json()["event_id"]})
    assert again.json()["duplicate"] is True
    assert health()["score"] == 45.6
