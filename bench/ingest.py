"""Ingest: signed POST /events to a started run, against raw `client.start_workflow`, side by side in one run.

One real Temporal dev server (`temporal server start-dev`, bench/_stack.py) and one worker in this process
(engine.runtime.workers.build_worker with the real activities on a temporary SQLite database). The API is the real
FastAPI app served by uvicorn on 127.0.0.1 in its own process, as `playbook api` serves it (JSON logs at INFO).
A temporary library holds one playbook triggered by `bench.signal`, enrolled per account: it emails the account's
contact and waits 30 days, so every event (a new account each, with its CRM fields and contact, as a signup
carries them) starts one run.

(a) API: signed events posted by an httpx client, CONCURRENCY at a time. A run counts as started when the answer
    says `started` (the API answers after start_workflow returned).
(b) raw: the same PlaybookRun workflow started with `client.start_workflow` (same id, policies, memo and search
    attributes as the intake), CONCURRENCY at a time, for accounts seeded beforehand.

The phases run A B B A (half the events each), and after each one the worker drains (every run has sent its email)
before the next starts, so neither side pays for the other's backlog. Goals: (a) at least 0.8x (b) events per
second; p99 of POST /events under 100 ms. Also printed: the CPU each process spends per event, the intake's parts as
timed inside the API process (wall clock per event), and POST /events one at a time (its latency unloaded). With
--profile, one more API phase runs under py-spy, which says where the API process's CPU goes. --intake REV runs the
API with engine/runtime/intake.py as it was at a git revision, for a before/after on the same machine.

    .venv/bin/python bench/ingest.py [--events 500] [--concurrency 20] [--profile] [--intake REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
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

from bench._stack import ROOT, TEAM, crm_database, dev_server, free_ports, playbook, quiet_logs  # noqa: E402

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
    "remembered",
    "account_snapshot",
    "seed",
    "get_account",
    "deliver",
    "live_runs",
    "visibility_query",
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
    if os.environ.get("BENCH_INTAKE_FILE"):  # --intake REV: the intake as it was at REV, for a before/after
        import importlib.util

        spec = importlib.util.spec_from_file_location("engine.runtime.intake", os.environ["BENCH_INTAKE_FILE"])
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["engine.runtime.intake"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]

    from activities.crm import BuiltinCrm
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
        if name not in ("get_account", "take_event", "visibility_query") and hasattr(intake, name):
            setattr(intake, name, timed(name, getattr(intake, name)))
    BuiltinCrm.get_account = timed("get_account", BuiltinCrm.get_account)  # type: ignore[method-assign]
    if hasattr(intake, "_LiveRunLookup"):  # how many visibility queries the live-run lookups cost
        intake._LiveRunLookup._query = timed("visibility_query", intake._LiveRunLookup._query)
    events_route.take_event = timed("take_event", intake.take_event)

    @app.get("/_bench/timings", include_in_schema=False)
    def bench_timings(reset: bool = False) -> dict[str, list[float]]:
        answer = {k: list(v) for k, v in spent.items()}
        if reset:
            spent.clear()
        return answer

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None)


class Api:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.port = free_ports(1)[0]
        self.log = folder / "api.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "Api":
        import httpx

        args = [sys.executable, __file__, "--serve-api", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.perf_counter() + 60
        async with httpx.AsyncClient() as http:
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(f"the API exited; see {self.log}:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.perf_counter() > deadline:
                    raise SystemExit(f"the API did not answer in 60 s; see {self.log}")
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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


async def api_phase(http: Any, prefix: str, events: int, concurrency: int) -> tuple[float, list[float]]:
    from api.security import SIGNATURE_HEADER, sign

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures: list[str] = []

    async def post(i: int) -> None:
        account_id = f"{prefix}{i}"
        body = json.dumps(
            {
                "id": f"evt-{uuid.uuid4().hex}",
                "type": EVENT_TYPE,
                "account_id": account_id,
                "data": {"source": "bench", "n": i},
                "account": account_fields(account_id),
                "contacts": [contact(account_id)],
            }
        ).encode()
        async with gate:
            started = time.perf_counter()
            response = await http.post(
                "/events",
                content=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)},
            )
            latencies.append(time.perf_counter() - started)
        runs = response.json().get("runs", []) if response.status_code == 200 else []
        if [r["status"] for r in runs] != ["started"]:
            failures.append(f"{response.status_code} {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(post(i) for i in range(events)))
    seconds = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} of {events} events did not start their run, e.g. {failures[0]}")
    return seconds, latencies


async def raw_phase(
    client: Any, task_queue: str, pb: Any, db_url: str, prefix: str, events: int, concurrency: int
) -> tuple[float, list[float]]:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    from activities.crm import seed
    from engine.interpreter.messages import WORKFLOW_NAME, Event, RunInput
    from engine.runtime.runs import search_attributes

    for i in range(events):  # the intake seeds the account from the event; here that is done beforehand, untimed
        seed(db_url, {**account_fields(f"{prefix}{i}"), "id": f"{prefix}{i}"}, [contact(f"{prefix}{i}")], [])
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def start(i: int) -> None:
        account_id = f"{prefix}{i}"
        event = Event(
            type=EVENT_TYPE, data={"source": "bench", "n": i}, id=f"evt-{uuid.uuid4().hex}", account_id=account_id
        )
        async with gate:
            began = time.perf_counter()
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
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(events)))
    return time.perf_counter() - started, latencies


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
    ("SQLite: remembered (dedupe read)", "remembered (engine/runtime/intake.py"),
    ("SQLite: account_snapshot (seed + read)", "account_snapshot (engine/runtime/intake.py"),
    ("SQLite: remember (write)", "remember (engine/runtime/intake.py"),
    ("SQLite: token lookup", "caller_for (api/security.py"),
    ("Temporal: start_workflow (payload encoding, RPC)", "start_enrolled (engine/runtime/intake.py"),
    ("Temporal: live-run lookup", "live_runs (engine/runtime/intake.py"),
    ("Temporal: live-run lookup", "_serve (engine/runtime/intake.py"),
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


async def bench(events: int, concurrency: int, profile: bool, intake_rev: str | None) -> int:
    import httpx

    from engine.runtime.connect import activities
    from engine.runtime.settings import Settings
    from engine.runtime.workers import build_worker

    quiet_logs()
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    library = folder / "library"
    library.mkdir()
    (library / "bench-ingest.yaml").write_text(PLAYBOOK)
    pb = playbook(PLAYBOOK)
    db_url = crm_database(folder)
    task_queue = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    half = events // 2
    missed = True
    try:
        async with dev_server() as (server, client):
            settings = Settings(
                home=str(folder),
                library=str(library),
                temporal_address=server.address,
                database_url=db_url,
                task_queue=task_queue,
                event_signing_secret=SECRET,
            )
            env = {
                **os.environ,
                "PLAYBOOK_HOME": str(folder),
                "PLAYBOOK_LIBRARY": str(library),
                "PLAYBOOK_TEMPORAL_ADDRESS": server.address,
                "PLAYBOOK_DATABASE_URL": db_url,
                "PLAYBOOK_TASK_QUEUE": task_queue,
                "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
                "PLAYBOOK_LOG_FORMAT": "json",
            }
            if intake_rev:
                old = folder / "intake_at_rev.py"
                old.write_bytes(
                    subprocess.run(
                        ["git", "show", f"{intake_rev}:engine/runtime/intake.py"],
                        cwd=ROOT,
                        check=True,
                        capture_output=True,
                    ).stdout
                )
                env["BENCH_INTAKE_FILE"] = str(old)
                print(f"the API runs engine/runtime/intake.py as it was at {intake_rev}")
            async with build_worker(client, task_queue, activities(settings)), Api(folder, env) as api:
                assert server.process is not None
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=60) as http:
                    # warm-up, untimed: imports, connections, the sandbox's first workflow, SQLite pages
                    await api_phase(http, "warm-api-", 20, concurrency)
                    await raw_phase(client, task_queue, pb, db_url, "warm-raw-", 20, concurrency)
                    await drain(db_url, "warm-", 40)
                    await http.get("/_bench/timings", params={"reset": True})

                    api_seconds, raw_seconds, latencies, raw_latencies, drains = 0.0, 0.0, [], [], []
                    cpu = Cpu(
                        {
                            "API": api.process.pid,
                            "bench (client, worker)": os.getpid(),
                            "Temporal server": server.process.pid,
                        }
                    )
                    for round_, kind in enumerate("ABBA"):
                        prefix = f"{'api' if kind == 'A' else 'raw'}-{round_}-"
                        before = cpu.start()
                        if kind == "A":
                            seconds, lat = await api_phase(http, prefix, half, concurrency)
                            api_seconds += seconds
                            latencies += lat
                        else:
                            seconds, lat = await raw_phase(client, task_queue, pb, db_url, prefix, half, concurrency)
                            raw_seconds += seconds
                            raw_latencies += lat
                        cpu.stop(kind, before)
                        drains.append(await drain(db_url, prefix, half))

                    api_rate, raw_rate = 2 * half / api_seconds, 2 * half / raw_seconds
                    ratio = api_rate / raw_rate
                    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
                    print(
                        f"events: {2 * half} each way, concurrency {concurrency}, Temporal dev server {server.address}"
                    )
                    print(f"(a) POST /events -> started run : {api_rate:8.1f} events/s   ({api_seconds:.2f} s)")
                    print(f"(b) client.start_workflow        : {raw_rate:8.1f} starts/s   ({raw_seconds:.2f} s)")
                    verdict = "met" if ratio >= GOAL_RATIO else "MISSED"
                    print(f"ratio (a)/(b)                     : {ratio:8.2f}   goal >= {GOAL_RATIO}   {verdict}")
                    verdict = "met" if p99 < GOAL_P99_MS else "MISSED"
                    print(
                        f"POST /events latency              : p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                        f"max {max(latencies) * 1000:.1f} ms   goal p99 < {GOAL_P99_MS:.0f} ms   {verdict}"
                    )
                    print(
                        f"start_workflow latency (b)        : p50 {percentile(raw_latencies, 50) * 1000:.1f} ms, "
                        f"p99 {percentile(raw_latencies, 99) * 1000:.1f} ms (the floor under (a) at this concurrency)"
                    )
                    print(f"worker drain after each phase     : {', '.join(f'{d:.1f}' for d in drains)} s")
                    print(
                        "CPU per event during the phases (ms; the machine has "
                        f"{os.cpu_count()} cores, and the worker runs its part meanwhile in the bench process):"
                    )
                    for name in cpu.pids:
                        print(
                            f"    {name:24s} (a) {cpu.spent['A'][name] / (2 * half) * 1000:6.2f}   "
                            f"(b) {cpu.spent['B'][name] / (2 * half) * 1000:6.2f}"
                        )
                    missed = ratio < GOAL_RATIO or p99 >= GOAL_P99_MS
                    await breakdown(http)

                    # the API's own latency, unloaded: one event at a time
                    _, alone = await api_phase(http, "alone-", 50, 1)
                    print(
                        f"\nPOST /events one at a time (50)   : p50 {percentile(alone, 50) * 1000:.1f} ms, "
                        f"p99 {percentile(alone, 99) * 1000:.1f} ms"
                    )
                    await breakdown(http)
                    await drain(db_url, "alone-", 50)
                    if profile:
                        await profile_cpu(http, api, db_url, half, concurrency, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if missed else 0


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


async def profile_cpu(http: Any, api: Api, db_url: str, events: int, concurrency: int, folder: Path) -> None:
    """One more API phase under py-spy (--gil: only the thread holding the GIL, Python running): where the API
    process spends its CPU."""
    raw = folder / "api-profile.txt"
    spy = cpu_profile(api.process.pid, 60, raw)
    if spy is None:
        print("\n(py-spy is not installed: no CPU profile)")
        return
    await asyncio.sleep(1)
    started = time.perf_counter()
    await api_phase(http, "prof-", events, concurrency)
    seconds = time.perf_counter() - started
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
    parser.add_argument("--events", type=int, default=500, help="events each way (API and raw), half per phase")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="one more API phase with py-spy on the API process")
    parser.add_argument(
        "--intake", metavar="REV", help="run the API with engine/runtime/intake.py as it was at a git revision"
    )
    parser.add_argument("--serve-api", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_api:
        serve_api(args.serve_api)
        return
    raise SystemExit(asyncio.run(bench(args.events, args.concurrency, args.profile, args.intake)))


if __name__ == "__main__":
    main()
