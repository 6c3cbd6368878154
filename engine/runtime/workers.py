"""Building Temporal workers for the interpreter: the same setup in production, `playbook dev` and tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from engine.interpreter.schedule_tick import PlaybookScheduleTick
from engine.interpreter.workflow import PlaybookForEachChunk, PlaybookRun

# Modules the workflow sandbox takes from the worker instead of re-importing them for every run: pure,
# deterministic code only. Most are needed, not just cheaper: the sandbox's own copies of jinja2 (locks),
# the model's dataclasses and zoneinfo objects do not work inside it (bench/memory.py tries each without).
PASSTHROUGH = ("jinja2", "markupsafe", "engine.language", "engine.interpreter.calendar", "engine.interpreter.messages", "activities.types")


def sandbox_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


WORKFLOWS: tuple[type, ...] = (PlaybookRun, PlaybookForEachChunk, PlaybookScheduleTick)


def build_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    *,
    extra_workflows: Sequence[type] = (),
    max_concurrent_activities: int = 50,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[*WORKFLOWS, *extra_workflows],
        activities=list(activities),
        # Activities are synchronous (SQLAlchemy, provider SDKs): they run in this pool.
        activity_executor=ThreadPoolExecutor(max_workers=max_concurrent_activities),
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=sandbox_runner(),
    )
