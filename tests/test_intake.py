"""The intake (engine/runtime/intake.py) on a real Temporal dev server: who an event starts and who it reaches.

Events reach the live runs that wait for (wait_for) or exit on (exit_when) their type; the two playbooks here
listen for each other's trigger. No worker: a started run stays running with its first task pending, which is all
delivery needs (a signal to a live run is recorded by the server). The live runs of the accounts are looked up
while the triggered playbooks start, and concurrent events share one visibility query; neither may change who an
event reaches.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from activities.crm import BuiltinCrm, seed
from engine.interpreter.messages import Event
from engine.language.validator import validate_playbook_text
from engine.runtime.devstack import DevServer
from engine.runtime.intake import UnknownOwner, before_starts, take_event
from engine.storage.db import migrate

ONBOARDING = """\
id: onboarding
title: Onboarding
trigger:
  event: account.signed_up
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - wait_for: { event: account.admin_changed, timeout: 30d }
"""
ADMIN_CHANGED = """\
id: admin-changed
title: Admin changed
trigger:
  event: account.admin_changed
enrollment:
  key: "{{ account.id }}"
  reenroll: always
exit_when:
  - event: account.signed_up
steps:
  - wait: 30d
"""


def _playbook(text: str):  # type: ignore[no-untyped-def]
    result = validate_playbook_text(text, "<test>")
    assert result.ok and result.playbook is not None, [p.header() for p in result.problems]
    return result.playbook


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    home = Path(tempfile.mkdtemp(prefix="intake-"))
    server = DevServer(home / "temporal", port=0, ui_port=0)
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(server.start())
    db_url = f"sqlite:///{home / 'playbook.db'}"
    migrate(db_url)
    library = {p.id: p for p in (_playbook(ONBOARDING), _playbook(ADMIN_CHANGED))}
    try:
        yield loop, client, db_url, library
    finally:
        server.stop()
        loop.close()
        shutil.rmtree(home, ignore_errors=True)


def _event(kind: str, account_id: str) -> Event:
    return Event(type=kind, data={}, id=f"evt-{uuid.uuid4().hex[:10]}", account_id=account_id)


def test_an_event_reaches_the_live_runs_but_not_the_run_it_starts(world):  # type: ignore[no-untyped-def]
    loop, client, db_url, library = world
    queue = f"intake-{uuid.uuid4().hex[:6]}"
    account = f"acc-{uuid.uuid4().hex[:6]}"
    seed(db_url, {"id": account, "name": "Kraus GmbH"}, [], [])

    async def scenario() -> None:
        signup = await take_event(client, queue, db_url, library, _event("account.signed_up", account))
        assert [(r.playbook, r.status) for r in signup.runs] == [("onboarding", "started")]
        assert signup.delivered_to == []  # its own run is started by it, not sent it

        changed = await take_event(client, queue, db_url, library, _event("account.admin_changed", account))
        assert [(r.playbook, r.status) for r in changed.runs] == [("admin-changed", "started")]
        assert changed.delivered_to == [f"onboarding/{account}"]  # the live onboarding run, not the new one

        again = await take_event(client, queue, db_url, library, _event("account.signed_up", account))
        assert [(r.playbook, r.status) for r in again.runs] == [("onboarding", "already_running")]
        # only the runs whose playbook waits for or exits on the type: admin-changed exits on it, onboarding does not
        assert again.delivered_to == [changed.runs[0].run_id]

        repeated = await take_event(
            client,
            queue,
            db_url,
            library,
            Event(type="account.signed_up", data={}, id=again.event_id, account_id=account),
        )
        assert repeated.duplicate and repeated.runs == again.runs and repeated.delivered_to == again.delivered_to

    loop.run_until_complete(scenario())


def test_concurrent_events_each_reach_their_own_accounts_runs(world):  # type: ignore[no-untyped-def]
    loop, client, db_url, library = world
    queue = f"intake-{uuid.uuid4().hex[:6]}"
    accounts = [f"acc-{uuid.uuid4().hex[:6]}" for _ in range(12)]
    for account in accounts:
        seed(db_url, {"id": account, "name": account}, [], [])

    async def scenario() -> None:
        await asyncio.gather(
            *(take_event(client, queue, db_url, library, _event("account.signed_up", a)) for a in accounts)
        )
        # many at once, right after the starts (no visibility store in the way): each event reaches only its
        # account's run
        answers = await asyncio.gather(
            *(
                take_event(client, queue, db_url, library, _event("account.admin_changed", a))
                for a in accounts
                for _ in range(2)
            )
        )
        for i, answer in enumerate(answers):
            account = accounts[i // 2]
            assert f"onboarding/{account}" in answer.delivered_to
            assert all(run_id.split("/")[1] == account for run_id in answer.delivered_to), answer.delivered_to
            assert answer.runs[0].run_id not in answer.delivered_to

    loop.run_until_complete(scenario())


def test_an_event_no_playbook_listens_for_reaches_no_run(world):  # type: ignore[no-untyped-def]
    loop, client, db_url, library = world
    account = f"acc-{uuid.uuid4().hex[:6]}"
    seed(db_url, {"id": account, "name": "Quiet Shop"}, [], [])

    async def go():  # type: ignore[no-untyped-def]
        await take_event(client, "intake-test", db_url, library, _event("account.signed_up", account))
        return await take_event(client, "intake-test", db_url, library, _event("health.score_changed", account))

    answer = loop.run_until_complete(go())
    assert answer.runs == [] and answer.delivered_to == []


def test_an_event_upserts_its_account_and_triggers_see_the_merged_account(world):  # type: ignore[no-untyped-def]
    """Fields merge into the stored ones, contacts are replaced, an unchanged account is left as it is, and an
    unknown owner refuses the event before anything is written."""
    loop, client, db_url, library = world
    queue = f"intake-{uuid.uuid4().hex[:6]}"
    account = f"acc-{uuid.uuid4().hex[:6]}"
    seed(db_url, {"id": account, "name": "Old name", "plan": "basic", "sku_count": 30}, [{"email": "a@x.example"}],
         [{"id": "csm-eva", "name": "Eva"}])
    when = "  when: account.plan == 'pro' and account.sku_count == 30\n"
    merged_when = _playbook(ONBOARDING.replace("id: onboarding", "id: merged-only").replace(
        "  event: account.signed_up\n", "  event: account.signed_up\n" + when))
    crm = BuiltinCrm(db_url)

    async def scenario() -> None:
        answer = await take_event(
            client, queue, db_url, {merged_when.id: merged_when}, _event("account.signed_up", account),
            {"name": "New name", "plan": "pro", "owner": "csm-eva"},
            [{"email": "b@x.example", "first_name": "Bo"}, {"email": "c@x.example"}],
        )
        assert [(r.playbook, r.status) for r in answer.runs] == [("merged-only", "started")]  # sku_count kept
        snapshot = crm.get_account(account)
        assert snapshot.account["name"] == "New name" and snapshot.account["plan"] == "pro"
        assert snapshot.account["sku_count"] == 30 and snapshot.account["owner"]["id"] == "csm-eva"
        assert snapshot.contacts == [{"email": "b@x.example", "first_name": "Bo"}, {"email": "c@x.example"}]

        # the same again: the stored account is what the event says, and stays so
        await take_event(client, queue, db_url, {}, _event("account.signed_up", account), {"plan": "pro"},
                         [{"email": "b@x.example", "first_name": "Bo"}, {"email": "c@x.example"}])
        assert crm.get_account(account) == snapshot

        with pytest.raises(UnknownOwner, match="no CSM 'csm-nobody' is known"):
            await take_event(client, queue, db_url, {}, _event("account.signed_up", account),
                             {"plan": "enterprise", "owner": "csm-nobody"})
        assert crm.get_account(account) == snapshot

    loop.run_until_complete(scenario())


def create_the_same_account_at_once(db_url: str, events: int = 8, rounds: int = 10) -> list[str]:
    """`events` threads take an event for the same new account at the same moment, `rounds` times; returns the
    errors (none expected): the losers of the insert race find the account and update it."""
    errors: list[str] = []
    for _ in range(rounds):
        account = f"acc-race-{uuid.uuid4().hex[:6]}"
        barrier = threading.Barrier(events)

        def take(i: int, account: str = account, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                before_starts(db_url, f"evt-{account}-{i}", account, {"name": "Race", "plan": f"p{i}"},
                              [{"email": f"c{i}@race.example"}])
            except Exception as err:  # noqa: BLE001 - collected, asserted empty
                errors.append(f"{type(err).__name__}: {err}")

        threads = [threading.Thread(target=take, args=(i,)) for i in range(events)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        snapshot = BuiltinCrm(db_url).get_account(account)
        assert snapshot.account["plan"] in {f"p{i}" for i in range(events)}
        assert len(snapshot.contacts) == 1
    return errors


def test_events_creating_the_same_account_at_once_all_succeed(tmp_path):  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    assert create_the_same_account_at_once(db_url) == []
