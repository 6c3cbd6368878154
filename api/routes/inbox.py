"""The CSM inbox: a server-rendered page under /inbox for approving drafts and recording call outcomes.

Plain HTML forms, no JavaScript. A CSM (or ops) signs in with their API token; the session cookie keeps
only the token's hash (api/web_session.py). Every form post carries the session's CSRF token, does what
the JSON API does (api/actions.py, same rules, same refusals) and redirects back (303) with a message.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.templating import Jinja2Templates

from engine.language import health as hl
from engine.storage import models as t
from engine.storage.db import session

from .. import actions
from ..deps import get_state
from ..problems import Problem
from ..schemas import DecisionIn, OutcomeIn
from ..security import Caller
from ..signed_pages import SignedPages

router = APIRouter(prefix="/inbox", include_in_schema=False)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
PEOPLE = ("ops", "csm")
SETTLE_SECONDS = 3.0  # how long a post waits for the run to close what was answered
FOLLOW_UP_SECONDS = 2.0  # and, after a call outcome, for what the run asks next (e.g. the email draft)
log = logging.getLogger(__name__)
_BAND_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,40}$")  # a band's name as a CSS class (health-red); else none


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


def _label(outcome: str) -> str:
    return outcome.replace("_", " ").capitalize()


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_env.filters["when"] = _when
_env.filters["label"] = _label
_env.filters["points"] = hl.shown_number
_env.filters["signed"] = hl.shown_change
templates = Jinja2Templates(env=_env)


# ------------------------------------------------------------------------------------------ plumbing


pages = SignedPages("/inbox", "pb_inbox", "", PEOPLE, templates)
_session = pages.session
_redirect = pages.redirect
_page = pages.page
_db = pages.db
_signer = pages.signer


def _refusal(problem: Problem) -> str:
    return f"Not done ({problem.status} {problem.title}): {problem.detail}"


def _invalid(err: ValidationError) -> str:
    return "Not done (422 Invalid request): " + "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'form'}: {e.get('msg', 'invalid')}" for e in err.errors()
    )


async def _wait_until(check: Callable[[], bool], seconds: float) -> bool:
    """Polls check() until it is true or seconds have passed: the run closes what was answered a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------- sign in/out


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    if _session(request):
        return _redirect(request, "/inbox")
    return pages.login_form(request, "inbox/login.html", {"caller": None})


@router.post("/login")
async def login(request: Request) -> Response:
    checked = pages.check_login(request, await request.form())
    if isinstance(checked, str):
        return _redirect(request, "/inbox/login", checked, "error")
    caller, token = checked
    if caller.role not in PEOPLE:
        refused = f"A {caller.role} token cannot sign in to the inbox: use a CSM or ops token."
        return _redirect(request, "/inbox/login", refused, "error")
    return pages.signed_in(request, caller, token)


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/inbox/login")
    caller, nonce = session
    return _page(request, "inbox/logout.html", {"caller": caller, "csrf": _signer(request).csrf_token(nonce)})


@router.post("/logout")
async def logout(request: Request) -> Response:
    return pages.sign_out(request, await request.form(), "Sign out did not come from this inbox page: still signed in.")


# ------------------------------------------------------------------------------------------ the inbox


@router.get("", response_class=HTMLResponse)
def inbox(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/inbox/login")
    caller, nonce = session
    db = _db(request)
    approvals = actions.pending_approvals(db, caller)
    tasks = actions.open_tasks(db, caller)
    return _page(
        request,
        "inbox/inbox.html",
        {
            "caller": caller,
            "csrf": _signer(request).csrf_token(nonce),
            "approvals": approvals,
            "tasks": tasks,
            "health": _health(db, {a.account_id for a in approvals} | {x.account_id for x in tasks}),
        },
    )


def _health(db: str, account_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Each account's scores as the cards show them (in scorecard id order): score, band and top reasons."""
    if not account_ids:
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    with session(db) as s:
        rows = s.scalars(
            select(t.HealthScore)
            .where(t.HealthScore.account_id.in_(sorted(account_ids)))
            .order_by(t.HealthScore.account_id, t.HealthScore.scorecard_id)
        ).all()
        for row in rows:
            band = row.band or ""
            found.setdefault(row.account_id, []).append({
                "scorecard": row.scorecard_id,
                "score": row.score,
                "band": band,
                "band_class": band if _BAND_CLASS.match(band) else "",
                "reasons": hl.holding_down(row.scorecard_id, row.components or []),
            })
    return found


@router.get("/inbox.css")
def stylesheet() -> Response:
    return Response((TEMPLATE_DIR / "inbox" / "inbox.css").read_bytes(), media_type="text/css",
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


async def _checked_form(request: Request) -> tuple[Caller, Any] | Response:
    """The caller and the posted form, or the redirect that refuses the post (signed out, or no CSRF token)."""
    form = await request.form()
    session = _session(request)
    if session is None:
        return _redirect(request, "/inbox/login", "Your session has ended: sign in again. Nothing changed.", "error")
    caller, nonce = session
    if not _signer(request).csrf_ok(nonce, form.get("csrf")):
        refused = "Not done (403 Forbidden): the form was not from this inbox page (CSRF check). Nothing changed."
        return _redirect(request, "/inbox", refused, "error")
    return caller, form


@router.post("/approvals/{approval_id}")
async def decide(approval_id: str, request: Request) -> Response:
    checked = await _checked_form(request)
    if isinstance(checked, Response):
        return checked
    caller, form = checked
    db = _db(request)
    decision = form.get("decision")
    comment = str(form.get("comment") or "").strip() or None
    row = actions.approval(db, approval_id)
    edits: dict[Literal["subject", "body"], str] = {}
    if decision == "approve" and row is not None and row.draft:
        # Browsers send a textarea's line breaks as CRLF; only what the CSM changed is an edit.
        subject = " ".join(str(form.get("subject", row.draft.get("subject", ""))).split())
        body = str(form.get("body", row.draft.get("body", ""))).replace("\r\n", "\n")
        if not subject:
            return _redirect(request, "/inbox", "Not done: the email needs a subject.", "error")
        if subject != row.draft.get("subject"):
            edits["subject"] = subject
        if body != row.draft.get("body"):
            edits["body"] = body
    try:
        answer = DecisionIn(decision=decision, comment=comment, edits=edits or None)
    except ValidationError as err:
        return _redirect(request, "/inbox", _invalid(err), "error")
    try:
        await actions.decide(db, get_state(request).client, caller, approval_id, answer)
    except Problem as problem:
        return _redirect(request, "/inbox", _refusal(problem), "error")
    except Exception:  # the engine unreachable, or a bug: a message, never a traceback
        log.exception("inbox: deciding approval %s failed", approval_id)
        return _redirect(request, "/inbox", "Not done: the workflow engine did not answer. Please try again.", "error")
    await _wait_until(lambda: (a := actions.approval(db, approval_id)) is None or a.status != "pending", SETTLE_SECONDS)
    if answer.decision == "reject":
        message = "Rejected — the email is not sent" if row is not None and row.draft else "Rejected"
    elif row is not None and row.draft:
        message = "Approved — the edited email goes out" if edits else "Approved — the email goes out"
    else:
        message = "Approved"
    return _redirect(request, "/inbox", message)


@router.post("/tasks/{task_id}/outcome")
async def record_outcome(task_id: str, request: Request) -> Response:
    checked = await _checked_form(request)
    if isinstance(checked, Response):
        return checked
    caller, form = checked
    db = _db(request)
    try:
        answer = OutcomeIn(outcome=str(form.get("outcome") or "").strip())
    except ValidationError as err:
        return _redirect(request, "/inbox", _invalid(err), "error")
    before = _asks(db, caller)
    try:
        done = await actions.record_outcome(db, get_state(request).client, caller, task_id, answer.outcome)
    except Problem as problem:
        return _redirect(request, "/inbox", _refusal(problem), "error")
    except Exception:
        log.exception("inbox: recording the outcome of task %s failed", task_id)
        return _redirect(request, "/inbox", "Not done: the workflow engine did not answer. Please try again.", "error")
    await _wait_until(lambda: (x := actions.task(db, task_id)) is None or x.status != "open", SETTLE_SECONDS)
    if done.wait:
        # The run goes on at once; when its next step asks the caller something (the email draft), show it.
        await _wait_until(lambda: bool(_asks(db, caller, done.workflow_id) - before), FOLLOW_UP_SECONDS)
    return _redirect(request, "/inbox", f"Recorded “{_label(answer.outcome)}” for the call: {done.title}")


def _asks(db: str, caller: Caller, workflow_id: str | None = None) -> set[str]:
    """Ids of what waits for the caller (of one run, when given)."""
    items: list[t.Approval | t.CallTask] = [*actions.pending_approvals(db, caller), *actions.open_tasks(db, caller)]
    return {
        a.approval_id if isinstance(a, t.Approval) else a.task_id
        for a in items
        if workflow_id is None or a.workflow_id == workflow_id
    }
