"""What running steps through the interpreter costs, against the same steps written as a Temporal workflow.

On the real Temporal dev server, in one run: a playbook of ten steps (email, CRM update, email, ... each one
activity) through PlaybookRun, and bench/_handwritten.py calling the same activities with the same requests.
Runs go one at a time, alternating (ABBA) so drift on a shared machine hits both alike, after a warm-up.
Printed: wall time per run, start to result, seen from the client (goal: PlaybookRun within 1.15x), history
events per run (goal: within 1.2x), the history's bytes by event type (which payloads make the difference) and
the CPU this process (client and worker) spent per run. The activity requests of both are compared first: the
same names and inputs, once the run's own ids and clock are set aside.

    .venv/bin/python bench/overhead.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._handwritten import NAME, HandWrittenTenSteps, TenStepsInput  # noqa: E402
from bench._stack import ACCOUNT, crm_database, dev_server, playbook, quiet_logs  # noqa: E402
from bench.profile_run import by_event_type  # noqa: E402

TIME_GOAL = 1.15
EVENTS_GOAL = 1.2
WARMUP = 3


def ten_steps() -> str:
    steps = []
    for i in range(1, 11):
        if i % 2:
            steps.append(f"""\
  - id: s{i}
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Step {i} for {{{{ account.name }}}}"
      body: "Hi {{{{ contact.first_name }}}}, this is step {i} of 10."
""")
        else:
            steps.append(f"""\
  - id: s{i}
    crm:
      update: {{ bench_step: "{i}" }}
""")
    return "id: bench-ten-steps\ntitle: Ten steps\ntrigger: { manual: true }\nsteps:\n" + "".join(steps)


def activity_requests(history: Any) -> list[tuple[str, Any]]:
    """(activity, request) per scheduled activity, with the run's ids and clock replaced by placeholders."""
    started = history.events[0].workflow_execution_started_event_attributes
    run_id = started.original_execution_run_id
    requests = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            text = attrs.input.payloads[0].data.decode()
            text = text.replace(history.workflow_id, "<workflow>").replace(run_id, "<run>")
            request = json.loads(text)
            if isinstance(request, dict):
                request.pop("at", None)  # the clock: a different moment for each run
            requests.append((attrs.activity_type.name, request))
    return requests


async def bench(runs: int) -> None:
    from temporalio.client import Client

    from activities.crm import BuiltinCrm
    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities
    from engine.interpreter.messages import RunResult
    from engine.runtime.runs import start_run
    from engine.runtime.workers import build_worker

    quiet_logs()
    pb = playbook(ten_steps())
    async with dev_server() as (server, client):
        client: Client
        with tempfile.TemporaryDirectory() as tmp:
            db_url = crm_database(Path(tmp))
            acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
            queue = f"bench-overhead-{uuid.uuid4().hex[:8]}"
            async with build_worker(client, queue, acts.all(), extra_workflows=[HandWrittenTenSteps]):

                cpu: dict[str, float] = {"playbook": 0.0, "hand": 0.0}

                async def playbook_run(n: int) -> tuple[float, str]:
                    began = time.perf_counter()
                    handle = await start_run(client, queue, pb, ACCOUNT["id"], workflow_id=f"pb/{n}/{queue}")
                    result = await handle.result(rpc_timeout=None)
                    elapsed = time.perf_counter() - began
                    outcome = RunResult(**result).outcome if isinstance(result, dict) else result.outcome
                    if outcome != "completed":
                        raise SystemExit(f"the playbook run ended {outcome}")
                    return elapsed, handle.id

                async def hand_written(n: int) -> tuple[float, str]:
                    began = time.perf_counter()
                    handle = await client.start_workflow(
                        NAME, TenStepsInput(ACCOUNT["id"], pb.id, pb.version), id=f"hw/{n}/{queue}", task_queue=queue
                    )
                    await handle.result()
                    return time.perf_counter() - began, handle.id

                for n in range(WARMUP):
                    await playbook_run(-1 - n)
                    await hand_written(-1 - n)

                times: dict[str, list[float]] = {"playbook": [], "hand": []}
                ids: dict[str, list[str]] = {"playbook": [], "hand": []}
                for n in range(runs):
                    order = [("playbook", playbook_run), ("hand", hand_written)]
                    for name, run in order if n % 2 == 0 else order[::-1]:
                        cpu_before = time.process_time()
                        elapsed, workflow_id = await run(n)
                        cpu[name] += time.process_time() - cpu_before
                        times[name].append(elapsed)
                        ids[name].append(workflow_id)

                histories = {
                    name: await asyncio.gather(*(client.get_workflow_handle(i).fetch_history() for i in ids[name]))
                    for name in ids
                }
    same = activity_requests(histories["playbook"][0]) == activity_requests(histories["hand"][0])
    events = {name: [len(h.events) for h in hs] for name, hs in histories.items()}
    size = {name: [sum(e.ByteSize() for e in h.events) for h in hs] for name, hs in histories.items()}
    acts_per_run = len(activity_requests(histories["hand"][0]))

    def row(label: str, pb_value: float, hand_value: float, fmt: str) -> None:
        print(f"{label:<34}{fmt.format(pb_value):>16}{fmt.format(hand_value):>16}{pb_value / hand_value:>10.2f}x")

    print(
        f"{runs} runs each of {acts_per_run} activities (load_account + 10 steps), alternating, "
        f"after {WARMUP} warm-up runs each"
    )
    print(f"activity names and requests the same in both: {'yes' if same else 'NO'}")
    print(f"{'':<34}{'PlaybookRun':>16}{'hand-written':>16}{'ratio':>11}")
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    mean = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in times.items()}
    row("wall time per run, median", med["playbook"], med["hand"], "{:.0f} ms")
    row("wall time per run, mean", mean["playbook"], mean["hand"], "{:.0f} ms")
    row("wall time per run, 90th percentile", p90["playbook"], p90["hand"], "{:.0f} ms")
    row("history events per run", statistics.fmean(events["playbook"]), statistics.fmean(events["hand"]), "{:.0f}")
    row(
        "history size per run", statistics.fmean(size["playbook"]) / 1000, statistics.fmean(size["hand"]) / 1000,
        "{:.1f} KB",
    )
    row(
        "CPU of client + worker per run", cpu["playbook"] / runs * 1000, cpu["hand"] / runs * 1000, "{:.1f} ms"
    )
    print("history bytes per run by event type (payload bytes of them in brackets):")
    types = {name: [by_event_type(h) for h in hs] for name, hs in histories.items()}
    names = sorted(
        {t for rows in types.values() for r in rows for t in r},
        key=lambda t: -statistics.fmean(r.get(t, (0, 0, 0))[1] for r in types["playbook"]),
    )
    for t in names:
        cells = []
        for name in ("playbook", "hand"):
            count, size, payload = (statistics.fmean(r.get(t, (0, 0, 0))[i] for r in types[name]) for i in range(3))
            cells.append(f"{count:>3.0f} x {size / max(count, 1):>4.0f} B [{payload:>5.0f}]")
        print(f"  {t:<32}{cells[0]:>22}{cells[1]:>22}")
    time_ratio = med["playbook"] / med["hand"]
    events_ratio = statistics.fmean(events["playbook"]) / statistics.fmean(events["hand"])
    time_verdict = "met" if time_ratio <= TIME_GOAL else "NOT met"
    events_verdict = "met" if events_ratio <= EVENTS_GOAL else "NOT met"
    print(f"goal: wall time <= {TIME_GOAL}x (medians) -> {time_verdict} ({time_ratio:.2f}x)")
    print(f"goal: history events <= {EVENTS_GOAL}x -> {events_verdict} ({events_ratio:.2f}x)")
    if not same:
        sys.exit("the two workflows did not call the same activities with the same requests: the comparison is unfair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(bench(args.runs))


if __name__ == "__main__":
    main()
