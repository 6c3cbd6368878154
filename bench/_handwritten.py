"""What the benches compare the interpreter with: the same work written by hand as plain Temporal workflows.

bench/overhead.py's ten steps: a workflow calling the same activities. It sends what the interpreter sends for the
bench playbook (same activity names, same requests, same keys, same timeouts and retries), so the difference in time
and history is what interpreting a playbook costs.

bench/fanout.py's fan-outs (below the ten steps): a for_each over an account's contacts as a parent starting slice
children that send batches through send_emails, and a schedule tick as a loop starting a one-email workflow per
account.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import types as act

NAME = "HandWrittenTenSteps"
# What the engine's email steps send under the built-in messaging policy (the benches' libraries have no
# policy.yaml): the default category, which recipients may opt out of (consent checked, unsubscribe link and
# headers added), no caps. The hand-written sides send the same, so the activities do the same work.
MESSAGING: dict[str, Any] = {"category": "marketing", "unsubscribe": True}
TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=10,
)


@dataclass
class TenStepsInput:
    account_id: str
    playbook_id: str  # for the requests' refs, as the interpreter fills them
    version: str


async def load_account(account_id: str, playbook_id: str, version: str) -> act.AccountSnapshot:
    """A run's first activity, as a PlaybookRun makes it: a local activity that also records the run under its
    workflow id for events (engine/storage/enrolled.py)."""
    info = workflow.info()
    snapshot: act.AccountSnapshot = await workflow.execute_local_activity(
        "load_account",
        act.AccountRequest(
            account_id,
            act.RunRef(info.workflow_id, playbook_id, account_id, None, version),
            workflow.now().isoformat(),
        ),
        result_type=act.AccountSnapshot,
        start_to_close_timeout=TIMEOUT, retry_policy=RETRY,
    )
    return snapshot


@workflow.defn(name=NAME)
class HandWrittenTenSteps:
    @workflow.run
    async def run(self, inp: TenStepsInput) -> dict[str, Any]:
        info = workflow.info()
        snapshot = await load_account(inp.account_id, inp.playbook_id, inp.version)
        account, contact = snapshot.account, snapshot.contacts[0]
        for i in range(10):
            key = f"{info.workflow_id}/{info.first_execution_run_id}/steps.{i}"
            ref = act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, f"s{i + 1}", inp.version)
            if i % 2 == 0:
                request = act.EmailRequest(
                    key=key, ref=ref, to=[contact["email"]], at=workflow.now().isoformat(),
                    subject=f"Step {i + 1} for {account['name']}",
                    body=f"Hi {contact['first_name']}, this is step {i + 1} of 10.",
                    sender=(account.get("owner") or {}).get("email"), **MESSAGING,
                )
                await workflow.execute_activity(
                    "send_email", request, result_type=act.EmailResult, start_to_close_timeout=TIMEOUT,
                    retry_policy=RETRY,
                )
            else:
                request = act.CrmRequest(
                    key=key, ref=ref, action="update", at=workflow.now().isoformat(), fields={"bench_step": f"{i + 1}"}
                )
                snapshot = await workflow.execute_activity(
                    "update_crm", request, result_type=act.AccountSnapshot, start_to_close_timeout=TIMEOUT,
                    retry_policy=RETRY,
                )
                account = snapshot.account
        return {"outcome": "completed"}


# ---------------------------------------------------------------------------------------------------------------
# bench/fanout.py's hand-written side: what a Temporal developer would write for "email every contact" and "email
# every account of a segment", on the same activities, worker and outbox database as the engine.
#
# Every hand-written side loads the account with a local activity, as the engine's run does since 0.2.0.
#
# for_each: HandWrittenFanOut loads the account (load_account, as a run's first activity) and starts one
# HandWrittenSlice child per SLICE items, at most `slices_at_once` children at once (0: all at once); each slice
# sends its items' emails through send_emails, batches of at most `concurrency` emails, one batch after the other.
#
# tick: HandWrittenTick pages the accounts with the same segment_page activity the engine's tick uses, and starts a
# HandWrittenOneEmail workflow per account from an activity (hand_start_runs), at most `start_concurrency` starts
# in flight at once. HandWrittenOneEmail is load_account + send_email, the two activities a one-email run makes.

SLICE = 1000
FANOUT_NAME = "HandWrittenFanOut"
SLICE_NAME = "HandWrittenFanOutSlice"
ONE_EMAIL_NAME = "HandWrittenOneEmail"
TICK_NAME = "HandWrittenTick"
BATCH_TIMEOUT = timedelta(minutes=2)


def fanout_subject(first_name: str) -> str:
    return f"Hello {first_name}"  # what the bench playbook's email step renders: "Hello {{ person.first_name }}"


def fanout_body(first_name: str, account_name: str) -> str:
    return f"Hi {first_name}, news for {account_name}."


@dataclass
class FanOutInput:
    account_id: str
    playbook_id: str
    version: str
    concurrency: int  # emails per send_emails batch
    slices_at_once: int = 0  # children running at once; 0: all
    slice_size: int = SLICE


@dataclass
class SliceInput:
    parent_id: str
    key_prefix: str
    playbook_id: str
    account_id: str
    version: str
    account_name: str
    sender: str | None
    start: int
    items: list[dict[str, Any]]
    concurrency: int


@workflow.defn(name=FANOUT_NAME)
class HandWrittenFanOut:
    @workflow.run
    async def run(self, inp: FanOutInput) -> int:
        info = workflow.info()
        snapshot = await load_account(inp.account_id, inp.playbook_id, inp.version)
        items = snapshot.contacts
        gate = asyncio.Semaphore(inp.slices_at_once or max(1, len(items)))
        key_prefix = f"{info.workflow_id}/{info.first_execution_run_id}"

        async def one(start: int) -> int:
            async with gate:
                return await workflow.execute_child_workflow(
                    SLICE_NAME,
                    SliceInput(
                        info.workflow_id, key_prefix, inp.playbook_id, inp.account_id, inp.version,
                        snapshot.account.get("name", ""), (snapshot.account.get("owner") or {}).get("email"),
                        start, items[start : start + inp.slice_size], inp.concurrency,
                    ),
                    id=f"{info.workflow_id}/slice/{start}",
                    result_type=int,
                )

        sent = await asyncio.gather(*(one(s) for s in range(0, len(items), inp.slice_size)))
        return sum(sent)


@workflow.defn(name=SLICE_NAME)
class HandWrittenFanOutSlice:
    @workflow.run
    async def run(self, inp: SliceInput) -> int:
        ref = act.RunRef(inp.parent_id, inp.playbook_id, inp.account_id, "send", inp.version)
        sent = 0
        for b in range(0, len(inp.items), inp.concurrency):
            at = workflow.now().isoformat()
            emails = [
                act.EmailRequest(
                    key=f"{inp.key_prefix}/send[{inp.start + b + i}]", ref=ref, to=[c["email"]], at=at,
                    subject=fanout_subject(c["first_name"]), body=fanout_body(c["first_name"], inp.account_name),
                    sender=inp.sender, **MESSAGING,
                )
                for i, c in enumerate(inp.items[b : b + inp.concurrency])
            ]
            result: act.EmailBatchResult = await workflow.execute_activity(
                "send_emails", act.EmailBatchRequest(emails=emails), result_type=act.EmailBatchResult,
                start_to_close_timeout=BATCH_TIMEOUT, retry_policy=RETRY,
            )
            sent += sum(r.status == "sent" for r in result.results)
        return sent


@dataclass
class OneEmailInput:
    account_id: str
    playbook_id: str
    version: str


@workflow.defn(name=ONE_EMAIL_NAME)
class HandWrittenOneEmail:
    @workflow.run
    async def run(self, inp: OneEmailInput) -> str:
        info = workflow.info()
        snapshot = await load_account(inp.account_id, inp.playbook_id, inp.version)
        account, contact = snapshot.account, snapshot.contacts[0]
        result: act.EmailResult = await workflow.execute_activity(
            "send_email",
            act.EmailRequest(
                key=f"{info.workflow_id}/{info.first_execution_run_id}/send",
                ref=act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, "send", inp.version),
                to=[contact["email"]], at=workflow.now().isoformat(),
                subject=fanout_subject(contact["first_name"]), body=fanout_body(contact["first_name"], account["name"]),
                sender=(account.get("owner") or {}).get("email"), **MESSAGING,
            ),
            result_type=act.EmailResult, start_to_close_timeout=TIMEOUT, retry_policy=RETRY,
        )
        return result.status


@dataclass
class HandStartRequest:
    account_ids: list[str]
    tick: str
    playbook_id: str
    version: str
    task_queue: str
    start_concurrency: int


@dataclass
class HandTickInput:
    playbook_id: str
    version: str
    task_queue: str
    start_concurrency: int


class HandStartActivities:
    """hand_start_runs: client.start_workflow per account, at most `start_concurrency` at once."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @activity.defn(name="hand_start_runs")
    async def hand_start_runs(self, req: HandStartRequest) -> int:
        gate = asyncio.Semaphore(max(1, req.start_concurrency))

        async def start(account_id: str) -> None:
            async with gate:
                await self.client.start_workflow(
                    ONE_EMAIL_NAME, OneEmailInput(account_id, req.playbook_id, req.version),
                    id=f"hw-tick/{req.playbook_id}/{account_id}/{req.tick}", task_queue=req.task_queue,
                )

        await asyncio.gather(*(start(a) for a in req.account_ids))
        return len(req.account_ids)


@workflow.defn(name=TICK_NAME)
class HandWrittenTick:
    @workflow.run
    async def run(self, inp: HandTickInput) -> int:
        tick, after, started = workflow.now().isoformat(), "", 0
        while True:
            page: act.SegmentResult = await workflow.execute_activity(
                "segment_page", act.SegmentPage(None, after), result_type=act.SegmentResult,
                start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY,
            )
            if page.account_ids:
                started += await workflow.execute_activity(
                    "hand_start_runs",
                    HandStartRequest(
                        page.account_ids, tick, inp.playbook_id, inp.version, inp.task_queue, inp.start_concurrency
                    ),
                    result_type=int, start_to_close_timeout=timedelta(minutes=5), retry_policy=RETRY,
                )
            if page.next_after is None:
                return started
            after = page.next_after
