"""bench/overhead.py's ten steps written by hand: a plain Temporal workflow calling the same activities.

It sends what the interpreter sends for the bench playbook (same activity names, same requests, same keys,
same timeouts and retries), so the difference in time and history is what interpreting a playbook costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import types as act

NAME = "HandWrittenTenSteps"
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


@workflow.defn(name=NAME)
class HandWrittenTenSteps:
    @workflow.run
    async def run(self, inp: TenStepsInput) -> dict[str, Any]:
        info = workflow.info()
        snapshot: act.AccountSnapshot = await workflow.execute_activity(
            "load_account",
            # as a PlaybookRun asks: the run is recorded under its workflow id for events (engine/storage/enrolled.py)
            act.AccountRequest(
                inp.account_id,
                act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, None, inp.version),
                workflow.now().isoformat(),
            ),
            result_type=act.AccountSnapshot,
            start_to_close_timeout=TIMEOUT, retry_policy=RETRY,
        )
        account, contact = snapshot.account, snapshot.contacts[0]
        for i in range(10):
            key = f"{info.workflow_id}/{info.first_execution_run_id}/steps.{i}"
            ref = act.RunRef(info.workflow_id, inp.playbook_id, inp.account_id, f"s{i + 1}", inp.version)
            if i % 2 == 0:
                request = act.EmailRequest(
                    key=key, ref=ref, to=[contact["email"]], at=workflow.now().isoformat(),
                    subject=f"Step {i + 1} for {account['name']}",
                    body=f"Hi {contact['first_name']}, this is step {i + 1} of 10.",
                    sender=(account.get("owner") or {}).get("email"),
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
