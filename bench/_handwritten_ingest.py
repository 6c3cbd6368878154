"""bench/profile_run.py's `ingest` playbook (email the contact, wait 30 days) written by hand, twice: load_account
as a regular activity (what the interpreter does) and as a local activity, to price a local load_account.

Same activity names, requests, timeouts and retries as the interpreter sends them (see bench/_handwritten.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from bench._handwritten import MESSAGING

TIMEOUT = timedelta(seconds=30)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=10),
    maximum_attempts=10,
)


@dataclass
class IngestInput:
    account_id: str
    playbook_id: str
    version: str


async def ingest(inp: IngestInput, local: bool) -> str:
    info = workflow.info()
    request = act.AccountRequest(
        inp.account_id, act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, None, inp.version),
        workflow.now().isoformat(),
    )
    snapshot: act.AccountSnapshot
    if local:
        snapshot = await workflow.execute_local_activity(
            "load_account", request, result_type=act.AccountSnapshot, start_to_close_timeout=TIMEOUT,
            retry_policy=RETRY,
        )
    else:
        snapshot = await workflow.execute_activity(
            "load_account", request, result_type=act.AccountSnapshot, start_to_close_timeout=TIMEOUT,
            retry_policy=RETRY,
        )
    account, contact = snapshot.account, snapshot.contacts[0]
    email = act.EmailRequest(
        key=f"{info.workflow_id}/{info.first_execution_run_id}/steps.0",
        ref=act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, "welcome", inp.version),
        to=[contact["email"]], at=workflow.now().isoformat(), subject=f"Welcome, {contact['first_name']}",
        body=f"Hi {contact['first_name']}, {account['name']} is set up.",
        sender=(account.get("owner") or {}).get("email"), **MESSAGING,
    )
    await workflow.execute_activity(
        "send_email", email, result_type=act.EmailResult, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
    )
    await workflow.sleep(timedelta(days=30))
    return "completed"


@workflow.defn(name="HandWrittenIngest")
class HandWrittenIngest:
    @workflow.run
    async def run(self, inp: IngestInput) -> str:
        return await ingest(inp, local=False)


@workflow.defn(name="HandWrittenIngestLocal")
class HandWrittenIngestLocal:
    @workflow.run
    async def run(self, inp: IngestInput) -> str:
        return await ingest(inp, local=True)
