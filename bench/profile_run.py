"""Where a run's CPU goes: worker and Temporal server CPU per run, history bytes per event type, and a py-spy
profile of the worker, for worker setups side by side (A B B A) in one run on the real Temporal dev server.

Each phase starts a fresh worker subprocess of one setup, warms it up, pauses it (SIGSTOP) while RUNS runs are
started, then lets it drain them (SIGCONT) while the CPU of the worker and of the server is read from /proc: the
runs' own cost, not the starts'. Setups (--setups, comma-separated, each phase in A B B A order):

    current        build_worker from engine/runtime/workers.py as it is in the checkout
    SETUP+pt:M1+M2 one of these with modules M1, M2 added to its PASSTHROUGH
    SETUP@KIND     with the playbook KIND (below) instead of --playbook's
    rev:REV        build_worker from engine/runtime/workers.py as it was at git revision REV
    unsandboxed    the same worker with UnsandboxedWorkflowRunner: the floor for the sandbox's cost

The playbook (--playbook): `ingest` (bench/ingest.py's: one email, then wait 30d), `ingest-big` (the same run of
a playbook with 24 more steps after the wait: an input of the bundled playbooks' size), `hand` / `hand-local` (the
ingest run written by hand, bench/_handwritten_ingest.py, load_account an activity / a local activity), `ten`
(bench/overhead.py's ten steps, to the end) or a file, e.g. playbooks/renewal.yaml. A phase is drained when the
worker's CPU stands still for a second (nothing polls the server meanwhile); then every run is checked to have
stopped or to wait on a timer. Also printed: the bytes of
RunInput (the whole playbook model) for every bundled playbook, and with --profile one more phase per setup under
py-spy, by part of the work.

    .venv/bin/python bench/profile_run.py [--runs 200] [--setups rev:HEAD,current] [--playbook ingest] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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

from bench._stack import ACCOUNT, ROOT, crm_database, dev_server, playbook, quiet_logs  # noqa: E402

INGEST = """\
id: bench-ingest
title: Ingest bench
trigger:
  event: bench.signal
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: "Welcome, {{ contact.first_name }}"
      body: "Hi {{ contact.first_name }}, {{ account.name }} is set up."
  - wait: 30d
"""
# ingest-big: the same run, with 24 more steps after the wait (never reached here): a RunInput of ~8 KB, the size of
# the bundled playbooks', to price the input's bytes and its decoding
BIG_TAIL = "".join(
    f"""\
  - id: later_{i}
    when: "account.plan == 'pro' and (steps.welcome.status == 'sent')"
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Week {i} at {{{{ account.name }}}}: what your team did"
      body: |
        Hi {{{{ contact.first_name }}}},

        here is what {{{{ account.name }}}} did in week {i}. Reply to this email if anything looks off.
    retry: {{ max_attempts: 5, initial_interval: 1m }}
"""
    for i in range(24)
)
WARMUP = 5


# ---------------------------------------------------------------------------------------- the worker process


def load_workers_module(setup: str) -> Any:
    """engine.runtime.workers as the setup says: the checkout's, or the file at a git revision in its place."""
    if not setup.startswith("rev:"):
        return importlib.import_module("engine.runtime.workers")
    text = subprocess.run(
        ["git", "show", f"{setup[4:]}:engine/runtime/workers.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="workers-rev-")) / "workers.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("engine.runtime.workers", path, submodule_search_locations=None)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "engine.runtime"
    sys.modules["engine.runtime.workers"] = module
    spec.loader.exec_module(module)
    return module


async def worker_main(address: str, queue: str, db_url: str, setup: str) -> None:
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner

    from activities.crm import BuiltinCrm
    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities

    quiet_logs()
    workers = load_workers_module(setup.split("+pt:")[0])
    if "+pt:" in setup:  # more modules passed through the sandbox, e.g. current+pt:engine.interpreter.core
        workers.PASSTHROUGH = (*workers.PASSTHROUGH, *setup.split("+pt:")[1].split("+"))
    client = await Client.connect(address)
    acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider())
    from bench._handwritten_ingest import HandWrittenIngest, HandWrittenIngestLocal

    extra = [HandWrittenIngest, HandWrittenIngestLocal]
    worker = workers.build_worker(client, queue, acts.all(), extra_workflows=extra)
    if setup == "unsandboxed":
        worker._workflow_worker._workflow_runner = UnsandboxedWorkflowRunner()  # type: ignore[union-attr]
    async with worker:
        print("ready", flush=True)
        await asyncio.Event().wait()


# ------------------------------------------------------------------------------------------------ measuring


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU of a process and its children (the dev server is `temporal` under a wrapper, maybe)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            total += tree_cpu(int(c))
    return total


class Worker:
    def __init__(self, address: str, queue: str, db_url: str, setup: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", address, queue, db_url, setup],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if b"ready" not in line:
            raise SystemExit(f"the worker ({setup}) did not start")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def event_type(event: Any) -> str:
    return event.WhichOneof("attributes").removesuffix("_event_attributes")


def payload_bytes(message: Any) -> int:
    """Bytes of the payloads' data anywhere in a message (inputs, results, memo, headers)."""
    from google.protobuf.message import Message

    total = 0
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            values = [value]
        elif hasattr(value, "values") and callable(value.values):  # a map
            values = [v for v in value.values() if isinstance(v, Message)]
        else:
            values = list(value)
        for v in values:
            if field.message_type.full_name == "temporal.api.common.v1.Payload":
                total += len(v.data)  # type: ignore[attr-defined]
            else:
                total += payload_bytes(v)
    return total


async def settled(client: Any, handles: list[Any], kind: str) -> None:
    """Every run is done (ten) or waits on a timer / has closed (ingest, files)."""
    if kind == "ten":
        await asyncio.gather(*(h.result(rpc_timeout=None) for h in handles))
        return
    pending = list(handles)
    while pending:
        still = []
        for h in pending:
            desc = await h.describe()
            if desc.status is not None and desc.status.name != "RUNNING":
                continue
            history = await h.fetch_history()
            last = history.events[-1]
            if event_type(last) != "timer_started" and event_type(last) != "workflow_task_completed":
                still.append(h)
            elif event_type(last) == "workflow_task_completed":
                still.append(h)  # the task that starts the timer is written with it: the timer follows
        pending = still
        if pending:
            await asyncio.sleep(0.2)


async def phase(
    client: Any, server_pid: int, address: str, db_url: str, setup: str, pb: Any, runs: int, kind: str,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    from bench._handwritten_ingest import IngestInput
    from engine.runtime.runs import start_run

    queue = f"bench-profile-{uuid.uuid4().hex[:8]}"
    worker = Worker(address, queue, db_url, setup)

    def start(workflow_id: str) -> Any:
        if kind.startswith("hand"):
            name = "HandWrittenIngestLocal" if kind == "hand-local" else "HandWrittenIngest"
            return client.start_workflow(
                name, IngestInput(ACCOUNT["id"], pb.id, pb.version), id=workflow_id, task_queue=queue
            )
        return start_run(client, queue, pb, ACCOUNT["id"], workflow_id=workflow_id)

    try:
        warm = [await start(f"w{i}/{queue}") for i in range(WARMUP)]
        await settled(client, warm, kind)
        worker.pause()
        handles = await asyncio.gather(*(start(f"r{i}/{queue}") for i in range(runs)))
        await asyncio.sleep(0.5)
        spy = None
        if profile_to is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.process.pid), "--rate",
                 "250", "--format", "raw", "--full-filenames", "--output", str(profile_to), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        w0, s0, t0 = cpu_seconds(worker.process.pid), tree_cpu(server_pid), time.perf_counter()
        worker.resume()
        # nothing asks the server while the runs drain: done when the worker's CPU stands still for a second
        last, still_since = cpu_seconds(worker.process.pid), time.perf_counter()
        while time.perf_counter() - still_since < 1.0:
            await asyncio.sleep(0.1)
            now = cpu_seconds(worker.process.pid)
            if now - last > 0.01:
                still_since = time.perf_counter()
            last = now
        w1, s1, t1 = cpu_seconds(worker.process.pid), tree_cpu(server_pid), still_since
        await settled(client, handles, kind)  # checked after the measurement: every run did get that far
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        history = await handles[0].fetch_history()
    finally:
        worker.stop()
    return {
        "worker_ms": (w1 - w0) / runs * 1000, "server_ms": (s1 - s0) / runs * 1000, "seconds": t1 - t0,
        "history": history,
    }


def by_event_type(history: Any) -> dict[str, tuple[int, int, int]]:
    """event type -> (count, bytes, payload bytes)"""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in history.events:
        row = out[event_type(e)]
        row[0] += 1
        row[1] += e.ByteSize()
        row[2] += payload_bytes(e)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def print_history(label: str, history: Any) -> None:
    rows = by_event_type(history)
    total = sum(r[1] for r in rows.values())
    print(f"\nhistory of one run ({label}): {len(history.events)} events, {total} bytes")
    print(f"  {'event type':<40}{'count':>6}{'bytes':>9}{'payload':>9}")
    for name, (count, size, payload) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<40}{count:>6}{size:>9}{payload:>9}")


def playbook_input_sizes() -> None:
    from temporalio.converter import DataConverter

    from engine.interpreter.messages import RunInput
    from engine.language.library import is_playbook_file
    from engine.language.validator import validate_playbook_text
    from engine.runtime.workers import DATA_CONVERTER

    print("\nRunInput (the whole playbook model) per bundled playbook: its bytes, and the time to encode and decode it")
    print("with temporalio's default payload converter and with the worker's (engine/runtime/workers.py):")
    print(f"  {'playbook':<40}{'YAML':>7}{'RunInput':>10}{'encode':>9}{'decode':>9}{'worker':>9}")
    default, ours = DataConverter.default.payload_converter, DATA_CONVERTER.payload_converter

    def timed(fn: Any, *args: Any) -> float:
        fn(*args)
        began = time.perf_counter()
        for _ in range(10):
            fn(*args)
        return (time.perf_counter() - began) / 10 * 1000

    for path in sorted(p for p in (ROOT / "playbooks").glob("*.yaml") if is_playbook_file(p)):
        text = path.read_text()
        result = validate_playbook_text(text, str(path))
        if result.playbook is None:
            continue
        run_input = RunInput(playbook=result.playbook, account_id="acc-1")
        payloads = default.to_payloads([run_input])
        encode = timed(default.to_payloads, [run_input])
        decode = timed(default.from_payloads, payloads, [RunInput])
        decode_ours = timed(ours.from_payloads, payloads, [RunInput])
        print(f"  {path.name:<40}{len(text):>7}{len(payloads[0].data):>10}{encode:>7.2f}ms{decode:>7.2f}ms"
              f"{decode_ours:>7.2f}ms")


# the parts of the worker's work, by a function on the stack (the first that matches, in this order)
PARTS = (
    ("sandbox: new instance per run (module re-import, restrictions)", "_create_instance ("),
    ("sandbox: importing the workflow module in the sandbox", "(temporalio/worker/workflow_sandbox/_importer"),
    ("activity: load_account", "load_account ("),
    ("activity: send_email", "send_email ("),
    ("activity: update_crm", "update_crm ("),
    ("activities (other)", "(activities/"),
    ("data converter: decode (workflow input / results)", "from_payload"),
    ("data converter: encode", "to_payload"),
    ("Jinja: compile templates", "compile ("),
    ("interpreter: steps, rendering", "(engine/"),
    ("workflow activation (temporalio, other)", "(temporalio/worker/_workflow_instance"),
    ("sandbox: restricted proxies (other)", "(temporalio/worker/workflow_sandbox"),
    ("Temporal worker plumbing (temporalio, other)", "(temporalio"),
    ("thread pool plumbing", "_worker (stdlib:thread"),
    ("event loop (I/O polling, callbacks)", "run_forever (stdlib:base_events"),
)


def profile_report(raw: Path) -> None:
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
                place = "/".join(path.split("site-packages/")[-1].split("/")[:3])
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
    if not samples:
        print("  (no samples)")
        return
    print(f"  by part ({samples} samples of Python running):")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"    {v / samples:6.1%}  {k}")
    print("  on top of the stack:")
    for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {v / samples:6.1%}  {k}")


async def bench(runs: int, setups: list[str], default_kind: str, profile: bool, rounds: int) -> None:
    quiet_logs()
    def playbook_for(kind: str) -> Any:
        if kind in ("ingest", "hand", "hand-local"):
            return playbook(INGEST)
        if kind == "ingest-big":
            return playbook(INGEST + BIG_TAIL)
        if kind == "ten":
            from bench.overhead import ten_steps

            return playbook(ten_steps())
        return playbook((ROOT / kind).read_text())

    def kind_of(setup: str) -> str:
        return setup.split("@")[1] if "@" in setup else default_kind

    # as `make bytecode` does before `playbook dev`: without .pyc files (PYTHONDONTWRITEBYTECODE, or files edited
    # since) the sandbox compiles the workflow's modules from source for every run
    subprocess.run([sys.executable, "-m", "compileall", "-q", "engine", "activities"], cwd=ROOT, check=False)
    load = os.getloadavg()
    async with dev_server() as (server, client):
        assert server.process is not None
        server_pid = server.process.pid
        with tempfile.TemporaryDirectory() as tmp:
            db_url = crm_database(Path(tmp))
            address = client.service_client.config.target_host
            results: dict[str, list[dict[str, Any]]] = defaultdict(list)
            order = []
            for r in range(rounds):
                order += setups if r % 2 == 0 else setups[::-1]
            for setup in order:
                results[setup].append(
                    await phase(client, server_pid, address, db_url, setup.split("@")[0], playbook_for(kind_of(setup)),
                                runs, kind_of(setup))
                )
                print(f"  {setup:<16} worker {results[setup][-1]['worker_ms']:6.1f} ms/run  server "
                      f"{results[setup][-1]['server_ms']:6.1f} ms/run", flush=True)
            profiles = {}
            if profile:
                for setup in setups:
                    out = Path(tmp) / f"profile-{setup.replace(':', '_')}.txt"
                    await phase(client, server_pid, address, db_url, setup.split("@")[0],
                                playbook_for(kind_of(setup)), runs, kind_of(setup), profile_to=out)
                    profiles[setup] = out.read_text() if out.exists() else ""
    load_after = os.getloadavg()
    print(f"\n{runs} runs per phase ({default_kind} unless the setup says @kind), phases {' '.join(order)}; "
          f"load average before {load[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    print(f"{'setup':<20}{'worker ms/run':>16}{'server ms/run':>16}{'drain s':>10}")
    for setup in setups:
        rs = results[setup]
        print(f"{setup:<20}{statistics.median(r['worker_ms'] for r in rs):>16.1f}"
              f"{statistics.median(r['server_ms'] for r in rs):>16.1f}"
              f"{statistics.median(r['seconds'] for r in rs):>10.1f}"
              f"   (each: {', '.join(format(r['worker_ms'], '.1f') for r in rs)})")
    for setup in setups:
        print_history(setup, results[setup][0]["history"])
    for setup, text in profiles.items():
        print(f"\npy-spy, worker draining ({setup}):")
        path = Path(tempfile.mkstemp(suffix=".txt")[1])
        path.write_text(text)
        profile_report(path)
        keep = Path(tempfile.gettempdir()) / f"profile-run-{setup.replace(':', '_').replace('/', '_')}.txt"
        shutil.copy(path, keep)
        print(f"  (raw samples: {keep})")
    playbook_input_sizes()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker_main(*sys.argv[2:6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--setups", default="current")
    parser.add_argument("--playbook", default="ingest")
    parser.add_argument("--rounds", type=int, default=2, help="phases per setup, in A B B A order")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.setups.split(","), args.playbook, args.profile, args.rounds))


if __name__ == "__main__":
    main()
