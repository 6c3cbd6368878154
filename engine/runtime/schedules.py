"""A scheduled playbook is a Temporal Schedule: created, updated or removed to match the library.

`playbook dev` syncs them when it starts; `playbook deploy` does it in production.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, TickInput
from engine.language.model import Playbook

PREFIX = "playbook-schedule/"


@dataclass
class SyncReport:
    created: list[str]
    updated: list[str]
    removed: list[str]


def schedule_for(playbook: Playbook, task_queue: str) -> Schedule:
    trigger = playbook.trigger
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TICK_WORKFLOW_NAME,
            TickInput(playbook_id=playbook.id, accounts=trigger.accounts,
                      task_queue=task_queue),
            id=f"tick/{playbook.id}",
            task_queue=task_queue,
            memo={"playbook_id": playbook.id, "version": playbook.version},
        ),
        spec=ScheduleSpec(cron_expressions=[trigger.cron or ""], time_zone_name=trigger.timezone or "UTC"),
        # a tick still paging through a huge segment when the next one is due: skip the next
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def sync_schedules(client: Client, library: dict[str, Playbook], task_queue: str) -> SyncReport:
    wanted = {f"{PREFIX}{p.id}": p for p in library.values() if p.trigger.type == "schedule"}
    existing = set()
    async for entry in await client.list_schedules():
        if entry.id.startswith(PREFIX):
            existing.add(entry.id)
    report = SyncReport([], [], [])
    for schedule_id, playbook in wanted.items():
        schedule = schedule_for(playbook, task_queue)
        if schedule_id in existing:
            async def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=new)

            await client.get_schedule_handle(schedule_id).update(replace)
            report.updated.append(playbook.id)
        else:
            try:
                await client.create_schedule(schedule_id, schedule)
                report.created.append(playbook.id)
            except ScheduleAlreadyRunningError:
                report.updated.append(playbook.id)
    for schedule_id in existing - set(wanted):
        await client.get_schedule_handle(schedule_id).delete()
        report.removed.append(schedule_id[len(PREFIX):])
    return report
