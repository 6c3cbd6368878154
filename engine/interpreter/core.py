"""The interpreter's core: what every step kind stands on.

A run's state (account, vars, step results, timeline, the events it may still use), how playbook text
becomes values (templates, expressions, durations), how a step is run and recorded, and how effects
are called as activities. The step kinds live in three families beside this module (``effects``,
``waiting``, ``flow``); ``workflow`` puts them together behind a typed dispatch table.

Everything here is deterministic: time is ``workflow.now()``, ids come from the run and the step's
position, and nothing reads the clock, the network or randomness.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from engine.interpreter import calendar
    from engine.interpreter.messages import EVENT_SIGNAL, Event, Pending, TimelineEntry
    from engine.language import expressions as ex
    from engine.language import model as m
    from engine.language.durations import DurationError, parse_duration
    from engine.language.meaning import RESULT_FIELDS

# Providers time out after 10 s: an attempt that has not ended after this long is given up and retried.
ACTIVITY_TIMEOUT = timedelta(seconds=30)
# A worker that dies mid-activity is noticed after this long without a heartbeat, then the step is retried on another
# (after its retry interval). The worker beats every activity for as long as it runs (engine.runtime.workers.KeepAlive,
# from its event loop, whatever the activity is blocked on), so this measures whether the worker lives, not how long
# a provider takes. 10 s: a beat is sent at most every 8 s (the SDK throttles them to 0.8 x this), so a live worker
# whose event loop stalls for a second or two (a collection, a burst of workflow tasks on a busy machine) still beats
# in time, while a dead one's step moves in 10 s instead of 30 s. Changing it is replay-safe: Temporal does not compare
# an activity's timeouts with its recorded command on replay (tests/test_replay.py replays runs recorded without it).
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
DEFAULT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=10,
)
# Events a run keeps for `wait_for` steps that have not started yet (the newest are kept).
EVENT_BUFFER = 200
# Timeline entries a run keeps (the oldest are dropped first, with a note saying how many).
TIMELINE_LIMIT = 2000
# Runs started before this patch keep the old for_each (an item holds its concurrency slot for its whole life,
# one activity and one timer per item, every event forwarded to children); runs started since get slots per
# effect, batched email sends, shared timers, and large for_each slices run side by side (docs/playbook-language.md).
FANOUT_PATCH = "for-each-slots-batches"
# Runs started since this patch keep their row of the funnel's projection (engine/storage/progress.py): registered by
# load_account, reported by the record_progress local activity before the run blocks in a wait and when it ends
# (engine/interpreter/workflow.py, PlaybookRun.report_progress). Runs started before it report nothing; a chain of
# theirs that continues as new on this code reports from its next run on, everything at its first report.
PROGRESS_PATCH = "run-progress"
# Runs cancelled since this patch (a cancel request: API, Web UI, `playbook runs cancel`) close their open call tasks
# and approvals as cancelled, as an exit or a stop does; before it they stayed open in the inbox. Asked only when a
# run is cancelled, so other runs' histories do not change.
CANCEL_CLOSES_ASKS_PATCH = "cancel-closes-asks"
# Runs started since this patch let the creation of a call task or approval they wait for finish when the run exits
# or is cancelled meanwhile, and close what it made with their other open asks. Before it the creation was cancelled
# with the run; when its activity had already written the row, the task or approval stayed open in the inbox for good.
# Asked when the workflow starts (use_fanout), not at the creation: there, in the workflow task after a local
# activity's (load_account's, when its result comes after its task completed), a replay meets the marker before the
# SDK knows of it, and fails with a nondeterminism error (seen in tests/test_lost_answer.py on a loaded machine).
ASK_CREATION_PATCH = "ask-creation-finishes"
# The step kinds a run of the control group (settings.control) skips with the reason "control": every effect on
# the world. Waits, wait_for, set, switch, split, for_each and stop run as in a treated run, and goals still count.
CONTROL_SKIPPED = frozenset({"email", "call_task", "crm", "assign", "approval", "run_playbook"})


def cancelled(err: BaseException) -> bool:
    """An activity or child that ended because this run is being cancelled (an exit event, a cancel)."""
    return isinstance(getattr(err, "cause", None), TemporalCancelledError)


def being_closed() -> bool:
    """Whether the coroutine is being closed rather than run (GeneratorExit): a worker that stops leaves the runs in
    its cache to the garbage collector, which closes their coroutines at some later moment, on any thread, outside
    their workflow (temporalio/sdk-python#494). A ``finally`` that would await (a cleanup with commands) must not
    then: Python raises "coroutine ignored GeneratorExit", and a command could reach another workflow's loop. The
    run goes on from its history on the next worker; nothing of it is lost."""
    return isinstance(sys.exc_info()[1], GeneratorExit)


class StepFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StopRun(Exception):
    def __init__(self, outcome: str, reason: str | None) -> None:
        super().__init__(reason or outcome)
        self.outcome = outcome
        self.reason = reason


class Rollover(Exception):
    """The run's history is long: the top-level step waiting now starts again in a new run (continue-as-new)."""


@dataclass
class Scope:
    """What one path of execution sees: results so far, vars, and for_each item names.

    ``since`` is the sequence number from which a ``wait_for`` on this path counts events: the moment the
    step before it started (or the enclosing step, or the run). Copies share ``steps`` and ``vars``.
    """

    steps: dict[str, dict[str, Any]]
    vars: dict[str, Any]
    locals: dict[str, Any] = field(default_factory=dict)
    key_suffix: str = ""  # "[3]" inside the 4th for_each item
    since: int = 0
    # the concurrency slots of the enclosing for_each steps (outermost first): an effect holds one of each
    gates: tuple[asyncio.Semaphore, ...] = ()

    def at(self, since: int) -> Scope:
        """The same path, counting events from ``since`` (a plain copy: dataclasses.replace costs more per item)."""
        return Scope(self.steps, self.vars, self.locals, self.key_suffix, since, self.gates)

    def child(self, name: str, item: Any, index: int, gate: asyncio.Semaphore | None = None) -> Scope:
        return Scope(
            dict(self.steps),
            dict(self.vars),
            {**self.locals, name: item},
            f"{self.key_suffix}[{index}]",
            self.since,
            self.gates + (gate,) if gate is not None else self.gates,
        )


@dataclass
class ItemMark:
    """A for_each item's progress: ``started`` once it has begun its first effect, begun to wait, or ended.

    A slice of a large for_each tells its parent when all its items have started, so the next slice can start
    (engine/interpreter/flow.py). An item inside another's marks the outer one too.
    """

    on_start: Callable[[], None] | None = None
    outer: ItemMark | None = None
    started: bool = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            if self.on_start is not None:
                self.on_start()
        if self.outer is not None:
            self.outer.start()


# The for_each item the running task belongs to (asyncio tasks copy it into the tasks they start).
CURRENT_ITEM: ContextVar[ItemMark | None] = ContextVar("CURRENT_ITEM", default=None)


def mark_item_started() -> None:
    item = CURRENT_ITEM.get()
    if item is not None:
        item.start()


class Slot:
    """InterpreterCore.slot's context manager (a class: @asynccontextmanager costs a generator per effect)."""

    __slots__ = ("gates", "taken")

    def __init__(self, gates: tuple[asyncio.Semaphore, ...]) -> None:
        self.gates = gates
        self.taken = 0

    async def __aenter__(self) -> None:
        try:
            for gate in self.gates:
                await gate.acquire()
                self.taken += 1
            mark_item_started()
        except BaseException:  # cancelled while waiting for a slot: the ones taken go back (no __aexit__ then)
            self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        for gate in reversed(self.gates[: self.taken]):
            gate.release()
        self.taken = 0


_NOT_TEXT = frozenset({int, float, bool, type(None)})


@dataclass
class Alarm:
    """One timer that every step waiting for the same moment shares (a for_each's items wait together)."""

    rung: bool = False
    waiters: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class PendingAsk:
    info: Pending
    answer: Any = None  # Decision or Outcome once given


@dataclass
class SeenEvent:
    seq: int
    event: Event


Runner = Callable[[Any, Any, Scope], Awaitable[dict[str, Any]]]
OpenedAsk = Callable[[Any], tuple[str, str]]  # a creation's result -> (task/approval id, kind)


class InterpreterCore:
    """State, values and the step loop, shared by the run workflow and the for_each chunk workflow."""

    # step model class -> its runner; filled by engine.interpreter.workflow from the three families
    runners: ClassVar[Mapping[type, Runner]] = {}
    # whether a waiting top-level step may continue as new (the run workflow, not a for_each chunk)
    can_roll_over: ClassVar[bool] = False
    # whether steps are written to the timeline: a for_each slice's timeline is never shown (its parent's is), and
    # a thousand items' entries were a tenth of a slice's worker time
    keeps_timeline: ClassVar[bool] = True

    def init_interpreter(self, playbook: m.Playbook, account_id: str, clock_offset: float = 0.0) -> None:
        self.playbook = playbook
        self.clock_offset = timedelta(seconds=clock_offset)
        self.account_id = account_id
        self.account: dict[str, Any] = {"id": account_id, "owner": None}
        self.contacts: list[dict[str, Any]] = []
        self.event: dict[str, Any] | None = None
        self.tz = calendar.zone("UTC")
        self.timeline: list[TimelineEntry] = []
        self.timeline_dropped = 0
        self.current: Counter[str] = Counter()  # the steps running now (a for_each step's items: many at once)
        self.statuses: dict[str, dict[str, Any]] = {}  # step id -> {status, result}
        self.pending: dict[str, PendingAsk] = {}
        self.open_asks: dict[str, str] = {}  # task/approval id -> kind, until answered, timed out or closed
        self.creating: dict[asyncio.Task[Any], OpenedAsk] = {}  # creations of asks the run was stopped during
        self.creations_finish = False  # ASK_CREATION_PATCH, decided when the workflow starts (use_fanout)
        # Events: every one gets a sequence number; only those of a type some wait_for listens to are kept.
        self.seq = 0
        self.events: list[SeenEvent] = []
        self.listened = frozenset(s.event for s in playbook.walk() if isinstance(s, m.WaitForStep))
        self.children: list[Any] = []  # running child workflows (for_each chunks, awaited run_playbook runs)
        self.deadlines: dict[str, str] = {}  # pinned moments (ISO), so a step started again waits for the same
        self.pin_index: dict[str, set[str]] = {}  # "<path><suffix>/" -> its pins in deadlines
        self.top_step: m.Step | None = None  # the top-level step running now
        self.resuming: m.Step | None = None  # a top-level step started again after continue-as-new
        self.started_at: str | None = None  # when the run started (its chain's first run), if not this run
        self.fanout = False  # FANOUT_PATCH: set by the workflow when it starts (see use_fanout)
        self.alarms: dict[str, Alarm] = {}  # moment (ISO) -> the timer shared by the steps waiting for it
        self.parent_run: dict[str, Any] | None = None  # a for_each slice: `run` as its parent sees it
        self.starting_slices: set[str] = set()  # for_each slices (child ids) still starting their items
        self.email_batches: dict[str, Any] = {}  # email step path -> the batch its items are joining now
        self.fixed_ids: tuple[str, str] | None = None  # see ids()
        self.fixed_run_info: dict[str, Any] | None = None  # see run_info()
        self.today_at: tuple[datetime, Any] | None = None  # see today()
        self.today_text = ""
        self.control = False  # held out (settings.control): every effect is skipped, see CONTROL_SKIPPED
        self.enrollment_key: str | None = None  # rendered once the account is loaded, when a split or control needs it
        self.paths: dict[str, str] = {}  # split step id (or path) -> the path the run took (not per for_each item)
        self.reporting = False  # PROGRESS_PATCH: the run keeps its row of the funnel's projection (PlaybookRun)
        self.blocked = 0  # while reporting: the steps blocked now in a wait (time, an event, a person, children)

    def use_fanout(self) -> None:
        """Whether this run has the for_each of FANOUT_PATCH, and lets an ask's creation finish when it stops
        (ASK_CREATION_PATCH); each decided once, when the workflow starts."""
        self.fanout = workflow.patched(FANOUT_PATCH)
        self.creations_finish = workflow.patched(ASK_CREATION_PATCH)

    # ----------------------------------------------------------------- context and values

    def now(self) -> datetime:
        return workflow.now() + self.clock_offset

    def today(self) -> str:
        """The run's date in its timezone (ISO); worked out again only when the clock or the timezone changed."""
        now = self.now()
        if (now, self.tz) != self.today_at:
            self.today_at, self.today_text = (now, self.tz), now.astimezone(self.tz).date().isoformat()
        return self.today_text

    def ids(self) -> tuple[str, str]:
        """This workflow's id and its chain's first run id: fixed for the run's life (asked for once per effect)."""
        if self.fixed_ids is None:
            info = workflow.info()
            self.fixed_ids = (info.workflow_id, info.first_execution_run_id)
        return self.fixed_ids

    def key(self, step: m.Step, scope: Scope, suffix: str = "") -> str:
        workflow_id, first_run_id = self.ids()
        return f"{workflow_id}/{first_run_id}/{step.path}{scope.key_suffix}{suffix}"

    def ref(self, step: m.Step) -> act.RunRef:
        return act.RunRef(self.ids()[0], self.playbook.id, self.account_id, step.id, self.playbook.version)

    def run_info(self) -> dict[str, Any]:
        if self.parent_run is not None:
            return self.parent_run
        if self.fixed_run_info is None:
            self.fixed_run_info = self.describe_run()
        return self.fixed_run_info

    def describe_run(self) -> dict[str, Any]:
        info = workflow.info()
        return {
            "id": info.workflow_id,
            "playbook": self.playbook.id,
            "version": self.playbook.version,
            "started_at": self.started_at
            or ((info.start_time + self.clock_offset).isoformat() if info.start_time else None),
        }

    def context(self, scope: Scope, **extra: Any) -> dict[str, Any]:
        return {
            "account": self.account,
            "contact": self.contacts[0] if self.contacts else {},
            "contacts": self.contacts,
            "event": self.event,
            "vars": scope.vars,
            "steps": scope.steps,
            "run": self.run_info(),
            "today": self.today(),
            **scope.locals,
            **extra,
        }

    def render(self, value: Any, scope: Scope, **extra: Any) -> Any:
        """Renders playbook text; values from data are never rendered again. The context is built once per call,
        when the first template needs it (pass several fields in one list to share it)."""
        ctx: dict[str, Any] | None = None

        def walk(v: Any) -> Any:
            nonlocal ctx
            # exact types first: in the workflow sandbox every isinstance() goes through a wrapper (a tenth of
            # a for_each item's interpretation was spent here)
            kind = type(v)
            if kind is str or (kind not in _NOT_TEXT and isinstance(v, str)):
                if "{{" not in v and "{%" not in v and "{#" not in v:  # ex.is_template
                    return v
                if ctx is None:
                    ctx = self.context(scope, **extra)
                return ex.render(v, ctx)
            if kind is list or kind is tuple:
                return [walk(item) for item in v]
            if kind is dict:
                return {k: walk(item) for k, item in v.items()}
            if kind in _NOT_TEXT:
                return v
            if isinstance(v, dict):
                return {k: walk(item) for k, item in v.items()}
            if isinstance(v, (list, tuple)):
                return [walk(item) for item in v]
            return v

        return walk(value)

    def evaluate(self, expression: Any, scope: Scope, **extra: Any) -> Any:
        return ex.evaluate(expression, self.context(scope, **extra))

    def pinned(self, step: m.Step, scope: Scope, purpose: str, compute: Callable[[], datetime]) -> datetime:
        """A moment the step waits for, computed once: the step started again after continue-as-new gets the same."""
        key = f"{step.path}{scope.key_suffix}/{purpose}"
        if key not in self.deadlines:
            self.deadlines[key] = compute().isoformat()
            self.pin_index.setdefault(f"{step.path}{scope.key_suffix}/", set()).add(key)
        return datetime.fromisoformat(self.deadlines[key])

    def set_deadlines(self, deadlines: dict[str, str]) -> None:
        """Pinned moments carried over from the previous run of the chain, with their index."""
        self.deadlines = dict(deadlines)
        self.pin_index = {}
        for pin in self.deadlines:
            self.pin_index.setdefault(pin[: pin.rindex("/") + 1], set()).add(pin)

    def moment_after(self, step: m.Step, text: str, scope: Scope, purpose: str, *, pin: bool = True) -> datetime:
        """The moment a duration of the playbook (any form the language allows: 2h, 3bd, P1DT2H, a template
        giving one) ends, counted from now; pinned unless told otherwise. Content the duration cannot be made
        of fails the step with the reason."""

        def compute() -> datetime:
            rendered = str(self.render(text, scope)).strip()
            try:
                return calendar.after(self.now(), parse_duration(rendered), self.tz)
            except DurationError as err:
                raise StepFailed(f"{purpose}: '{rendered}' is not a duration: {err}") from None

        return self.pinned(step, scope, purpose, compute) if pin else compute()

    def span(self, step: m.Step, text: str, scope: Scope, purpose: str) -> timedelta:
        """A duration of the playbook as a length of time from now (business days counted on the calendar)."""
        return max(self.moment_after(step, text, scope, purpose, pin=False) - self.now(), timedelta(seconds=1))

    def unpin(self, step: m.Step, scope: Scope) -> None:
        """The step is over: its pinned moments go (a later run of the same step, in a loop, counts anew)."""
        prefix = f"{step.path}{scope.key_suffix}/"
        # through the index: a slice of 1,000 waiting items has 1,000 pins, and scanning them all at the end of
        # every item's step was quadratic
        for pin in self.pin_index.pop(prefix, ()):
            self.deadlines.pop(pin, None)

    # ----------------------------------------------------------------- the record

    def note(self, step: m.Step, status: str, detail: str = "") -> None:
        if not self.keeps_timeline:
            return
        if step is self.resuming and status in ("started", "waiting"):
            return  # said once, in the run that first started the step
        self.add_entry(TimelineEntry(self.now().isoformat(), step.path, step.id, step.kind, status, detail[:500]))

    def add_entry(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        if len(self.timeline) > TIMELINE_LIMIT:
            drop = len(self.timeline) - TIMELINE_LIMIT
            del self.timeline[:drop]
            self.timeline_dropped += drop

    def record(self, step: m.Step, scope: Scope, status: str, result: dict[str, Any] | None = None) -> None:
        result = result or {}
        if step.id:
            scope.steps[step.id] = {**result, "status": result.get("status", status)}
            if not scope.key_suffix:  # per-item results stay inside their item
                self.statuses[step.id] = {"status": status, "result": result}

    # ----------------------------------------------------------------- effects

    def options(self, step: m.Step, scope: Scope) -> dict[str, Any]:
        retry = DEFAULT_RETRY
        if step.retry:
            initial = self.span(step, step.retry.initial_interval, scope, "retry.initial_interval")
            maximum = (
                self.span(step, step.retry.maximum_interval, scope, "retry.maximum_interval")
                if step.retry.maximum_interval
                else None
            )
            # Attempts are at most `maximum_interval` apart, even the first retry. Temporal refuses a policy whose
            # maximum is below its initial interval, and it refuses it after the activity's command is written,
            # which leaves the workflow task unable to complete: the policy must be valid before it is used.
            retry = RetryPolicy(
                initial_interval=min(initial, maximum) if maximum is not None else initial,
                backoff_coefficient=step.retry.backoff,  # the schema keeps it >= 1, max_attempts >= 1
                maximum_attempts=step.retry.max_attempts,
                maximum_interval=maximum,
            )
        opts: dict[str, Any] = {
            "start_to_close_timeout": ACTIVITY_TIMEOUT, "heartbeat_timeout": HEARTBEAT_TIMEOUT, "retry_policy": retry,
        }
        if step.timeout and step.kind not in ("wait", "wait_for", "approval", "call_task"):
            opts["schedule_to_close_timeout"] = self.span(step, step.timeout, scope, "timeout")
        return opts

    def slot(self, scope: Scope) -> Slot:
        """An effect's turn: one slot of each enclosing for_each's ``concurrency``, taken outermost first (so two
        items never hold each other's), held while the effect runs, never while a step waits."""
        return Slot(scope.gates)

    async def call(self, step: m.Step, scope: Scope, name: str, arg: Any, result_type: type) -> Any:
        try:
            async with self.slot(scope):
                result = await workflow.execute_activity(
                    name, arg, result_type=result_type, **self.options(step, scope)
                )
        except ActivityError as err:
            raise activity_failure(name, err) from None
        self.stop_if_exiting()
        return result

    async def create_ask(
        self, step: m.Step, scope: Scope, name: str, arg: Any, result_type: type, opened: OpenedAsk
    ) -> Any:
        """Creates a call task or approval the step will wait for, as ``call`` does, with one difference: when the
        run exits or is cancelled while the activity runs, the activity is not cancelled with it. Its row may be
        written already; so the creation finishes and close_open_asks closes what it made. The ask is open from
        the moment its result is known, before an exit in the same workflow task can stop the step."""
        if not self.creations_finish:
            return await self.call(step, scope, name, arg, result_type)
        async with self.slot(scope):
            creating = workflow.start_activity(name, arg, result_type=result_type, **self.options(step, scope))
            self.creating[creating] = opened
            await asyncio.wait([creating])  # a cancel stops this wait, not the activity: it stays in self.creating
        del self.creating[creating]
        try:
            result = creating.result()
        except ActivityError as err:
            raise activity_failure(name, err) from None
        ask_id, kind = opened(result)
        self.open_asks[ask_id] = kind
        self.stop_if_exiting()
        return result

    async def creations_finished(self) -> None:
        """The creations a stop interrupted have finished; what they made is among the open asks."""
        while self.creating:
            creating, opened = next(iter(self.creating.items()))
            await asyncio.wait([creating])
            del self.creating[creating]
            if not creating.cancelled() and creating.exception() is None:  # a failed creation made nothing
                ask_id, kind = opened(creating.result())
                self.open_asks[ask_id] = kind

    # ----------------------------------------------------------------- exits

    def stopping(self) -> bool:
        """Whether the run is ending (an exit event came); the run workflow says, a for_each chunk never does
        (its parent cancels it)."""
        return False

    def stop_if_exiting(self) -> None:
        """An exit that came in the same workflow task as an activity's result, a timer or an answer: the cancel
        it asked for found nothing left to cancel, so every step checks before going on. Nothing starts after it."""
        if self.stopping():
            raise asyncio.CancelledError()

    def set_snapshot(self, snapshot: act.AccountSnapshot | None) -> None:
        if snapshot is not None:
            self.account = snapshot.account
            self.contacts = list(snapshot.contacts)

    # ----------------------------------------------------------------- waiting

    def may_roll_over(self, step: m.Step) -> bool:
        """Whether this waiting step may be started again in a new run: only a top-level one, in the run itself."""
        return self.can_roll_over and step is self.top_step

    @staticmethod
    def history_is_long() -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > HISTORY_EVENTS_BUDGET
            or info.get_current_history_size() > HISTORY_BYTES_BUDGET
        )

    def about_to_wait(self) -> None:
        """A step of a reporting run is about to block (``blocked`` counts it already): PlaybookRun reports its
        progress here. A for_each slice never reports (its parent's row covers the run)."""

    def block(self) -> bool:
        """The run blocks on its child workflows (a for_each's slices, a run_playbook it waits for): counted and
        reported as a wait is. True when counted: the caller calls unblock() when it is over."""
        if not self.reporting:
            return False
        self.blocked += 1
        self.about_to_wait()
        return True

    def unblock(self, counted: bool) -> None:
        if counted:
            self.blocked -= 1

    async def wait_until(
        self, step: m.Step, done: Callable[[], bool], moment: datetime | None, *, may_roll: bool = True
    ) -> bool:
        """Waits until ``done()`` or the moment (None: no end). True when done. A top-level step whose history
        grows long meanwhile raises Rollover (it starts again in a new run), unless it is done: an answer
        accepted is never dropped. ``may_roll`` is false where starting the step again would redo what a
        person decided in it."""
        roll = may_roll and self.may_roll_over(step)
        mark_item_started()

        def ready() -> bool:
            return done() or self.stopping() or (roll and self.history_is_long())

        timeout = None if moment is None else max((moment - self.now()).total_seconds(), 0.0)
        # reported when the step will block: not when the moment has come or the wait is over before it begins
        blocks = self.reporting and timeout != 0 and not ready()
        if blocks:
            self.blocked += 1
            self.about_to_wait()
        try:
            if self.fanout and moment is not None and timeout:
                if not await self.wait_with_alarm(ready, moment, timeout):
                    self.stop_if_exiting()
                    return done()  # as below: an answer taken in the same activation as the alarm still counts
            else:
                try:
                    await workflow.wait_condition(ready, timeout=timeout)
                except TimeoutError:
                    self.stop_if_exiting()
                    return done()  # an answer taken in the same activation as the timeout still counts
        finally:
            if blocks:
                self.blocked -= 1
        self.stop_if_exiting()
        if done():
            return True
        raise Rollover()

    async def wait_with_alarm(self, ready: Callable[[], bool], moment: datetime, seconds: float) -> bool:
        """Waits until ``ready()`` (True) or the moment (False), on the timer every step waiting for the same
        moment shares: a thousand items waiting for the webinar's eve are one timer in history, not a thousand.
        The timer is cancelled when nobody waits for it any more."""
        key = moment.isoformat()
        alarm = self.alarms.get(key)
        if alarm is None:
            alarm = self.alarms[key] = Alarm()
            alarm.task = asyncio.create_task(self._ring(key, alarm, seconds))
        alarm.waiters += 1
        try:
            await workflow.wait_condition(lambda: ready() or alarm.rung)
        finally:
            alarm.waiters -= 1
            if alarm.waiters == 0 and not alarm.rung and alarm.task is not None:
                alarm.task.cancel()
                self.alarms.pop(key, None)
        return ready()

    async def _ring(self, key: str, alarm: Alarm, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            return
        alarm.rung = True
        if self.alarms.get(key) is alarm:
            del self.alarms[key]

    async def sleep_until(self, step: m.Step, moment: datetime, *, may_roll: bool = True) -> None:
        if moment > self.now():
            await self.wait_until(step, lambda: False, moment, may_roll=may_roll)

    # ----------------------------------------------------------------- events

    def take_event(self, event: Event) -> None:
        """Keeps an event for wait_for steps (only types some wait_for listens to; the newest EVENT_BUFFER)."""
        self.seq += 1
        if event.type in self.listened:
            self.events.append(SeenEvent(self.seq, event))
            if len(self.events) > EVENT_BUFFER:
                del self.events[: len(self.events) - EVENT_BUFFER]

    def forget_events_before(self, seq: int) -> None:
        """No step can use events older than this any more."""
        self.events = [e for e in self.events if e.seq >= seq]

    async def forward(self, event: Event) -> None:
        """Passes an event on to the child workflows running now (their steps may wait for it). Since
        FANOUT_PATCH, only events some wait_for of the playbook listens to (a for_each's slices have thousands
        of items: an event nobody waits for is not sent to each)."""
        if self.fanout and event.type not in self.listened:
            return
        for child in list(self.children):
            try:
                await child.signal(EVENT_SIGNAL, event)
            except Exception:  # noqa: BLE001 - the child ended meanwhile: nothing waits there any more
                continue

    # ----------------------------------------------------------------- the step loop

    async def run_steps(self, steps: tuple[m.Step, ...], scope: Scope) -> None:
        since = scope.since
        for step in steps:
            started = self.seq
            await self.run_step(step, scope.at(since))
            since = started

    async def run_step(self, step: m.Step, scope: Scope) -> None:
        self.stop_if_exiting()
        try:
            if step.when is not None and not self.evaluate(step.when, scope):
                self.record(step, scope, "skipped")
                self.note(step, "skipped", f"when: {step.when}")
                return
        except Exception as err:  # noqa: BLE001 - content errors fail the step, never the workflow task
            self.fail(step, scope, f"when: {_reason(err)}")
            return
        if self.control and step.kind in CONTROL_SKIPPED:
            self.record(step, scope, "skipped", self.control_result(step))
            self.note(step, "skipped", "control group: no effect")
            return
        label = step.id or step.path
        self.current[label] += 1
        self.note(step, "started")
        try:
            runner = self.runners[type(step)]
            if step.timeout and step.kind in ("switch", "parallel", "split", "for_each", "run_playbook"):
                limit = self.span(step, step.timeout, scope, "timeout")
                result = await asyncio.wait_for(runner(self, step, scope), limit.total_seconds())
            else:
                result = await runner(self, step, scope)
        except TimeoutError:
            self.fail(step, scope, f"timed out after {step.timeout}")
            return
        except (StopRun, Rollover, workflow.NondeterminismError):
            raise
        except Exception as err:  # noqa: BLE001 - a content error found at run time fails its step with the reason
            self.fail(step, scope, _reason(err))
            return
        finally:
            self.current[label] -= 1
            if self.current[label] <= 0:
                del self.current[label]
        self.unpin(step, scope)
        self.record(step, scope, "done", result)
        if self.keeps_timeline:  # a for_each slice keeps none: no summary to make per item
            self.note(step, "done", _summary(result))

    def control_result(self, step: m.Step) -> dict[str, Any]:
        """The result of an effect a held-out run skips: every field of the kind's result is there, none (so
        `steps.call.outcome == "reached"` is false instead of failing on an undefined field), except what the run
        already knows without the effect: a crm step's account and an assign step's owner are the account as the
        run last saw it."""
        result: dict[str, Any] = {name: None for name in RESULT_FIELDS.get(step.kind, ())}
        if step.kind == "crm":
            result["account"] = self.account
        elif step.kind == "assign":
            result["owner"] = self.account.get("owner")
        return {**result, "status": "skipped", "reason": "control"}

    def fail(self, step: m.Step, scope: Scope, message: str) -> None:
        self.unpin(step, scope)
        self.record(step, scope, "failed", {"error": message})
        self.note(step, "failed", message)
        if step.on_error != "continue":
            raise StepFailed(f"step {step.id or step.path} failed: {message}")

    def mark_not_run(self, steps: tuple[m.Step, ...] | None, scope: Scope) -> None:
        for s in m.iter_steps(steps or ()):
            if s.id and s.id not in scope.steps:
                self.record(s, scope, "not_run")


# Continue as new past these, or when the server suggests it (at 4,096 events or 4 MB by default; the
# time-skipping test server never does). Half the default, with room to spare: events that arrive while the
# closing workflow task runs add to the history, and a worker that has to replay a history (after a restart or
# an eviction) must do so within the 10 s workflow task timeout (bench/longrun.py: ~2 ms per event here).
HISTORY_EVENTS_BUDGET = 2000
HISTORY_BYTES_BUDGET = 2 * 1024 * 1024


def activity_failure(name: str, err: ActivityError) -> BaseException:
    """What an activity that failed (after its retries) means for the step that called it."""
    if cancelled(err):
        return asyncio.CancelledError()
    cause = err.cause
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
    return StepFailed(f"{name} failed: {message}")


def _reason(err: BaseException) -> str:
    if isinstance(err, StepFailed):
        return err.message
    if isinstance(err, (ex.ExpressionError, DurationError)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _summary(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    parts = [f"{k}={v}" for k, v in result.items() if k not in ("account", "body", "event")]
    return ", ".join(parts)[:300]
