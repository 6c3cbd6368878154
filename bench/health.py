"""Health scores: the nightly recompute over 100,000 accounts, and what scoring adds to one POST /events.

One real Temporal dev server (bench/_stack.py), one SQLite database seeded directly (executemany, no intake): ACCOUNTS
accounts with the fields the scorecards read, and EVENTS events' values in health_event_values, spread over the last
30 days so that they sit in the measures' windows (what the intake would have recorded for them). Three scorecards
(the bundled repricer-health and two of the bench's own) hold every account: 300,000 scores a night.

1. The nightly pass: the real PlaybookHealthNightly workflow (pages of 2,000 accounts through the
   recompute_health_page activity, which writes the built-in CRM's health fields in its transaction; a worker in this
   process), twice: night 1 scores every account for the first time (every score and history row written), night 2
   a day later (windows have slid: only what changed is written, and its notable changes are taken as
   health.score_changed, a page's as one batch). Goal: under 60 s.
2. POST /events with scorecards on and off, side by side: two API processes (`playbook api`) on the same server and
   database, one with PLAYBOOK_SCORECARDS naming the three scorecards, one naming a folder that does not exist;
   signed support.ticket_opened events for existing accounts posted one at a time, A B A B event by event. Goal: the
   median slowed by under 1 ms. The bench checks that the scorecards-on API did record the events' values.

The machine check printed first and last (a fixed Python loop, 200 synced writes) tells a run on a slow moment of
the shared machine from a slower engine; so does the scorecards-off median, the same code in every run.

    .venv/bin/python bench/health.py [--accounts 100000] [--events 1000000] [--posts 1000] [--skip-nightly]
    .venv/bin/python bench/health.py --intake-only [--show-sql]   # the intake's transaction in process, on vs off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import ROOT, ApiProcess, dev_server, quiet_logs  # noqa: E402

NIGHTLY_GOAL_S = 60.0
INTAKE_GOAL_MS = 1.0
SECRET = "bench-health-signing-secret-0123456789"
CHUNK = 20_000

SUPPORT_HEALTH = """\
id: support-health
title: Support health
bands: [ { name: red, below: 40 }, { name: yellow, below: 70 }, { name: green } ]
changes: { band: true, drop: 20 }
measures:
  - id: tickets_7d
    weight: 30
    events: { type: support.ticket_opened, window: 7d }
    score: [ { below: 2, score: 100 }, { below: 5, score: 50 }, { otherwise: 0 } ]
  - id: urgent_30d
    weight: 30
    events: { type: support.ticket_opened, window: 30d, where: 'event.data.priority == "urgent"' }
    score: [ { below: 1, score: 100 }, { below: 3, score: 40 }, { otherwise: 0 } ]
  - id: hours_to_resolve
    weight: 20
    events: { type: support.ticket_resolved, window: 30d, aggregate: sum, value: event.data.hours }
    score: [ { below: 24, score: 100 }, { below: 96, score: 50 }, { otherwise: 10 } ]
  - id: open_bugs
    weight: 20
    field: account.open_bugs
    score: [ { below: 1, score: 100 }, { below: 4, score: 50 }, { otherwise: 0 } ]
    missing: { score: 100 }
"""

USAGE_HEALTH = """\
id: usage-health
title: Usage health
bands: [ { name: red, below: 50 }, { name: yellow, below: 75 }, { name: green } ]
changes: { band: true, drop: 15 }
measures:
  - id: logins_7d
    weight: 40
    events: { type: product.login, window: 7d }
    score: [ { below: 1, score: 0 }, { below: 3, score: 50 }, { otherwise: 100 } ]
  - id: nps
    weight: 20
    last: { type: survey.answered, value: event.data.score }
    score: [ { below: 7, score: 0 }, { below: 9, score: 60 }, { otherwise: 100 } ]
  - id: seats
    weight: 20
    field: account.seats
    score: [ { below: 2, score: 40 }, { below: 10, score: 80 }, { otherwise: 100 } ]
  - id: last_login
    weight: 20
    days_since: account.last_login_at
    score: [ { below: 7, score: 100 }, { below: 30, score: 50 }, { otherwise: 0 } ]
"""

# the events and what each gives the three scorecards' measures: (scorecard, measure, window in days or None, value)
EVENT_MIX = (("support.ticket_opened", 0.4), ("support.ticket_resolved", 0.2), ("product.login", 0.3),
             ("survey.answered", 0.1))

LIBRARY = """\
id: bench-health-nothing
title: Triggered by nothing the bench posts
trigger: { event: bench.never }
steps:
  - wait: 1d
"""


def machine_check(folder: Path) -> str:
    """How fast the machine is now: a fixed 10,000,000-step Python loop, and 200 writes of 16 KB to a file each
    synced to disk (a commit's work). Printed before and after the bench, so that a run made while the shared
    machine was slow (other tenants taking its CPU or its disk) can be told from a slower engine."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    loop = time.perf_counter() - started
    started = time.perf_counter()
    with open(folder / "machine-check", "wb") as f:
        for _ in range(200):
            f.write(b"x" * 16384)
            f.flush()
            os.fsync(f.fileno())
    syncs = time.perf_counter() - started
    (folder / "machine-check").unlink()
    return f"Python loop {loop:.2f} s, 200 synced writes {syncs:.2f} s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# ------------------------------------------------------------------------------------------------- seeding


def scorecards_folder(folder: Path) -> Path:
    cards = folder / "scorecards"
    cards.mkdir()
    shutil.copy(ROOT / "scorecards" / "repricer-health.yaml", cards / "repricer-health.yaml")
    (cards / "support-health.yaml").write_text(SUPPORT_HEALTH)
    (cards / "usage-health.yaml").write_text(USAGE_HEALTH)
    from engine.language.scorecard import load_scorecards

    loaded = load_scorecards(cards)
    if loaded.problems or len(loaded.scorecards) != 3:
        raise SystemExit("the bench's scorecards are invalid:\n" + "\n".join(p.header() for p in loaded.problems))
    return cards


def seed(db_url: str, accounts: int, events: int, now: datetime) -> dict[str, float]:
    """Accounts and event values straight into the tables, in chunks of executemany."""
    from sqlalchemy import insert

    from engine.storage import models as t
    from engine.storage.db import migrate, session

    migrate(db_url)
    rng = random.Random(14)
    spent: dict[str, float] = {}
    started = time.perf_counter()
    plans = ["pro", "pro", "business", "starter", "trial"]
    rows = []
    for i in range(accounts):
        rows.append({
            "id": f"acc-{i:06d}", "name": f"Bench {i}", "owner_id": None, "updated_at": now,
            "fields": {
                "plan": plans[i % len(plans)] if i % 10 else "trial",
                "mrr": rng.choice([49, 149, 400, 900, 2400]),
                "renews_on": (now + timedelta(days=rng.randint(1, 365))).date().isoformat(),
                "last_login_at": (now - timedelta(days=rng.randint(0, 40), hours=rng.randint(0, 23))).isoformat(),
                "open_bugs": rng.choice([0, 0, 0, 1, 2, 5]),
                "seats": rng.randint(1, 30),
            },
        })
    with session(db_url) as s:
        for start in range(0, len(rows), CHUNK):
            s.execute(insert(t.Account), rows[start:start + CHUNK])
    spent["accounts"] = time.perf_counter() - started

    started = time.perf_counter()
    types = [name for name, _ in EVENT_MIX]
    weights = [w for _, w in EVENT_MIX]
    values: list[tuple[Any, ...]] = []
    written = 0
    # sqlite3's own executemany, in one transaction: the ORM's insert would take minutes for two million rows. Times
    # as SQLAlchemy keeps them on SQLite (naive UTC, microseconds), so the engine's window queries compare them right.
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    sql = ("insert into health_event_values (event_id, account_id, scorecard_id, measure_id, at, value) "
           "values (?, ?, ?, ?, ?, ?)")

    def flush() -> None:
        nonlocal written
        conn.executemany(sql, values)
        written += len(values)
        values.clear()

    for n in range(events):
        account = f"acc-{rng.randrange(accounts):06d}"
        kind = rng.choices(types, weights)[0]
        age = timedelta(seconds=rng.uniform(0, 30 * 86400))
        if kind == "product.login":
            age = timedelta(seconds=rng.uniform(0, 8 * 86400))  # logins: mostly inside the 7-day window
        at = (now - age).astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        gives: list[tuple[str, str, float]] = []  # (scorecard, measure, value), as the intake would record them
        if kind == "support.ticket_opened":
            gives += [("repricer-health", "support_tickets", 1.0), ("support-health", "tickets_7d", 1.0)]
            if rng.random() < 0.3:  # urgent
                gives += [("repricer-health", "urgent_tickets", 1.0), ("support-health", "urgent_30d", 1.0)]
        elif kind == "support.ticket_resolved":
            gives.append(("support-health", "hours_to_resolve", float(rng.randint(1, 72))))
        elif kind == "product.login":
            gives.append(("usage-health", "logins_7d", 1.0))
        else:
            score = float(rng.randint(0, 10))
            gives += [("repricer-health", "nps", score), ("usage-health", "nps", score)]
        values.extend((f"evt-{n}", account, card, measure, at, value) for card, measure, value in gives)
        if len(values) >= CHUNK:
            flush()
    if values:
        flush()
    conn.commit()
    conn.close()
    spent["event values"] = time.perf_counter() - started
    spent["rows"] = written
    return spent


# ------------------------------------------------------------------------------------------------- the nightly


async def nightly(client: Any, db_url: str, library: Path, cards: Path, at: datetime) -> tuple[float, Any]:
    from activities.crm import BuiltinCrm
    from engine.interpreter.health_nightly import HEALTH_NIGHTLY_WORKFLOW, NightlyInput, NightlyResult
    from engine.runtime.health import health_activities
    from engine.runtime.workers import build_worker

    task_queue = f"bench-health-{uuid.uuid4().hex[:8]}"
    activities = health_activities(db_url, BuiltinCrm(db_url), client, str(library), cards)
    async with build_worker(client, task_queue, activities):
        started = time.perf_counter()
        result = await client.execute_workflow(
            HEALTH_NIGHTLY_WORKFLOW, NightlyInput(task_queue=task_queue, at=at.isoformat()),
            id=f"bench-health-nightly-{uuid.uuid4().hex[:8]}", task_queue=task_queue, result_type=NightlyResult,
        )
        return time.perf_counter() - started, result


# ------------------------------------------------------------------------------------------------- the intake


async def post_one(http: Any, event_id: str, accounts: int, rng: random.Random) -> float:
    """One signed support.ticket_opened for an existing account; its latency in ms."""
    from api.security import sign

    event = {
        "id": event_id, "type": "support.ticket_opened", "account_id": f"acc-{rng.randrange(accounts):06d}",
        "data": {"priority": "urgent" if rng.random() < 0.3 else "normal"},
    }
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Playbook-Signature": sign(SECRET, body)}
    started = time.perf_counter()
    answer = await http.post("/events", content=body, headers=headers)
    latency = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"POST /events answered {answer.status_code}: {answer.text}")
    return latency


async def intake(server: Any, folder: Path, db_url: str, library: Path, cards: Path, accounts: int,
                 posts: int) -> dict[str, list[float]]:
    import httpx

    base = {
        **os.environ,
        "PLAYBOOK_ENVIRONMENT": "dev",
        "PLAYBOOK_HOME": str(folder),
        "PLAYBOOK_LIBRARY": str(library),
        "PLAYBOOK_TEMPORAL_ADDRESS": server.address,
        "PLAYBOOK_DATABASE_URL": db_url,
        "PLAYBOOK_TASK_QUEUE": f"bench-health-api-{uuid.uuid4().hex[:8]}",
        "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
        "PLAYBOOK_LOG_FORMAT": "json",
        "PLAYBOOK_LOG_LEVEL": "WARNING",
        "PLAYBOOK_HEALTH_NIGHTLY": "",
    }
    on_env = {**base, "PLAYBOOK_SCORECARDS": str(cards)}
    off_env = {**base, "PLAYBOOK_SCORECARDS": str(folder / "no-scorecards")}
    rng = random.Random(15)
    results: dict[str, list[float]] = {"on": [], "off": []}
    async with ApiProcess(folder / "api-on.log", on_env) as on, ApiProcess(folder / "api-off.log", off_env) as off:
        ports = {"on": on.port, "off": off.port}
        clients = {k: httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=60) for k, p in ports.items()}
        try:
            for i in range(60):  # warm-up, untimed: imports, connections, SQLite pages, the scorecards
                side = "on" if i % 2 else "off"
                await post_one(clients[side], f"warm-{side}-{i}", accounts, rng)
            # Per event, not per block: on a shared machine the load drifts within seconds. A B A B, not A B B A: each
            # request follows the other process's write, so each side finds SQLite's page cache dropped every time
            # (a write by another connection drops it). With A B B A each side found its cache warm on every other
            # event, a mixture of two latencies whose median moved: two identical pairs of processes in one run
            # differed by 0.5-0.6 ms, against 0.0-0.13 ms with A B A B (five runs).
            for i in range(posts):
                side = ("on", "off")[i % 2]
                results[side].append(await post_one(clients[side], f"{side}-{i}", accounts, rng))
        finally:
            for c in clients.values():
                await c.aclose()
    return results


def scored_by_intake(db_url: str) -> int:
    """How many of the timed events the scorecards-on API recorded values for (0: POST /events does not score)."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return int(conn.execute("select count(distinct event_id) from health_event_values "
                                "where event_id like 'on-%'").fetchone()[0])


def intake_in_process(db_url: str, cards_folder: Path, accounts: int, posts: int) -> dict[str, Any]:
    """The intake's database transaction (engine.runtime.intake.before_starts: dedupe, read the account back, its
    listening runs and, with scorecards, the health update) in this process, scorecards on and off alternated
    A B B A event by event: the health work without HTTP, Temporal or a second process. Its latencies in ms, and
    the SQL statements one scorecards-on event runs."""
    from sqlalchemy import event as sa_event

    from activities.crm import read_accounts
    from engine.interpreter.messages import Event
    from engine.runtime.health import read_scorecards, recompute_many
    from engine.runtime.intake import before_starts
    from engine.storage.db import engine_for, session

    cards = read_scorecards(cards_folder)
    rng = random.Random(16)
    statements: list[str] = []
    # the accounts posted to have their scores already (as after a night): an event updates a score, the usual case
    targets = [f"acc-{i:06d}" for i in rng.sample(range(accounts), min(accounts, 2000))]
    with session(db_url) as s:
        snapshots = read_accounts(s, targets)
        recompute_many(s, [snapshots[a].account for a in targets if a in snapshots], cards, datetime.now(UTC))

    def trace(dbapi_connection: Any, *_: Any) -> None:  # what SQLite runs, the driver's own statements included
        dbapi_connection.set_trace_callback(statements.append)

    def untrace(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.set_trace_callback(None)

    def one(side: str, n: int) -> float:
        event = Event(type="support.ticket_opened", id=f"micro-{side}-{n}", account_id=rng.choice(targets),
                      data={"priority": "urgent" if rng.random() < 0.3 else "normal"})
        started = time.perf_counter()
        before_starts(db_url, event.id, event.account_id or "", None, None, frozenset(), event,
                      cards if side == "on" else ())
        return (time.perf_counter() - started) * 1000

    for i in range(200):  # warm-up: statements compiled, pages cached
        one(("on", "off")[i % 2], -i - 1)
    results: dict[str, Any] = {"on": [], "off": []}
    for i in range(posts):
        side = ("on", "off", "off", "on")[i % 4]
        results[side].append(one(side, i))
    engine = engine_for(db_url)
    sa_event.listen(engine, "checkout", trace)
    sa_event.listen(engine, "checkin", untrace)
    try:
        one("on", posts + 1)
    finally:
        sa_event.remove(engine, "checkout", trace)
        sa_event.remove(engine, "checkin", untrace)
    results["statements"] = statements
    return results


async def intake_only(accounts: int, events: int, posts: int, show_sql: bool) -> int:
    """`--intake-only`: the in-process micro-bench of the intake's transaction (no Temporal, no API processes)."""
    quiet_logs()
    folder = Path(tempfile.mkdtemp(prefix="bench-health-intake-"))
    cards = scorecards_folder(folder)
    db_url = f"sqlite:///{folder / 'playbook.db'}"
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        print(f"seeding {accounts:,} accounts and {events:,} events' values (3 scorecards) ...", flush=True)
        seed(db_url, accounts, events, now)
        results = intake_in_process(db_url, cards, accounts, posts)
        on, off = results["on"], results["off"]
        med_on, med_off = statistics.median(on), statistics.median(off)
        print(f"the intake's transaction in process, {len(on)} events per side (A B B A, event by event):")
        for name, values in (("scorecards on ", on), ("scorecards off", off)):
            print(f"  {name}: median {statistics.median(values):.3f} ms, p90 {percentile(values, 90):.3f} ms, "
                  f"p99 {percentile(values, 99):.3f} ms")
        print(f"  on/off median ratio {med_on / med_off:.3f}; scoring adds {med_on - med_off:+.3f} ms at the median; "
              f"{len(results['statements'])} SQL statements for one scorecards-on event (BEGIN and COMMIT included)")
        if show_sql:
            for sql in results["statements"]:
                print("   ", " ".join(sql.split())[:160])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------------------------- the bench


async def bench(accounts: int, events: int, posts: int, skip_nightly: bool) -> int:
    quiet_logs()
    folder = Path(tempfile.mkdtemp(prefix="bench-health-"))
    library = folder / "library"
    library.mkdir()
    (library / "bench-health-nothing.yaml").write_text(LIBRARY)
    cards = scorecards_folder(folder)
    db_url = f"sqlite:///{folder / 'playbook.db'}"
    now = datetime.now(UTC).replace(microsecond=0)
    ok = True
    before = machine_check(folder)
    print(f"machine check: {before}", flush=True)
    try:
        print(f"seeding {accounts:,} accounts and {events:,} events' values (3 scorecards) ...", flush=True)
        spent = seed(db_url, accounts, events, now)
        print(f"  accounts {spent['accounts']:.1f} s; {int(spent['rows']):,} event values "
              f"{spent['event values']:.1f} s")
        async with dev_server() as (server, client):
            if not skip_nightly:
                for night, at in (("night 1 (every score new)", now), ("night 2 (a day later)", now + timedelta(1))):
                    seconds, result = await nightly(client, db_url, library, cards, at)
                    met = seconds < NIGHTLY_GOAL_S
                    ok = ok and met
                    print(f"{night}: {seconds:.1f} s for {result.accounts:,} accounts in {result.pages} pages, "
                          f"{result.changed:,} scores changed, {result.emitted:,} health.score_changed taken "
                          f"({result.accounts / seconds:,.0f} accounts/s); goal < {NIGHTLY_GOAL_S:.0f} s: "
                          f"{'met' if met else 'MISSED'}", flush=True)
            latencies = await intake(server, folder, db_url, library, cards, accounts, posts)
        on, off = latencies["on"], latencies["off"]
        med_on, med_off = statistics.median(on), statistics.median(off)
        added = med_on - med_off
        met = added < INTAKE_GOAL_MS
        ok = ok and met
        print(f"POST /events, one at a time, {len(on)} per side (A B A B, event by event):")
        for name, values in (("scorecards on ", on), ("scorecards off", off)):
            print(f"  {name}: median {statistics.median(values):.2f} ms, p90 {percentile(values, 90):.2f} ms, "
                  f"p99 {percentile(values, 99):.2f} ms")
        print(f"  on/off median ratio {med_on / med_off:.3f}; scoring adds {added:+.2f} ms at the median; "
              f"goal < {INTAKE_GOAL_MS:.0f} ms: {'met' if met else 'MISSED'}")
        scored = scored_by_intake(db_url)
        print(f"  the scorecards-on API recorded health values for {scored} of its {len(on)} timed events (some "
              "events give no measure: a trial account is outside repricer-health's segment)")
        if scored == 0:
            print("  WARNING: POST /events scored nothing: the difference above is noise, not the cost of scoring")
            ok = False
        print(f"machine check: {machine_check(folder)} now ({before} at the start)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--posts", type=int, default=1000, help="POST /events timed, both sides together")
    parser.add_argument("--skip-nightly", action="store_true")
    parser.add_argument("--intake-only", action="store_true",
                        help="only the in-process micro-bench of the intake's transaction, scorecards on and off")
    parser.add_argument("--show-sql", action="store_true", help="with --intake-only: the statements of one event")
    args = parser.parse_args()
    if args.intake_only:
        raise SystemExit(asyncio.run(intake_only(args.accounts, args.events, args.posts, args.show_sql)))
    raise SystemExit(asyncio.run(bench(args.accounts, args.events, args.posts, args.skip_nightly)))


if __name__ == "__main__":
    main()
