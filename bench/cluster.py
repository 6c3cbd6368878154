"""Several workers and APIs on PostgreSQL: 2 worker processes, 2 API processes, one Temporal dev server, a real
PostgreSQL, N runs with an approval and a call task each, and midway a SIGKILL of one worker and one API.

Everything is the production entry points in processes of their own, in production mode (PLAYBOOK_ENVIRONMENT
unset: PostgreSQL required): `python worker.py` twice, `python -m engine.cli api --port P` twice, the dev server
of `playbook dev` (bench/_stack.py), PostgreSQL 16 from the pgserver wheel (tests/postgres.py), emails through the
SendGrid provider to the fake SendGrid of the tests on 127.0.0.1 (it counts what reached "the provider"), which
answers each mail send after --provider-latency seconds (0.3 s), as SendGrid takes a few hundred ms.

The bench playbook: a welcome email, an email draft the CSM approves (approval), a call task the CSM completes,
a thank-you email: three emails, one approval, one task per run. Effect steps retry after 1 s instead of 10 s
(`retry: {initial_interval: 1s}`), so the resume time measures the heartbeat timeout, not the backoff.

The client is a tiny round-robin load balancer over the two APIs: each request goes to the next API; when one does
not answer (connection refused or dropped) the request goes to the other, as a load balancer's retry would. The
documented 503 (Temporal or the database not answering, `Retry-After`) is retried after a pause and counted; any
other 5xx is a failure. One CSM (a `csm` token) answers through the API as a person would: every half second it
lists its pending approvals (GET /approvals) and open call tasks (GET /tasks), approves each draft
(POST /approvals/{id}) and records each call's outcome (POST /tasks/{id}/outcome).

Midway (once half the events are posted and mail sends are under way, so that both workers have activities in
flight) worker 1 and API 1 are SIGKILLed. The worker is NOT restarted (the other
one carries the rest, which is what the resume time is about); the API is restarted on the same port after
--api-down seconds (as an orchestrator would), and the balancer sends it requests again once it answers.

Printed at the end, each with PASS/FAIL: every email once (outbox rows per run: welcome, offer, thanks, each
`sent`, no key twice; the provider accepted each once, or the documented window of send_email says why not),
every approval and task once, every run completed, no 5xx but the documented 503s; and the figures: the time for
the killed worker's activities to run again on the other worker, wall time, runs/hour, p50/p95 of a run's start to
its end (it includes the CSM's half-second polling). No addresses or names are printed.

    .venv/bin/python bench/cluster.py [--runs 500] [--concurrency 8] [--api-down 10]

Minutes, not seconds: not in `make test`.

Measured (2 December 2026, the 2-core machine shared with other jobs, load average 4-8): 500 runs, every check PASS
(1,500 emails once in the outbox, 500 approvals and 500 tasks once, 500 runs completed, answers 200 x 1,538 and
409 x 4, the 409s decisions whose first attempt had reached the killed API); 1 email accepted twice by the fake
SendGrid (send_email's documented window); the killed worker's 3 activities in flight ran again on the other worker
10.2-10.7 s after the kill (HEARTBEAT_TIMEOUT 10 s + the 1 s retry interval; without heartbeats: 30 s); 30 workflow
tasks waited out the dead worker (8 started ones their 10 s timeout, 22 on its sticky queue their 10 s schedule-to-
start timeout); the killed API answered again 13.9 s after the kill (restarted after 10 s). Wall time 343 s,
5,242 runs/hour with one worker left for most of it; start to end p50 272 s, p95 312 s: the 500 runs all start in
31 s and then queue for one worker, so these are queueing times, not a run's own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402
from temporalio.api.enums.v1 import EventType, TimeoutType  # noqa: E402
from temporalio.client import Client, WorkflowExecutionStatus  # noqa: E402

from activities.crm import seed  # noqa: E402
from api.security import SIGNATURE_HEADER, create_token, sign  # noqa: E402
from bench._stack import ACCOUNT, CONTACTS, TEAM, ApiProcess, dev_server, playbook, stop  # noqa: E402
from bench.ingest import Worker, percentile  # noqa: E402
from engine.interpreter.messages import WORKFLOW_NAME  # noqa: E402
from engine.storage import models as t  # noqa: E402
from engine.storage.db import session  # noqa: E402
from tests.fakes import FakeSendGrid  # noqa: E402
from tests.fakes.fake_sendgrid import API_KEY  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

EVENT_TYPE = "bench.cluster"
EVENT_SECRET = secrets.token_hex(24)
CSM = str(TEAM[0]["id"])
EMAIL_STEPS = ("welcome", "offer", "thanks")
PLAYBOOK = f"""\
id: bench-cluster
title: Cluster bench
trigger:
  event: {EVENT_TYPE}
enrollment:
  key: "{{{{ account.id }}}}"
  reenroll: never
steps:
  - id: welcome
    retry: {{ initial_interval: 1s }}
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Welcome, {{{{ contact.first_name }}}}"
      body: "Hi {{{{ contact.first_name }}}}, {{{{ account.name }}}} is set up."
  - id: offer
    retry: {{ initial_interval: 1s }}
    email:
      to: "{{{{ contact.email }}}}"
      subject: "An offer for {{{{ account.name }}}}"
      body: "Hi {{{{ contact.first_name }}}}, here is an offer."
      approval:
        approvers: owner
        message: "Send the offer?"
        timeout: 1d
  - id: call
    retry: {{ initial_interval: 1s }}
    call_task:
      title: "Call {{{{ account.name }}}}"
      wait: true
      timeout: 1d
      outcomes: [reached, no_answer]
  - id: thanks
    retry: {{ initial_interval: 1s }}
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Thanks ({{{{ steps.call.outcome }}}})"
      body: "Hi {{{{ contact.first_name }}}}, thanks for the call."
"""


# ------------------------------------------------------------------------------ the processes


class _Folders:
    """What tests/postgres.py's postgres_server asks of pytest's tmp_path_factory: a new folder per name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


@contextmanager
def postgres(root: Path) -> Iterator[str]:
    """A real PostgreSQL (pgserver), its database migrated: tests/postgres.py's, outside pytest."""
    servers = postgres_server(_Folders(root))  # type: ignore[arg-type]
    url = next(servers)
    try:
        yield url
    finally:
        next(servers, None)


async def worker_ready(worker: Worker, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while "worker started" not in worker.log.read_text(errors="replace"):
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise SystemExit(f"a worker exited; see {worker.log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"a worker did not start in {timeout:g} s; see {worker.log}")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------ the client: a tiny load balancer


@dataclass
class Balancer:
    """Round robin over the APIs; a request an API does not answer goes to the next one (a load balancer's retry);
    a 503 is sent again after a pause, as docs/api.md says to."""

    urls: list[str]
    http: httpx.AsyncClient
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, by status
    failovers: int = 0  # requests an API did not answer, sent to the other
    turn: int = 0
    down_until: dict[str, float] = field(default_factory=dict)  # an API that did not answer is skipped a while

    DOWN_FOR = 2.0  # seconds a load balancer's passive health check leaves out an API that did not answer

    def next_url(self) -> str:
        for _ in self.urls:
            url = self.urls[self.turn % len(self.urls)]
            self.turn += 1
            if self.down_until.get(url, 0.0) <= time.monotonic():
                return url
        return self.urls[self.turn % len(self.urls)]  # all marked down: try anyway

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, bool]:
        """The answer, and whether the request was sent again after an API did not answer (then a 409 may be the
        first attempt's doing)."""
        retried = False
        for attempt in range(60):
            url = self.next_url()
            try:
                response = await self.http.request(method, url + path, **kwargs)
            except httpx.TransportError:
                self.failovers += 1
                self.down_until[url] = time.monotonic() + self.DOWN_FOR
                retried = True
                if attempt % len(self.urls) == len(self.urls) - 1:
                    await asyncio.sleep(0.5)  # every API refused: wait a little
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 503:
                retried = True
                await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
                continue
            return response, retried
        raise RuntimeError(f"{method} {path}: no API answered in 60 attempts")


# ------------------------------------------------------------------------------ the bench


@dataclass
class Chaos:
    killed_at: float = 0.0  # time.time() of the SIGKILLs
    killed_worker_pid: int = 0
    api_back_at: float = 0.0


@dataclass
class Drive:
    started: dict[str, float] = field(default_factory=dict)  # account id -> when POST /events answered started
    bad: list[str] = field(default_factory=list)  # unexpected answers (no addresses in them)
    approvals: int = 0
    outcomes: int = 0
    conflicts_after_failover: int = 0


def event_body(account_id: str, n: int) -> bytes:
    return json.dumps({
        "id": f"evt-{uuid.uuid4().hex}",
        "type": EVENT_TYPE,
        "account_id": account_id,
        "data": {"n": n},
        "account": {"name": f"Bench {account_id}", "language": "en", "timezone": "UTC", "owner": CSM},
        "contacts": [{"email": f"ada@{account_id}.example", "first_name": "Ada"}],
    }).encode()


async def post_events(lb: Balancer, drive: Drive, accounts: list[str], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, account_id: str) -> None:
        body = event_body(account_id, n)  # one event id: a repeat after a failover is the same event
        async with gate:
            response, _ = await lb.request(
                "POST", "/events", content=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(EVENT_SECRET, body)},
            )
        runs = response.json().get("runs", []) if response.status_code == 200 else []
        if [r.get("status") for r in runs] in (["started"], ["already_running"], ["already_enrolled"]):
            drive.started.setdefault(account_id, time.time())
        else:
            drive.bad.append(f"POST /events {response.status_code} {[r.get('status') for r in runs]}")

    await asyncio.gather(*(one(n, a) for n, a in enumerate(accounts)))


async def csm_answers(lb: Balancer, drive: Drive, token: str, done: asyncio.Event) -> None:
    """The CSM: every half second, approve every pending draft and record every open call's outcome."""
    auth = {"Authorization": f"Bearer {token}"}
    answered: set[str] = set()
    gate = asyncio.Semaphore(8)

    async def answer(path: str, body: dict[str, Any], kind: str) -> None:
        async with gate:
            response, retried = await lb.request("POST", path, json=body, headers=auth)
        if response.status_code == 200:
            if kind == "approval":
                drive.approvals += 1
            else:
                drive.outcomes += 1
        elif response.status_code == 409 and retried:  # the first attempt, to the API that died, got through
            drive.conflicts_after_failover += 1
        else:
            drive.bad.append(f"POST {kind} {response.status_code}")

    while not done.is_set():
        work = []
        listed, _ = await lb.request("GET", "/approvals", headers=auth)
        for approval in listed.json() if listed.status_code == 200 else []:
            if approval["id"] not in answered:
                answered.add(approval["id"])
                work.append(answer(f"/approvals/{approval['id']}", {"decision": "approve"}, "approval"))
        listed, _ = await lb.request("GET", "/tasks", headers=auth)
        for task in listed.json() if listed.status_code == 200 else []:
            if task["id"] not in answered:
                answered.add(task["id"])
                work.append(answer(f"/tasks/{task['id']}/outcome", {"outcome": "reached"}, "task"))
        await asyncio.gather(*work)
        await asyncio.sleep(0.5)


async def completed_count(client: Client) -> int:
    query = f'WorkflowType="{WORKFLOW_NAME}" AND ExecutionStatus="Completed"'
    return (await client.count_workflows(query)).count


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    print(f"bench/cluster.py: {args.runs} runs, 2 workers, 2 APIs, PostgreSQL, files in {root}", flush=True)
    fake = FakeSendGrid()
    # SendGrid answers a mail send in a few hundred ms: sends are in flight at any moment, the kill included
    fake.delay_next(args.provider_latency, count=10**9, method="POST", path="/v3/mail/send")
    fake.start()
    workers: list[Worker] = []
    apis: list[ApiProcess] = []
    with postgres(root) as db_url:
        seed(db_url, dict(ACCOUNT), [dict(c) for c in CONTACTS], [dict(m) for m in TEAM])
        token = create_token(db_url, "bench csm", "csm", CSM)
        library = root / "library"
        library.mkdir()
        (library / "bench-cluster.yaml").write_text(PLAYBOOK, encoding="utf-8")
        playbook(PLAYBOOK)  # refuses to go on with an invalid one
        async with dev_server() as (server, client):
            env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_")}
            env.update(
                PLAYBOOK_TEMPORAL_ADDRESS=server.address, PLAYBOOK_DATABASE_URL=db_url, PLAYBOOK_LIBRARY=str(library),
                PLAYBOOK_TASK_QUEUE="bench-cluster", PLAYBOOK_HOME=str(root / "home"),
                PLAYBOOK_EMAIL_PROVIDER="sendgrid", PLAYBOOK_SENDGRID_HOST=fake.url, PLAYBOOK_SENDGRID_API_KEY=API_KEY,
                PLAYBOOK_ALLOW_BUILTIN_CRM="true", PLAYBOOK_PUBLIC_URL="https://bench.invalid",
                PLAYBOOK_UNSUBSCRIBE_SECRET=secrets.token_hex(24), PLAYBOOK_EVENT_SIGNING_SECRET=EVENT_SECRET,
                PLAYBOOK_INBOX_SECRET=secrets.token_hex(24), PLAYBOOK_LOG_FORMAT="json", PYTHONUNBUFFERED="1",
                # One version for both workers, as production sets it (the Git commit): the default, a hash of the
                # sources read at start, differs between two workers when a file changes while they start, and the
                # runs pinned to the killed worker's version would then wait for it forever.
                PLAYBOOK_BUILD_ID=f"bench-{uuid.uuid4().hex[:8]}",
            )
            try:
                for i in (1, 2):
                    folder = root / f"worker-{i}"
                    folder.mkdir()
                    workers.append(Worker(folder, env))
                    await workers[-1].__aenter__()
                    apis.append(ApiProcess(root / f"api-{i}.log", env))
                    apis[-1].start()
                await asyncio.gather(*(worker_ready(w) for w in workers), *(a.ready() for a in apis))
                await drive_and_check(args, client, db_url, fake, workers, apis, token)
            finally:
                for api in apis:
                    stop(api.process)
                for worker in workers:
                    await worker.__aexit__()
    fake.stop()


async def drive_and_check(
    args: argparse.Namespace, client: Client, db_url: str, fake: FakeSendGrid, workers: list[Worker],
    apis: list[ApiProcess], token: str,
) -> None:
    accounts = [f"acc-{uuid.uuid4().hex[:6]}-{n:04d}" for n in range(args.runs)]
    chaos = Chaos()
    drive = Drive()
    restart: asyncio.Task[None] | None = None

    async def midway() -> None:
        """Once half the runs are started and the workers are sending (a twentieth of the runs' first emails reached
        the provider): both workers have work in flight, the one killed included."""
        nonlocal restart
        while len(drive.started) < len(accounts) // 2 or len(fake.requests) < max(5, len(accounts) // 20):
            await asyncio.sleep(0.05)
        chaos.killed_at = time.time()
        assert workers[0].process is not None
        chaos.killed_worker_pid = workers[0].process.pid
        workers[0].process.send_signal(signal.SIGKILL)
        apis[0].kill()
        print(f"   SIGKILL worker 1 (pid {chaos.killed_worker_pid}) and API 1 after {len(drive.started)} runs started, "
              f"{len(fake.requests)} mail sends", flush=True)

        async def back() -> None:
            await asyncio.sleep(args.api_down)
            apis[0].start()
            await apis[0].ready()
            chaos.api_back_at = time.time()
            down = chaos.api_back_at - chaos.killed_at
            print(f"   API 1 restarted, answering {down:.1f} s after the kill", flush=True)

        restart = asyncio.create_task(back())

    began = time.time()
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as http:
        lb = Balancer([a.url for a in apis], http)
        answering = asyncio.create_task(csm_answers(lb, drive, token, done))
        chaos_monkey = asyncio.create_task(midway())
        await post_events(lb, drive, accounts, args.concurrency)
        posted_in = time.time() - began
        print(f"   {len(drive.started)} runs started in {posted_in:.1f} s", flush=True)
        deadline = time.monotonic() + args.timeout
        last_print = 0.0
        while (finished := await completed_count(client)) < len(accounts):
            if time.monotonic() > deadline:
                print(f"   gave up waiting: {finished} of {len(accounts)} runs completed after {args.timeout:g} s")
                break
            if time.monotonic() - last_print > 15:
                last_print = time.monotonic()
                print(f"   {finished} of {len(accounts)} runs completed", flush=True)
            await asyncio.sleep(1)
        wall = time.time() - began
        done.set()
        await answering
        await chaos_monkey
        if restart is not None:
            await restart

    await report(args, client, db_url, fake, chaos, drive, lb, accounts, wall)


# ------------------------------------------------------------------------------ the checks and figures


def verdict(ok: bool, what: str) -> bool:
    print(f"   {'PASS' if ok else 'FAIL'}  {what}")
    return ok


async def report(
    args: argparse.Namespace, client: Client, db_url: str, fake: FakeSendGrid, chaos: Chaos, drive: Drive,
    lb: Balancer, accounts: list[str], wall: float,
) -> None:
    with session(db_url) as s:
        rows = list(s.scalars(select(t.OutboxEmail).where(t.OutboxEmail.playbook_id == "bench-cluster")))
        tasks = list(s.scalars(select(t.CallTask).where(t.CallTask.playbook_id == "bench-cluster")))
        approvals = list(s.scalars(select(t.Approval).where(t.Approval.playbook_id == "bench-cluster")))
    per_account: dict[str, list[t.OutboxEmail]] = defaultdict(list)
    for row in rows:
        per_account[row.account_id].append(row)
    keys = Counter(r.key for r in rows)
    accepted = Counter(m.get("custom_args", {}).get("playbook_message_id") for m in fake.sent)
    sent_ids = {r.message_id for r in rows if r.status == "sent"}
    twice = {m: n for m, n in accepted.items() if n > 1}

    runs = [w async for w in client.list_workflows(f'WorkflowType="{WORKFLOW_NAME}"')]
    statuses = Counter(w.status.name if w.status else "?" for w in runs)
    durations = [
        (w.close_time - w.start_time).total_seconds()
        for w in runs
        if w.status == WorkflowExecutionStatus.COMPLETED and w.close_time is not None
    ]
    resumes, wft_timeouts, by_worker = await resume_times(client, runs, chaos)

    print("\nChecks")
    results = [
        verdict(
            set(per_account) == set(accounts)
            and all(sorted(str(r.step_id) for r in per_account[a]) == sorted(EMAIL_STEPS) for a in accounts)
            and {r.status for r in rows} == {"sent"} and max(keys.values(), default=0) == 1,
            f"every email once: {len(rows)} outbox rows for {len(accounts)} runs x {len(EMAIL_STEPS)} emails, "
            f"statuses {dict(Counter(r.status for r in rows))}, keys twice: {sum(1 for n in keys.values() if n > 1)}",
        ),
        verdict(
            set(accepted) >= sent_ids,
            f"the provider accepted every sent email: {len(sent_ids & set(accepted))} of {len(sent_ids)}",
        ),
        verdict(
            len(tasks) == len(accounts) and len({x.workflow_id for x in tasks}) == len(accounts)
            and all(x.status == "done" and x.outcome == "reached" for x in tasks),
            f"every call task once: {len(tasks)} tasks, {dict(Counter(x.status for x in tasks))}; "
            f"{drive.outcomes} outcomes recorded",
        ),
        verdict(
            len(approvals) == len(accounts) and len({a.workflow_id for a in approvals}) == len(accounts)
            and all(a.status == "approved" for a in approvals),
            f"every approval once: {len(approvals)} approvals, {dict(Counter(a.status for a in approvals))}; "
            f"{drive.approvals} decisions posted",
        ),
        verdict(
            statuses.get("COMPLETED", 0) == len(accounts) == len(runs),
            f"every run completed: {dict(statuses)} of {len(accounts)} runs",
        ),
        verdict(
            not any(500 <= s < 600 and s != 503 for s in lb.statuses) and not drive.bad,
            f"no 5xx but the documented 503s: answers {dict(sorted(lb.statuses.items()))}; unexpected answers "
            f"{Counter(drive.bad).most_common(5)}",
        ),
    ]
    print(f"   KNOWN {len(twice)} emails accepted twice by the provider: send_email's documented window (the worker "
          "killed between SendGrid's 202 and the row's 'sent'; the retry sends again; SendGrid's mail send has no "
          "idempotency key). The outbox keeps each once.")
    print(f"   (requests an API did not answer, sent to the other: {lb.failovers}; a decision or outcome answered "
          f"409 after such a failover, the first attempt having got through: {drive.conflicts_after_failover})")

    print("\nFigures")
    print("   activities of the killed worker run again on the other one, seconds after the kill: "
          + (f"n={len(resumes)}, min {min(resumes):.1f}, median {percentile(resumes, 50):.1f}, "
             f"max {max(resumes):.1f}" if resumes else "none (nothing was in flight at the kill)"))
    print(f"   workflow tasks that timed out on the dead worker (its sticky queue, then the shared queue): "
          f"{dict(wft_timeouts)}")
    print(f"   activities by the worker of their last attempt: {dict(by_worker)}")
    print(f"   wall time {wall:.1f} s, {len(durations) / wall * 3600:,.0f} runs/hour")
    if durations:
        p50, p95 = percentile(durations, 50), percentile(durations, 95)
        print(f"   a run's start to its end: p50 {p50:.1f} s, p95 {p95:.1f} s (includes the CSM's half-second polling)")
    print(f"   runs {args.runs}, events at {args.concurrency} at a time, API 1 down {args.api_down:g} s, "
          f"SendGrid (fake) answering in {args.provider_latency:g} s")
    if not all(results):
        sys.exit(1)


async def resume_times(
    client: Client, runs: list[Any], chaos: Chaos
) -> tuple[list[float], Counter[str], Counter[str]]:
    """From the runs' histories: for each activity retried after a heartbeat timeout (its worker died), how long after
    the kill its next attempt started; the workflow tasks that timed out; who ran the activity attempts."""
    resumes: list[float] = []
    wft: Counter[str] = Counter()
    by_worker: Counter[str] = Counter()  # by the worker of each activity's last attempt
    gate = asyncio.Semaphore(8)

    async def one(execution: Any) -> None:
        async with gate:
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                wft[TimeoutType.Name(event.workflow_task_timed_out_event_attributes.timeout_type)] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attrs = event.activity_task_started_event_attributes
                pid = attrs.identity.partition("@")[0]
                by_worker["worker 1 (killed)" if pid == str(chaos.killed_worker_pid) else f"pid {pid}"] += 1
                failure = attrs.last_failure
                if attrs.attempt > 1 and failure.HasField("timeout_failure_info"):
                    at = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
                    resumes.append(at - chaos.killed_at)

    await asyncio.gather(*(one(r) for r in runs))
    return sorted(resumes), wft, by_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8, help="events posted at a time")
    parser.add_argument("--api-down", type=float, default=10.0, help="seconds before the killed API is restarted")
    parser.add_argument("--provider-latency", type=float, default=0.3, help="seconds the fake SendGrid takes")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for every run to complete")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
