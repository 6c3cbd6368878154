"""The scenario driver (engine/testing/driver.py) answers an ask that reaches it in its very first activation: the run
may ask for an approval before the driver's run method has begun (a signal of the first activation is handled
before it), and the driver must already know its script then."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from engine.interpreter.messages import DECIDE_UPDATE, Decision, DecisionResult
from engine.runtime.connect import quiet_runtime
from engine.testing import scenarios
from engine.testing.driver import ASKED_SIGNAL, DRIVER_NAME, Asked, DriverActivities, DriverInput, ScenarioDriver


@workflow.defn(name="AskingRun")
class AskingRun:
    """Stands in for a run: waits for the decision the driver sends through the run's real update."""

    def __init__(self) -> None:
        self.decision: Decision | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.decision is not None)
        assert self.decision is not None
        return f"{self.decision.decision} by {self.decision.by}"

    @workflow.update(name=DECIDE_UPDATE)
    def decide(self, decision: Decision) -> DecisionResult:
        self.decision = decision
        return DecisionResult(decision.approval_id or "", decision.decision)


async def _an_ask_in_the_drivers_first_activation_is_answered() -> None:
    queue = f"driver-{uuid.uuid4().hex[:8]}"
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=scenarios.test_server_path(), runtime=quiet_runtime()
    ) as env:
        answers = DriverActivities(env.client)
        async with Worker(env.client, task_queue=queue, workflows=[ScenarioDriver, AskingRun],
                          activities=[answers.scenario_answer],
                          workflow_runner=UnsandboxedWorkflowRunner()):
            run = await env.client.start_workflow(AskingRun.run, id=f"run-{queue}", task_queue=queue)
            asked = Asked("approval", "appr-1", run.id, "welcome", ["csm-ana"])
            script = [{"approval": "welcome", "decide": "approve", "after": "2h"}]
            # signal-with-start: the ask is in the same first activation as the driver's start
            driver = await env.client.start_workflow(
                DRIVER_NAME, DriverInput(run.id, script), id=f"driver-{queue}", task_queue=queue,
                start_signal=ASKED_SIGNAL, start_signal_args=[asked],
            )
            assert await asyncio.wait_for(run.result(), 60) == "approve by csm-ana"
            assert await driver.query("problems") == []
            assert answers.refused == []


def test_an_ask_in_the_drivers_first_activation_is_answered() -> None:
    asyncio.run(_an_ask_in_the_drivers_first_activation_is_answered())
