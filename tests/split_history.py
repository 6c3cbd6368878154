"""A run's history as a worker may also have written it: each local activity's result recorded in one workflow task,
and what the workflow did with it in the next.

A local activity (load_account, record_progress) runs inside a workflow task. When its result comes just as the
task completes (under load: a heartbeat of the task, a query answered), the task's completion records the result's
marker, and the commands the workflow issues on that result go to a new task. A replay has the result at once, in
the first task: code that behaves the same either way replays both. Code that does not, a ``workflow.patched``
asked for on that result say (its marker then lies in the second task, where the replay cannot know of it yet
when the code asks), fails with a nondeterminism error on a worker that replays such a history; it was seen so in
tests/test_lost_answer.py on a loaded machine. Replaying each history both as it was written and split this way
finds such code on any machine.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio.client import WorkflowHistory


def split_after_local_activities(history: WorkflowHistory) -> tuple[WorkflowHistory, int]:
    """The history with a workflow task (scheduled, started, completed) put after each local activity's marker that
    the same task's commands follow; those commands then belong to the new task. Returns it and how many were put.
    Event ids after each insertion move on by three, and every reference to one (``...EventId``) with them."""
    events: list[dict[str, Any]] = history.to_json_dict()["events"]
    new_id: dict[int, int] = {}
    written: list[tuple[bool, dict[str, Any]]] = []  # (inserted, event)
    moved: dict[int, int] = {}  # a command's old event id -> the id of the completion it now belongs to
    splits = 0
    for n, event in enumerate(events):
        new_id[int(event["eventId"])] = len(written) + 1
        written.append((False, event))
        after = events[n + 1] if n + 1 < len(events) else None
        if not (_is_local_activity(event) and after is not None and (command := _command(after)) is not None):
            continue
        first = len(written) + 1
        written += [(True, e) for e in _workflow_task(first, event["eventTime"])]
        task = command["workflowTaskCompletedEventId"]
        for later in events[n + 1 :]:
            attributes = _command(later)
            if attributes is None or attributes["workflowTaskCompletedEventId"] != task:
                break
            moved[int(later["eventId"])] = first + 2
        splits += 1
    result: list[dict[str, Any]] = []
    for inserted, event in written:
        if inserted:
            result.append(event)
            continue
        old = int(event["eventId"])
        fixed = _renumbered({k: v for k, v in event.items() if k != "eventId"}, new_id)
        fixed["eventId"] = str(new_id[old])
        if old in moved:
            attributes = _command(fixed)
            assert attributes is not None
            attributes["workflowTaskCompletedEventId"] = str(moved[old])
        result.append(fixed)
    return WorkflowHistory.from_json(history.workflow_id, json.dumps({"events": result})), splits


def _is_local_activity(event: dict[str, Any]) -> bool:
    return (
        event["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
        and event["markerRecordedEventAttributes"]["markerName"] == "core_local_activity"
    )


def _command(event: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes of an event a workflow task's commands wrote (they name the task's completion), else None."""
    for key, value in event.items():
        if key.endswith("EventAttributes") and isinstance(value, dict) and "workflowTaskCompletedEventId" in value:
            return value
    return None


def _workflow_task(first: int, at: str) -> list[dict[str, Any]]:
    return [
        {"eventId": str(first), "eventTime": at, "eventType": "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED",
         "workflowTaskScheduledEventAttributes": {"taskQueue": {"name": "split"}, "startToCloseTimeout": "10s",
                                                  "attempt": 1}},
        {"eventId": str(first + 1), "eventTime": at, "eventType": "EVENT_TYPE_WORKFLOW_TASK_STARTED",
         "workflowTaskStartedEventAttributes": {"scheduledEventId": str(first)}},
        {"eventId": str(first + 2), "eventTime": at, "eventType": "EVENT_TYPE_WORKFLOW_TASK_COMPLETED",
         "workflowTaskCompletedEventAttributes": {"scheduledEventId": str(first), "startedEventId": str(first + 1)}},
    ]


def _renumbered(value: Any, new_id: dict[int, int]) -> Any:
    if isinstance(value, dict):
        return {
            k: str(new_id.get(int(v), int(v))) if k.endswith("EventId") and isinstance(v, str) and v.isdigit()
            else _renumbered(v, new_id)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_renumbered(v, new_id) for v in value]
    return value
