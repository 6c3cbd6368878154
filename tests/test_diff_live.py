"""`playbook diff --live`: the live runs of a playbook on a real Temporal dev server, replayed on both versions.

Four runs of one playbook are left live at different steps by a real worker (real activities on SQLite, histories
encrypted as PLAYBOOK_PAYLOAD_KEYS makes them): one waiting for an event, one that received it and now waits three
days, one waiting for an approval, one whose approval was given and that now waits a week. Then the real CLI, with
only PLAYBOOK_* settings pointing at the cluster, replays them on four changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from typer.testing import CliRunner

from activities.crm import BuiltinCrm
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from activities.types import AccountSnapshot
from engine.cli import app
from engine.interpreter.messages import DECIDE_UPDATE, EVENT_SIGNAL, OUTCOME_UPDATE, Decision, Event, Outcome
from engine.runtime.codec import codec, new_key, with_codec
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.runs import start_run
from engine.runtime.workers import DATA_CONVERTER, build_worker
from engine.testing.diff_live import Given, LiveRun, replay_runs
from tests.durability_helpers import seed_accounts, write_playbook

pytestmark = pytest.mark.timeout(120)

BASE = """\
id: live-demo
title: Live demo
trigger:
  event: account.signed_up
exit_when:
  - event: subscription.activated
    goal: true
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: Welcome to Repricer
      body: Hi {{ contact.first_name }}, welcome aboard.
  - id: route
    switch:
      - when: account.plan == "enterprise"
        steps:
          - id: sign_off
            approval:
              approvers: owner
              timeout: 2d
          - id: offer
            email:
              to: "{{ contact.email }}"
              subject: Your enterprise offer
              body: Here it is.
          - id: follow_up
            wait: 7d
      - else:
          - id: setup
            wait_for: { event: setup.done, timeout: 5d }
          - id: pause
            wait: 3d
          - id: check_in
            email:
              to: "{{ contact.email }}"
              subject: How is it going?
              body: Any questions so far?
"""

SIGN_OFF = """\
          - id: sign_off
            approval:
              approvers: owner
              timeout: 2d
"""


@dataclass
class Live:
    address: str
    keys: str
    old: Path
    runs: dict[str, str]  # role -> workflow id


@pytest.fixture(scope="module")
def live(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    keys = new_key("live-1")
    runs = asyncio.run(_leave_runs_live(dev_server.address, folder, keys))
    yield Live(dev_server.address, keys, folder / "old" / "live-demo.yaml", runs)


async def _leave_runs_live(address: str, folder: Path, keys: str) -> dict[str, str]:
    db_url = f"sqlite:///{folder / 'live.db'}"
    playbook = write_playbook(folder / "old", "live-demo", BASE)
    starter = seed_accounts(db_url, 2, plan="starter")
    enterprise = seed_accounts(db_url, 2, first=2, plan="enterprise")
    converter = with_codec(DATA_CONVERTER, codec(keys))
    client = await Client.connect(address, runtime=quiet_runtime(), data_converter=converter)
    activities = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
    async with build_worker(client, "live-demo", activities.all()):
        handles = {}
        for role, account in zip(("setup", "pause", "sign_off", "follow_up"), starter + enterprise, strict=True):
            signed_up = Event(type="account.signed_up", data={"plan": "x"}, account_id=account)
            handles[role] = await start_run(client, "live-demo", playbook, account, signed_up)
        await handles["pause"].signal(EVENT_SIGNAL, Event(type="setup.done", data={}, account_id=starter[1]))
        for _ in range(100):  # once the approval is asked (the update's validator refuses an answer before)
            try:
                await handles["follow_up"].execute_update(
                    DECIDE_UPDATE, Decision(decision="approve", by="csm-1", step_id="sign_off")
                )
                break
            except WorkflowUpdateFailedError:
                await asyncio.sleep(0.1)
        moved = time.monotonic()
        await asyncio.sleep(1.0)  # the worker takes the answer and the event before it stops
    # the runs wait (days) with no worker: their histories are what the diff reads. Old enough that a wait of
    # one second after the event would be over.
    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - moved)))
    return {role: h.id for role, h in handles.items()}


def diff(live: Live, tmp_path: Path, new_text: str, *extra: str, keys: str | None = None) -> tuple[int, str, str]:
    new = tmp_path / "new" / "live-demo.yaml"
    new.parent.mkdir(exist_ok=True)
    new.write_text(new_text)
    env = {"PLAYBOOK_TEMPORAL_ADDRESS": live.address, "PLAYBOOK_PAYLOAD_KEYS": keys or live.keys}
    result = CliRunner().invoke(app, ["diff", str(live.old), str(new), "--live", *extra], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def by_role(live: Live, document: dict) -> dict[str, dict]:
    runs = {r["workflow_id"]: r for r in document["live"]["runs"]}
    assert set(runs) == set(live.runs.values())  # every live run, and only them
    return {role: runs[workflow_id] for role, workflow_id in live.runs.items()}


def test_no_change_leaves_every_run_unchanged(live: Live, tmp_path: Path) -> None:
    code, out, err = diff(live, tmp_path, BASE + "\n# a comment is no change\n", "--json")
    assert code == 0, out + err
    document = json.loads(out)
    runs = by_role(live, document)
    assert document["live"]["live_runs"] == 4 and document["live"]["changed"] == 0
    for role, run in runs.items():
        assert run["verdict"] == "unchanged", (role, run["differences"])
        assert run["faithful"] is True  # the replay of its own version made the effects the run made
        assert not run["third_version"] and run["problem"] is None
    # each replayed from its own inputs: where each stands, the event and the answer it got
    assert runs["setup"]["old"]["current"][-1] == "setup"
    assert runs["pause"]["old"]["current"][-1] == "pause" and runs["pause"]["events"] == 1
    assert runs["sign_off"]["old"]["current"][-1] == "sign_off"
    assert runs["follow_up"]["old"]["current"][-1] == "follow_up" and runs["follow_up"]["answers"] == 1
    assert runs["follow_up"]["old"]["choices"] == {"sign_off": "approved"}
    # no address and no body in what is printed: recipients are counted, bodies compared by digest
    assert "@" not in out and "welcome aboard" not in out


def test_a_shorter_wait_moves_the_run_in_it(live: Live, tmp_path: Path) -> None:
    code, out, err = diff(live, tmp_path, BASE.replace("wait: 3d", "wait: 1s"))
    assert code == 1, out + err
    assert "behaviour changes" in out and "1 of 4 live run(s) would behave differently" in out
    waiting = live.runs["pause"]
    assert f"run {waiting}: would send other emails or tasks; would stand elsewhere now" in out
    assert "email check_in: only on the new version (sent at +" in out
    assert "now: running at route, pause → completed" in out
    for role in ("setup", "sign_off", "follow_up"):
        assert f"run {live.runs[role]}:" not in out  # unchanged: a row in the table, no details


def test_removing_the_approval_sends_the_waiting_runs_email(live: Live, tmp_path: Path) -> None:
    code, out, err = diff(live, tmp_path, BASE.replace(SIGN_OFF, ""), "--json")
    assert code == 1, out + err
    runs = by_role(live, json.loads(out))
    waiting = runs["sign_off"]
    assert waiting["kinds"] == ["path", "emails", "now"]
    assert waiting["differences"]["path"] == ["step sign_off: waiting → not in this version"]
    [email] = waiting["differences"]["emails"]
    assert email.startswith("email offer: only on the new version (sent at +") and "to 1 recipient(s)" in email
    assert waiting["differences"]["now"] == ["now: running at route, sign_off → running at route, follow_up"]
    # the run that was approved goes the same way, without the approval
    assert runs["follow_up"]["kinds"] == ["path"]
    assert runs["follow_up"]["differences"]["path"] == ["step sign_off: done → not in this version"]
    assert runs["setup"]["verdict"] == runs["pause"]["verdict"] == "unchanged"


def test_rewording_an_email_changes_emails_only(live: Live, tmp_path: Path) -> None:
    code, out, err = diff(live, tmp_path, BASE.replace("welcome aboard.", "good to have you."))
    assert code == 1, out + err
    for workflow_id in live.runs.values():
        assert f"run {workflow_id}: would send other emails or tasks\n" in out
    replayed = out.split("live runs of live-demo: 4", 1)[1]  # below the static diff, which shows the playbook's text
    assert replayed.count("email welcome: body differs") == 4
    assert "good to have you" not in replayed and "another path" not in replayed and "elsewhere" not in replayed


def test_histories_it_cannot_decrypt_are_reported_not_replayed(live: Live, tmp_path: Path) -> None:
    code, out, err = diff(live, tmp_path, BASE, "--json", "--limit", "2", keys=new_key("other"))
    assert code == 0, out + err
    document = json.loads(out)["live"]
    assert document["live_runs"] == 4 and document["replayed"] == 2 and document["more"] is True
    assert document["not_replayed"] == 2
    for run in document["runs"]:
        assert run["verdict"] == "not replayed"
        assert run["problem"].startswith("its history cannot be decoded")
        assert "'live-1'" in run["problem"] and live.keys.split(":")[1] not in out  # the key's id, never a key
        assert run["account_id"].startswith("acc-") and len(run["version"]) == 16  # from the search index


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(BASE)
    env = {"PLAYBOOK_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    result = CliRunner().invoke(app, ["diff", str(old), str(old), "--live"], env=env)
    assert result.exit_code == 2
    assert "cannot reach Temporal at 127.0.0.1:1" in result.stderr


def test_runs_on_a_third_version_are_compared_from_their_own(live: Live, tmp_path: Path) -> None:
    """OLD is not the version the runs are pinned to: each is replayed on its own version (from its input)."""
    old = tmp_path / "old" / "live-demo.yaml"
    old.parent.mkdir()
    old.write_text(BASE.replace("timeout: 5d", "timeout: 6d"))
    moved = Live(live.address, live.keys, old, live.runs)
    code, out, err = diff(moved, tmp_path, BASE.replace("wait: 3d", "wait: 1s"), "--json")
    assert code == 1, out + err
    runs = by_role(live, json.loads(out))
    assert all(run["third_version"] for run in runs.values())
    assert runs["pause"]["kinds"] == ["emails", "now"]
    assert runs["setup"]["verdict"] == "unchanged"


def test_a_run_days_old_is_replayed_from_its_own_start_to_its_age(tmp_path: Path) -> None:
    """No dev server: a run as its history would give it, four and a half days old, the event on its first day. Its
    replays start on its own date and the server's clock skips to its age: on the old version it has sent its check-in
    (three days after the event) and ended; with a five-day wait it would still be waiting."""
    old = write_playbook(tmp_path / "old", "live-demo", BASE)
    new = write_playbook(tmp_path / "new", "live-demo", BASE.replace("wait: 3d", "wait: 5d"))
    owner = {"id": "csm-1", "name": "Casey", "email": "casey@success.example", "languages": ["en"], "role": None}
    run = LiveRun(
        "live-demo/acc-09/0a1b2c3d", version=old.version, account_id="acc-09",
        started_at=datetime(2026, 3, 2, 9, tzinfo=UTC), age=4.5 * 86400, playbook=old,
        event=Event(type="account.signed_up", data={}, account_id="acc-09"),
        snapshot=AccountSnapshot(
            account={"id": "acc-09", "name": "Nine", "plan": "starter", "owner": owner, "tags": []},
            contacts=[{"email": "ida@nine.example", "first_name": "Ida"}],
        ),
        given=[Given("event", 86400.5, {"type": "setup.done", "data": {}, "id": "evt-1", "occurred_at": None,
                                        "account_id": "acc-09"})],
    )
    began = time.monotonic()
    [diff] = asyncio.run(replay_runs([run], old, new, None))
    assert time.monotonic() - began < 20
    assert diff.old is not None and diff.new is not None
    assert diff.old.status == "completed" and diff.old.choices == {"route": "case else", "setup": "event came"}
    assert [(e["step"], int(e["at"] // 3600)) for e in diff.old.emails] == [("welcome", 0), ("check_in", 4 * 24)]
    assert diff.new.status == "running" and diff.new.current[-1] == "pause"
    assert diff.kinds == ["emails", "now"]
    assert diff.details["emails"][0].startswith("email check_in: only on the old version (sent at +4d to 1 recipient")


def test_runs_already_on_the_new_version_are_not_replayed(live: Live, tmp_path: Path) -> None:
    old = tmp_path / "old" / "live-demo.yaml"
    old.parent.mkdir()
    old.write_text(BASE.replace("timeout: 5d", "timeout: 6d"))
    code, out, err = diff(Live(live.address, live.keys, old, live.runs), tmp_path, BASE, "--json")
    assert code == 1, out + err  # the static diff: a timing change
    document = json.loads(out)["live"]
    assert document["changed"] == 0 and document["verdicts"] == {"on the new version already": 4}


CALLS = """\
id: live-calls
title: Live calls
trigger:
  event: account.signed_up
steps:
  - id: check_in
    call_task:
      title: Check-in call
      wait: true
      timeout: 10d
      outcomes: [happy, at_risk]
  - id: route
    switch:
      - when: steps.check_in.outcome == "at_risk"
        steps:
          - id: rescue
            email:
              to: "{{ contact.email }}"
              subject: Can we help?
              body: Let us talk.
  - id: later
    wait: 7d
"""


def test_a_call_outcome_is_replayed(live: Live, tmp_path: Path) -> None:
    """A call task's outcome recorded in the live run is given to the replays: the rescue email it led to is sent on
    both versions (the replay of its own version is faithful), and the new subject is the difference."""
    old = asyncio.run(_call_answered(live.address, live.keys, tmp_path))
    new = tmp_path / "new" / "live-calls.yaml"
    new.parent.mkdir()
    new.write_text(CALLS.replace("Can we help?", "How can we help?"))
    env = {"PLAYBOOK_TEMPORAL_ADDRESS": live.address, "PLAYBOOK_PAYLOAD_KEYS": live.keys}
    result = CliRunner().invoke(app, ["diff", str(old), str(new), "--live", "--json"], env=env)
    assert result.exit_code == 1, result.stdout + result.stderr
    [run] = json.loads(result.stdout)["live"]["runs"]
    assert run["answers"] == 1 and run["faithful"] is True
    assert run["old"]["choices"]["check_in"] == "outcome at_risk"
    assert run["kinds"] == ["emails"]
    assert run["differences"]["emails"] == ["email rescue: subject 'Can we help?' → 'How can we help?'"]


async def _call_answered(address: str, keys: str, folder: Path) -> Path:
    db_url = f"sqlite:///{folder / 'calls.db'}"
    playbook = write_playbook(folder / "old", "live-calls", CALLS)
    [account] = seed_accounts(db_url, 1, first=7)
    converter = with_codec(DATA_CONVERTER, codec(keys))
    client = await Client.connect(address, runtime=quiet_runtime(), data_converter=converter)
    activities = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
    async with build_worker(client, "live-calls", activities.all()):
        handle = await start_run(
            client, "live-calls", playbook, account, Event(type="account.signed_up", data={}, account_id=account)
        )
        for _ in range(100):
            try:
                await handle.execute_update(OUTCOME_UPDATE, Outcome(outcome="at_risk", by="csm-1", step_id="check_in"))
                break
            except WorkflowUpdateFailedError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    return folder / "old" / "live-calls.yaml"
