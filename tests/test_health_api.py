"""Where health scores show (docs/health.md "Where scores show"): GET /accounts/{id}/health through the real app,
`playbook health` and `playbook health explain` through the CLI, the inbox's cards, and account.health in a run's
templates on Temporal's time-skipping server. The scores are made by the engine itself (engine/runtime/health.py,
the bundled scorecard) in real SQLite: a first score 40 days ago, then three urgent tickets today."""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select
from typer.testing import CliRunner

from activities.crm import BuiltinCrm, read_account
from activities.crm import seed as seed_crm
from api.app import create_app
from api.deps import AppState
from api.security import create_token
from engine.commands.health import health_app
from engine.interpreter.messages import Event
from engine.runtime import health as rh
from engine.runtime.settings import Settings
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.asgi import call
from tests.paths import PLAYBOOKS

SCORECARDS = PLAYBOOKS.parent / "scorecards"
NOW = datetime.now(UTC).replace(microsecond=0)
BEFORE = NOW - timedelta(days=40)
TEAM = [{"id": "csm-de", "name": "Jonas", "email": "jonas@success.example", "languages": ["de"]},
        {"id": "csm-en", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]
ACCOUNTS = {
    # a pro account: MRR 400 (70), renewal in 200 days (100), logged in 2 days ago (100), no NPS answer (skipped)
    "acc-own": {"plan": "pro", "owner": "csm-de", "mrr": 400,
                "renews_on": (NOW + timedelta(days=200)).date().isoformat(),
                "last_login_at": (NOW - timedelta(days=2)).isoformat()},
    "acc-other": {"plan": "pro", "owner": "csm-en", "mrr": 5000},
    "acc-trial": {"plan": "trial", "owner": "csm-de"},  # outside the scorecard's segment: no score
}


def _seed(db_url: str) -> None:
    migrate(db_url)
    for account_id, fields in ACCOUNTS.items():
        seed_crm(db_url, {"id": account_id, "name": account_id, "language": "de", **fields},
                 [{"email": f"{account_id}@customer.example", "first_name": "A"}], TEAM)
    cards = list(rh.scorecards_in(SCORECARDS))
    with session(db_url) as s:
        for account_id in ACCOUNTS:
            account = read_account(s, account_id)
            assert account is not None
            rh.recompute(s, account.account, cards, BEFORE, cause="test/before")
        own = read_account(s, "acc-own")
        assert own is not None
        for n in range(3):
            event = Event(type="support.ticket_opened", data={"priority": "urgent"}, id=f"tkt-{n}",
                          occurred_at=(NOW - timedelta(hours=n + 1)).isoformat(), account_id="acc-own")
            rh.update_for_event(s, own.account, event, cards, NOW, fields_changed=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("PLAYBOOK_"):
            monkeypatch.delenv(name)
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS), scorecards=str(SCORECARDS))
    _seed(settings.db_url)
    return settings


def _row(db_url: str, account_id: str) -> t.HealthScore:
    with session(db_url) as s:
        row = s.scalar(select(t.HealthScore).where(t.HealthScore.account_id == account_id))
        assert row is not None
        return row


def _scores(db_url: str, account_id: str) -> list[tuple[float | None, str | None]]:
    """The account's score changes, oldest first: (score, band)."""
    with session(db_url) as s:
        return [(h.score, h.band) for h in s.scalars(select(t.HealthHistory).where(
            t.HealthHistory.account_id == account_id).order_by(t.HealthHistory.computed_at, t.HealthHistory.id))]


# ------------------------------------------------------------------------------------------------------ the API


def _ask(db_url: str, kind: str, account_id: str, csm: str, status: str) -> None:
    """A call task assigned to the CSM, or an approval naming them, on the account, in this status."""
    key = f"{kind}-{account_id}-{csm}-{status}"
    common = {"key": key, "workflow_id": f"wf/{key}", "playbook_id": "risk", "account_id": account_id,
              "step_id": "ask", "status": status, "created_at": NOW, "due_at": None}
    with session(db_url) as s:
        if kind == "task":
            s.add(t.CallTask(task_id=key, assignee=csm, title="Call", completed_at=None, outcome=None,
                             completed_by=None, **common))
        else:
            s.add(t.Approval(approval_id=key, approvers=[csm], message="Go?", decided_at=None, decided_by=None,
                             comment=None, **common))


def _close_asks(db_url: str) -> None:
    with session(db_url) as s:
        s.execute(delete(t.CallTask))
        s.execute(delete(t.Approval))


def test_the_api_answers_the_rows(home: Settings) -> None:
    app = create_app(home, client=object())  # type: ignore[arg-type]
    tokens = {role: create_token(home.db_url, role, role, "csm-de" if role == "csm" else None)
              for role in ("ops", "csm", "system")}
    as_ = {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}
    row, changes = _row(home.db_url, "acc-own"), _scores(home.db_url, "acc-own")
    (before, _), (previous, previous_band) = changes[0], changes[-2]  # 40 days ago; before the third ticket

    async def steps(http: httpx.AsyncClient) -> None:
        answer = await http.get("/accounts/acc-own/health", headers=as_["ops"])
        assert answer.status_code == 200, answer.text
        [card] = answer.json()
        assert (card["scorecard"], card["score"], card["band"]) == ("repricer-health", row.score, row.band)
        assert card["band"] == "red" and changes[0][1] == "green"  # 40 days ago; red after three urgent tickets
        assert len(changes) == 4 and changes[-1] == (row.score, "red")  # one change per ticket
        assert card["computed_at"].startswith(NOW.isoformat()[:19])
        trend = card["trend"]
        assert (trend["previous"], trend["previous_band"]) == (previous, previous_band)
        assert (trend["thirty_days"], trend["thirty_days_band"]) == (before, "green")
        assert trend["change"] == round(row.score - previous, 1)
        assert trend["change_thirty_days"] == round(row.score - before, 1)
        assert [m["measure"] for m in card["measures"]] == [c["measure_id"] for c in row.components]
        for shown, stored in zip(card["measures"], row.components, strict=True):
            assert (shown["value"], shown["score"], shown["weight"], shown["effective_weight"],
                    shown["contribution"], shown["skipped"]) == (
                stored["value"], stored["score"], stored["weight"], stored["effective_weight"],
                stored["contribution"], stored["skipped"])
        urgent = next(m for m in card["measures"] if m["measure"] == "urgent_tickets")
        assert (urgent["value"], urgent["score"]) == (3, 0)
        assert next(m for m in card["measures"] if m["measure"] == "nps")["skipped"] is True
        assert sum(m["contribution"] for m in card["measures"]) == pytest.approx(row.score, abs=0.05)
        # what holds it down: the urgent tickets cost all their (re-weighted) share
        assert card["reasons"][0]["measure"] == "urgent_tickets"
        assert card["reasons"][0]["points"] == pytest.approx(-urgent["effective_weight"], abs=0.05)
        assert card["last_change"][0]["measure"] == "urgent_tickets"
        assert [(h["score"], h["band"]) for h in card["history"]] == changes[::-1]  # newest first

        # a CSM reads their own accounts, and those their inbox shows them (an open call task assigned to them, a
        # pending approval naming them), as the inbox cards do; a system token none; no token, no answer
        assert (await http.get("/accounts/acc-own/health", headers=as_["csm"])).json()[0]["score"] == row.score
        other = await http.get("/accounts/acc-other/health", headers=as_["csm"])
        assert other.status_code == 403 and "not one you own" in other.json()["detail"]
        for kind, status in [("task", "done"), ("approval", "approved"), ("task", "open"), ("approval", "pending")]:
            _ask(home.db_url, kind, "acc-other", "csm-en", "open" if kind == "task" else "pending")  # another's
            _ask(home.db_url, kind, "acc-other", "csm-de", status)
            answer = await http.get("/accounts/acc-other/health", headers=as_["csm"])
            assert answer.status_code == (200 if status in ("open", "pending") else 403), (kind, status, answer.text)
            _close_asks(home.db_url)
        assert (await http.get("/accounts/acc-other/health", headers=as_["ops"])).status_code == 200
        assert (await http.get("/accounts/acc-own/health", headers=as_["system"])).status_code == 403
        assert (await http.get("/accounts/acc-own/health")).status_code == 401
        unknown = await http.get("/accounts/acc-nobody/health", headers=as_["ops"])
        assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/problem+json")
        assert "no account acc-nobody" in unknown.json()["detail"]
        assert (await http.get("/accounts/acc-nobody/health", headers=as_["csm"])).status_code == 404
        trial = await http.get("/accounts/acc-trial/health", headers=as_["csm"])  # no scorecard applies
        assert trial.status_code == 200 and trial.json() == []
        assert (await http.get("/accounts/bad%20id/health", headers=as_["ops"])).status_code == 422

    call(app, steps)


# ------------------------------------------------------------------------------------------------------ the CLI


def health(home: Settings, *args: str) -> Any:
    env = {"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": home.home, "PLAYBOOK_LIBRARY": str(PLAYBOOKS),
           "COLUMNS": "200"}
    return CliRunner().invoke(health_app, list(args), env=env)


def test_the_cli_table_json_and_explain(home: Settings) -> None:
    row = _row(home.db_url, "acc-own")
    shown = health(home, "acc-own")
    assert shown.exit_code == 0, shown.output
    assert f"repricer-health acc-own: score {row.score:g}, band red" in shown.output
    assert "Urgent tickets, 30 days" in shown.output and "holding it down: Urgent tickets, 30 days" in shown.output
    as_json = health(home, "acc-own", "--json")
    assert as_json.exit_code == 0, as_json.output
    import json

    [card] = json.loads(as_json.output)
    assert (card["score"], card["band"], card["trend"]["previous"]) == (row.score, "red",
                                                                         _scores(home.db_url, "acc-own")[-2][0])
    assert health(home, "--json", "acc-trial").output.strip() == "[]"  # options first work too

    explained = health(home, "explain", "acc-own", "--scorecard", "repricer-health")
    assert explained.exit_code == 0, explained.output
    lines = explained.output.splitlines()
    points = [float(m.group(1)) for line in lines if (m := re.search(r"= (-?[\d.]+) points$", line))]
    assert len(points) == 5 and "skipped" in next(line for line in lines if line.startswith("nps"))
    assert sum(points) == pytest.approx(row.score, abs=0.05)
    assert lines[-1] == f"total: {row.score:g} -> band red"

    for args, words in [(["explain", "acc-trial"], "no health score"),
                        (["explain", "acc-own", "--scorecard", "nope"], "no score on a scorecard 'nope'"),
                        (["bad id"], "not an account id")]:
        refused = health(home, *args)
        assert refused.exit_code == 2 and words in refused.output, (args, refused.output)


# ------------------------------------------------------------------------------------------------------ the inbox


def test_the_inbox_shows_the_score_and_its_reasons(home: Settings) -> None:
    row = _row(home.db_url, "acc-own")
    with session(home.db_url) as s:
        for account_id in ("acc-own", "acc-trial"):
            s.add(t.CallTask(key=f"k-{account_id}", task_id=f"task-{account_id}", workflow_id=f"wf-{account_id}",
                             playbook_id="risk-intervention-health", account_id=account_id, step_id="call",
                             assignee="csm-de", title=f"Call {account_id}", outcomes=["reached"],
                             created_at=NOW))
        s.add(t.Approval(key="k-a", approval_id="appr-1", workflow_id="wf-own-2", playbook_id="renewal",
                         account_id="acc-own", step_id="offer", approvers=["csm-de"], message="Offer?",
                         created_at=NOW))
    token = create_token(home.db_url, "Jonas", "csm", "csm-de")
    app = create_app(home, client=object())  # type: ignore[arg-type]
    app.state.engine = AppState(settings=home, client=object())  # type: ignore[arg-type]

    async def go() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            form = await client.get("/inbox/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
            page = await client.post("/inbox/login", data={"token": token, "csrf": csrf}, follow_redirects=True)
            assert page.status_code == 200
            return page.text

    text = asyncio.run(go())
    score = f"{row.score:g}"
    approval = text[text.index('id="approval-1"'):text.index('id="tasks-title"')]
    task = text[text.index('id="task-1"'):text.index('id="task-2"')]
    for card in (approval, task):
        assert re.search(rf"Health:\s*<strong>{re.escape(score)}</strong><span class=\"of\"> of 100</span>, "
                         r"<span class=\"band\">red</span>", card), card
        assert 'class="health health-red"' in card  # the colour only marks what the words say
        assert "Top reasons</span>" in card and "Urgent tickets, 30 days: 3 (−" in card
    assert "Health" not in text[text.index('id="task-2"'):]  # acc-trial: no score, nothing shown


# ------------------------------------------------------------------------------------------------------ templates

TEMPLATE_PLAYBOOK = """\
id: health-note
title: Notes the account's health in the CRM
trigger: { manual: true }
steps:
  - id: note
    crm:
      update:
        health_band: "{{ account.health.band }}"
        health_line: >-
          {{ account.health.score }} ({{ account.health.band }}):
          {{ account.health.reasons | map(attribute='title') | join(', ') }}
        health_card: "{{ account.health.cards['repricer-health'].band if account.health.cards else 'no card' }}"
        health_none: "{{ 'none' if account.health.score is none else 'some' }}"
  - id: after_update
    crm:
      update:
        health_after_update: "{{ account.health.band }}"
"""


def test_templates_read_account_health_in_a_run(home: Settings, tmp_path: Path) -> None:
    from temporalio.client import WorkflowHandle
    from temporalio.testing import WorkflowEnvironment

    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities
    from engine.interpreter.messages import WORKFLOW_NAME, RunInput, RunResult
    from engine.language.library import Library
    from engine.runtime.connect import quiet_runtime
    from engine.runtime.workers import build_worker
    from engine.testing.scenarios import test_server_path

    library = tmp_path / "library"
    library.mkdir()
    (library / "health-note.yaml").write_text(TEMPLATE_PLAYBOOK)
    playbook = Library.load(library).playbooks["health-note"]
    row = _row(home.db_url, "acc-own")

    async def go() -> None:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=test_server_path(), runtime=quiet_runtime()
        ) as env:
            activities = PlaybookActivities(home.db_url, BuiltinCrm(home.db_url), OutboxProvider())
            async with build_worker(env.client, "health-note", activities.all()):
                handles: list[WorkflowHandle[Any, RunResult]] = [
                    await env.client.start_workflow(
                        WORKFLOW_NAME, RunInput(playbook=playbook, account_id=account_id),
                        id=f"health-note/{account_id}", task_queue="health-note", result_type=RunResult,
                    )
                    for account_id in ("acc-own", "acc-trial")
                ]
                for handle in handles:
                    assert (await asyncio.wait_for(handle.result(), 30)).outcome == "completed"

    asyncio.run(go())
    crm = BuiltinCrm(home.db_url)
    own = crm.get_account("acc-own").account
    assert (own["health_band"], own["health_card"], own["health_none"]) == ("red", "red", "some")
    assert own["health_after_update"] == "red"  # a crm step reads the account back with its health
    assert own["health_line"].startswith(f"{row.score} (red): Urgent tickets, 30 days")
    trial = crm.get_account("acc-trial").account  # no score: the names are there, empty
    assert (trial["health_band"], trial["health_card"], trial["health_none"]) == ("None", "no card", "none")
