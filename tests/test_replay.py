"""Recorded runs (tests/histories/) replay on today's interpreter.

Temporal re-runs a workflow's code against its history whenever a worker picks up a run it has not cached
(after a restart, a deploy, an eviction). If the interpreter now issues different commands for the same
history (another activity, a timer fewer, a step moved), every live run of that shape is stuck on a
nondeterminism error. Replaying real histories here catches such a change before it ships; a deliberate one
needs `workflow.patched` and a fresh recording (`.venv/bin/python tests/histories/record.py`).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from engine.interpreter.messages import FOR_EACH_WORKFLOW_NAME, WORKFLOW_NAME
from engine.interpreter.workflow import PlaybookForEachChunk, PlaybookRun
from engine.runtime.workers import sandbox_runner
from tests.paths import ROOT

HISTORIES = ROOT / "tests" / "histories"
INDEX: dict[str, dict[str, str]] = json.loads((HISTORIES / "index.json").read_text(encoding="utf-8"))["histories"]


def history(file: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(INDEX[file]["workflow_id"], (HISTORIES / file).read_text(encoding="utf-8"))


def workflow_type(file: str) -> str:
    return json.loads((HISTORIES / file).read_text(encoding="utf-8"))["events"][0][
        "workflowExecutionStartedEventAttributes"
    ]["workflowType"]["name"]


def replayer(*workflows: type) -> Replayer:
    # The worker's own sandbox settings (engine.runtime.workers): replay runs the code exactly as a worker would.
    return Replayer(workflows=list(workflows), workflow_runner=sandbox_runner())


def test_every_recorded_history_is_indexed_and_both_workflows_are_covered():
    files = {p.name for p in HISTORIES.glob("*.json")} - {"index.json"}
    assert files == set(INDEX), "tests/histories/ and its index.json disagree: run tests/histories/record.py"
    assert {workflow_type(f) for f in files} == {WORKFLOW_NAME, FOR_EACH_WORKFLOW_NAME}


@pytest.mark.parametrize("file", sorted(INDEX), ids=lambda f: f.removesuffix(".json"))
def test_recorded_history_replays(file):
    result = asyncio.run(replayer(PlaybookRun, PlaybookForEachChunk).replay_workflow(history(file)))
    assert result.replay_failure is None


# ------------------------------------------------------------------------ the test can fail


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)  # sandboxed=False: the sandbox would re-import pytest
class ReorderedPlaybookRun:
    """PlaybookRun after a careless edit: the first step's effect comes before the account is loaded."""

    @workflow.run
    async def run(self, run: dict[str, Any]) -> None:
        timeout = timedelta(seconds=60)
        await workflow.execute_activity("assign_owner", {}, start_to_close_timeout=timeout)
        await workflow.execute_activity("load_account", {"account_id": run["account_id"]}, start_to_close_timeout=timeout)


def test_a_reordered_interpreter_fails_to_replay():
    file = "renewal-healthy-upsell.json"  # starts load_account, then assign_owner
    with pytest.raises(workflow.NondeterminismError) as failure:
        asyncio.run(replayer(ReorderedPlaybookRun).replay_workflow(history(file)))
    assert "load_account" in str(failure.value), str(failure.value)  # the activity the history expected
