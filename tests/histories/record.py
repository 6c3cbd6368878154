"""Records the histories that tests/test_replay.py replays: one run of each bundled playbook, and one large for_each.

Each run is a scenario run exactly as `playbook test` runs it (the real interpreter and activities on the
time-skipping server): a client interceptor notes the ids of the PlaybookRun workflows it starts, and each
one's history, and its children's, is saved as ``<scenario>.json`` (``WorkflowHistory.to_json()``), with its
workflow id in ``index.json``. The bundled scenarios come from playbooks/tests/; the for_each one is made here,
because no bundled scenario has more than 100 items (the point where the items move to PlaybookForEachChunk
children).

Histories are kept per release: this writes ``tests/histories/<version>/``, the version in pyproject.toml,
and leaves the folders of earlier releases alone (the replay test replays every folder). Each release records
its own once, when it is cut (docs/operations.md, "Recorded histories"):

    .venv/bin/python tests/histories/record.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import temporalio
import yaml
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from engine.interpreter.messages import FOR_EACH_WORKFLOW_NAME, WORKFLOW_NAME  # noqa: E402
from engine.language.library import Library, Resolver  # noqa: E402
from engine.runtime.connect import quiet_runtime  # noqa: E402
from engine.testing.scenarios import run_scenario, test_server_path  # noqa: E402

PLAYBOOKS = ROOT / "playbooks"
# a history kept in Git; the for_each chunk child of 0.3.0 (heartbeat timeouts on its activities) is 219 KB
MAX_BYTES = 250_000
RELEASE = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
OUT = HERE / RELEASE  # this release's folder; the others are earlier releases' recordings

# One scenario per bundled playbook; between them every activity, timers, signals (events, exit_when) and updates
# (approvals, call outcomes).
SCENARIOS = [
    "lost-and-found-anomaly-documents-uploaded",  # wait_for an event
    "lost-and-found-damage-burst-warehouse",  # call_task answered through the outcome update
    "quarterly-satisfaction-survey-detractor",  # wait_for with a match, switch
    "renewal-healthy-upsell",  # email with an edited approval, call_task, waits until dates, exit_when as goal
    "repricer-onboarding",  # assign, call tasks
    "risk-intervention-health-wants-to-cancel",  # three call tasks, one answered
    "risk-intervention-still-at-risk",  # approval, email
    "support-sla-escalation-breach",  # parallel branches, approval, two call tasks answered
    "trial-follow-up-converts",  # exit on an event
    "webinar-invitations-no-show",  # for_each inline, wait_for per item
]
# One more than engine.interpreter.flow.INLINE_FOR_EACH_LIMIT: the items run in a PlaybookForEachChunk child (one
# slice of 101 since 0.2.0; two chunks of 100 and 1 in 0.1.0's recording)
FOR_EACH_ITEMS = 101

FOR_EACH_PLAYBOOK = """\
id: replay-for-each-chunks
title: Greets every contact of a large account
trigger: { manual: true }
steps:
  - id: greet_all
    for_each:
      items: contacts
      as: person
      concurrency: 100
      steps:
        - id: hello
          email:
            to: "{{ person.email }}"
            subject: "Hi {{ person.first_name }}"
            body: "Hello"
        - wait: 1d
        - id: again
          email:
            to: "{{ person.email }}"
            subject: "Still there, {{ person.first_name }}?"
            body: "Hello again"
  - crm:
      update: { greeted: "{{ steps.greet_all.count }}" }
"""


def for_each_scenario(folder: Path) -> Path:
    """A library of one playbook whose for_each runs in PlaybookForEachChunk children, and its scenario."""
    (folder / "tests").mkdir(parents=True)
    (folder / "replay-for-each-chunks.yaml").write_text(FOR_EACH_PLAYBOOK, encoding="utf-8")
    scenario = {
        "name": "101 contacts: the for_each runs in a child workflow; two emails a day apart",
        "playbook": "replay-for-each-chunks",
        "start": {"manual": True},
        "account": {"id": "acc-large", "name": "Large Co."},
        "contacts": [{"email": f"c{i}@large.example", "first_name": f"C{i}"} for i in range(FOR_EACH_ITEMS)],
        "expect": [{"outcome": "completed"}],
    }
    path = folder / "tests" / "for-each-chunks.scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return path


class _NoteStarts(Interceptor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        notes = self

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
                if input.workflow == WORKFLOW_NAME:
                    notes.started.append(input.id)
                return await super().start_workflow(input)

        return Outbound(next)


class _Env:
    """The scenario's environment with the noting client in place of its own."""

    def __init__(self, env: WorkflowEnvironment, client: Client) -> None:
        self._env = env
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _children(history_json: dict[str, Any]) -> list[str]:
    """The ids of the interpreter's child runs (run_playbook, a large for_each's chunks)."""
    ids = []
    for event in history_json["events"]:
        started = event.get("childWorkflowExecutionStartedEventAttributes")
        if started and started["workflowType"]["name"] in (WORKFLOW_NAME, FOR_EACH_WORKFLOW_NAME):
            ids.append(started["workflowExecution"]["workflowId"])
    return ids


async def record_one(name: str, path: Path, library: Path, index: dict[str, dict[str, str]]) -> None:
    resolver = Resolver(extra=Library.load(library).playbooks)
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), runtime=quiet_runtime()
    ) as env:
        notes = _NoteStarts()
        config = env.client.config()
        client = Client(**{**config, "interceptors": [*config["interceptors"], notes]})
        report = await run_scenario(path, _Env(env, client), resolver, library)  # type: ignore[arg-type]
        if not report.passed:
            raise SystemExit(f"{name}: the scenario fails, so its history is not worth keeping: {report.failures}")
        queue = [(workflow_id, name) for workflow_id in notes.started]
        while queue:
            workflow_id, file_stem = queue.pop(0)
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            text = history.to_json()
            size = len(text.encode())
            queue += [(child, f"{name}.child-{i}") for i, child in enumerate(_children(json.loads(text)), 1)]
            if size > MAX_BYTES:
                if file_stem == name:
                    raise SystemExit(f"{name}: {size} bytes, over {MAX_BYTES}: pick a smaller run")
                print(f"{file_stem}: {len(history.events)} events, {size // 1000} KB: too large to keep, skipped")
                continue
            file = f"{file_stem}.json"
            (OUT / file).write_text(text, encoding="utf-8")
            index[file] = {"workflow_id": workflow_id, "scenario": name}
            print(f"{file}: {len(history.events)} events, {size // 1000} KB, run outcome {report.outcome}")


async def record() -> None:
    index: dict[str, dict[str, str]] = {}
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):  # all at once, so the folder and its index always agree
        old.unlink()
    for name in SCENARIOS:
        await record_one(name, PLAYBOOKS / "tests" / f"{name}.scenario.yaml", PLAYBOOKS, index)
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp)
        await record_one("for-each-chunks", for_each_scenario(library), library, index)
    document = {"release": RELEASE, "temporalio": temporalio.__version__, "histories": index}
    (OUT / "index.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(record())
