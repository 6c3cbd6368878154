"""Recorded runs (tests/histories/) replay on today's interpreter.

Temporal re-runs a workflow's code against its history whenever a worker picks up a run it has not cached
(after a restart, a deploy, an eviction). If the interpreter now issues different commands for the same
history (another activity, a timer fewer, a step moved), every live run of that shape is stuck on a
nondeterminism error. Replaying real histories here catches such a change before it ships; a deliberate one
needs `workflow.patched` and a fresh recording (`.venv/bin/python tests/histories/record.py`).

Histories are kept per release (tests/histories/<version>/, each with its index.json), and every release's
folder is replayed: today's code must still replay what earlier releases recorded. With Worker Versioning a
run stays on the workers of the version it started on, so this matters where a run does change code: runs
moved to a newer version by hand, runs started before versioning was on, and deploys with versioning off
(docs/operations.md, "Deploying new engine code"). A release's folder may go once no run of it is left.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from engine.interpreter.core import ASK_CREATION_PATCH, FANOUT_PATCH, PROGRESS_PATCH
from engine.interpreter.messages import FOR_EACH_WORKFLOW_NAME, WORKFLOW_NAME
from engine.interpreter.workflow import PlaybookForEachChunk, PlaybookRun
from engine.runtime.workers import DATA_CONVERTER, sandbox_runner
from tests.paths import ROOT
from tests.split_history import split_after_local_activities

HISTORIES = ROOT / "tests" / "histories"


def _release_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.name))


# One folder per release (tests/histories/<version>/), oldest first
RELEASES: list[Path] = sorted((d for d in HISTORIES.iterdir() if (d / "index.json").is_file()), key=_release_key)


def index(release: Path) -> dict[str, dict[str, str]]:
    return json.loads((release / "index.json").read_text(encoding="utf-8"))["histories"]


INDEX: dict[str, dict[str, dict[str, str]]] = {release.name: index(release) for release in RELEASES}
CASES = [(release, file) for release in INDEX for file in sorted(INDEX[release])]


def history(release: str, file: str) -> WorkflowHistory:
    text = (HISTORIES / release / file).read_text(encoding="utf-8")
    return WorkflowHistory.from_json(INDEX[release][file]["workflow_id"], text)


def workflow_type(release: str, file: str) -> str:
    return json.loads((HISTORIES / release / file).read_text(encoding="utf-8"))["events"][0][
        "workflowExecutionStartedEventAttributes"
    ]["workflowType"]["name"]


def replayer(*workflows: type) -> Replayer:
    # The worker's own sandbox settings (engine.runtime.workers): replay runs the code exactly as a worker would.
    return Replayer(workflows=list(workflows), workflow_runner=sandbox_runner(), data_converter=DATA_CONVERTER)


def test_histories_are_kept_per_release():
    assert RELEASES, "no tests/histories/<release>/index.json: run tests/histories/record.py"
    assert not list(HISTORIES.glob("*.json")), "histories belong in their release's folder, tests/histories/<version>/"


@pytest.mark.parametrize("release", sorted(INDEX))
def test_every_recorded_history_is_indexed_and_both_workflows_are_covered(release):
    files = {p.name for p in (HISTORIES / release).glob("*.json")} - {"index.json"}
    assert files == set(INDEX[release]), f"tests/histories/{release}/ and its index.json disagree"
    assert {workflow_type(release, f) for f in files} == {WORKFLOW_NAME, FOR_EACH_WORKFLOW_NAME}


@pytest.mark.parametrize(("release", "file"), CASES, ids=[f"{r}/{f.removesuffix('.json')}" for r, f in CASES])
def test_recorded_history_replays(release, file):
    result = asyncio.run(replayer(PlaybookRun, PlaybookForEachChunk).replay_workflow(history(release, file)))
    assert result.replay_failure is None


@pytest.mark.parametrize(("release", "file"), CASES, ids=[f"{r}/{f.removesuffix('.json')}" for r, f in CASES])
def test_recorded_history_replays_with_each_local_activitys_use_in_the_next_task(release, file):
    """The same history as a loaded worker may have written it (tests/split_history.py): each local activity's
    result in one workflow task, what the run did with it in the next."""
    split, splits = split_after_local_activities(history(release, file))
    if workflow_type(release, file) == WORKFLOW_NAME:  # every run loads its account (a local activity since 0.2.0)
        assert splits >= (1 if release != "0.1.0" else 0)
    result = asyncio.run(replayer(PlaybookRun, PlaybookForEachChunk).replay_workflow(split))
    assert result.replay_failure is None


# ------------------------------------------------------------------------ the test can fail


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)  # sandboxed=False: the sandbox would re-import pytest
class ReorderedPlaybookRun:
    """PlaybookRun after a careless edit: the first step's effect comes before the account is loaded."""

    @workflow.run
    async def run(self, run: dict[str, Any]) -> None:
        timeout = timedelta(seconds=60)
        # the patches PlaybookRun asks for first, so the failure is about the reordering
        workflow.patched(FANOUT_PATCH)
        workflow.patched(ASK_CREATION_PATCH)
        workflow.patched(PROGRESS_PATCH)
        await workflow.execute_activity("assign_owner", {}, start_to_close_timeout=timeout)
        await workflow.execute_local_activity(
            "load_account", {"account_id": run["account_id"]}, start_to_close_timeout=timeout
        )


def test_a_reordered_interpreter_fails_to_replay():
    file = "renewal-healthy-upsell.json"  # starts load_account, then assign_owner
    release = next(r for r in reversed(INDEX) if file in INDEX[r])  # the newest release that recorded it
    with pytest.raises(workflow.NondeterminismError) as failure:
        asyncio.run(replayer(ReorderedPlaybookRun).replay_workflow(history(release, file)))
    # the history has load_account (a local activity, since 0.2.0) where this schedules assign_owner first
    assert any(w in str(failure.value) for w in ("assign_owner", "load_account", "LocalActivity")), str(failure.value)
