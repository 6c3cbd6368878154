"""Steps that shape the run's path: `switch`, `parallel`, `split`, `for_each`, `run_playbook` and `stop`."""

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
    from engine.language.groups import split_index
    from engine.language.uses import uses_of

from engine.interpreter.core import (
    CURRENT_ITEM,
    InterpreterCore,
    ItemMark,
    Scope,
    StepFailed,
    StopRun,
    being_closed,
    cancelled,
)

INLINE_FOR_EACH_LIMIT = 100  # more items than this run in child workflows ("slices")
FOR_EACH_CHUNK = 100  # items per slice in runs started before FANOUT_PATCH
SLICE_ITEMS = 1000  # items per slice since FANOUT_PATCH: one slice's emails of a step fit one send_emails batch
# Slices starting their items at once. A slice counts until every one of its items has started (begun an effect or
# a wait, or ended), then the next starts: waiting items never hold a later slice back, and a worker holds at most
# this many slices' worth of items that are still getting going.
SLICES_STARTING = 4


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

    async def step_split(self, step: m.SplitStep, scope: Scope) -> dict[str, Any]:
        """One path, drawn from a stable hash of the playbook id, the step id and the key: the same key takes the
        same path in every run, replay and worker (engine/language/groups.py)."""
        if step.key is not None:
            key = str(self.render(step.key, scope)).strip()
        else:
            key = self.enrollment_key if self.enrollment_key is not None else self.account_id
        index = split_index(self.playbook.id, step.id or step.path, key, [p.weight for p in step.paths])
        chosen = step.paths[index]
        if not scope.key_suffix:  # the run's path (a for_each item's own draw is not the run's)
            self.paths[step.id or step.path] = chosen.name
        for i, other in enumerate(step.paths):
            if i != index:
                self.mark_not_run(other.steps, scope)
        self.note(step, "info", f"path {chosen.name}")  # the timeline says it while the path's steps run
        await self.run_steps(chosen.steps, scope)
        return {"path": chosen.name}

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

    async def for_each_inline(
        self,
        step: m.ForEachStep,
        scope: Scope,
        items: list[Any],
        start: int,
        concurrency: int | None = None,
        all_started: Any = None,
    ) -> int:
        """Runs the items here. Since FANOUT_PATCH every item starts at once, in order, and ``concurrency``
        bounds the items running an effect (their slot is taken per effect, see InterpreterCore.slot), not the
        items waiting. ``all_started`` is called once every item has started (a slice tells its parent)."""
        if not self.fanout:
            return await self.for_each_holding_slots(step, scope, items, start)
        gate = asyncio.Semaphore(concurrency or step.concurrency)
        failures = 0
        outer = CURRENT_ITEM.get()
        unstarted = len(items)

        def started() -> None:
            nonlocal unstarted
            unstarted -= 1
            if unstarted == 0 and all_started is not None:
                all_started()

        async def one(index: int, item: Any) -> None:
            nonlocal failures
            mark = ItemMark(started, outer)
            CURRENT_ITEM.set(mark)  # this item's task only
            try:
                await self.run_steps(step.steps, scope.child(step.item_name, item, index, gate))
            except StepFailed:
                failures += 1
            finally:
                mark.start()

        if not items and all_started is not None:
            all_started()
        await asyncio.gather(*(one(start + i, item) for i, item in enumerate(items)))
        return failures

    async def for_each_holding_slots(self, step: m.ForEachStep, scope: Scope, items: list[Any], start: int) -> int:
        """Runs started before FANOUT_PATCH: an item holds its slot from its start to its end, waits included."""
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
        if self.fanout:
            return await self.for_each_in_slices(step, scope, items)
        failed = 0
        info = workflow.info()
        for start in range(0, len(items), FOR_EACH_CHUNK):
            context = {
                "account": self.account,
                "contacts": self.contacts,
                "event": self.event,
                "vars": scope.vars,
                "steps": scope.steps,
                "locals": scope.locals,
                "key_suffix": scope.key_suffix,
                **self.group_context(),
            }
            chunk = self.slice_input(step, start, items[start : start + FOR_EACH_CHUNK], context)
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

    async def for_each_in_slices(self, step: m.ForEachStep, scope: Scope, items: list[Any]) -> dict[str, Any]:
        """Items in child workflows of SLICE_ITEMS, side by side. A slice starts once fewer than SLICES_STARTING
        slices are still starting their items, so no item's first effect waits for another item's wait. The
        step's concurrency is shared among the slices starting at once (at least 1 each). A stop in any item, or
        a failed slice, cancels the others; an exit cancels them all (their open asks are closed)."""
        info = workflow.info()
        total = len(items)
        slices = [(start, items[start : start + SLICE_ITEMS]) for start in range(0, total, SLICE_ITEMS)]
        at_once = max(1, min(SLICES_STARTING, len(slices), step.concurrency))
        share = max(1, step.concurrency // at_once)
        context = self.slice_context(step, scope)
        base_id = f"{info.workflow_id}/{step.path}{scope.key_suffix}"
        mine: list[str] = []  # this step's slices; those in self.starting_slices are still starting their items
        failed = 0
        stop: StopRun | None = None
        problem: str | None = None

        async def run_slice(child_id: str, start: int, part: list[Any]) -> None:
            nonlocal failed, stop, problem
            chunk = self.slice_input(step, start, part, context, concurrency=share, report_started=True)
            try:
                handle = await workflow.start_child_workflow(
                    FOR_EACH_WORKFLOW_NAME, chunk, id=child_id, result_type=ForEachChunkResult
                )
                self.children.append(handle)  # events reach the items waiting in it
                try:
                    result: ForEachChunkResult = await handle
                finally:
                    self.children.remove(handle)
            except ChildWorkflowError as err:
                if not cancelled(err) and problem is None:
                    problem = f"items {start}..{start + len(part) - 1} failed: {err.cause or err}"
                return
            finally:
                self.starting_slices.discard(child_id)
            failed += result.failed
            if result.stopped and stop is None:
                stop = StopRun(result.stopped, result.reason)

        tasks: list[asyncio.Task[None]] = []
        counted = self.block()  # the run waits for its slices
        try:
            for start, part in slices:
                await workflow.wait_condition(
                    lambda: stop is not None
                    or problem is not None
                    or sum(c in self.starting_slices for c in mine) < at_once
                )
                if stop is not None or problem is not None:
                    break
                child_id = f"{base_id}/{start}"
                mine.append(child_id)
                self.starting_slices.add(child_id)
                tasks.append(asyncio.create_task(run_slice(child_id, start, part)))
            await workflow.wait_condition(
                lambda: stop is not None or problem is not None or all(t.done() for t in tasks)
            )
        finally:
            self.unblock(counted)
            # An exit (this step cancelled), a stop or a failed slice: the slices still running are cancelled
            # and waited for, so their open approvals and call tasks are closed before the run ends.
            unfinished = [t for t in tasks if not t.done()]
            if not being_closed():
                for task in unfinished:
                    task.cancel()
                if unfinished:
                    await asyncio.gather(*unfinished, return_exceptions=True)
        if stop is not None:
            raise stop
        if problem is not None:
            raise StepFailed(problem)
        return {"count": total, "failed": failed}

    def slice_input(
        self,
        step: m.ForEachStep,
        start: int,
        items: list[Any],
        context: dict[str, Any],
        concurrency: int | None = None,
        report_started: bool = False,
    ) -> ForEachChunkInput:
        """The input of the child workflow that runs ``items`` (from index ``start``) of the step."""
        workflow_id, first_run_id = self.ids()
        return ForEachChunkInput(
            playbook=self.playbook,
            account_id=self.account_id,
            step_path=step.path,
            start_index=start,
            items=items,
            context=context,
            timezone=str(self.tz),
            parent_workflow_id=workflow_id,
            key_prefix=f"{workflow_id}/{first_run_id}",
            clock_offset=self.clock_offset.total_seconds(),
            concurrency=concurrency,
            report_started=report_started,
        )

    def slice_context(self, step: m.ForEachStep, scope: Scope) -> dict[str, Any]:
        """What a slice's items can refer to, cut down to what the for_each's steps do refer to: a slice of a
        10,000-contact account does not carry every contact unless its steps use ``contacts``."""
        uses = uses_of(step.steps)

        def entries(name: str, values: dict[str, Any]) -> dict[str, Any]:
            used = uses.entries_of(name)
            return dict(values) if used is None else {k: v for k, v in values.items() if k in used}

        if "contacts" in uses.names:
            contacts = self.contacts
        elif "contact" in uses.names:
            contacts = self.contacts[:1]
        else:
            contacts = []
        return {
            "account": self.account,
            "contacts": contacts,
            "event": self.event if "event" in uses.names else None,
            "vars": entries("vars", scope.vars),
            "steps": entries("steps", scope.steps),
            "locals": {k: v for k, v in scope.locals.items() if k in uses.names},
            "key_suffix": scope.key_suffix,
            "run": self.run_info(),
            **self.group_context(),
        }

    def group_context(self) -> dict[str, Any]:
        """What a for_each slice needs to hold out effects and draw split paths as this run does; empty for
        playbooks without control or split (their slices' input is what it was before both existed)."""
        extra: dict[str, Any] = {}
        if self.control:
            extra["control"] = True
        if self.enrollment_key is not None:
            extra["enrollment_key"] = self.enrollment_key
        return extra

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
        counted = self.block()  # the run waits for the child's end
        try:
            result: RunResult = await workflow.execute_child_workflow(
                WORKFLOW_NAME, child_input, id=child_id, result_type=RunResult
            )
            return {"run_id": child_id, "outcome": result.outcome}
        except ChildWorkflowError as err:
            if cancelled(err):
                raise asyncio.CancelledError() from None  # this run is exiting: its child was cancelled with it
            return {"run_id": child_id, "outcome": "failed", "error": str(err.cause or err)}
        finally:
            self.unblock(counted)

    async def step_stop(self, step: m.StopStep, scope: Scope) -> dict[str, Any]:
        reason = self.render(step.reason, scope) if step.reason else None
        self.record(step, scope, "done", {})
        self.note(step, "done", f"stop: {step.outcome}" + (f" ({reason})" if reason else ""))
        raise StopRun(step.outcome, reason)
