"""The engine's tables on a real PostgreSQL: what production runs on (docs/operations.md).

The server is PostgreSQL 16 from the `pgserver` wheel, started in a temporary folder and reached over its
Unix socket by psycopg 3, so the test needs nothing but Python. The migrations build the models' tables
exactly; every scenario of the library passes with its activities writing to PostgreSQL; an event's
database work (the dedupe, the owner check, the account upsert, the answer kept) behaves as on SQLite.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from activities.types import EmailRequest, RunRef
from engine.interpreter.messages import Event
from engine.language.library import discover, is_scenario
from engine.runtime.intake import EventAnswer, StartedRun, UnknownOwner, before_starts, remember
from engine.storage import models as t
from engine.storage.db import engine_for, migrate
from engine.testing.scenarios import run_scenarios
from tests.postgres import empty
from tests.test_intake import create_the_same_account_at_once

ROOT = Path(__file__).resolve().parents[1]


def test_the_migrations_build_exactly_the_models_tables(postgres):  # type: ignore[no-untyped-def]
    with engine_for(postgres).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), t.Base.metadata)
        head = connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert differences == []
    assert head is not None
    migrate(postgres)  # at head already: nothing to do, nothing fails


def test_every_library_scenario_passes_on_postgresql(postgres):  # type: ignore[no-untyped-def]
    scenarios = [p for p in discover([ROOT / "playbooks"]) if is_scenario(p)]
    assert len(scenarios) >= 30
    emails: list[int] = []  # what each scenario left in PostgreSQL's outbox

    def outbox() -> int:
        with engine_for(postgres).connect() as connection:
            return int(connection.scalar(text("SELECT count(*) FROM outbox")) or 0)

    def database(_folder: Path) -> str:
        emails.append(outbox())
        return empty(postgres)

    reports = asyncio.run(run_scenarios(scenarios, database=database))
    emails.append(outbox())
    failed = {r.file: r.failures for r in reports if not r.passed}
    assert failed == {}
    assert len(reports) == len(scenarios) == len(emails) - 1
    assert sum(emails) >= len(scenarios)  # the runs' emails went to PostgreSQL


def test_an_event_is_taken_once_and_upserts_its_account(postgres):  # type: ignore[no-untyped-def]
    url = empty(postgres)
    seed(url, {"id": "acc-1", "name": "Old", "plan": "basic", "sku_count": 30}, [{"email": "a@x.example"}],
         [{"id": "csm-eva", "name": "Eva"}])
    first = before_starts(url, "evt-1", "acc-1", {"name": "New", "plan": "pro", "owner": "csm-eva"},
                          [{"email": "b@x.example", "first_name": "Bo"}])
    assert not isinstance(first, EventAnswer)
    account = first.snapshot.account
    assert account["plan"] == "pro" and account["sku_count"] == 30 and account["name"] == "New"
    assert account["owner"]["id"] == "csm-eva"
    assert first.snapshot.contacts == [{"email": "b@x.example", "first_name": "Bo"}]

    event = Event(type="account.signed_up", data={}, id="evt-1", account_id="acc-1")
    answer = EventAnswer("evt-1", runs=[StartedRun("onboarding", "onboarding/acc-1", "started")])
    remember(url, event, answer)
    remember(url, event, EventAnswer("evt-1"))  # a racing second post: the first answer stays
    # the run it started is recorded by id: the next event for a playbook that listens finds it
    listening = before_starts(url, "evt-9", "acc-1", None, None, frozenset({"onboarding"}))
    assert not isinstance(listening, EventAnswer) and listening.listening_runs == ["onboarding/acc-1"]
    remember(url, Event(type="x", id=None, account_id="acc-1"), EventAnswer(""), ended=["onboarding/acc-1"])
    gone = before_starts(url, "evt-10", "acc-1", None, None, frozenset({"onboarding"}))
    assert not isinstance(gone, EventAnswer) and gone.listening_runs == []
    again = before_starts(url, "evt-1", "acc-1", {"plan": "enterprise"}, None)
    assert isinstance(again, EventAnswer) and again.duplicate and again.runs == answer.runs
    assert BuiltinCrm(url).get_account("acc-1").account["plan"] == "pro"  # a duplicate writes nothing

    with pytest.raises(UnknownOwner):
        before_starts(url, "evt-2", "acc-1", {"plan": "enterprise", "owner": "csm-nobody"}, None)
    assert BuiltinCrm(url).get_account("acc-1").account["plan"] == "pro"
    unknown = before_starts(url, "evt-3", "acc-unknown", None, None)
    assert not isinstance(unknown, EventAnswer) and unknown.snapshot.account == {"id": "acc-unknown", "owner": None}


def test_events_creating_the_same_account_at_once_all_succeed(postgres):  # type: ignore[no-untyped-def]
    assert create_the_same_account_at_once(empty(postgres)) == []


def test_an_email_is_sent_once_whatever_the_retries(postgres):  # type: ignore[no-untyped-def]
    """The effect tables' unique keys on PostgreSQL: the same key twice is one outbox row."""
    url = empty(postgres)
    seed(url, {"id": "acc-1", "name": "Shop"}, [{"email": "a@x.example"}], [])
    activities = PlaybookActivities(url, BuiltinCrm(url), OutboxProvider())
    request = EmailRequest(
        key="run-1/welcome", ref=RunRef("run-1", "onboarding", "acc-1", "welcome"), to=["a@x.example"],
        at=datetime(2026, 1, 5, 9, tzinfo=UTC).isoformat(), subject="Hi", body="Welcome",
    )
    first = activities.send_email(request)
    second = activities.send_email(request)
    assert first.message_id == second.message_id
    with engine_for(url).connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM outbox")) == 1
