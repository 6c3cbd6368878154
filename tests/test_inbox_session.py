"""The inbox's sign-in, session cookie and CSRF checks, in process (no Temporal: nothing here reaches a run).

The browser test (test_inbox_browser.py) covers answering approvals and tasks end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.deps import AppState
from api.security import create_token, hash_token
from engine.runtime.settings import Settings
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.paths import PLAYBOOKS


@pytest.fixture
def inbox(tmp_path: Path):
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS))
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    app.state.engine = AppState(settings=settings, client=object())  # type: ignore[arg-type]
    return app, settings


def run(app, steps):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await steps(client)

    return asyncio.run(go())


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def flash(page: httpx.Response) -> str:
    found = re.search(r'class="flash[^"]*"[^>]*>([^<]*)<', page.text)
    return found.group(1) if found else ""


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/inbox/login")
    return await client.post("/inbox/login", data={"token": token, "csrf": csrf(form)}, follow_redirects=True)


def test_sign_in_keeps_a_signed_hash_in_an_httponly_lax_cookie(inbox):
    app, settings = inbox
    token = create_token(settings.db_url, "Jonas", "csm", "csm-de")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        first = await client.get("/inbox")
        assert first.status_code == 303 and first.headers["location"] == "/inbox/login"
        form = await client.get("/inbox/login")
        answer = await client.post("/inbox/login", data={"token": token, "csrf": csrf(form)})
        assert answer.status_code == 303 and answer.headers["location"] == "/inbox"
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("pb_inbox_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/inbox" in cookie
        assert token not in cookie
        page = await client.get("/inbox")
        assert page.status_code == 200 and "Signed in as <strong>Jonas</strong>" in page.text
        assert flash(page) == "Signed in as Jonas."
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        return cookie

    cookie = run(app, steps)
    # the signed payload: the token's hash (as api_tokens keeps it), a CSRF nonce, the time; never the token
    payload = cookie.split("=", 1)[1].split(".")[0]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert body["h"] == hash_token(token) and set(body) == {"h", "n", "iat"}


def test_what_cannot_sign_in(inbox):
    app, settings = inbox
    system = create_token(settings.db_url, "backend", "system")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        assert flash(await sign_in(client, "pb_csm_not-a-token")) == "That API token is unknown or revoked."
        refused = await sign_in(client, system)
        assert flash(refused) == "A system token cannot sign in to the inbox: use a CSM or ops token."
        # without the login page's CSRF token (a forged cross-site sign-in) nothing happens
        forged = await client.post("/inbox/login", data={"token": system, "csrf": "x"}, follow_redirects=True)
        assert flash(forged) == "The sign-in form had expired: paste your token again."
        assert (await client.get("/inbox")).status_code == 303

    run(app, steps)


def test_posts_need_the_session_and_its_csrf_token(inbox):
    app, settings = inbox
    token = create_token(settings.db_url, "Jonas", "csm", "csm-de")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        page = await sign_in(client, token)
        no_csrf = await client.post("/inbox/tasks/t-1/outcome", data={"outcome": "connected"}, follow_redirects=True)
        assert flash(no_csrf).startswith("Not done (403 Forbidden): the form was not from this inbox page")
        unknown = await client.post(
            "/inbox/tasks/t-1/outcome", data={"outcome": "connected", "csrf": csrf(page)}, follow_redirects=True
        )
        assert flash(unknown) == "Not done (404 Not Found): no task t-1"
        invalid = await client.post(
            "/inbox/approvals/a-1", data={"decision": "maybe", "csrf": csrf(page)}, follow_redirects=True
        )
        assert flash(invalid).startswith("Not done (422 Invalid request): decision:")

        # a tampered session cookie is no session
        value = client.cookies["pb_inbox_session"]
        client.cookies.set("pb_inbox_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"), path="/inbox")
        assert (await client.get("/inbox")).status_code == 303
        client.cookies.set("pb_inbox_session", value, path="/inbox")
        assert (await client.get("/inbox")).status_code == 200

        # revoking the token ends its sessions
        with session(settings.db_url) as s:
            s.query(t.ApiToken).filter(t.ApiToken.token_hash == hash_token(token)).update({"revoked": True})
        gone = await client.post(
            "/inbox/tasks/t-1/outcome", data={"outcome": "connected", "csrf": csrf(page)}, follow_redirects=True
        )
        assert gone.url.path == "/inbox/login"
        assert flash(gone) == "Your session has ended: sign in again. Nothing changed."

    run(app, steps)


def test_sign_out(inbox):
    app, settings = inbox
    token = create_token(settings.db_url, "Mia", "csm", "csm-en")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        page = await sign_in(client, token)
        kept = await client.post("/inbox/logout", data={"csrf": "forged"}, follow_redirects=True)
        assert flash(kept) == "Sign out did not come from this inbox page: still signed in."
        out = await client.post("/inbox/logout", data={"csrf": csrf(page)}, follow_redirects=True)
        assert out.url.path == "/inbox/login" and flash(out) == "Signed out."
        assert (await client.get("/inbox")).status_code == 303

    run(app, steps)
