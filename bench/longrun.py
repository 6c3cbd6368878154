"""Two simulated years and 10,000 events in one run: each run of its continue-as-new chain keeps its history
under Temporal's continue-as-new suggestion (goal), beside the same run without events as the baseline.

The playbook is a two-year contract worked from signature to renewal (730 days): four waits (90 days, 95 days,
then until a month before the renewal date and until the date), two `wait_for`s with long timeouts (180 and 300
days) and an `exit_when`, all three listening to `usage.reported`, and seven emails. The bench sends 10,000
`usage.reported` events spread evenly over the two simulated years (one batch a simulated day: the clock is
moved with the test server's sleep, then the day's events are signalled by workflow id, as the intake does);
none matches but one, at day 600, which the second `wait_for` is waiting for. Then the run is left to finish.

It runs on Temporal's time-skipping test server, as `playbook test` does, with the real interpreter and
activities (an in-process worker over a temporary SQLite database and the outbox provider). That server never
suggests continue-as-new itself: the interpreter continues as new past 4,096 events or 4 MB of history
(Temporal's default suggestion; HISTORY_EVENTS_BUDGET and HISTORY_BYTES_BUDGET in engine/interpreter/core.py).

After a warm-up run, printed for the run with events and the baseline side by side: events sent, runs in the
chain, history events and bytes per run (the largest, and the chain's total), the outcome, the simulated length
and the wall time; the workflow tasks that failed or timed out; then the goal (every run's history under 4,096
events and 4 MB; the hard limits are 51,200 events and 50 MB) and whether it is met. Bytes are the sum of the
serialized history events' sizes.

    .venv/bin/python bench/longrun.py [--events 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._stack import ACCOUNT, CONTACTS, TEAM, playbook, quiet_logs  # noqa: E402

DAYS = 730
GOAL_EVENTS = 4 * 1024  # Temporal's limit.historyCount.suggestContinueAsNew default
GOAL_BYTES = 4 * 1024 * 1024  # limit.historySize.suggestContinueAsNew
HARD_EVENTS = 51_200  # limit.historyCount.error: the run is terminated
HARD_BYTES = 50 * 1024 * 1024  # limit.historySize.error
MATCH_DAY = 600  # the one event that matches (the expansion wait_for waits from day 365 to day 665)

PLAYBOOK = """\
id: bench-two-years
title: A two-year contract, from signature to renewal
trigger: { manual: true }
exit_when:
  - event: usage.reported
    match: event.data.seats == 0        # the account stopped using the product (never sent here)
vars:
  term: two years
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: "Welcome to your {{ vars.term }} with us, {{ account.name }}"
      body: "Hi {{ contact.first_name }}"
  - name: first quarter
    wait: 90d
  - id: check_in
    email:
      to: "{{ contact.email }}"
      subject: "A quarter in: how is {{ account.name }} doing?"
      body: "..."
  - id: usage_drop
    name: a usage drop within half a year
    wait_for: { event: usage.reported, match: event.data.seats < 2, timeout: 180d }
  - id: half_year
    email:
      to: "{{ contact.email }}"
      subject: "Half a year: {{ 'usage dropped' if not steps.usage_drop.timed_out else 'steady use' }}"
      body: "..."
  - name: to the first anniversary
    wait: 95d
  - id: anniversary
    email:
      to: "{{ contact.email }}"
      subject: "One year of {{ vars.term }}"
      body: "..."
  - id: expansion
    name: the account grows past 100 seats
    wait_for: { event: usage.reported, match: event.data.seats >= 100, timeout: 300d }
  - id: expansion_note
    email:
      to: "{{ contact.email }}"
      subject: "Seats now: {{ steps.expansion.event.data.seats if steps.expansion.event else 'no expansion' }}"
      body: "..."
  - name: a month before renewal
    wait:
      until: "{{ account.renewal_date }}"
      offset: -30d
  - id: renewal_notice
    email:
      to: "{{ contact.email }}"
      subject: "Your {{ vars.term }} renew on {{ account.renewal_date }}"
      body: "..."
  - name: renewal
    wait:
      until: "{{ account.renewal_date }}"
  - id: renewed
    email:
      to: "{{ contact.email }}"
      subject: "Renewed: thank you, {{ account.name }}"
      body: "..."
"""


@dataclass
class Figures:
    events_sent: int
    runs: list[tuple[int, int]] = field(default_factory=list)  # per run of the chain: (history events, bytes)
    decided: list[int] = field(default_factory=list)  # per continued run: history length when its last task started
    task_trouble: Counter[str] = field(default_factory=Counter)  # workflow tasks failed (cause) or timed out
    slowest_move: tuple[float, int] = (0.0, 0)  # (seconds, day): the slowest move of the clock
    outcome: str = ""
    simulated_days: float = 0.0
    wall: float = 0.0
    send_wall: float = 0.0
    expansion: object = None  # the expansion step's result
    emails: list[str] = field(default_factory=list)
    histories: list[Any] = field(default_factory=list, repr=False)  # the chain's histories, for a closer look


async def advance(env: Any, moment: datetime) -> None:
    """Moves the test server's clock to the moment (timers due meanwhile fire). The server moves it only while
    no workflow task or activity is in flight, so a move waits for the worker to take the day's events."""
    from temporalio.api.testservice.v1 import SleepRequest
    from temporalio.service import RPCError

    while (now := await env.get_current_time()) < moment:
        request = SleepRequest()
        request.duration.FromTimedelta(moment - now)
        try:
            await env.client.test_service.unlock_time_skipping_with_sleep(request, timeout=timedelta(minutes=5))
        except RPCError as err:
            raise SystemExit(f"moving the clock to {moment} failed: {err.status.name} {err.message}") from err


def seats(n: int) -> int:
    """A usage report's seat count: 10 to 49, so no match (< 2, >= 100, == 0) but the planted one."""
    return 10 + (n * 7919) % 40


async def one_run(events: int) -> Figures:
    from sqlalchemy import select
    from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
    from temporalio.testing import WorkflowEnvironment

    from activities.crm import BuiltinCrm, seed
    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities
    from engine.interpreter.messages import EVENT_SIGNAL, WORKFLOW_NAME, Event, RunInput, RunResult
    from engine.runtime.connect import quiet_runtime
    from engine.runtime.workers import build_worker
    from engine.storage import models as t
    from engine.storage.db import migrate, session
    from engine.testing.scenarios import test_server_path

    began = time.perf_counter()
    figures = Figures(events_sent=0)
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), runtime=quiet_runtime()
    ) as env:
        with tempfile.TemporaryDirectory(prefix="bench-longrun-") as tmp:
            start_at = await env.get_current_time()
            renewal = start_at + timedelta(days=DAYS)
            db_url = f"sqlite:///{Path(tmp) / 'playbook.db'}"
            migrate(db_url)
            account = {**ACCOUNT, "renewal_date": renewal.isoformat()}
            seed(db_url, account, [dict(c) for c in CONTACTS], [dict(m) for m in TEAM])
            activities = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
            queue = f"bench-longrun-{uuid.uuid4().hex[:8]}"
            workflow_id = f"bench-two-years/{queue}"
            async with build_worker(env.client, queue, activities.all()):
                handle = await env.client.start_workflow(
                    WORKFLOW_NAME, RunInput(playbook=playbook(PLAYBOOK), account_id=ACCOUNT["id"]),
                    id=workflow_id, task_queue=queue, result_type=RunResult,
                )
                run = env.client.get_workflow_handle(workflow_id)  # by workflow id: the live run of the chain
                # Event i comes on day i * DAYS / events; the one at MATCH_DAY matches the expansion wait_for.
                by_day: dict[int, list[int]] = {}
                for i in range(events):
                    by_day.setdefault(i * DAYS // events, []).append(i)
                planted = min(by_day.get(MATCH_DAY, [None]) or [None]) if events else None
                sending = time.perf_counter()
                day = 0
                for target in sorted(by_day):
                    if target > day:
                        moved = time.perf_counter()
                        await advance(env, start_at + timedelta(days=target))
                        figures.slowest_move = max(figures.slowest_move, (time.perf_counter() - moved, target))
                        day = target
                    for i in by_day[target]:
                        count = 120 if i == planted else seats(i)
                        await run.signal(EVENT_SIGNAL, Event(
                            type="usage.reported", data={"seats": count, "n": i}, id=f"usage-{i}",
                            account_id=ACCOUNT["id"],
                        ))
                        figures.events_sent += 1
                figures.send_wall = time.perf_counter() - sending
                result = await handle.result()
            # the chain: each run's history, followed through its CONTINUED_AS_NEW event
            run_id: str | None = handle.first_execution_run_id
            while run_id:
                history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
                figures.histories.append(history)
                figures.runs.append((len(history.events), sum(e.ByteSize() for e in history.events)))
                for e in history.events:
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                        cause = WorkflowTaskFailedCause.Name(e.workflow_task_failed_event_attributes.cause)
                        figures.task_trouble["failed: " + cause.removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")] += 1
                    elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                        kind = TimeoutType.Name(e.workflow_task_timed_out_event_attributes.timeout_type)
                        figures.task_trouble["timed out: " + kind.removeprefix("TIMEOUT_TYPE_")] += 1
                last = history.events[-1]
                if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                    started = [e.event_id for e in history.events
                               if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED]
                    figures.decided.append(started[-1])
                run_id = (
                    last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW else None
                )
            with session(db_url) as s:
                figures.emails = [e.subject for e in s.scalars(select(t.OutboxEmail).order_by(t.OutboxEmail.id))]
    figures.outcome = result.outcome if not result.reason else f"{result.outcome} ({result.reason})"
    ended = datetime.fromisoformat(result.timeline[-1].at)
    figures.simulated_days = (ended - start_at).total_seconds() / 86400
    figures.expansion = (result.steps.get("expansion") or {}).get("result")
    figures.wall = time.perf_counter() - began
    return figures


async def bench(events: int) -> None:
    quiet_logs()
    await one_run(0)  # warm-up: the process's first run pays for imports and the sandbox's first load
    base = await one_run(0)
    loaded = await one_run(events)
    print(f"a {DAYS}-day playbook (4 waits, 2 wait_for, exit_when, 7 emails) on the time-skipping test server; "
          f"{events:,} usage.reported events over the two years, one batch a simulated day, one of them matching")
    print(f"{'':<44}{'with events':>16}{'baseline':>16}")

    def row(label: str, a: object, b: object) -> None:
        print(f"{label:<44}{a!s:>16}{b!s:>16}")

    def kb(n: int) -> str:
        return f"{n / 1024:,.1f} KB"

    row("events sent", f"{loaded.events_sent:,}", f"{base.events_sent:,}")
    row("runs in the chain", len(loaded.runs), len(base.runs))
    row("history events, largest run", f"{max(e for e, _ in loaded.runs):,}", f"{max(e for e, _ in base.runs):,}")
    row("history events, all runs", f"{sum(e for e, _ in loaded.runs):,}", f"{sum(e for e, _ in base.runs):,}")
    row("history bytes, largest run", kb(max(b for _, b in loaded.runs)), kb(max(b for _, b in base.runs)))
    row("history bytes, all runs", kb(sum(b for _, b in loaded.runs)), kb(sum(b for _, b in base.runs)))
    row("outcome", loaded.outcome, base.outcome)
    row("simulated length", f"{loaded.simulated_days:.1f} days", f"{base.simulated_days:.1f} days")
    row("wall time", f"{loaded.wall:.1f} s", f"{base.wall:.1f} s")
    row("  of which sending events, moving the clock", f"{loaded.send_wall:.1f} s", "-")
    row("slowest move of the clock (day)", f"{loaded.slowest_move[0]:.1f} s ({loaded.slowest_move[1]})", "-")
    row("workflow tasks failed or timed out", sum(loaded.task_trouble.values()), sum(base.task_trouble.values()))
    if loaded.task_trouble:
        print("  " + ", ".join(f"{kind} x{n}" for kind, n in sorted(loaded.task_trouble.items())))
    print("per run (events / bytes): " + ", ".join(f"{e:,} / {kb(b)}" for e, b in loaded.runs))
    print("history length when each continued run's last workflow task started (it decided to continue as new): "
          + ", ".join(f"{n:,}" for n in loaded.decided))
    found = loaded.expansion.get("event") if isinstance(loaded.expansion, dict) else None
    print(f"the expansion wait_for found: {found['data'] if found else None}; emails sent: {len(loaded.emails)} "
          f"(with events) / {len(base.emails)} (baseline); "
          f"{' | '.join(e for e in loaded.emails if e.startswith('Seats'))!r} / "
          f"{' | '.join(e for e in base.emails if e.startswith('Seats'))!r}")
    worst_events = max(e for e, _ in loaded.runs)
    worst_bytes = max(b for _, b in loaded.runs)
    met = worst_events < GOAL_EVENTS and worst_bytes < GOAL_BYTES
    print(f"goal: every run's history under {GOAL_EVENTS:,} events and {GOAL_BYTES // 1024 // 1024} MB (Temporal's "
          f"default continue-as-new suggestion) -> {'met' if met else 'NOT met'} "
          f"(largest run: {worst_events:,} events, {kb(worst_bytes)})")
    hard = worst_events < HARD_EVENTS and worst_bytes < HARD_BYTES
    print(f"and well under the hard limits ({HARD_EVENTS:,} events, 50 MB) -> {'met' if hard else 'NOT met'} "
          f"({worst_events / HARD_EVENTS:.0%} of the events limit, {worst_bytes / HARD_BYTES:.1%} of the bytes limit)")
    same = loaded.outcome == base.outcome == "completed" and abs(loaded.simulated_days - DAYS) < 1 \
        and abs(base.simulated_days - DAYS) < 1 and found is not None and found["data"].get("seats") == 120
    print(f"both runs completed on the renewal date, the matching event used: {'yes' if same else 'NO'}")
    if not same:
        sys.exit("the run with events did not do what the baseline did")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(bench(args.events))


if __name__ == "__main__":
    main()
