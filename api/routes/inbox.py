"""The CSM inbox: a server-rendered page under /inbox for approving drafts and recording call outcomes.

Plain HTML forms, no JavaScript. A CSM (or ops) signs in with their API token; the session cookie keeps
only the token's hash (api/web_session.py). Every form post carries the session's CSRF token, does what
the JSON API does (api/actions.py, same rules, same refusals) and redirects back (303) with a message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.templating import Jinja2Templates

from engine.storage import models as t
from engine.storage.db import session

from .. import actions
from ..deps import get_state
from ..problems import Problem
from ..schemas import DecisionIn, OutcomeIn
from ..security import Caller, caller_for, caller_for_hash, hash_token
from ..web_session import Signer, signer_for
from . import health

router = APIRouter(prefix="/inbox", include_in_schema=False)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
SESSION_COOKIE = "pb_inbox_session"
LOGIN_COOKIE = "pb_inbox_login"  # the login form's CSRF nonce, before there is a session
FLASH_COOKIE = "pb_inbox_flash"
SESSION_MAX_AGE = 12 * 3600
LOGIN_MAX_AGE = 3600
FLASH_MAX_AGE = 120
PEOPLE = ("ops", "csm")
SETTLE_SECONDS = 3.0  # how long a post waits for the run to close what was answered
FOLLOW_UP_SECONDS = 2.0  # and, after a call outcome, for what the run asks next (e.g. the email draft)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

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


def _points(value: float | None) -> str:
    """A score or a measure's value as the inbox shows it: 42.5, 40 (no .0), or a dash when missing."""
    if value is None:
        return "–"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _signed(value: float) -> str:
    """Points a measure costs or gives, with a real minus sign: −30, +4.5."""
    return ("−" if value < 0 else "+") + _points(abs(value))


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_env.filters["when"] = _when
_env.filters["label"] = _label
_env.filters["points"] = _points
_env.filters["signed"] = _signed
templates = Jinja2Templates(env=_env)


# ------------------------------------------------------------------------------------------ plumbing


def _signer(request: Request) -> Signer:
    return signer_for(get_state(request).settings)


def _db(request: Request) -> str:
    return get_state(request).settings.db_url


def _session(request: Request) -> tuple[Caller, str] | None:
    """The signed-in caller and their session's nonce, or None."""
    data = _signer(request).loads("session", request.cookies.get(SESSION_COOKIE), SESSION_MAX_AGE)
    if not data or not isinstance(data.get("h"), str) or not isinstance(data.get("n"), str):
        return None
    caller = caller_for_hash(_db(request), data["h"])
    if caller is None or caller.role not in PEOPLE:
        return None
    return caller, data["n"]


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/inbox", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


def _forget(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/inbox", httponly=True, samesite="lax")


def _secure(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def _redirect(request: Request, to: str, message: str | None = None, kind: str = "ok") -> Response:
    response = RedirectResponse(to, status_code=303)
    if message:
        signed = _signer(request).dumps("flash", {"m": message, "k": kind})
        _cookie(request, response, FLASH_COOKIE, signed, FLASH_MAX_AGE)
    return _secure(response)


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    flash = _signer(request).loads("flash", request.cookies.get(FLASH_COOKIE), FLASH_MAX_AGE)
    response = templates.TemplateResponse(request, name, {**context, "flash": flash}, status_code=status)
    if FLASH_COOKIE in request.cookies:
        _forget(response, FLASH_COOKIE)
    return _secure(response)


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
    signer = _signer(request)
    data = signer.loads("login", request.cookies.get(LOGIN_COOKIE), LOGIN_MAX_AGE)
    nonce = data["n"] if data and isinstance(data.get("n"), str) else secrets.token_urlsafe(16)
    response = _page(request, "inbox/login.html", {"csrf": signer.csrf_token(nonce), "caller": None})
    _cookie(request, response, LOGIN_COOKIE, signer.dumps("login", {"n": nonce}), LOGIN_MAX_AGE)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    signer = _signer(request)
    data = signer.loads("login", request.cookies.get(LOGIN_COOKIE), LOGIN_MAX_AGE)
    if not signer.csrf_ok(data.get("n") if data else None, form.get("csrf")):
        return _redirect(request, "/inbox/login", "The sign-in form had expired: paste your token again.", "error")
    token = str(form.get("token") or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    caller = caller_for(_db(request), token) if token else None
    if caller is None:
        return _redirect(request, "/inbox/login", "That API token is unknown or revoked.", "error")
    if caller.role not in PEOPLE:
        refused = f"A {caller.role} token cannot sign in to the inbox: use a CSM or ops token."
        return _redirect(request, "/inbox/login", refused, "error")
    response = _redirect(request, "/inbox", f"Signed in as {caller.name}.")
    session = signer.dumps("session", {"h": hash_token(token), "n": secrets.token_urlsafe(16)})
    _cookie(request, response, SESSION_COOKIE, session, SESSION_MAX_AGE)
    _forget(response, LOGIN_COOKIE)
    return response


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _redirect(request, "/inbox/login")
    caller, nonce = session
    return _page(request, "inbox/logout.html", {"caller": caller, "csrf": _signer(request).csrf_token(nonce)})


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    session = _session(request)
    if session is not None and not _signer(request).csrf_ok(session[1], form.get("csrf")):
        return _redirect(request, "/inbox", "Sign out did not come from this inbox page: still signed in.", "error")
    response = _redirect(request, "/inbox/login", "Signed out.")
    _forget(response, SESSION_COOKIE)
    return response


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
                "reasons": health.reasons(row.scorecard_id, list(row.components or [])),
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
