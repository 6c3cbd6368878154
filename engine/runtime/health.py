"""Health scores kept where the data arrives (docs/health.md, "How scores are kept").

- ``update_for_event``: the intake's part, in the transaction that takes the event (built-in CRM): what the event
  gives each measure of each scorecard whose segment holds the account (health_event_values, once per event id,
  scorecard and measure), then the account's scores recomputed;
- ``recompute`` / ``recompute_many``: the scores of accounts from what is recorded and their fields, at a moment
  (the nightly recompute: windows slide, dates come closer);
- a score that changed writes health_scores and a health_history row (its ``cause``: the event id, or
  nightly/<time>); a change that meets the scorecard's ``changes`` rule becomes the event health.score_changed
  (``ScoreChange.event``), which the intake takes like any other (triggers, wait_for, exit_when), once by its id;
- ``health_of``: an account's scores, trend, components and history (the API, the CLI, templates, scenarios).

The arithmetic is engine.language.health's; the queries engine.storage.health's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.client import Client

from activities.crm import BuiltinCrm, CrmProvider, write_health_fields
from activities.health_activities import HealthWriteActivities
from activities.types import HealthPageRequest, HealthPageResult, HealthWrite
from engine.interpreter.messages import Event, event_context
from engine.language import health as hl
from engine.language.library import Library
from engine.language.model import Playbook
from engine.language.scorecard import Scorecard, load_scorecards
from engine.storage import health as hs
from engine.storage.db import session, utc

SCORE_CHANGED = "health.score_changed"
TREND_DAYS = 30


@dataclass(frozen=True)
class ScoreChange:
    """A score that changed. ``notable``: it meets the scorecard's ``changes`` rule (a band change, a drop of the
    declared size), so it is sent as health.score_changed. ``primary``: the scorecard is the account's first (by
    id) among those whose segment holds it: its score and band are what the CRM's health fields hold."""

    account_id: str
    scorecard_id: str
    score: float | None
    previous: float | None
    band: str | None
    previous_band: str | None
    reasons: list[dict[str, Any]]
    computed_at: datetime
    notable: bool = False
    primary: bool = True

    @property
    def event_id(self) -> str:
        """health/<account>/<scorecard>/<time of the change>; hashed past 200 characters (the longest event id)."""
        text = f"health/{self.account_id}/{self.scorecard_id}/{self.computed_at.astimezone(UTC).isoformat()}"
        return text if len(text) <= 200 else f"health/{hashlib.sha256(text.encode()).hexdigest()}"

    def event(self) -> Event:
        """The event health.score_changed that says it (``data``: docs/health.md)."""
        data = {
            "scorecard": self.scorecard_id,
            "score": self.score,
            "previous": self.previous,
            "band": self.band,
            "previous_band": self.previous_band,
            "reasons": self.reasons,
            # the names risk-intervention-health reads
            "new_score": self.score,
            "previous_score": self.previous,
            "drivers": [str(r.get("title") or r.get("measure")) for r in self.reasons],
        }
        at = self.computed_at.astimezone(UTC).isoformat()
        return Event(type=SCORE_CHANGED, data=data, id=self.event_id, occurred_at=at, account_id=self.account_id)


def is_notable(card: Scorecard, score: float | None, previous: float | None, band: str | None,
               previous_band: str | None) -> bool:
    """Whether a change meets the scorecard's ``changes`` rule. An account's first score changes nothing: there was
    no band to leave and no score to drop from."""
    if card.on_band_change and band is not None and previous_band is not None and band != previous_band:
        return True
    return (card.on_drop is not None and score is not None and previous is not None
            and previous - score >= card.on_drop - 1e-9)


# ------------------------------------------------------------------------------------------------- scorecards


def read_scorecards(folder: str | Path) -> tuple[Scorecard, ...]:
    """The valid scorecards of a folder, by id, read now (the API's AppState.reload_library); a folder that does not
    exist: none (health scores off). An invalid file is left out (`playbook validate` says why)."""
    return tuple(sorted(load_scorecards(folder).scorecards.values(), key=lambda c: c.id))


@functools.lru_cache(maxsize=8)
def _scorecards_in(folder: str) -> tuple[Scorecard, ...]:
    return read_scorecards(folder)


def scorecards_in(folder: str | Path) -> tuple[Scorecard, ...]:
    """The valid scorecards of a folder, by id, read once per process (as the library is); a folder that does not
    exist: none (health scores off). An invalid file is left out (`playbook validate` says why)."""
    return _scorecards_in(str(Path(folder).resolve()))


# ------------------------------------------------------------------------------------------------- events


def _event_at(event: Event, now: datetime) -> datetime:
    if event.occurred_at:
        try:
            at = datetime.fromisoformat(event.occurred_at.replace("Z", "+00:00"))
        except ValueError:
            return now
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    return now


def update_for_event(
    s: Session, crm_account: dict[str, Any], event: Event, cards: Sequence[Scorecard], now: datetime,
    *, fields_changed: bool = True,
) -> list[ScoreChange]:
    """The event's values into health_event_values for every scorecard whose segment holds the account and every
    measure whose type and `where` match (once per event id, scorecard and measure), then the account's scores
    recomputed, in the caller's transaction. Returns the changes; for an event taken before (its values already
    recorded: a POST retried after a failure), the changes it made then, so that their health.score_changed is
    sent (by id: once) even if the first attempt could not send it.

    ``fields_changed``: the event wrote account fields (then every scorecard of the account is recomputed; else only
    those reading the event's type). health.* events feed no scorecard: a change cannot cause another.
    """
    account_id = str(crm_account.get("id") or event.account_id or "")
    if not cards or not account_id or event.type.startswith("health."):
        return []
    held = [c for c in cards if hl.in_segment(c, crm_account)]
    reading = [c for c in held if event.type in c.event_types()]
    if not reading and not fields_changed:
        return []
    at = _event_at(event, now)
    context = event_context(event)
    rows: list[dict[str, Any]] = []
    for card in reading:
        for measure in card.measures:
            value = hl.event_value(measure, context)
            if isinstance(value, hl.NoMatch) or value is None:
                continue
            rows.append({"account_id": account_id, "scorecard_id": card.id, "measure_id": measure.id, "at": at,
                         "value": value})
    if not rows and not fields_changed:
        return []  # the event feeds no measure and changed no field: no score can have moved
    seen_before = False
    if event.id and rows:
        _, already = hs.add_event_values(s, event.id, rows)
        seen_before = already > 0
    elif rows:  # an event without an id cannot be told from its repetition: each post counts
        hs.add_event_values(s, f"anonymous/{uuid.uuid4().hex}", rows)
    cause = event.id or ""
    changes = _recompute_account(s, crm_account, held if fields_changed else reading, held, now, cause,
                                 {c.id for c in cards})
    if seen_before and not changes and cause:
        return changes_caused_by(s, cause, [crm_account], cards)
    return changes


def _recompute_account(
    s: Session, account: dict[str, Any], cards: Sequence[Scorecard], held: Sequence[Scorecard], now: datetime,
    cause: str, known: set[str],
) -> list[ScoreChange]:
    """recompute_many for the one account of an event, in a few statements whatever the scorecards: its score rows
    (locked: see engine.storage.health.scores_of) and its recorded values (summed here; one statement for both on
    SQLite: account_state), the writes (an update or insert of the scores, a history row when a score changed).
    ``cards``: those to recompute, ``held``: every scorecard whose segment holds the account (the first by id is the
    primary one), ``known``: the ids of every scorecard (a score on one of them that no longer holds the account is
    taken away: left_segments)."""
    now = utc(now)
    account_id = str(account["id"])
    stored, recorded = hs.account_state(s, account_id, [q for card in cards for q in _queries(card, now)], lock=True)
    primary = min(c.id for c in held) if held else None
    writes: list[hs.ScoreRow] = []
    history: list[hs.HistoryRow] = []
    changes: list[ScoreChange] = []
    for card in cards:
        _score(card, account, recorded, (card.id,), stored.get(card.id), now, cause, primary == card.id,
               writes, history, changes)
    stored_rows = {(account_id, card_id): row for card_id, row in stored.items()}
    gone = left_segments(stored_rows, {account_id: [c.id for c in held]}, known, writes, now, cause, history,
                         changes)
    hs.write_scores(s, writes, [(account_id, card_id) for card_id in stored])
    hs.delete_scores(s, gone)
    hs.add_history(s, history)
    return changes


def left_segments(
    stored: Mapping[tuple[str, str], hs.ScoreRow], held: Mapping[str, Sequence[str]], known: set[str],
    writes: Sequence[hs.ScoreRow], now: datetime, cause: str, history: list[hs.HistoryRow],
    changes: list[ScoreChange],
) -> list[tuple[str, str]]:
    """The stored scores on scorecards whose segment no longer holds their account (its plan or fields changed):
    each is taken away (returned, to delete) with a health_history row that says so (no score, no band) and a
    ScoreChange that sends nothing (a score that stops applying is no health event). When the scorecard was the
    account's primary one, the CRM's health fields now hold the new primary's score (a ScoreChange of it, unchanged,
    without history) or nothing. Scores on scorecards no longer in the folder (``known``) are left as they are."""
    gone = [(a, c) for a, c in stored if c in known and c not in held.get(a, ())]
    if not gone:
        return gone  # (every page and event: nothing left a segment)
    first: dict[str, str] = {}  # account -> its primary scorecard before: the first (by id) it had a score on
    for account_id, card_id in stored:
        if card_id in known and (account_id not in first or card_id < first[account_id]):
            first[account_id] = card_id
    changed = {(c.account_id, c.scorecard_id) for c in changes}
    written = {(w.account_id, w.scorecard_id): w for w in writes}
    for account_id, card_id in gone:
        old = stored[(account_id, card_id)]
        cards_now = held.get(account_id, ())
        history.append(hs.HistoryRow(account_id, card_id, None, None, now, old.score, old.band, (), cause))
        was_primary = first[account_id] == card_id
        changes.append(ScoreChange(account_id, card_id, None, old.score, None, old.band, [], now, False,
                                   primary=was_primary and not cards_now))
        if was_primary and cards_now:
            new_primary = cards_now[0]
            if (account_id, new_primary) in changed:
                continue  # the new primary's own change, made by this recompute, is what the CRM gets
            row = written.get((account_id, new_primary), stored.get((account_id, new_primary)))
            score, band = (row.score, row.band) if row is not None else (None, None)  # not scored yet: nothing
            changes.append(ScoreChange(account_id, new_primary, score, score, band, band, [], now, False,
                                       primary=True))
    return gone


# ------------------------------------------------------------------------------------------------- recompute


def recompute(s: Session, account: dict[str, Any], cards: Sequence[Scorecard], now: datetime,
              cause: str = "") -> list[ScoreChange]:
    """The account's scores on the scorecards whose segment holds it, at ``now``; the changes written."""
    return recompute_many(s, [account], cards, now, cause=cause)


def _queries(card: Scorecard, now: datetime) -> list[hs.MeasureQuery]:
    card_id = card.id
    return [hs.MeasureQuery(card_id, measure_id, last, now - window if window is not None else None)
            for measure_id, last, window in card.event_reads]


def _previous_result(card: Scorecard, row: hs.ScoreRow) -> hl.HealthResult:
    return hl.HealthResult(card.id, row.score, row.band,
                           tuple(hl.Component.from_dict(c) for c in row.components if isinstance(c, dict)))


def segments(accounts: Sequence[dict[str, Any]], cards: Sequence[Scorecard]) -> dict[str, list[str]]:
    """Account id -> the ids of the scorecards whose segment holds it, by id (each segment judged once)."""
    ordered = sorted(cards, key=lambda c: c.id)
    return {str(a["id"]): [c.id for c in ordered if hl.in_segment(c, a)] for a in accounts}


def primary_cards(accounts: Sequence[dict[str, Any]], cards: Sequence[Scorecard]) -> dict[str, str]:
    """Account id -> the id of its first scorecard (by id) whose segment holds it."""
    return {account_id: held[0] for account_id, held in segments(accounts, cards).items() if held}


def recompute_many(
    s: Session, accounts: Sequence[dict[str, Any]], cards: Sequence[Scorecard], now: datetime, cause: str = "",
    *, all_cards: Sequence[Scorecard] | None = None, lock: bool = False,
    held: dict[str, list[str]] | None = None,
) -> list[ScoreChange]:
    """The scores of many accounts (a page of the nightly recompute) at ``now``, in a few queries per scorecard.
    A score or band that changed is written with its previous one, and a health_history row (``cause``); a score
    whose components or scorecard version changed but not its value is written without history. ``lock``: the
    accounts' score rows locked first (an event's update: see engine.storage.health.scores_of). ``held``: segments()
    of the accounts over ``all_cards``, when the caller has it."""
    now = utc(now)
    ids = [str(a["id"]) for a in accounts]
    stored = hs.scores_of(s, ids, lock=lock)
    if held is None:
        held = segments(accounts, all_cards if all_cards is not None else cards)
    primary = {account_id: card_ids[0] for account_id, card_ids in held.items() if card_ids}
    writes: list[hs.ScoreRow] = []
    history: list[hs.HistoryRow] = []
    changes: list[ScoreChange] = []
    for card in cards:
        members = [a for a in accounts if card.id in held.get(str(a["id"]), ())]
        if not members:
            continue
        recorded = hs.event_values(s, [str(a["id"]) for a in members], _queries(card, now))
        for account in members:
            account_id = str(account["id"])
            _score(card, account, recorded, (account_id, card.id), stored.get((account_id, card.id)), now, cause,
                   primary.get(account_id) == card.id, writes, history, changes)
    known = {c.id for c in (all_cards if all_cards is not None else cards)}
    gone = left_segments(stored, held, known, writes, now, cause, history, changes)
    hs.write_scores(s, writes, stored)
    hs.delete_scores(s, gone)
    hs.add_history(s, history)
    return changes


def _score(
    card: Scorecard, account: dict[str, Any], recorded: Mapping[Any, float], key: tuple[str, ...],
    old: hs.ScoreRow | None, now: datetime, cause: str, primary: bool,
    writes: list[hs.ScoreRow], history: list[hs.HistoryRow], changes: list[ScoreChange],
) -> None:
    """One account's score on one scorecard from its recorded event values (``recorded[(*key, measure id)]``: the
    count, sum or last value; absent when no event was recorded) and its fields, against the stored score ``old``:
    what to write (a score row; a history row and a ScoreChange when the score or band changed) is appended to the
    lists."""
    account_id = str(account["id"])
    values: dict[str, float | None] = {}
    for m in card.measures:
        if m.kind == "events":
            values[m.id] = recorded.get((*key, m.id), 0.0)
        elif m.kind == "last":
            values[m.id] = recorded.get((*key, m.id))
        else:
            values[m.id] = hl.field_value(m, account, now)
    if old is not None and old.scorecard_version == card.version and _same_values(old.components, values):
        return  # the same scorecard on the same values: the same score (most accounts, most nights)
    result = hl.compute(card, values)
    components = [dict(vars(c)) for c in result.components]  # as_dict, without asdict's deep copy
    if old is None and result.score is None:
        return  # nothing to say yet: no score, none before
    if old is not None and (old.score, old.band) == (result.score, result.band):
        if old.components != components or old.scorecard_version != card.version:
            writes.append(hs.ScoreRow(account_id, card.id, result.score, result.band, components, now,
                                      card.version, old.previous_score, old.previous_band))
        return  # the score did not change: no history row, no health.score_changed, no CRM write
    previous, previous_band = (old.score, old.band) if old is not None else (None, None)
    why = hl.reasons(result, _previous_result(card, old) if old is not None else None)
    writes.append(hs.ScoreRow(account_id, card.id, result.score, result.band, components, now, card.version,
                              previous, previous_band))
    history.append(hs.HistoryRow(account_id, card.id, result.score, result.band, now, previous, previous_band,
                                 tuple(why), cause))
    changes.append(ScoreChange(
        account_id, card.id, result.score, previous, result.band, previous_band, why, now,
        is_notable(card, result.score, previous, result.band, previous_band), primary,
    ))


def _same_values(components: list[Any], values: dict[str, float | None]) -> bool:
    """Whether stored components were computed from these values (each measure's, as compute() keeps them)."""
    if len(components) != len(values):
        return False
    for c in components:
        if not isinstance(c, dict) or c.get("measure_id") not in values:
            return False
        if hl.number(values[c["measure_id"]]) != c.get("value"):
            return False
    return True


def changes_caused_by(
    s: Session, cause: str, accounts: Sequence[dict[str, Any]], cards: Sequence[Scorecard]
) -> list[ScoreChange]:
    """The changes ``cause`` made to these accounts' scores, from their history rows: what a retried event or
    nightly page sends again (health.score_changed by id: once) and writes to the CRM again."""
    by_id = {c.id: c for c in cards}
    primary = primary_cards(accounts, cards)
    found = []
    for row in hs.history_caused_by(s, cause, [str(a["id"]) for a in accounts]):
        card = by_id.get(row.scorecard_id)
        notable = card is not None and is_notable(card, row.score, row.previous_score, row.band, row.previous_band)
        found.append(ScoreChange(
            row.account_id, row.scorecard_id, row.score, row.previous_score, row.band, row.previous_band,
            list(row.reasons), row.computed_at, notable, primary.get(row.account_id) == row.scorecard_id,
        ))
    return found


# ------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class AccountHealth:
    """An account's score on one scorecard, as the API, the CLI and templates show it."""

    scorecard_id: str
    score: float | None
    band: str | None
    computed_at: datetime
    scorecard_version: str
    previous: float | None  # trend: the score before the last change
    previous_band: str | None
    thirty_days: float | None  # trend: the score 30 days before computed_at (the newest change at or before then)
    thirty_days_band: str | None
    components: list[dict[str, Any]]  # engine.language.health.Component as dicts
    reasons: list[dict[str, Any]]  # what moved it at its last change (engine.language.health.reasons)
    history: list[dict[str, Any]] = field(default_factory=list)  # {score, band, computed_at (ISO)}, newest first


def health_of(s: Session, account_id: str, history_limit: int = 30) -> list[AccountHealth]:
    """The account's scores (one per scorecard that scored it, by scorecard id), with trend and history."""
    found = []
    for (_, card_id), row in sorted(hs.scores_of(s, [account_id]).items()):
        changes = hs.history(s, account_id, card_id, history_limit) if history_limit > 0 else []
        then = hs.score_at(s, account_id, card_id, row.computed_at - timedelta(days=TREND_DAYS))
        found.append(AccountHealth(
            scorecard_id=card_id, score=row.score, band=row.band, computed_at=row.computed_at,
            scorecard_version=row.scorecard_version, previous=row.previous_score, previous_band=row.previous_band,
            thirty_days=then.score if then else None, thirty_days_band=then.band if then else None,
            components=row.components,
            reasons=list(changes[0].reasons) if changes else [],
            history=[{"score": h.score, "band": h.band, "computed_at": h.computed_at.isoformat()} for h in changes],
        ))
    return found


# ------------------------------------------------------------------------------------------------- the nightly pass

EMIT_CONCURRENCY = 16  # health.score_changed events taken at once by a page
_paused = 0
_paused_lock = threading.Lock()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector held off while a nightly page is computed: the page keeps thousands of rows,
    changes and components alive until it writes them, and each of them counted towards full collections that walk
    every object of the worker, about half of a first score's time (helper measurements: 69-84 us an account with
    the collector, 44-46 without). Reference counting frees everything as usual; the collector runs again after the
    page (pages of two workers' threads at once: after the last)."""
    global _paused
    with _paused_lock:
        _paused += 1
        if _paused == 1:
            gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0:
                gc.enable()

LIBRARY_CACHE = 4


class HealthActivities:
    """The nightly recompute's page (engine/interpreter/health_nightly.py): an activity of the runtime, because the
    changes it finds are taken as events by the intake (which starts runs).

    A page reads its accounts from the CRM of record (``account_page``), recomputes them at the night's time in
    one transaction (health_history rows caused by ``nightly/<time>``; with the built-in CRM, the accounts' health
    fields too), then takes the health.score_changed of every change the page's accounts have under that cause
    (this attempt's and an earlier attempt's: by id, once; take_score_changes) and returns what another CRM should
    hold (write_health_scores writes it). The library is read once per night per worker, the scorecards once per
    process.
    """

    def __init__(
        self, db_url: str, crm: CrmProvider, client: Client | None, library_root: str, scorecards_folder: str | Path
    ) -> None:
        self.db_url = db_url
        self.crm = crm
        self.client = client
        self.library_root = library_root
        self.scorecards_folder = scorecards_folder
        self._libraries: dict[str, dict[str, Playbook]] = {}

    async def _library(self, night: str) -> dict[str, Playbook]:
        library = self._libraries.get(night)
        if library is None:
            library = await asyncio.to_thread(lambda: dict(Library.load(self.library_root).playbooks))
            self._libraries[night] = library
            while len(self._libraries) > LIBRARY_CACHE:
                del self._libraries[next(iter(self._libraries))]
        return library

    @activity.defn(name="recompute_health_page")
    async def recompute_health_page(self, req: HealthPageRequest) -> HealthPageResult:
        client = self.client
        if client is None:
            raise RuntimeError("recompute_health_page needs a Temporal client")
        cards = scorecards_in(self.scorecards_folder)
        if not cards:
            return HealthPageResult(None, 0, 0, 0, 0)
        page = await asyncio.to_thread(self.crm.account_page, req.after, req.limit)
        at = utc(datetime.fromisoformat(req.at))
        cause = f"nightly/{req.at}"

        retried = activity.info().attempt > 1
        # the built-in CRM in the engine's database: no write_health_scores activity (nor 2,000 writes a page carried
        # through the workflow's history and four conversions)
        builtin = isinstance(self.crm, BuiltinCrm) and self.crm.db_url == self.db_url

        def recompute_page() -> tuple[int, list[ScoreChange]]:
            with collector_paused(), session(self.db_url) as s:
                held = segments(page.accounts, cards)
                changes = recompute_many(s, page.accounts, cards, at, cause=cause, held=held)
                ids = [str(a["id"]) for a in page.accounts]
                for card in cards:  # what counts for nothing any more (left its window; an older last value) goes
                    hs.prune(s, ids, _queries(card, at))
                if retried:  # what an earlier attempt changed (and may not have sent or written) is found again
                    changes = changes_caused_by(s, cause, page.accounts, cards)
                if builtin:  # the built-in CRM's fields in the same transaction (as an event's update writes them)
                    write_health_fields(s, crm_writes(changes))
                return sum(1 for card_ids in held.values() if card_ids), changes

        scored, changes = await asyncio.to_thread(recompute_page)
        activity.heartbeat()
        notable = [c for c in changes if c.notable]
        if notable:
            library = await self._library(req.at)
            await take_score_changes(client, req.task_queue, self.db_url, library, notable, self.crm)
        # a provider's cursor that does not move would page forever: a page without accounts ends the night
        after = page.after if page.accounts and page.after not in (None, "", req.after) else None
        writes = [] if builtin else crm_writes(changes)
        return HealthPageResult(after, len(page.accounts), scored, len(changes), len(notable), writes)


async def take_score_changes(
    client: Client, task_queue: str, db_url: str, library: dict[str, Playbook], changes: Sequence[ScoreChange],
    crm: CrmProvider,
) -> int:
    """A nightly page's health.score_changed events taken as a batch, as the intake takes each (engine.runtime.intake
    take_event: the same triggers, enrollment keys, wait_for/exit_when signals and answers under the same ids), in
    two transactions for the whole page instead of three per event: the ids taken already (a retried page) are left
    out; the accounts are read back only when a playbook's trigger listens to health.score_changed (most libraries
    have one or two such playbooks, and most have none), their runs only when a playbook waits for or exits on it;
    the starts and signals run side by side; the answers are recorded at the end, in one executemany. An event whose
    start or signal fails fails the page once the others are recorded (it is retried: what was recorded is not sent
    again). Returns how many events were taken now."""
    from activities.crm import read_accounts
    from activities.errors import NotFoundError
    from activities.types import AccountSnapshot
    from engine.storage import enrolled

    from .intake import EventAnswer, listeners, signal_runs, start_triggered

    triggering = [p for p in library.values() if p.trigger.type == "event" and p.trigger.event == SCORE_CHANGED]
    listening = listeners(library).get(SCORE_CHANGED, frozenset())
    builtin = isinstance(crm, BuiltinCrm) and crm.db_url == db_url

    def before() -> tuple[list[Event], dict[str, AccountSnapshot], dict[str, list[str]]]:
        events = list({e.id: e for e in (c.event() for c in changes)}.values())
        with session(db_url) as s:
            taken = hs.received(s, [str(e.id) for e in events])
            fresh = [e for e in events if e.id not in taken]
            account_ids = list(dict.fromkeys(str(e.account_id or "") for e in fresh))
            snapshots = read_accounts(s, account_ids) if triggering and builtin else {}
            runs = {a: enrolled.run_ids(s, a, listening) for a in account_ids} if listening else {}
        if triggering and not builtin:  # another CRM of record: the account as it reads it back (the runs will)
            for account_id in account_ids:
                with contextlib.suppress(NotFoundError):
                    snapshots[account_id] = crm.get_account(account_id)
        return fresh, snapshots, runs

    fresh, snapshots, runs = await asyncio.to_thread(before)
    if not fresh:
        return 0
    gate = asyncio.Semaphore(EMIT_CONCURRENCY)
    answers: list[tuple[Event, EventAnswer, list[str]]] = []

    async def take(event: Event) -> None:
        account_id = str(event.account_id or "")
        answer = EventAnswer(event_id=str(event.id))
        ended: list[str] = []
        if triggering or runs.get(account_id):
            snapshot = snapshots.get(account_id) or AccountSnapshot(
                account={"id": account_id, "owner": None}, contacts=[], found=False)
            async with gate:
                answer.runs = await start_triggered(
                    client, task_queue, triggering, event, account_id, snapshot.account, snapshot.contacts
                )
                triggered = {r.run_id for r in answer.runs if r.status == "started"}
                reach = [w for w in runs.get(account_id, []) if w not in triggered]
                answer.delivered_to, ended = await signal_runs(client, reach, event)
        answers.append((event, answer, ended))

    # every event that was taken is recorded, even when another failed (its runs registered: later events reach them)
    failed = [r for r in await asyncio.gather(*(take(e) for e in fresh), return_exceptions=True)
              if isinstance(r, BaseException)]

    def remember() -> None:
        now = datetime.now(UTC)
        with session(db_url) as s:
            enrolled.register(s, [(r.run_id, str(e.account_id or ""), r.playbook)
                                  for e, a, _ in answers for r in a.runs if r.status == "started"], now)
            enrolled.forget(s, [w for _, _, ended in answers for w in ended])
            hs.remember_events(s, [{"id": e.id, "type": e.type, "account_id": e.account_id or "", "received_at": now,
                                    "answer": a.as_json()} for e, a, _ in answers])

    await asyncio.to_thread(remember)
    if failed:
        raise failed[0]
    return len(answers)


def crm_writes(changes: Sequence[ScoreChange]) -> list[HealthWrite]:
    """What the CRM's health fields hold after these changes: the primary scorecard's score and band (the intake's,
    a night's page and a scenario's writes)."""
    return [HealthWrite(c.account_id, c.score, c.band) for c in changes if c.primary]


def health_activities(
    db_url: str, crm: CrmProvider, client: Client | None, library_root: str, scorecards_folder: str | Path
) -> list[Callable[..., Any]]:
    """The nightly recompute's activities, for a worker: the page's recompute and the CRM write."""
    pages = HealthActivities(db_url, crm, client, library_root, scorecards_folder)
    return [pages.recompute_health_page, HealthWriteActivities(crm).write_health_scores]
