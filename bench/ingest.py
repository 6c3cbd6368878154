"""Ingest: signed POST /events to a started run, against raw `client.start_workflow`, side by side in one run.

One real Temporal dev server (`temporal server start-dev`, bench/_stack.py). The API is the real FastAPI app served
by uvicorn on 127.0.0.1 (`playbook api`, JSON logs at INFO), the worker is `python worker.py`, each in a process of
its own, as in production. A temporary library holds one playbook triggered by `bench.signal`, enrolled per
account: it emails the account's contact and waits 30 days, so every event (a new account each, with its CRM fields
and contact, as a signup carries them) starts one run.

(a) API: signed events posted by an httpx client. A run counts as started when the answer says `started` (the API
    answers after start_workflow returned).
(b) raw: the same PlaybookRun workflow started with `client.start_workflow` (same id, policies, memo and search
    attributes as the intake), for accounts seeded beforehand.

Each part runs A B B A (half the events each). While events are timed the worker is paused (SIGSTOP): in production
workers have machines of their own, and here running the runs would take the two cores from what is measured. After
each phase the worker drains it (every run sends its email), untimed, so neither side pays for the other's runs.

1. throughput: CONCURRENCY requests at a time, as fast as they are answered. Goal: (a) at least 0.8x (b).
2. latency under load: an open loop at LOAD x the raw rate of 1. (half of it by default), requests sent on a fixed
   schedule whatever the answers, each timed from when it was due. Goal: p99 of POST /events under 100 ms. (In 1.
   the latency is only the queue: concurrency / rate, ~200 ms for both sides at 20 at a time.)
3. one at a time: latency unloaded.
Also printed: the CPU each process spends per event, the intake's parts as timed inside the API process, and what
the runs themselves cost the worker and the server. With --profile, one more API phase runs under py-spy, which says
where the API process's CPU goes. --intake REV runs the API with engine/runtime/intake.py as it was at a git
revision, for a before/after on the same machine.

    .venv/bin/python bench/ingest.py [--events 1000] [--concurrency 20] [--load 0.5] [--profile] [--intake REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import (  # noqa: E402
    ROOT,
    TEAM,
    ApiProcess,
    crm_database,
    dev_server,
    playbook,
    quiet_logs,
    stop,
)

GOAL_RATIO = 0.8
GOAL_P99_MS = 100.0
SECRET = "bench-ingest-signing-secret-0123456789"
EVENT_TYPE = "bench.signal"
PLAYBOOK = """\
id: bench-ingest
title: Ingest bench
trigger:
  event: bench.signal
enrollment:
  key: "{{ account.id }}"
  reenroll: never
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ contact.first_name }}"
      body: "Hi {{ contact.first_name }}, {{ account.name }} is set up."
  - wait: 30d
"""


def account_fields(account_id: str) -> dict[str, Any]:
    return {"name": f"Bench {account_id}", "language": "en", "timezone": "UTC", "plan": "pro", "owner": TEAM[0]["id"]}


def contact(account_id: str) -> dict[str, Any]:
    return {"email": f"ada@{account_id}.example", "first_name": "Ada"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# ------------------------------------------------------------------------------ the API (its own process)

# the intake's parts that are timed in the API process, where they exist (module-level functions of intake.py)
TIMED = (
    "before_starts",
    "signal_runs",
    "start_enrolled",
    "remember",
    "take_event",
)


def serve_api(port: int) -> None:
    """`playbook api`, plus wall-clock timers around each part of the intake (a few perf_counter calls per event),
    read at GET /_bench/timings."""
    import functools
    import inspect

    import uvicorn

    from engine.runtime.logs import configure
    from engine.runtime.settings import load_settings

    settings = load_settings().check()
    configure(settings.logs_as_json)
    from api.app import create_app
    from api.routes import events as events_route
    from engine.runtime import intake

    spent: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, fn: Any) -> Any:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    spent[name].append(time.perf_counter() - started)
        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[name].append(time.perf_counter() - started)

        return wrapper

    app = create_app(settings)
    for name in TIMED:
        if name != "take_event" and hasattr(intake, name):
            setattr(intake, name, timed(name, getattr(intake, name)))
    events_route.take_event = timed("take_event", intake.take_event)

    @app.get("/_bench/timings", include_in_schema=False)
    def bench_timings(reset: bool = False) -> dict[str, list[float]]:
        answer = {k: list(v) for k, v in spent.items()}
        if reset:
            spent.clear()
        return answer

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None)


def serving_api(port: int) -> list[str]:
    """This file's --serve-api on the port: `playbook api` with the intake's timers."""
    return [sys.executable, __file__, "--serve-api", str(port)]


def writable(db_path: str) -> bool:
    """Whether SQLite's write lock on the database is free (taken and given back at once, waiting 0.2 s at most)."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=0.2, isolation_level=None)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        db.execute("ROLLBACK")
        return True


class Worker:
    """`python worker.py`, the production entry point, in its own process (JSON logs at INFO to a file): the bench
    process is then only the client, and its latencies are not held up by the worker's work."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.log = folder / "worker.log"
        self.env = env
        self.db_path = env["PLAYBOOK_DATABASE_URL"].split("///", 1)[-1]
        self.process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Worker:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def pause(self) -> None:
        """SIGSTOP: in production workers run on machines of their own; here they would take the two cores from
        the API, the server and the client while events are timed. The runs wait for it at Temporal meanwhile.

        A worker stopped inside a write transaction would keep SQLite's write lock while it is stopped, and every
        write of the phase (the API's, the raw phase's seeding) would wait out the busy timeout and fail with
        "database is locked": so once stopped, the database must take a write; if it does not, the worker goes
        on for a moment and is stopped again."""
        assert self.process is not None
        for _ in range(100):
            self.process.send_signal(signal.SIGSTOP)
            if writable(self.db_path):
                return
            self.process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        raise SystemExit("the worker kept SQLite's write lock through 100 pauses")

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def __aexit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        stop(self.process)


# ------------------------------------------------------------------------------ the phases


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds each process spends during a phase: where the machine's two cores go, per event."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def start(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, kind: str, before: dict[str, float]) -> None:
        for name, pid in self.pids.items():
            self.spent[kind][name] += cpu_seconds(pid) - before[name]

    def report(self, tag: str, events: int) -> None:
        a, b = self.spent[f"{tag}-A"], self.spent[f"{tag}-B"]
        print("   CPU per event while the events were timed, ms:")
        for name in self.pids:
            print(f"      {name:20s} (a) {a[name] / events * 1000:6.2f}   (b) {b[name] / events * 1000:6.2f}")
        total_a, total_b = sum(a.values()) / events * 1000, sum(b.values()) / events * 1000
        print(f"      {'total':20s} (a) {total_a:6.2f}   (b) {total_b:6.2f}")


def outbox_count(db_url: str, prefix: str) -> int:
    from sqlalchemy import func, select

    from engine.storage import models as t
    from engine.storage.db import session

    with session(db_url) as s:
        return int(
            s.scalar(select(func.count()).select_from(t.OutboxEmail).where(t.OutboxEmail.account_id.like(f"{prefix}%")))
            or 0
        )


async def drain(db_url: str, prefix: str, count: int, timeout: float = 120) -> float:
    """Waits until every run of the phase has sent its email; returns how long that took."""
    started = time.perf_counter()
    while (sent := outbox_count(db_url, prefix)) < count:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {sent} of {count} runs of {prefix}* emailed after {timeout:.0f} s")
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


class Pace:
    """How a phase sends: `concurrency` at a time as fast as they answer (closed loop: throughput), or `rate` per
    second on a fixed schedule whatever the answers (open loop: latency at a given load). In an open loop a latency
    counts from when the request was due, so a client that falls behind shows it (no coordinated omission)."""

    def __init__(self, concurrency: int | None = None, rate: float | None = None) -> None:
        assert (concurrency is None) != (rate is None)
        self.concurrency, self.rate = concurrency, rate

    def __str__(self) -> str:
        return f"concurrency {self.concurrency}" if self.concurrency else f"{self.rate:.1f}/s open loop"


async def paced(send: Any, events: int, pace: Pace) -> tuple[float, list[float]]:
    """Runs send(i) for i in range(events) at the pace; returns the seconds it took and each one's latency."""
    latencies: list[float] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(pace.concurrency or events)
    began = time.perf_counter()

    async def one(i: int) -> None:
        if pace.rate:
            await asyncio.sleep(max(0.0, began + i / pace.rate - time.perf_counter()))
            due = began + i / pace.rate
        async with gate:
            if not pace.rate:
                due = time.perf_counter()
            failure = await send(i)
            latencies.append(time.perf_counter() - due)
        if failure:
            failures.append(failure)

    await asyncio.gather(*(one(i) for i in range(events)))
    seconds = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} of {events} did not start their run, e.g. {failures[0]}")
    return seconds, latencies


async def api_phase(http: Any, prefix: str, events: int, pace: Pace) -> tuple[float, list[float]]:
    """Signed events, a new account each (with its CRM fields and contact, as a signup carries them)."""
    from api.security import SIGNATURE_HEADER, sign

    bodies = [
        json.dumps(
            {
                "id": f"evt-{uuid.uuid4().hex}",
                "type": EVENT_TYPE,
                "account_id": f"{prefix}{i}",
                "data": {"source": "bench", "n": i},
                "account": account_fields(f"{prefix}{i}"),
                "contacts": [contact(f"{prefix}{i}")],
            }
        ).encode()
        for i in range(events)
    ]

    async def post(i: int) -> str | None:
        body = bodies[i]
        response = await http.post(
            "/events",
            content=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)},
        )
        runs = response.json().get("runs", []) if response.status_code == 200 else []
        return None if [r["status"] for r in runs] == ["started"] else f"{response.status_code} {response.text[:300]}"

    return await paced(post, events, pace)


async def raw_phase(
    client: Any, task_queue: str, pb: Any, db_url: str, prefix: str, events: int, pace: Pace
) -> tuple[float, list[float]]:
    """The same workflow, id, policies, memo and search attributes as the intake starts, by the Temporal client."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    from activities.crm import seed
    from engine.interpreter.messages import WORKFLOW_NAME, Event, RunInput
    from engine.runtime.runs import search_attributes

    for i in range(events):  # the intake seeds the account from the event; here that is done beforehand, untimed
        seed(db_url, {**account_fields(f"{prefix}{i}"), "id": f"{prefix}{i}"}, [contact(f"{prefix}{i}")], [])

    async def start(i: int) -> str | None:
        account_id = f"{prefix}{i}"
        event = Event(
            type=EVENT_TYPE, data={"source": "bench", "n": i}, id=f"evt-{uuid.uuid4().hex}", account_id=account_id
        )
        await client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=pb, account_id=account_id, event=event),
            id=f"{pb.id}/{account_id}",
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={"playbook_id": pb.id, "version": pb.version, "account_id": account_id, "title": pb.title},
            search_attributes=search_attributes(pb, account_id),
        )
        return None

    return await paced(start, events, pace)


def cpu_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return None
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds) + 1),
            "--rate",
            "200",
            "--format",
            "raw",
            "--full-filenames",
            "--gil",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# the parts of the API process's work, by a function on the stack (the first that matches, in this order)
PARTS = (
    ("SQLite: before_starts (dedupe, account, listening runs)", "before_starts (engine/runtime/intake.py"),
    ("SQLite: remember (write)", "remember (engine/runtime/intake.py"),
    ("SQLite: token lookup", "caller_for (api/security.py"),
    ("Temporal: start_workflow (payload encoding, RPC)", "start_enrolled (engine/runtime/intake.py"),
    ("Temporal: signals", "signal_runs (engine/runtime/intake.py"),
    ("intake: triggers, enrollment keys", "take_event (engine/runtime/intake.py"),
    ("route: signature, body parsing, answer", "post_event (api/routes/events.py"),
    ("FastAPI/Starlette: routing, dependencies, response", "FastAPI.__call__ (fastapi"),
    ("logging (access log lines)", "Logger.handle (stdlib:__init__"),
    ("uvicorn: HTTP parsing and writing", "(uvicorn"),
    ("Temporal core bridge (other)", "(temporalio"),
    ("thread pool plumbing", "_worker (stdlib:thread"),
    ("event loop (I/O polling, callbacks)", "run_forever (stdlib:base_events"),
)


def top_frames(raw: Path) -> list[tuple[str, list[tuple[str, float]]]]:
    """The samples (the GIL held: Python running) by part of the work, and the functions most often on top."""
    parts: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        names = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            path = where.rstrip(")").split(":")[0]
            if "site-packages/" in path:
                place = path.split("site-packages/")[-1].split("/")[0]
            elif path.startswith(str(ROOT)):
                place = path[len(str(ROOT)) + 1 :]
            else:
                place = "stdlib:" + Path(path).stem
            names.append(f"{name} ({place})")
        joined = ";".join(names)
        part = next((title for title, marker in PARTS if marker in joined), "other")
        parts[part] += n
        if names:
            own[names[-1]] += n
    ordered = sorted(parts.items(), key=lambda kv: -kv[1])
    return [
        (f"by part ({samples} samples)", [(k, v / samples) for k, v in ordered]),
        ("on top of the stack", [(k, v / samples) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:12]]),
    ]


# ------------------------------------------------------------------------------ the bench


async def bench(events: int, concurrency: int, load: float, profile: bool) -> int:
    import httpx

    quiet_logs()
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    library = folder / "library"
    library.mkdir()
    (library / "bench-ingest.yaml").write_text(PLAYBOOK)
    pb = playbook(PLAYBOOK)
    db_url = crm_database(folder)
    task_queue = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    half = events // 2
    try:
        async with dev_server() as (server, client):
            env = {
                **os.environ,
                "PLAYBOOK_ENVIRONMENT": "dev",  # SQLite, outbox, built-in CRM: refused by the production checks
                "PLAYBOOK_HOME": str(folder),
                "PLAYBOOK_LIBRARY": str(library),
                "PLAYBOOK_TEMPORAL_ADDRESS": server.address,
                "PLAYBOOK_DATABASE_URL": db_url,
                "PLAYBOOK_TASK_QUEUE": task_queue,
                "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
                "PLAYBOOK_LOG_FORMAT": "json",
            }
            async with Worker(folder, env) as worker, ApiProcess(folder / "api.log", env, serving_api) as api:
                assert server.process and worker.process and api.process
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=60) as http:
                    # warm-up, untimed: imports, connections, the worker's first workflows, SQLite pages
                    await api_phase(http, "warm-api-", 20, Pace(concurrency))
                    await raw_phase(client, task_queue, pb, db_url, "warm-raw-", 20, Pace(concurrency))
                    await drain(db_url, "warm-", 40)
                    await http.get("/_bench/timings", params={"reset": True})
                    cpu = Cpu(
                        {
                            "API": api.process.pid,
                            "worker": worker.process.pid,
                            "Temporal server": server.process.pid,
                            "bench (the client)": os.getpid(),
                        }
                    )

                    async def side_by_side(tag: str, pace: Pace, per_phase: int) -> Results:
                        """API and raw, A B B A, with the worker paused; after each phase the worker drains it
                        (every run sends its email), untimed, so that neither side pays for the other's runs."""
                        results = Results(pace, per_phase * 2)
                        for round_, kind in enumerate("ABBA"):
                            prefix = f"{tag}-{'api' if kind == 'A' else 'raw'}-{round_}-"
                            worker.pause()
                            before = cpu.start()
                            if kind == "A":
                                seconds, lat = await api_phase(http, prefix, per_phase, pace)
                            else:
                                seconds, lat = await raw_phase(client, task_queue, pb, db_url, prefix, per_phase, pace)
                            cpu.stop(f"{tag}-{kind}", before)
                            results.add(kind, seconds, lat)
                            worker.resume()
                            before = cpu.start()
                            results.drains.append(await drain(db_url, prefix, per_phase))
                            cpu.stop(f"{tag}-drain", before)
                        return results

                    print(f"Temporal dev server {server.address}; the API, the worker and this client in processes "
                          f"of their")
                    print(f"own, on {os.cpu_count()} cores; the worker is paused while events are timed and drains "
                          f"after\n")
                    if events < 400:
                        print(f"({events} events each way is a smoke run: phases of a few rounds of {concurrency} "
                              "measure their first and last round more than a rate; the figures are noise)\n")
                    throughput = await side_by_side("tp", Pace(concurrency=concurrency), half)
                    print(f"1. throughput: {2 * half} events each way, {throughput.pace}")
                    ratio = throughput.report()
                    print(f"   ratio (a)/(b)                  : {ratio:8.2f}   goal >= {GOAL_RATIO}   "
                          f"{'met' if ratio >= GOAL_RATIO else 'MISSED'}")
                    print("   (at saturation a request waits for the ones ahead of it: latency = concurrency / rate)")
                    cpu.report("tp", 2 * half)
                    await breakdown(http)

                    rate = load * throughput.rate("B")
                    at_load = await side_by_side("load", Pace(rate=rate), half)
                    print(f"\n2. latency under load: {2 * half} events each way, {at_load.pace} "
                          f"({load:.0%} of the raw start rate measured in 1.)")
                    at_load.report()
                    p99 = at_load.percentile("A", 99)
                    print(f"   POST /events p99               : {p99:8.1f} ms   goal < {GOAL_P99_MS:.0f} ms   "
                          f"{'met' if p99 < GOAL_P99_MS else 'MISSED'}")
                    cpu.report("load", 2 * half)
                    await breakdown(http)

                    alone = await side_by_side("alone", Pace(concurrency=1), 25)
                    print("\n3. one at a time: 50 events each way")
                    alone.report()
                    await breakdown(http)

                    drained = sum(2 * r.events for r in (throughput, at_load, alone))  # both sides' runs
                    spent = cpu.spent["tp-drain"], cpu.spent["load-drain"], cpu.spent["alone-drain"]
                    worker_ms = sum(s["worker"] for s in spent) / drained * 1000
                    server_ms = sum(s["Temporal server"] for s in spent) / drained * 1000
                    print(f"\nthe runs themselves (the worker draining, untimed): worker {worker_ms:.1f} ms CPU "
                          f"per run, Temporal server {server_ms:.1f} ms")

                    if profile:
                        await profile_cpu(http, api, worker, db_url, half, concurrency, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ratio >= GOAL_RATIO and p99 < GOAL_P99_MS else 1


class Results:
    """The two sides of a side-by-side measurement: events, seconds and latencies of (a) the API, (b) raw."""

    def __init__(self, pace: Pace, events: int) -> None:
        self.pace, self.events = pace, events
        self.seconds: dict[str, float] = defaultdict(float)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.drains: list[float] = []

    def add(self, kind: str, seconds: float, latencies: list[float]) -> None:
        self.seconds[kind] += seconds
        self.latencies[kind] += latencies

    def rate(self, kind: str) -> float:
        return self.events / self.seconds[kind]

    def percentile(self, kind: str, q: float) -> float:
        return percentile(self.latencies[kind], q) * 1000

    def report(self) -> float:
        for kind, title in (("A", "(a) POST /events -> started run"), ("B", "(b) client.start_workflow     ")):
            lat = self.latencies[kind]
            print(
                f"   {title}: {self.rate(kind):8.1f}/s   latency p50 {self.percentile(kind, 50):6.1f} ms, "
                f"p99 {self.percentile(kind, 99):6.1f} ms, max {max(lat) * 1000:6.1f} ms"
            )
        print(f"   worker drain after each phase  : {', '.join(f'{d:.1f}' for d in self.drains)} s")
        return self.rate("A") / self.rate("B")


async def breakdown(http: Any) -> None:
    """The intake's parts as timed in the API process since the last call: mean wall clock per event."""
    spent = (await http.get("/_bench/timings", params={"reset": True})).json()
    total = sum(spent.get("take_event", [])) or 1
    count = len(spent.get("take_event", [])) or 1
    print(f"  where POST /events spends its time ({count} events; mean wall clock per event, share of take_event):")
    for name in TIMED:
        values = spent.get(name, [])
        if values:
            print(
                f"    {name:16s} {sum(values) / count * 1000:7.2f} ms  {sum(values) / total:6.1%}   "
                f"(p50 {statistics.median(values) * 1000:.2f} ms, p99 {percentile(values, 99) * 1000:.2f} ms, "
                f"{len(values)} calls)"
            )


async def profile_cpu(
    http: Any, api: ApiProcess, worker: Worker, db_url: str, events: int, concurrency: int, folder: Path
) -> None:
    """One more API phase under py-spy (--gil: only the thread holding the GIL, Python running): where the API
    process spends its CPU."""
    raw = folder / "api-profile.txt"
    spy = cpu_profile(api.process.pid, 60, raw)
    if spy is None:
        print("\n(py-spy is not installed: no CPU profile)")
        return
    await asyncio.sleep(1)
    worker.pause()
    started = time.perf_counter()
    await api_phase(http, "prof-", events, Pace(concurrency=concurrency))
    seconds = time.perf_counter() - started
    worker.resume()
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=30)
    await http.get("/_bench/timings", params={"reset": True})
    if not raw.exists():
        print("\n(py-spy could not sample the API process)")
        return
    print(f"\nthe API process's CPU during one more phase of {events} events ({seconds:.1f} s), py-spy:")
    for title, rows in top_frames(raw):
        print(f"  {title}")
        for name, share in rows:
            print(f"    {share:6.1%}  {name}")
    await drain(db_url, "prof-", events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="events each way (API and raw), half per phase")
    parser.add_argument("--concurrency", type=int, default=20, help="requests at a time in the throughput part")
    parser.add_argument(
        "--load", type=float, default=0.5, help="the latency part's rate, as a share of the raw start rate (0.5)"
    )
    parser.add_argument("--profile", action="store_true", help="one more API phase with py-spy on the API process")
    parser.add_argument("--serve-api", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_api:
        serve_api(args.serve_api)
        return
    raise SystemExit(asyncio.run(bench(args.events, args.concurrency, args.load, args.profile)))


if __name__ == "__main__":
    main()
