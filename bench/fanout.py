"""Fan-out: a for_each over many contacts and a schedule tick over many accounts, against hand-written Temporal
workflows doing the same, side by side in one run (issue 10).

One real Temporal dev server (`temporal server start-dev`, bench/_stack.py), one worker in a process of its own
(`python bench/fanout.py --serve-worker`: what worker.py runs, the same settings, activities, versioning and JSON logs
at INFO, plus bench/_handwritten.py's workflows and its hand_start_runs activity), one SQLite database whose built-in
CRM the bench seeds and whose outbox both sides write. A temporary library holds the bench's playbooks. Each part
runs engine, hand-written, hand-written, engine (A B B A, --rounds times) after an untimed warm-up of both; every
phase has accounts of its own and ends (its workflows done) before the next starts. A phase is timed from the start
call to the moment the last of its outbox rows is seen (the outbox is polled every 0.1 s).

1. foreach: one account with --contacts contacts; a manual playbook whose for_each over `contacts` sends each an
   email (`concurrency` --concurrency), started as `playbook run` starts it (engine.runtime.runs.start_run).
   Hand-written: HandWrittenFanOut loads the account (load_account), starts one child per 1,000 contacts, as many at
   once as the engine starts slices at once (SLICES_STARTING of engine/interpreter/flow.py; all when it has none;
   --slices-at-once), and each child sends its emails through send_emails, one batch after the other, batches of the
   same size as the engine's: --concurrency shared among the slices running at once (hand_batch), so both sides keep
   at most --concurrency emails in flight. Goals: engine <= 20 s for 10,000 contacts, and >= 0.8x the hand-written
   throughput.
2. tick: --accounts accounts with a contact each (the CRM holds only them); a scheduled playbook over every account
   with one email step. The engine's tick workflow (PlaybookScheduleTick) is started directly with the input its
   Temporal Schedule would give it (TickInput: the playbook, its segment, the task queue), not through the schedule.
   Hand-written: HandWrittenTick pages the same accounts with the same segment_page activity and starts a
   load_account + send_email workflow per account from one activity per page, at most --start-concurrency starts at
   once (by default the bound engine/runtime/schedules.py's start_scheduled_runs uses). Goals: engine <= 120 s for
   10,000 accounts, and >= 0.8x the hand-written throughput.
3. large: the engine alone, a for_each over --items items (the account's contacts, repeated when there are more than
   10,000: 100,000 contacts would not fit in one Temporal payload), in a fresh worker process. Goals: it completes,
   the parent's history stays under 10,000 events, and the worker's peak resident memory (VmHWM) under 1 GB.

Printed per side: wall time, throughput, the parent's history events, CPU seconds of the worker and of the Temporal
server, and the worker's peak RSS during the phase; the machine's load average before and after each part (2 cores,
shared). A goal that is missed prints MISSED and the bench exits 1; a time goal is judged only at its full size.
Until activities/playbook_activities.py has send_emails, the bench's worker registers a stand-in of that name (each
request through send_email, one after the other, in one activity) and says so.

    .venv/bin/python bench/fanout.py [--part {foreach,tick,large,all}] [--contacts 10000] [--accounts 10000]
        [--items 100000] [--concurrency 1000] [--slices-at-once N] [--start-concurrency N] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio import activity  # noqa: E402

from activities.types import EmailBatchRequest, EmailBatchResult  # noqa: E402
from bench._stack import ROOT, TEAM, dev_server, playbook, quiet_logs  # noqa: E402

GOAL_RATIO = 0.8
GOAL_FOREACH_S, FOREACH_FULL = 20.0, 10_000
GOAL_TICK_S, TICK_FULL = 120.0, 10_000
GOAL_EVENTS = 10_000
GOAL_RSS_MB = 1024.0
MAX_CONTACTS = 10_000  # contacts of one account the large part seeds; more items repeat them
SECRET = "bench-fanout-signing-secret-0123456789"
POLL = 0.1
HAND_WORKFLOWS = ("HandWrittenFanOut", "HandWrittenFanOutSlice", "HandWrittenOneEmail", "HandWrittenTick")


# ------------------------------------------------------------------------------ playbooks


def foreach_playbook(pid: str, items: str, concurrency: int) -> str:
    return f"""\
id: {pid}
title: Fan-out bench, one email per item
trigger: {{ manual: true }}
steps:
  - id: everyone
    for_each:
      items: {items}
      as: person
      concurrency: {concurrency}
      steps:
        - id: send
          email:
            to: "{{{{ person.email }}}}"
            subject: "Hello {{{{ person.first_name }}}}"
            body: "Hi {{{{ person.first_name }}}}, news for {{{{ account.name }}}}."
"""


TICK_PLAYBOOK = """\
id: bench-fanout-tick
title: Fan-out bench, one email per account on a schedule
trigger:
  schedule:
    cron: "0 9 1 1 *"
enrollment:
  key: "{{ account.id }}"
  reenroll: after_exit
steps:
  - id: send
    email:
      to: "{{ contact.email }}"
      subject: "Hello {{ contact.first_name }}"
      body: "Hi {{ contact.first_name }}, news for {{ account.name }}."
"""


def accepted_concurrency(wanted: int) -> tuple[int, str | None]:
    """The concurrency the engine's validator takes: `wanted`, or the highest it accepts (said in the note)."""
    from engine.language.validator import validate_playbook_text

    def ok(c: int) -> bool:
        return validate_playbook_text(foreach_playbook("probe", "contacts", c), "<probe>").ok

    if ok(wanted):
        return wanted, None
    best = max((c for c in (1000, 500, 200, 100, 50, 10) if c < wanted and ok(c)), default=1)
    return best, f"the engine's validator refuses concurrency {wanted}: both sides use {best}"


# ------------------------------------------------------------------------------ the worker (its own process)


def serve_worker() -> None:
    """worker.py's run_worker, with bench/_handwritten.py's workflows and activity registered as well."""
    import worker as entry  # worker.py
    from bench._handwritten import (
        HandStartActivities,
        HandWrittenFanOut,
        HandWrittenFanOutSlice,
        HandWrittenOneEmail,
        HandWrittenTick,
    )
    from engine.runtime import connect as rt
    from engine.runtime.logs import configure
    from engine.runtime.settings import load_settings
    from engine.runtime.workers import build_worker, tune_garbage_collection, versioning
    from engine.storage.db import migrate

    settings = load_settings().check()
    configure(settings.logs_as_json)
    stop = asyncio.Event()

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        migrate(settings.db_url)
        client = await rt.connect(settings)
        version = versioning(settings)
        acts = rt.activities(settings, client)
        names = {getattr(a, "__temporal_activity_definition").name for a in acts}
        if "send_emails" not in names:
            acts.append(StandInBatch(next(a for a in acts if a.__name__ == "send_email")).send_emails)
            print("send_emails: the bench's stand-in (the engine has none yet)", flush=True)
        acts.append(HandStartActivities(client).hand_start_runs)
        worker = build_worker(
            client, settings.task_queue, acts,
            extra_workflows=[HandWrittenFanOut, HandWrittenFanOutSlice, HandWrittenOneEmail, HandWrittenTick],
            max_concurrent_activities=settings.max_concurrent_activities, versioning=version,
        )
        tune_garbage_collection()
        async with worker:
            if version is not None:
                await entry._take_current(client, settings.task_queue, version, force=False)
            Path(os.environ["BENCH_READY"]).write_text("stand-in" if "send_emails" not in names else "engine")
            await stop.wait()

    asyncio.run(runner())


class StandInBatch:
    """send_emails before the engine has it: each request through send_email, one after the other, in one activity."""

    def __init__(self, send_email: Any) -> None:
        self.send_email = send_email

    @activity.defn(name="send_emails")
    def send_emails(self, req: EmailBatchRequest) -> EmailBatchResult:
        return EmailBatchResult(results=[self.send_email(r) for r in req.emails])


def proc_status(pid: int, field_name: str) -> float:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchWorker:
    def __init__(self, folder: Path, env: dict[str, str], name: str) -> None:
        self.log = folder / f"{name}.log"
        self.ready_file = folder / f"{name}.ready"
        self.env = {**env, "BENCH_READY": str(self.ready_file)}
        self.process: subprocess.Popen[bytes] | None = None
        self.send_emails = "?"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> BenchWorker:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--serve-worker"], cwd=ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.perf_counter() + 120
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"the worker did not start; see {self.log}:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        self.send_emails = self.ready_file.read_text()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def reset_peak(self) -> None:
        """Resets VmHWM to the current RSS (Linux: 5 > /proc/<pid>/clear_refs), so the peak is the phase's."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        return proc_status(self.pid, "VmHWM")

    def rss_mb(self) -> float:
        return proc_status(self.pid, "VmRSS")


# ------------------------------------------------------------------------------ the CRM and the outbox


def clear_accounts(db_url: str) -> None:
    """Removes every account (and its contacts, tags, notes): a tick's segment is then exactly the phase's accounts."""
    from sqlalchemy import delete

    from engine.storage import models as t
    from engine.storage.db import session

    with session(db_url) as s:
        for table in (t.Contact, t.Tag, t.Note, t.Account):
            s.execute(delete(table))


def seed_accounts(db_url: str, accounts: list[tuple[str, int]]) -> None:
    """(account id, how many contacts) each, in one transaction."""
    from activities.crm import write_account
    from engine.storage.db import session

    with session(db_url) as s:
        for account_id, contacts in accounts:
            write_account(
                s,
                {"id": account_id, "name": f"Bench {account_id}", "language": "en", "timezone": "UTC",
                 "plan": "pro", "owner": TEAM[0]["id"]},
                [{"email": f"c{i}@{account_id}.example", "first_name": f"C{i}"} for i in range(contacts)],
            )


def outbox_count(db_url: str, account_id: str | None = None, prefix: str | None = None) -> int:
    from sqlalchemy import func, select

    from engine.storage import models as t
    from engine.storage.db import session

    where = t.OutboxEmail.account_id == account_id if account_id else t.OutboxEmail.account_id.like(f"{prefix}%")
    with session(db_url) as s:
        return int(s.scalar(select(func.count()).select_from(t.OutboxEmail).where(where)) or 0)


async def until_sent(
    db_url: str, count: int, began: float, timeout: float, done: asyncio.Task[Any] | None, **where: str
) -> float:
    """Seconds from `began` to the moment `count` outbox rows are seen; fails when the workflow `done` ended (or
    failed) without them, or after `timeout`."""
    ended_at: float | None = None
    while (sent := outbox_count(db_url, **where)) < count:
        now = time.perf_counter()
        if done is not None and done.done():
            if done.exception() is not None:
                raise SystemExit(f"the workflow failed after {sent} of {count} emails: {done.exception()}")
            ended_at = ended_at or now
            if now - ended_at > 10:
                raise SystemExit(f"the workflow ended ({done.result()}) with {sent} of {count} emails sent")
        if now - began > timeout:
            raise SystemExit(f"only {sent} of {count} emails after {timeout:.0f} s ({where})")
        await asyncio.sleep(POLL)
    return time.perf_counter() - began


# ------------------------------------------------------------------------------ phases


@dataclass
class Phase:
    side: str  # engine | hand
    emails: int
    wall: float
    events: int | None = None  # the parent's (or the tick's last run's) history events
    worker_cpu: float = 0.0
    server_cpu: float = 0.0
    peak_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.emails / self.wall


@dataclass
class Ctx:
    client: Any
    server_pid: int
    worker: BenchWorker
    db_url: str
    queue: str
    timeout: float


async def measured(ctx: Ctx, side: str, emails: int, start: Any, wait: Any) -> Phase:
    """Runs one phase: `start()` gives the workflow handle, `wait(began, done)` the seconds to the last email."""
    ctx.worker.reset_peak()
    cpu = cpu_seconds(ctx.worker.pid), cpu_seconds(ctx.server_pid)
    began = time.perf_counter()
    handle = await start()
    done = asyncio.ensure_future(handle.result(rpc_timeout=None))
    try:
        wall = await wait(began, done)
        await asyncio.wait_for(asyncio.shield(done), ctx.timeout)  # untimed: the phase's workflows end
    finally:
        if not done.done():
            done.cancel()
    phase = Phase(
        side, emails, wall, worker_cpu=cpu_seconds(ctx.worker.pid) - cpu[0],
        server_cpu=cpu_seconds(ctx.server_pid) - cpu[1], peak_mb=ctx.worker.peak_mb(),
    )
    phase.events = len((await handle.fetch_history()).events)
    return phase


def hand_batch(args: argparse.Namespace, items: int) -> int:
    """The hand-written children's batch: the engine's share per slice (engine/interpreter/flow.py,
    for_each_in_slices: concurrency // min(slices at once, slices, concurrency), at least 1)."""
    slices = max(1, -(-items // 1000))
    at_once = max(1, min(args.slices_at_once or slices, slices, args.concurrency))
    return max(1, args.concurrency // at_once)


async def foreach_phase(ctx: Ctx, side: str, tag: str, contacts: int, pb: Any, args: argparse.Namespace) -> Phase:
    from bench._handwritten import FANOUT_NAME, FanOutInput
    from engine.runtime.runs import start_run

    account_id = f"fe-{tag}"
    seed_accounts(ctx.db_url, [(account_id, contacts)])

    async def start() -> Any:
        if side == "engine":
            return await start_run(ctx.client, ctx.queue, pb, account_id, workflow_id=f"fanout-engine/{tag}")
        return await ctx.client.start_workflow(
            FANOUT_NAME,
            FanOutInput(account_id, pb.id, pb.version, hand_batch(args, contacts), args.slices_at_once),
            id=f"fanout-hand/{tag}", task_queue=ctx.queue,
        )

    async def wait(began: float, done: asyncio.Task[Any]) -> float:
        return await until_sent(ctx.db_url, contacts, began, ctx.timeout, done, account_id=account_id)

    return await measured(ctx, side, contacts, start, wait)


async def tick_phase(ctx: Ctx, side: str, tag: str, accounts: int, pb: Any, args: argparse.Namespace) -> Phase:
    from bench._handwritten import TICK_NAME, HandTickInput
    from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, TickInput

    prefix = f"tk-{tag}-"
    clear_accounts(ctx.db_url)
    seed_accounts(ctx.db_url, [(f"{prefix}{i:06d}", 1) for i in range(accounts)])

    async def start() -> Any:
        if side == "engine":  # what the playbook's Temporal Schedule starts (engine/runtime/schedules.py)
            return await ctx.client.start_workflow(
                TICK_WORKFLOW_NAME, TickInput(playbook_id=pb.id, accounts=pb.trigger.accounts, task_queue=ctx.queue),
                id=f"tick/{pb.id}/{tag}", task_queue=ctx.queue, memo={"playbook_id": pb.id, "version": pb.version},
            )
        return await ctx.client.start_workflow(
            TICK_NAME, HandTickInput(pb.id, pb.version, ctx.queue, args.start_concurrency),
            id=f"hw-tick/{pb.id}/{tag}", task_queue=ctx.queue,
        )

    async def wait(began: float, done: asyncio.Task[Any]) -> float:
        # the tick ends before its runs do: only its failure stops the wait
        failed = asyncio.ensure_future(_failure(done))
        try:
            return await until_sent(ctx.db_url, accounts, began, ctx.timeout, failed, prefix=prefix)
        finally:
            failed.cancel()

    return await measured(ctx, side, accounts, start, wait)


async def _failure(done: asyncio.Task[Any]) -> None:
    """Ends only when `done` fails (raising its error)."""
    await done
    await asyncio.Event().wait()


async def side_by_side(run: Any, warm: Any, rounds: int) -> list[Phase]:
    await warm("engine", "warm-e")
    await warm("hand", "warm-h")
    phases = []
    for i, side in enumerate(("engine", "hand", "hand", "engine") * rounds):
        phase = await run(side, f"{'AB'[side == 'hand']}{i}")
        phases.append(phase)
        print(f"   phase {i + 1}: {side:<6} {phase.wall:7.1f} s   {phase.rate:7.1f} emails/s   "
              f"worker {phase.worker_cpu:6.1f} s CPU, peak RSS {phase.peak_mb:5.0f} MB", flush=True)
    return phases


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table(title: str, phases: list[Phase]) -> float:
    """Prints both sides; returns the throughput ratio engine / hand-written (means of each side's two phases)."""
    sides = {s: [p for p in phases if p.side == s] for s in ("engine", "hand")}

    def mean(side: str, f: Any) -> float:
        return statistics.fmean(f(p) for p in sides[side])

    print(f"{title}")
    print(f"   {'':<36}{'engine':>18}{'hand-written':>18}{'ratio':>9}")

    def row(label: str, f: Any, fmt: str, ratio: bool = True) -> None:
        e, h = mean("engine", f), mean("hand", f)
        r = f"{e / h:8.2f}x" if ratio and h else ""
        print(f"   {label:<36}{fmt.format(e):>18}{fmt.format(h):>18}{r:>9}")

    for side, name in (("engine", "engine"), ("hand", "hand-written")):  # in the order they ran
        print(f"   {'wall, each run, ' + name:<36}{' / '.join(f'{p.wall:.1f}' for p in sides[side])} s")
    row("wall, mean", lambda p: p.wall, "{:.1f} s")
    row("throughput (emails / wall)", lambda p: p.rate, "{:.1f}/s")
    row("history events of the parent", lambda p: p.events or 0, "{:.0f}")
    row("worker CPU", lambda p: p.worker_cpu, "{:.1f} s")
    row("Temporal server CPU", lambda p: p.server_cpu, "{:.1f} s")
    row("worker peak RSS in the phase", lambda p: p.peak_mb, "{:.0f} MB", ratio=False)
    return statistics.fmean(p.rate for p in sides["engine"]) / statistics.fmean(p.rate for p in sides["hand"])


def verdict(label: str, ok: bool | None, detail: str) -> bool:
    word = "not judged" if ok is None else ("met" if ok else "MISSED")
    print(f"   goal: {label} -> {word} ({detail})")
    return ok is not False


# ------------------------------------------------------------------------------ the bench


async def bench(args: argparse.Namespace) -> int:
    from engine.storage.db import migrate
    from engine.storage.db import session as db_session

    quiet_logs()
    concurrency, note = accepted_concurrency(args.concurrency)
    args.concurrency = concurrency
    folder = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    library = folder / "library"
    library.mkdir()
    fe_text = foreach_playbook("bench-fanout-foreach", "contacts", concurrency)
    (library / "bench-fanout-foreach.yaml").write_text(fe_text)
    (library / "bench-fanout-tick.yaml").write_text(TICK_PLAYBOOK)
    repeat = max(1, math.ceil(args.items / MAX_CONTACTS))
    large_contacts = math.ceil(args.items / repeat)
    large_items = large_contacts * repeat
    items = "contacts" if repeat == 1 else f"contacts * {repeat}"
    large_text = foreach_playbook("bench-fanout-large", items, concurrency)
    (library / "bench-fanout-large.yaml").write_text(large_text)
    fe_pb, tick_pb, large_pb = playbook(fe_text), playbook(TICK_PLAYBOOK), playbook(large_text)
    db_url = f"sqlite:///{folder / 'playbook.db'}"
    migrate(db_url)
    from engine.storage import models as t

    with db_session(db_url) as s:
        s.merge(t.Csm(id=TEAM[0]["id"], name=TEAM[0]["name"], email=TEAM[0]["email"], languages=["en"]))
    queue = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    ok = True
    parts = ("foreach", "tick", "large") if args.part == "all" else (args.part,)
    try:
        async with dev_server() as (server, client):
            assert server.process is not None
            env = {
                **os.environ,
                "PLAYBOOK_ENVIRONMENT": "dev",  # SQLite, outbox, built-in CRM: refused by the production checks
                "PLAYBOOK_HOME": str(folder),
                "PLAYBOOK_LIBRARY": str(library),
                "PLAYBOOK_TEMPORAL_ADDRESS": server.address,
                "PLAYBOOK_DATABASE_URL": db_url,
                "PLAYBOOK_TASK_QUEUE": queue,
                "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
                "PLAYBOOK_LOG_FORMAT": "json",
            }
            print(f"Temporal dev server {server.address}; the worker and this client in processes of their own, "
                  f"on {os.cpu_count()} cores; {load()}")
            if note:
                print(f"note: {note}")
            if "foreach" in parts or "tick" in parts:
                async with BenchWorker(folder, env, "worker") as worker:
                    print(f"send_emails: {'the engine' if worker.send_emails == 'engine' else 'the bench stand-in'}\n")
                    ctx = Ctx(client, server.process.pid, worker, db_url, queue, args.timeout)
                    if "foreach" in parts:
                        ok &= await part_foreach(ctx, args, fe_pb)
                    if "tick" in parts:
                        ok &= await part_tick(ctx, args, tick_pb)
            if "large" in parts:
                async with BenchWorker(folder, env, "worker-large") as worker:
                    ctx = Ctx(client, server.process.pid, worker, db_url, queue, args.timeout_large)
                    ok &= await part_large(ctx, args, large_pb, large_contacts, large_items)
    finally:
        if args.keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


async def part_foreach(ctx: Ctx, args: argparse.Namespace, pb: Any) -> bool:
    n = args.contacts
    at_once = args.slices_at_once or "all"
    print(f"1. for_each over {n:,} contacts of one account, one email each, concurrency {args.concurrency}; "
          f"hand-written: slices of 1,000, {at_once} at once, send_emails batches of {hand_batch(args, n)} "
          f"(the engine's share per slice); {load()}")

    async def run(side: str, tag: str) -> Phase:
        return await foreach_phase(ctx, side, tag, n, pb, args)

    async def warm(side: str, tag: str) -> Phase:
        return await foreach_phase(ctx, side, tag, min(n, 150), pb, args)

    phases = await side_by_side(run, warm, args.rounds)
    ratio = table(f"   after: {load()}", phases)
    wall = statistics.fmean(p.wall for p in phases if p.side == "engine")
    ok = verdict(
        f"engine wall <= {GOAL_FOREACH_S:.0f} s for {FOREACH_FULL:,} contacts",
        wall <= GOAL_FOREACH_S if n >= FOREACH_FULL else None,
        f"{wall:.1f} s for {n:,}" + ("" if n >= FOREACH_FULL else f"; judged at {FOREACH_FULL:,}"),
    )
    ok &= verdict(f"throughput >= {GOAL_RATIO}x hand-written", ratio >= GOAL_RATIO, f"{ratio:.2f}x")
    print()
    return ok


def engine_start_bound() -> tuple[int, str]:
    """How many runs engine/runtime/schedules.py's start_scheduled_runs starts at once: a module constant if it has
    one that says so, else 1 (it awaits each start in turn)."""
    from engine.runtime import schedules

    for name, value in vars(schedules).items():
        if name.isupper() and isinstance(value, int) and ("CONCURREN" in name or "START" in name):
            return value, f"schedules.{name}"
    return 1, "one at a time, as start_scheduled_runs awaits each start"


async def part_tick(ctx: Ctx, args: argparse.Namespace, pb: Any) -> bool:
    n = args.accounts
    print(f"2. schedule tick over {n:,} accounts, one email each; hand-written: segment_page + hand_start_runs, "
          f"{args.start_concurrency} starts at once ({args.start_bound_source}); {load()}")

    async def run(side: str, tag: str) -> Phase:
        return await tick_phase(ctx, side, tag, n, pb, args)

    async def warm(side: str, tag: str) -> Phase:
        return await tick_phase(ctx, side, tag, min(n, 50), pb, args)

    phases = await side_by_side(run, warm, args.rounds)
    ratio = table(f"   after: {load()}   (history events: the tick workflow's last run)", phases)
    wall = statistics.fmean(p.wall for p in phases if p.side == "engine")
    ok = verdict(
        f"engine wall <= {GOAL_TICK_S:.0f} s for {TICK_FULL:,} accounts",
        wall <= GOAL_TICK_S if n >= TICK_FULL else None,
        f"{wall:.1f} s for {n:,}" + ("" if n >= TICK_FULL else f"; judged at {TICK_FULL:,}"),
    )
    ok &= verdict(f"throughput >= {GOAL_RATIO}x hand-written", ratio >= GOAL_RATIO, f"{ratio:.2f}x")
    print()
    return ok


async def part_large(ctx: Ctx, args: argparse.Namespace, pb: Any, contacts: int, items: int) -> bool:
    from engine.runtime.runs import start_run

    print(f"3. for_each over {items:,} items ({contacts:,} contacts"
          + (f" x {items // contacts}" if items != contacts else "")
          + f"), one email each, concurrency {args.concurrency}, engine only, a fresh worker; {load()}")
    account_id = "lg-0"
    seed_accounts(ctx.db_url, [(account_id, contacts)])
    sampled: list[float] = []

    async def sample() -> None:
        while True:
            sampled.append(ctx.worker.rss_mb())
            await asyncio.sleep(0.5)

    async def start() -> Any:
        return await start_run(ctx.client, ctx.queue, pb, account_id, workflow_id="fanout-large/0")

    async def wait(began: float, done: asyncio.Task[Any]) -> float:
        return await until_sent(ctx.db_url, items, began, ctx.timeout, done, account_id=account_id)

    sampler = asyncio.ensure_future(sample())
    base = ctx.worker.rss_mb()
    try:
        phase = await measured(ctx, "engine", items, start, wait)
    finally:
        sampler.cancel()
    events = phase.events or 0
    print(f"   wall, to the last email         {phase.wall:10.1f} s   ({phase.rate:.1f} emails/s)")
    print(f"   history events of the parent    {events:10,}")
    print(f"   worker CPU / server CPU         {phase.worker_cpu:10.1f} s / {phase.server_cpu:.1f} s")
    print(f"   worker RSS: at start {base:.0f} MB, sampled max {max(sampled, default=0):.0f} MB, "
          f"peak (VmHWM) {phase.peak_mb:.0f} MB")
    print(f"   after: {load()}")
    ok = verdict("completes, every item emailed", True, f"{items:,} outbox rows")
    ok &= verdict(f"parent history < {GOAL_EVENTS:,} events", events < GOAL_EVENTS, f"{events:,}")
    ok &= verdict(f"worker peak RSS < {GOAL_RSS_MB:.0f} MB", phase.peak_mb < GOAL_RSS_MB, f"{phase.peak_mb:.0f} MB")
    print()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("foreach", "tick", "large", "all"), default="all")
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts of the for_each part (10,000)")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts of the tick part (10,000)")
    parser.add_argument("--items", type=int, default=100_000, help="items of the large part (100,000)")
    parser.add_argument("--concurrency", type=int, default=1000, help="the for_each's concurrency; emails per batch")
    parser.add_argument(
        "--slices-at-once", type=int, default=None,
        help="hand-written for_each: slices running at once, 0 for all (default: the engine's SLICES_STARTING, else 0)",
    )
    parser.add_argument(
        "--start-concurrency", type=int, default=None,
        help="hand-written tick: starts in flight at once (default: what start_scheduled_runs uses)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="A B B A this many times in a row (1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a phase may take (900)")
    parser.add_argument("--timeout-large", type=float, default=3600, help="seconds the large part may take (3600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (worker log, database)")
    parser.add_argument("--serve-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_worker:
        serve_worker()
        return
    if args.slices_at_once is None:
        from engine.interpreter import flow

        args.slices_at_once = int(getattr(flow, "SLICES_STARTING", 0))
    if args.start_concurrency is None:
        args.start_concurrency, args.start_bound_source = engine_start_bound()
    else:
        args.start_bound_source = "--start-concurrency"
    raise SystemExit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
