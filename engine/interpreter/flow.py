"""Steps that shape the run's path: `switch`, `parallel`, `for_each`, `run_playbook` and `stop`."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from engine.interpreter.messages import (
        FOR_EACH_WORKFLOW_NAME,
        WORKFLOW_NAME,
        Event,
        ForEachChunkInput,
        ForEachChunkResult,
        RunInput,
        RunResult,
    )
    from engine.language import model as m

from engine.interpreter.core import InterpreterCore, Scope, StepFailed, StopRun, cancelled

INLINE_FOR_EACH_LIMIT = 100  # more items than this run in child workflows, CHUNK items each
FOR_EACH_CHUNK = 100


class FlowSteps(InterpreterCore):
    async def step_switch(self, step: m.SwitchStep, scope: Scope) -> dict[str, Any]:
        chosen: int | str | None = None
        for i, case in enumerate(step.cases):
            if self.evaluate(case.when, scope):
                chosen = i
                break
        if chosen is None and step.otherwise is not None:
            chosen = "else"
        for i, case in enumerate(step.cases):
            if i != chosen:
                self.mark_not_run(case.steps, scope)
        if chosen != "else":
            self.mark_not_run(step.otherwise, scope)
        if chosen is None:
            return {"case": None}
        branch = step.otherwise if chosen == "else" else step.cases[int(chosen)].steps
        await self.run_steps(branch or (), scope)
        return {"case": chosen}

    async def step_parallel(self, step: m.ParallelStep, scope: Scope) -> dict[str, Any]:
        # "The step ends when all do": a failing branch does not cut the others short.
        outcomes = await asyncio.gather(
            *(self.run_steps(b.steps, scope) for b in step.branches), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, (StopRun, asyncio.CancelledError)):
                raise outcome
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise failures[0]
        return {}

    async def step_for_each(self, step: m.ForEachStep, scope: Scope) -> dict[str, Any]:
        items = self.evaluate(step.items, scope)
        if isinstance(items, dict):
            items = list(items.values())
        if not isinstance(items, (list, tuple)):
            raise StepFailed(f"items gave {type(items).__name__}, not a list")
        items = list(items)
        if len(items) > INLINE_FOR_EACH_LIMIT:
            return await self.for_each_in_children(step, scope, items)
        failed = await self.for_each_inline(step, scope, items, 0)
        return {"count": len(items), "failed": failed}

    async def for_each_inline(self, step: m.ForEachStep, scope: Scope, items: list[Any], start: int) -> int:
        gate = asyncio.Semaphore(step.concurrency)
        failures = 0

        async def one(index: int, item: Any) -> None:
            nonlocal failures
            async with gate:
                try:
                    await self.run_steps(step.steps, scope.child(step.item_name, item, index))
                except StepFailed:
                    failures += 1

        await asyncio.gather(*(one(start + i, item) for i, item in enumerate(items)))
        return failures

    async def for_each_in_children(self, step: m.ForEachStep, scope: Scope, items: list[Any]) -> dict[str, Any]:
        failed = 0
        info = workflow.info()
        for start in range(0, len(items), FOR_EACH_CHUNK):
            chunk = ForEachChunkInput(
                playbook=self.playbook,
                account_id=self.account_id,
                step_path=step.path,
                start_index=start,
                items=items[start : start + FOR_EACH_CHUNK],
                context={
                    "account": self.account,
                    "contacts": self.contacts,
                    "event": self.event,
                    "vars": scope.vars,
                    "steps": scope.steps,
                    "locals": scope.locals,
                    "key_suffix": scope.key_suffix,
                },
                timezone=str(self.tz),
                parent_workflow_id=info.workflow_id,
                key_prefix=f"{info.workflow_id}/{info.first_execution_run_id}",
                clock_offset=self.clock_offset.total_seconds(),
            )
            handle = await workflow.start_child_workflow(
                FOR_EACH_WORKFLOW_NAME,
                chunk,
                id=f"{info.workflow_id}/{step.path}{scope.key_suffix}/{start}",
                result_type=ForEachChunkResult,
            )
            self.children.append(handle)  # events reach the items waiting in it
            try:
                result: ForEachChunkResult = await handle
            except ChildWorkflowError as err:
                if cancelled(err):
                    raise asyncio.CancelledError() from None
                raise StepFailed(f"items {start}..{start + len(chunk.items) - 1} failed: {err.cause or err}") from None
            finally:
                self.children.remove(handle)
            failed += result.failed
            if result.stopped:
                raise StopRun(result.stopped, result.reason)
        return {"count": len(items), "failed": failed}

    async def step_run_playbook(self, step: m.RunPlaybookStep, scope: Scope) -> dict[str, Any]:
        target: m.Playbook = await self.call(
            step, scope, "load_playbook", act.PlaybookRequest(step.playbook_id), m.Playbook
        )
        info = workflow.info()
        child_id = f"{step.playbook_id}/{self.account_id}/from/{info.workflow_id}/{step.path}{scope.key_suffix}"
        child_input = RunInput(
            playbook=target,
            account_id=self.account_id,
            event=Event(**self.event) if self.event else None,
            input=self.render(dict(step.input), scope),
            clock_offset=self.clock_offset.total_seconds(),
        )
        if not step.wait:
            # A run of its own: enrolled under the target's key, as if its trigger had started it, so events
            # reach it by its id and there is one live run per key.
            key = str(self.render(target.enrollment.key, scope)).strip()
            enrolled_id = f"{target.id}/{key}"
            try:
                await workflow.start_child_workflow(
                    WORKFLOW_NAME,
                    child_input,
                    id=enrolled_id,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
            except WorkflowAlreadyStartedError:
                return {"run_id": enrolled_id, "outcome": "already_running"}
            return {"run_id": enrolled_id, "outcome": None}
        # The child records itself under its id in its first activity, so events reach it by id as they reach this run.
        try:
            result: RunResult = await workflow.execute_child_workflow(
                WORKFLOW_NAME, child_input, id=child_id, result_type=RunResult
            )
            return {"run_id": child_id, "outcome": result.outcome}
        except ChildWorkflowError as err:
            if cancelled(err):
                raise asyncio.CancelledError() from None  # this run is exiting: its child was cancelled with it
            return {"run_id": child_id, "outcome": "failed", "error": str(err.cause or err)}

    async def step_stop(self, step: m.StopStep, scope: Scope) -> dict[str, Any]:
        reason = self.render(step.reason, scope) if step.reason else None
        self.record(step, scope, "done", {})
        self.note(step, "done", f"stop: {step.outcome}" + (f" ({reason})" if reason else ""))
        raise StopRun(step.outcome, reason)
