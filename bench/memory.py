"""A worker's memory with 1,000 runs waiting (goal: under 500 MB), on the real Temporal dev server.

A playbook that emails, waits 30 days and emails again is started 1,000 times; once every run has sent its
first email and started its 30-day timer (the outbox holds 1,000 emails and every history ends with a started
timer), the worker's resident memory is read from /proc/<pid>/status. The worker is a subprocess built as
`python worker.py` builds one (build_worker: the sandbox, up to 1,000 cached workflows), so the figure is the
worker's alone.

Then, in the same run, what the sandbox passthrough list (engine.runtime.workers.PASSTHROUGH) does: one run each
on a fresh worker with the list empty and with each entry left out. There is no memory figure "without the
passthrough" to put beside the one above: without the list (or without most single entries) no run gets past its
first workflow task.

    .venv/bin/python bench/memory.py [--runs 1000] [--no-passthrough-check]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import ACCOUNT, crm_database, dev_server, playbook, quiet_logs  # noqa: E402
from engine.runtime.workers import PASSTHROUGH  # noqa: E402

GOAL_MB = 500
PLAYBOOK = """\
id: bench-wait
title: Email, wait 30 days, email
trigger: { manual: true }
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: "Welcome to Repricer, {{ contact.first_name }}"
      body: |
        Hi {{ contact.first_name }},

        {{ account.name }} is set up. Your first repricing rules are live; we'll check in in a month.
  - wait: 30d
  - id: check_in
    email:
      to: "{{ contact.email }}"
      subject: "A month of Repricer at {{ account.name }}"
      body: "Hi {{ contact.first_name }}, how is it going?"
"""


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ------------------------------------------------------------------------------ the worker (a subprocess)


async def worker_main(address: str, task_queue: str, db_url: str, passthrough: tuple[str, ...]) -> None:
    from temporalio.client import Client

    from activities.crm import BuiltinCrm
    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities
    from engine.runtime import workers
    from engine.runtime.connect import quiet_runtime

    quiet_logs()
    workers.PASSTHROUGH = passthrough  # sandbox_runner() reads it when build_worker runs
    client = await Client.connect(address, runtime=quiet_runtime())
    acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with workers.build_worker(client, task_queue, acts.all()):
        print("ready", flush=True)
        await stop.wait()


class Worker:
    def __init__(self, address: str, db_url: str, passthrough: tuple[str, ...], folder: Path) -> None:
        self.args = (address, f"bench-memory-{uuid.uuid4().hex[:8]}", db_url, ",".join(passthrough) or "-")
        self.log = folder / "worker.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def task_queue(self) -> str:
        return self.args[1]

    async def __aenter__(self) -> Worker:
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", *self.args, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise SystemExit(f"the worker did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# ------------------------------------------------------------------------------ the bench


def outbox_count(db_url: str) -> int:
    from sqlalchemy import func, select

    from engine.storage import models as t
    from engine.storage.db import session

    with session(db_url) as s:
        return int(s.scalar(select(func.count()).select_from(t.OutboxEmail)) or 0)


async def count_waiting(client, ids: list[str]) -> int:
    """How many runs have a history ending in a started timer: the 30-day wait, with nothing left to do."""
    gate = asyncio.Semaphore(50)

    async def waiting(workflow_id: str) -> bool:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        return history.events[-1].HasField("timer_started_event_attributes")

    return sum(await asyncio.gather(*(waiting(i) for i in ids)))


async def start_runs(client, task_queue: str, runs: int) -> list[str]:
    from engine.runtime.runs import start_run

    pb = playbook(PLAYBOOK)
    gate = asyncio.Semaphore(50)
    ids = [f"bench-wait/{i}/{task_queue}" for i in range(runs)]

    async def start(workflow_id: str) -> None:
        async with gate:
            await start_run(client, task_queue, pb, ACCOUNT["id"], workflow_id=workflow_id)

    await asyncio.gather(*(start(i) for i in ids))
    return ids


async def measure(client, address: str, runs: int, passthrough: tuple[str, ...], folder: Path) -> dict[str, float]:
    folder.mkdir()
    db_url = crm_database(folder)
    async with Worker(address, db_url, passthrough, folder) as worker:
        await asyncio.sleep(1)
        before = rss_mb(worker.process.pid)
        cpu_before = cpu_seconds(worker.process.pid)
        started = time.perf_counter()
        ids = await start_runs(client, worker.task_queue, runs)
        start_seconds = time.perf_counter() - started
        deadline = started + 300
        shown = started
        while (sent := outbox_count(db_url)) < runs:
            if time.perf_counter() - shown > 15:
                shown = time.perf_counter()
                print(f"  {sent:,} of {runs:,} first emails sent after {shown - started:.0f} s", file=sys.stderr)
            if time.perf_counter() > deadline:
                raise SystemExit(f"only {outbox_count(db_url)} of {runs} emails after 5 minutes; see {worker.log}")
            await asyncio.sleep(0.5)
        while (waiting := await count_waiting(client, ids)) < runs:
            if time.perf_counter() > deadline:
                raise SystemExit(f"only {waiting} of {runs} runs waiting after 5 minutes; see {worker.log}")
            await asyncio.sleep(1)
        to_waiting = time.perf_counter() - started
        await asyncio.sleep(2)  # let the worker settle (finished tasks, freed buffers)
        after = rss_mb(worker.process.pid)
        cpu = cpu_seconds(worker.process.pid) - cpu_before
    return {
        "runs": runs,
        "before": before["VmRSS"],
        "after": after["VmRSS"],
        "peak": after["VmHWM"],
        "per_run_kb": (after["VmRSS"] - before["VmRSS"]) * 1024 / runs,
        "cpu_ms": cpu * 1000 / runs,
        "start_s": start_seconds,
        "waiting_s": to_waiting,
        "outbox": outbox_count(db_url),
        "waiting": waiting,
    }


async def one_run(client, address: str, passthrough: tuple[str, ...], folder: Path) -> str:
    """What one run does on a fresh worker with this passthrough list: reaches its wait, or fails (and why)."""
    folder.mkdir()
    db_url = crm_database(folder)
    async with Worker(address, db_url, passthrough, folder) as worker:
        [workflow_id] = await start_runs(client, worker.task_queue, 1)
        handle = client.get_workflow_handle(workflow_id)
        for _ in range(60):
            for event in (await handle.fetch_history()).events:
                if event.HasField("workflow_task_failed_event_attributes"):
                    failure = event.workflow_task_failed_event_attributes.failure
                    while failure.HasField("cause"):
                        failure = failure.cause
                    return f"FAILS its first workflow task: {failure.message[:110]}"
                if event.HasField("timer_started_event_attributes"):
                    return "works"
            await asyncio.sleep(0.5)
    return "neither failed nor reached its wait in 30 s"


def table(columns: list[tuple[str, dict[str, float]]]) -> None:
    rows = [
        ("worker RSS, idle", "before", "{:.0f} MB"),
        ("worker RSS, all runs waiting", "after", "{:.0f} MB"),
        ("worker peak RSS (VmHWM)", "peak", "{:.0f} MB"),
        ("per waiting run", "per_run_kb", "{:.0f} KB"),
        ("worker CPU time per run (to its wait)", "cpu_ms", "{:.0f} ms"),
        ("runs started in", "start_s", "{:.1f} s"),
        ("all runs waiting after", "waiting_s", "{:.1f} s"),
        ("emails in the outbox", "outbox", "{:.0f}"),
        ("histories ending in the 30d timer", "waiting", "{:.0f}"),
    ]
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'':{width}}" + "".join(f"{name:>34}" for name, _ in columns))
    for label, key, fmt in rows:
        print(f"{label:{width}}" + "".join(f"{fmt.format(col[key]):>34}" for _, col in columns))


async def bench(runs: int, check_passthrough: bool) -> None:
    async with dev_server() as (server, client):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            result = await measure(client, server.address, runs, PASSTHROUGH, folder / "main")
            table([(f"as deployed, {runs:,} runs", result)])
            if check_passthrough:
                deployed = ", ".join(PASSTHROUGH)
                print(f"\none run on a fresh worker, by sandbox passthrough list (as deployed: {deployed}):")
                variants = [("empty", ())]
                variants += [(f"without {m}", tuple(p for p in PASSTHROUGH if p != m)) for m in PASSTHROUGH]
                for i, (name, modules) in enumerate(variants):
                    print(f"  {name:<40} {await one_run(client, server.address, modules, folder / f'variant-{i}')}")
    after = result["after"]
    verdict = "met" if after < GOAL_MB else "NOT met"
    print(f"\ngoal: < {GOAL_MB} MB with {runs:,} runs waiting -> {verdict} ({after:.0f} MB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        address, task_queue, db_url, passthrough = sys.argv[2:6]
        modules = () if passthrough == "-" else tuple(passthrough.split(","))
        asyncio.run(worker_main(address, task_queue, db_url, modules))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--no-passthrough-check", action="store_true", help="skip the one-run passthrough variants")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, not args.no_passthrough_check))


if __name__ == "__main__":
    main()
