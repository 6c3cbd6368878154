"""`playbook runs cancel --playbook ID --version V [--reenroll]` on the real Temporal dev server.

A playbook whose runs wait on a call task has live runs on two versions (started as the intake starts them:
engine.runtime.intake.start_enrolled, workflow id `<playbook>/<account>`). The command, through the real CLI:
refuses bad input with exit 2; --dry-run changes nothing; a plain cancel of version 1 closes its runs and their
tasks in the inbox and leaves version 2's alone; --reenroll then cancels a newer live run of version 1 and starts
every account cancelled so far again on the current version, under the same workflow id, with its own trigger
event; the same command again does nothing more.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus
from typer.testing import CliRunner

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.playbook_activities import PlaybookActivities
from engine.cli import app
from engine.interpreter.messages import Event
from engine.language.model import Playbook
from engine.language.validator import validate_playbook_text
from engine.runtime.bulk_runs import BulkError, resolve_version, run_input
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.intake import start_enrolled
from engine.runtime.workers import build_worker, with_payload_converter
from engine.storage import models as t
from engine.storage.db import migrate, session

pytestmark = pytest.mark.timeout(120)

PLAYBOOK = """\
id: bulk-demo
title: Call new sign-ups{suffix}
trigger: {{ event: account.signed_up }}
steps:
  - id: call
    call_task:
      assignee: user:csm-1
      title: "Call {{{{ account.id }}}} about {{{{ event.data.plan }}}}{suffix}"
      wait: true
"""
V1, V2 = "", " (v2)"


def _playbook(suffix: str) -> Playbook:
    checked = validate_playbook_text(PLAYBOOK.format(suffix=suffix), "bulk-demo.yaml")
    assert checked.playbook is not None, [p.header() for p in checked.problems]
    return checked.playbook


def _event(account: str) -> Event:
    return Event("account.signed_up", {"plan": f"plan-of-{account}"}, id=f"ev-{account}", account_id=account)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _tasks(db_url: str) -> dict[str, list[tuple[str, str]]]:
    """workflow id -> its call tasks (status, title), oldest first."""
    found: dict[str, list[tuple[str, str]]] = {}
    with session(db_url) as s:
        for row in s.scalars(select(t.CallTask).order_by(t.CallTask.id)):
            found.setdefault(row.workflow_id, []).append((row.status, row.title))
    return found


def test_resolve_version_by_prefix() -> None:
    known = ["abcd1234ffff0000", "abcd9999eeee1111", "0123456789abcdef"]
    assert resolve_version("0123", known) == "0123456789abcdef"
    assert resolve_version("ABCD1234", known) == "abcd1234ffff0000"
    assert resolve_version("abcd9999eeee1111", known) == "abcd9999eeee1111"
    for bad, says in [("abcd", "ambiguous"), ("abc", "not a version"), ("ffff", "no version"), ("v1", "not a")]:
        with pytest.raises(BulkError, match=says):
            resolve_version(bad, known)


def test_cancel_and_reenroll_a_version(dev_server: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _playbook(V1), _playbook(V2)
    library = tmp_path / "library"
    library.mkdir()
    (library / "bulk-demo.yaml").write_text(PLAYBOOK.format(suffix=V2))  # the library's current version is v2
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    accounts = ["acc-1", "acc-2", "acc-3", "acc-4"]
    for n, account in enumerate(accounts):
        seed(db_url, {"id": account, "name": f"Account {account}", "owner": "csm-1"}, [],
             [{"id": "csm-1", "name": "Mia"}] if n == 0 else [])
    queue = f"bulk-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": str(tmp_path / "home"), "PLAYBOOK_LIBRARY": str(library),
        "PLAYBOOK_TEMPORAL_ADDRESS": dev_server.address, "PLAYBOOK_DATABASE_URL": db_url,
        "PLAYBOOK_TASK_QUEUE": queue, "PLAYBOOK_LOG_FORMAT": "console",
    }.items():
        monkeypatch.setenv(name, value)

    async def cli(*args: str, stdin: str | None = None, playbook: str = "bulk-demo") -> tuple[int, str]:
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["runs", "cancel", "--playbook", playbook, *args], input=stdin
        )
        return result.exit_code, result.output

    async def scenario() -> None:
        client = with_payload_converter(await Client.connect(dev_server.address, runtime=quiet_runtime()))

        async def count(query: str) -> int:
            return (await client.count_workflows(f"PlaybookId = 'bulk-demo' AND {query}")).count

        async def latest(workflow_id: str) -> tuple[str, WorkflowExecutionStatus | None]:
            described = await client.get_workflow_handle(workflow_id).describe()
            return described.run_id or "", described.status

        worker = build_worker(client, queue, PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider()).all())
        async with worker:
            for account, playbook in [("acc-1", v1), ("acc-2", v1), ("acc-3", v2)]:
                started = await start_enrolled(client, queue, playbook, account, account, _event(account))
                assert started.status == "started"

            async def three_waiting() -> bool:
                return sum(len(x) for x in _tasks(db_url).values()) == 3 and await count(
                    "ExecutionStatus = 'Running'") == 3

            await _eventually(three_waiting, "three runs waiting on their call tasks")
            first_runs = {w: (await latest(w))[0] for w in ("bulk-demo/acc-1", "bulk-demo/acc-2")}

            # bad input: exit 2 and a message, nothing touched
            wrong = "0000" if not (v1.version.startswith("0000") or v2.version.startswith("0000")) else "ffff"
            for args, says in [
                (["--version", "zz"], "is not a version"),
                (["--version", wrong], "no version"),
                (["--version", v2.version[:6], "--reenroll"], "current version"),
            ]:
                code, out = await cli(*args)
                assert code == 2 and says in out, (args, code, out)
            code, out = await cli("--version", "abcd", playbook="nope")
            assert code == 2 and "no playbook 'nope'" in out, out
            # a current version that enrolls differently: re-enrolling under the old ids is refused before any cancel
            current = (library / "bulk-demo.yaml").read_text()
            (library / "bulk-demo.yaml").write_text(current + "enrollment: { reenroll: after_exit }\n")
            code, out = await cli("--version", v1.version[:6], "--reenroll", "--yes")
            assert code == 2 and "the enrollment of bulk-demo changed" in out, out
            (library / "bulk-demo.yaml").write_text(current)

            # --dry-run, and a confirmation answered no: nothing changes
            code, out = await cli("--version", v1.version[:6], "--reenroll", "--dry-run")
            assert code == 0, out
            assert "bulk-demo/acc-1 (account acc-1): would cancel, re-enroll on " + v2.version[:8] in out
            assert "bulk-demo/acc-2" in out and "bulk-demo/acc-3" not in out and "nothing changed" in out
            code, out = await cli("--version", v1.version, stdin="n\n")
            assert code == 1 and "nothing done" in out, out
            assert all(x == [("open", x[0][1])] for x in _tasks(db_url).values())
            assert await count("ExecutionStatus = 'Running'") == 3

            # cancel version 1: its runs close, their tasks leave the inbox as cancelled; version 2's stay
            code, out = await cli("--version", v1.version[:6], "--yes")
            assert code == 0, out
            assert "bulk-demo/acc-1 (account acc-1): cancelled" in out and "acc-3" not in out
            assert "done: 2 cancelled" in out
            for w in first_runs:
                assert await latest(w) == (first_runs[w], WorkflowExecutionStatus.CANCELED)
            tasks = _tasks(db_url)
            assert tasks["bulk-demo/acc-1"] == [("cancelled", "Call acc-1 about plan-of-acc-1")]
            assert tasks["bulk-demo/acc-2"][0][0] == "cancelled"
            assert tasks["bulk-demo/acc-3"] == [("open", "Call acc-3 about plan-of-acc-3 (v2)")]
            assert (await latest("bulk-demo/acc-3"))[1] == WorkflowExecutionStatus.RUNNING

            # a newer live run of version 1; then --reenroll: it is cancelled, and the three accounts start again
            assert (await start_enrolled(client, queue, v1, "acc-4", "acc-4", _event("acc-4"))).status == "started"

            async def listed() -> bool:
                return await count(f"PlaybookVersion = '{v1.version}' AND ExecutionStatus = 'Canceled'") == 2 and (
                    await count(f"PlaybookVersion = '{v1.version}' AND ExecutionStatus = 'Running'") == 1
                ) and len(_tasks(db_url).get("bulk-demo/acc-4", [])) == 1

            await _eventually(listed, "the cancelled runs and the new one in Temporal's search index")
            first_runs["bulk-demo/acc-4"] = (await latest("bulk-demo/acc-4"))[0]
            code, out = await cli("--version", v1.version[:6], "--yes", "--reenroll")
            assert code == 0, out
            assert "1 live run(s)" in out and "2 run(s) cancelled earlier by this command to re-enroll" in out
            assert "done: 3 reenrolled" in out
            again = "bulk-demo/acc-1 (account acc-1): cancelled earlier by this command; re-enrolled on "
            assert again + v2.version[:8] in out
            new_runs = {}
            for w, old in first_runs.items():
                run_id, status = await latest(w)
                assert run_id != old and status == WorkflowExecutionStatus.RUNNING, w
                new_runs[w] = run_id
                started_with = await run_input(client, w, run_id)
                account = w.split("/")[1]
                assert started_with.playbook.version == v2.version and started_with.event == _event(account)

            async def new_tasks() -> bool:
                return all(len(_tasks(db_url).get(w, [])) == 2 for w in first_runs)

            await _eventually(new_tasks, "the re-enrolled runs' call tasks")
            tasks = _tasks(db_url)
            assert tasks["bulk-demo/acc-4"] == [
                ("cancelled", "Call acc-4 about plan-of-acc-4"), ("open", "Call acc-4 about plan-of-acc-4 (v2)")
            ]
            assert tasks["bulk-demo/acc-3"] == [("open", "Call acc-3 about plan-of-acc-3 (v2)")]

            # the same command again: nothing more is started
            code, out = await cli("--version", v1.version[:6], "--yes", "--reenroll")
            assert code == 0 and "nothing to do" in out, out
            for w, run_id in new_runs.items():
                assert await latest(w) == (run_id, WorkflowExecutionStatus.RUNNING)

            # a run no worker picks up does not close within --wait: it is named, exit 1
            stuck = await start_enrolled(client, f"{queue}-nobody", v1, "acc-5", "acc-5", _event("acc-5"))

            async def stuck_listed() -> bool:
                return await count(f"PlaybookVersion = '{v1.version}' AND ExecutionStatus = 'Running'") == 1

            await _eventually(stuck_listed, "the stuck run in the search index")
            code, out = await cli("--version", v1.version[:6], "--yes", "--wait", "1")
            assert code == 1, out
            assert f"{stuck.run_id} (account acc-5): failed: cancel requested, still running after 1 s" in out
            assert f"1 run(s) failed: {stuck.run_id}" in out
            await client.get_workflow_handle(stuck.run_id).terminate("test done")

    asyncio.run(scenario())
