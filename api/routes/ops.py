"""The ops page: server-rendered beside the inbox (docs/ops.md).

/ops is the library (each valid playbook: version, trigger, title, live runs), /ops/playbooks/{id} a playbook's
funnel (a server-drawn SVG chart and its numbers, control versus treated and split paths with 95% intervals, its
live and failed runs) and /ops/runs/{run_key} one run: its progress and its timeline (a Temporal query).
/ops/health is the book of accounts' health (per scorecard: accounts per band, recent band changes, the lowest
scores; engine/storage/health_overview.py) and /ops/accounts/{id} one account: its scores, their history and its
runs.

Signing in works as the inbox's does (api/web_session.py: a signed cookie holding the token's hash, checked
again on every request, CSRF tokens on the sign-in and sign-out forms), with cookies of its own under /ops and
for ops tokens only. Everything but the run's timeline is read from the run_progress projection: fast, no
Temporal visibility scan. The page shows account ids and step ids, never email addresses or email bodies.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from starlette.templating import Jinja2Templates

from engine.interpreter.messages import RunState
from engine.language import health as hl
from engine.language.model import Playbook
from engine.language.scorecard import Scorecard
from engine.runtime import runs as run_service
from engine.runtime.health import health_of
from engine.storage import health as hs
from engine.storage import health_overview as ho
from engine.storage import models as t
from engine.storage.db import session as db_session
from engine.storage.db import utc
from engine.storage.funnel import STOP_EXIT, Funnel, FunnelError, UnknownPlaybook, UnknownVersion, playbook_funnel

from .. import ops_chart
from ..deps import get_state
from ..security import Caller
from ..signed_pages import SignedPages

router = APIRouter(prefix="/ops", tags=["ops page"], include_in_schema=False)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
ROLE = "ops"
LIST_LIMIT = 50  # live and failed runs shown on a playbook's page (newest first)
CHANGED_DAYS = 7  # the health page's band changes: of the last days
HISTORY_LIMIT = 30  # an account's changes of score shown per scorecard (newest first)
QUERY_SECONDS = 5.0  # how long the run page waits for a worker to answer the timeline query
VERSION = re.compile(r"^[0-9A-Za-z]{4,100}$")
RUN_KEY = re.compile(r"^[0-9A-Za-z_.:-]{1,200}$")
EMAIL = re.compile(r"[^\s@<>\"',;()]+@[^\s@<>\"',;()]+\.[A-Za-z]{2,}")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ filters


def _when(value: datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return utc(moment).strftime("%d %b %Y, %H:%M UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return "< 1 min"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def redact(text: str) -> str:
    """A timeline detail without email addresses (the page shows ids, not people)."""
    return EMAIL.sub("[email address]", text)


def _segment(value: str) -> str:
    """An id as one segment of a path (a slash in an account id included): /ops/accounts/{{ id|segment }}."""
    return quote(str(value), safe="")


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_env.filters["when"] = _when
_env.filters["duration"] = _duration
_env.filters["pct"] = ops_chart.pct
_env.filters["signed_pct"] = ops_chart.signed_pct
_env.filters["redact"] = redact
_env.filters["segment"] = _segment
_env.filters["score"] = hl.shown_number
_env.filters["points"] = hl.shown_change
templates = Jinja2Templates(env=_env)


# ------------------------------------------------------------------------------------------ plumbing


pages = SignedPages("/ops", "pb_ops", "ops-", (ROLE,), templates)
_session = pages.session
_redirect = pages.redirect
_db = pages.db


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page with the caller and the session's CSRF token (for the sign-out form) when signed in."""
    session = context.get("session")
    csrf = pages.signer(request).csrf_token(session[1]) if session else ""
    caller = session[0] if session else None
    health = bool(get_state(request).scorecards)  # the header's Health link: only with scorecards
    return pages.page(request, name, {**context, "caller": caller, "csrf": context.get("csrf", csrf),
                                      "health_link": health}, status)


def _error(request: Request, session: tuple[Caller, str] | None, status: int, title: str, message: str) -> Response:
    return _page(request, "ops/error.html", {"session": session, "status": status, "title": title,
                                             "message": message}, status)


# --------------------------------------------------------------------------------------- sign in/out


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    if _session(request):
        return _redirect(request, "/ops")
    return pages.login_form(request, "ops/login.html", {"caller": None})


@router.post("/login")
async def login(request: Request) -> Response:
    checked = pages.check_login(request, await request.form())
    if isinstance(checked, str):
        return _redirect(request, "/ops/login", checked, "error")
    caller, token = checked
    if caller.role != ROLE:
        where = " The CSM inbox is at /inbox." if caller.role == "csm" else ""
        return _error(request, None, 403, "Forbidden",
                      f"A {caller.role} token cannot open the ops page: sign in with an ops token.{where}")
    return pages.signed_in(request, caller, token)


@router.post("/logout")
async def logout(request: Request) -> Response:
    return pages.sign_out(request, await request.form(), "Sign out did not come from this page: still signed in.")


@router.get("/ops.css")
def stylesheet() -> Response:
    return Response((TEMPLATE_DIR / "ops" / "ops.css").read_bytes(), media_type="text/css",
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------------------------------ the library


def _trigger(p: Playbook) -> str:
    if p.trigger.type == "event":
        return f"event {p.trigger.event}"
    if p.trigger.type == "schedule":
        return f"schedule {p.trigger.cron}"
    return "manual"


@router.get("", response_class=HTMLResponse)
def library(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/ops/login")
    state = get_state(request)
    RP = t.RunProgress
    with db_session(_db(request)) as s:
        rows = s.execute(select(RP.playbook_id, RP.status, func.count()).group_by(RP.playbook_id, RP.status)).all()
    counts: dict[str, dict[str, int]] = {}
    for playbook_id, status, n in rows:
        counts.setdefault(playbook_id, {})[status] = n
    playbooks = [
        {
            "id": p.id, "title": p.title, "version": p.version[:8], "trigger": _trigger(p),
            "live": counts.get(p.id, {}).get("running", 0), "failed": counts.get(p.id, {}).get("failed", 0),
            "entered": sum(counts.get(p.id, {}).values()), "control": p.settings.control,
        }
        for p in sorted(state.library.values(), key=lambda p: p.id)
    ]
    others = sorted(set(counts) - set(state.library))  # runs of playbooks no longer valid in the library
    return _page(request, "ops/library.html", {"session": session, "playbooks": playbooks, "others": others})


# ------------------------------------------------------------------------------------------ a playbook


@dataclass(frozen=True)
class Filters:
    version: str | None
    since: datetime | None
    since_text: str


def _filters(request: Request) -> Filters | str:
    """The version and since filters of the query string, or what is wrong with them."""
    version = request.query_params.get("version", "").strip() or None
    since_text = request.query_params.get("since", "").strip()
    if version is not None and not VERSION.match(version):
        return "version: give a playbook version (at least 4 of its letters and digits), or none for all versions"
    since = None
    if since_text:
        try:
            if len(since_text) > 40:
                raise ValueError
            since = utc(datetime.fromisoformat(since_text))
        except ValueError:
            return f"since: {since_text[:40]!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM, UTC)"
    return Filters(version, since, since_text)


def _run_rows(s: Any, playbook_id: str, f: Funnel, status: str) -> tuple[list[t.RunProgress], int]:
    RP = t.RunProgress
    where = [RP.playbook_id == playbook_id, RP.status == status]
    if f.version is not None:
        where.append(RP.version == f.version)
    if f.since is not None:
        bound = f.since.replace(tzinfo=None) if s.get_bind().dialect.name == "sqlite" else f.since
        where.append(RP.started_at >= bound)
    order = RP.started_at.desc() if status == "running" else RP.ended_at.desc()
    total = s.scalar(select(func.count()).select_from(RP).where(*where)) or 0
    rows = list(s.scalars(select(RP).where(*where).order_by(order, RP.run_key).limit(LIST_LIMIT)))
    s.expunge_all()
    return rows, total


@router.get("/playbooks/{playbook_id}", response_class=HTMLResponse)
def playbook_page(playbook_id: str, request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/ops/login")
    state = get_state(request)
    playbook = state.library.get(playbook_id)
    filters = _filters(request)
    if isinstance(filters, str):
        return _error(request, session, 422, "Invalid request", filters)
    with db_session(_db(request)) as s:
        try:
            f = playbook_funnel(s, playbook_id, playbook, version=filters.version, since=filters.since)
        except UnknownPlaybook:
            missing = f"No playbook {playbook_id!r} in the library or in any run."
            return _error(request, session, 404, "Not Found", missing)
        except UnknownVersion as err:
            return _error(request, session, 404, "Not Found", f"version: {err}")
        except FunnelError as err:
            return _error(request, session, 422, "Invalid request", f"version: {err}")
        live, live_total = _run_rows(s, playbook_id, f, "running")
        failed, failed_total = _run_rows(s, playbook_id, f, "failed")
    # steps without an id are counted by their path (steps.1): say what they are, from the library's version
    unnamed = {}
    if playbook is not None and f.version in (None, playbook.version):
        unnamed = {step.path: (step.kind, step.name or "") for step in playbook.walk() if not step.id}
    kinds = {path: f"{kind}, no id" for path, (kind, _) in unnamed.items()}
    steps, ended = ops_chart.funnel_rows(f, kinds)
    context = {
        "session": session, "playbook": playbook, "playbook_id": playbook_id, "f": f, "filters": filters,
        "trigger": _trigger(playbook) if playbook else "", "steps": steps, "ended": ended,
        "chart": ops_chart.funnel_chart(f, kinds=kinds),
        "unnamed": unnamed,
        "comparisons": [(c, ops_chart.interval_chart(c, f"interval-{i}")) for i, c in enumerate(f.comparisons)],
        "difference_words": ops_chart.difference_words, "live": live, "live_total": live_total,
        "failed": failed, "failed_total": failed_total, "limit": LIST_LIMIT, "stop_exit": STOP_EXIT,
        "describe": ops_chart.describe,
    }
    return _page(request, "ops/playbook.html", context)


# ------------------------------------------------------------------------------------------ a run


async def _timeline(request: Request, workflow_id: str) -> tuple[RunState | None, str, str]:
    """The run's state from its workflow (a query a worker answers), its Temporal status, or why not."""
    try:
        state, status = await asyncio.wait_for(
            run_service.run_state(get_state(request).client, workflow_id), QUERY_SECONDS
        )
        return state, status, ""
    except TimeoutError:
        return None, "", (f"No worker answered within {QUERY_SECONDS:g} s: the timeline shows when a worker of this "
                          "playbook's task queue runs. The progress above is the engine's own record.")
    except Exception as err:  # noqa: BLE001 - the page says what went wrong instead of failing
        log.info("ops page: the timeline of %s could not be read: %s", workflow_id, err)
        return None, "", ("The timeline could not be read from Temporal (no worker or no server answered). "
                          "The progress above is the engine's own record.")


@router.get("/runs/{run_key}", response_class=HTMLResponse)
async def run_page(run_key: str, request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/ops/login")
    RP, RSP = t.RunProgress, t.RunStepProgress
    with db_session(_db(request)) as s:
        run = s.get(RP, run_key) if RUN_KEY.match(run_key) else None
        if run is None:
            return _error(request, session, 404, "Not Found", f"No run {run_key!r} is recorded.")
        steps = list(s.scalars(select(RSP).where(RSP.run_key == run_key).order_by(RSP.at, RSP.step_id)))
        # a later enrollment under the same workflow id: Temporal's query would answer for that one
        later = s.scalar(
            select(RP.run_key).where(RP.workflow_id == run.workflow_id, RP.run_key != run_key,
                                     RP.started_at > run.started_at).limit(1)
        )
        s.expunge_all()
    state: RunState | None = None
    temporal_status, why = "", ""
    if later:
        why = ("This workflow id was enrolled again later: Temporal answers for the newer run, so this run's "
               "timeline is not read. The progress above is the engine's own record.")
    else:
        state, temporal_status, why = await _timeline(request, run.workflow_id)
    playbook = get_state(request).library.get(run.playbook_id)
    unnamed: dict[str, str] = {}  # steps without an id are reported by path: their kind, from the same version
    if playbook is not None and playbook.version == run.version:
        unnamed = {step.path: step.kind for step in playbook.walk() if not step.id}
    return _page(request, "ops/run.html", {
        "session": session, "run": run, "steps": steps, "state": state, "temporal_status": temporal_status,
        "why": why, "later": later, "unnamed": unnamed,
    })


# ------------------------------------------------------------------------------------------ health


def _band_rows(card: Scorecard, counts: dict[str | None, int]) -> list[ops_chart.BandRow]:
    """A scorecard's accounts per band in its band order (every band, empty ones too), then bands of an older
    version of it that accounts are still in, then the accounts whose score went (every measure missing)."""
    names = [b.name for b in card.bands]
    rows = [ops_chart.BandRow(name, counts.get(name, 0), rank) for rank, name in enumerate(names)]
    rows += [ops_chart.BandRow(f"{band} (not a band of this version)", n, -1)
             for band, n in sorted((b, n) for b, n in counts.items() if b is not None and b not in names)]
    if counts.get(None):
        rows.append(ops_chart.BandRow("no score", counts[None], -1))
    return rows


def _top(reasons: list[dict[str, Any]]) -> dict[str, Any] | None:
    return reasons[0] if reasons else None


@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/ops/login")
    cards = get_state(request).scorecards
    since = datetime.now(UTC) - timedelta(days=CHANGED_DAYS)
    sections = []
    if cards:
        with db_session(_db(request)) as s:
            counts = ho.band_counts(s)
            for i, card in enumerate(cards):
                rows = _band_rows(card, counts.get(card.id, {}))
                changes, changes_total = ho.band_changes(s, card.id, since, LIST_LIMIT)
                worst = card.bands[0].name if card.bands else None
                low = ho.lowest(s, card.id, worst, LIST_LIMIT) if worst else []
                sections.append({
                    "card": card, "rows": rows, "bands": len(card.bands),
                    "scored": sum(r.accounts for r in rows if r.label != "no score"),
                    "unscored": counts.get(card.id, {}).get(None, 0),
                    "chart": ops_chart.bands_chart(f"Accounts per band of {card.title}", rows, len(card.bands),
                                                   f"bands-{i}"),
                    "changes": [(c, _top(c.reasons)) for c in changes], "changes_total": changes_total,
                    "worst": worst, "worst_total": counts.get(card.id, {}).get(worst, 0) if worst else 0,
                    "lowest": [(x, _top(hl.holding_down(card.id, x.components, top=1))) for x in low],
                })
    return _page(request, "ops/health.html", {
        "session": session, "sections": sections, "days": CHANGED_DAYS, "limit": LIST_LIMIT,
        "band_words": ops_chart.band_words,
    })


@router.get("/accounts/{account_id:path}", response_class=HTMLResponse)
def account_page(account_id: str, request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/ops/login")
    titles = {c.id: c.title for c in get_state(request).scorecards}
    scores: list[dict[str, Any]] = []
    runs: list[t.RunProgress] = []
    runs_total = 0
    if 0 < len(account_id) <= 200:
        with db_session(_db(request)) as s:
            for h in sorted(health_of(s, account_id, history_limit=0), key=lambda h: h.scorecard_id):
                scores.append({
                    "h": h, "title": titles.get(h.scorecard_id, h.scorecard_id),
                    "known": h.scorecard_id in titles,
                    "change": None if h.score is None or h.previous is None else h.score - h.previous,
                    "change_thirty": None if h.score is None or h.thirty_days is None else h.score - h.thirty_days,
                    "holding_down": hl.holding_down(h.scorecard_id, h.components),
                    "history": hs.history(s, account_id, h.scorecard_id, HISTORY_LIMIT),  # with each cause
                })
            runs, runs_total = ho.runs_of_account(s, account_id, LIST_LIMIT)
            s.expunge_all()
    if not scores and not runs_total:
        return _error(request, session, 404, "Not Found",
                      f"No health score and no run is recorded for account {account_id!r}.")
    return _page(request, "ops/account.html", {
        "session": session, "account_id": account_id, "scores": scores, "runs": runs, "runs_total": runs_total,
        "limit": LIST_LIMIT, "history_limit": HISTORY_LIMIT,
    })
