"""/u/{token}: the unsubscribe link of every email whose category allows opting out (RFC 8058 one-click).

The token (engine/storage/governance.py) is the recipient's address and the email's category, encrypted and
signed: it is the only credential, so there is no login, no cookie and no CSRF token here.

- GET shows what the link is for and never changes anything: mail scanners and link previews follow links.
- POST with the form body `List-Unsubscribe=One-Click` (what Gmail and Yahoo send when the reader clicks
  their own Unsubscribe button) unsubscribes from the token's category at once.
- The page's own forms post to the same URL: `action=unsubscribe`, or `action=preferences` with a
  `subscribed` field per category to keep.
A token that is not ours (forged, cut, altered) gets a 404 page saying so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from engine.language.policy import Policy
from engine.runtime.logs import mask_email
from engine.runtime.messaging import unsubscribe_tokens
from engine.storage import governance as gov
from engine.storage.db import session

from ..deps import get_state, library_policy

router = APIRouter(include_in_schema=False)

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
MAX_FORM_BYTES = 16_384
ONE_CLICK = ("List-Unsubscribe", "One-Click")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_env.filters["label"] = lambda name: str(name).replace("_", " ").replace("-", " ").capitalize()
CSS = (TEMPLATE_DIR / "unsubscribe" / "page.css").read_text()
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
HEADERS = {
    # the inline style by its hash, forms to this page only, nothing else loads
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the URL is the credential: it must not leak to another site
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Choice:
    name: str
    subscribed: bool


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(f"unsubscribe/{name}").render(css=CSS, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _invalid() -> HTMLResponse:
    return _render("invalid.html", 404, reason="This unsubscribe link was not made by us, or it is incomplete.")


def _recipient(request: Request, token: str) -> tuple[str, str] | None:
    return unsubscribe_tokens(get_state(request).settings).read(token)


def _choices(db_url: str, address: str, category: str, policy: Policy) -> list[Choice]:
    names = list(policy.opt_out_categories())
    if category not in names:
        names.append(category)  # the link's own category, even if the policy no longer lists it
    with session(db_url) as s:
        status = {c.category: c.status for c in gov.consents(s, address)}
    return [Choice(n, status.get(n) != gov.UNSUBSCRIBED) for n in names]


def _page(request: Request, address: str, category: str, done: str | None = None) -> HTMLResponse:
    state = get_state(request)
    choices = _choices(state.settings.db_url, address, category, library_policy(state))
    unsubscribed = not next(c.subscribed for c in choices if c.name == category)
    return _render(
        "page.html", address=mask_email(address), category=category, categories=choices, unsubscribed=unsubscribed,
        done=done,
    )


def _record(db_url: str, address: str, changes: dict[str, bool], source: str) -> None:
    now = datetime.now(UTC)
    with session(db_url) as s:
        for category, subscribed in changes.items():
            gov.set_consent(s, address, category, subscribed, source, now)


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The posted fields (urlencoded or multipart); None when the body is too large or unreadable."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - a malformed multipart body is the sender's problem, not a 500
            return None
        fields: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields.setdefault(key, []).append(value)
        return fields
    try:
        return parse_qs(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None


@router.get("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    recipient = _recipient(request, token)
    if recipient is None:
        return _invalid()
    address, category = recipient
    return await asyncio.to_thread(_page, request, address, category)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(request: Request, token: str) -> HTMLResponse:
    recipient = _recipient(request, token)
    if recipient is None:
        return _invalid()
    address, category = recipient
    form = await _form(request)
    if form is None:
        return _render("invalid.html", 400, reason="The form could not be read.")
    db_url = get_state(request).settings.db_url
    label = _env.filters["label"](category)
    if form.get(ONE_CLICK[0]) == [ONE_CLICK[1]]:  # RFC 8058: the mail client's own button, no page in between
        await asyncio.to_thread(_record, db_url, address, {category: False}, "one_click")
        done = f"You are unsubscribed from {label} emails."
    elif form.get("action") == ["unsubscribe"]:
        await asyncio.to_thread(_record, db_url, address, {category: False}, "link")
        done = f"Done: you will get no more {label} emails."
    elif form.get("action") == ["preferences"]:
        state = get_state(request)
        names = [c.name for c in await asyncio.to_thread(_choices, db_url, address, category, library_policy(state))]
        keep = set(form.get("subscribed", []))
        await asyncio.to_thread(_record, db_url, address, {n: n in keep for n in names}, "preferences")
        done = "Your preferences are saved."
    else:
        return _render("invalid.html", 400, reason="Nothing to do: use the buttons of the unsubscribe page.")
    return await asyncio.to_thread(_page, request, address, category, done)
