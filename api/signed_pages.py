"""The plumbing of server-rendered pages people sign in to with an API token: the CSM inbox (/inbox) and the ops
page (/ops). One `SignedPages` per page holds its cookies (under its own path), its signing purposes and its
templates; api/web_session.py signs the cookies.

A session cookie holds the token's SHA-256 and a per-session nonce, never the token; each request looks the hash
up again (a revoked token ends its sessions). The sign-in form's CSRF nonce lives in a short login cookie before
there is a session; every form after sign-in carries the session's CSRF token. Flash messages travel in a signed
cookie for one redirect. Every page gets the same security headers.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData
from starlette.templating import Jinja2Templates

from .deps import get_state
from .security import Caller, caller_for, caller_for_hash, hash_token
from .web_session import Signer, signer_for

SESSION_MAX_AGE = 12 * 3600
LOGIN_MAX_AGE = 3600
FLASH_MAX_AGE = 120
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

Session = tuple[Caller, str]  # the signed-in caller and their session's nonce


@dataclass(frozen=True)
class SignedPages:
    path: str  # where the pages and their cookies live: /inbox, /ops
    cookie_prefix: str  # pb_inbox -> pb_inbox_session, pb_inbox_login, pb_inbox_flash
    purpose_prefix: str  # what cookies are signed for: "" (session, login, flash) or "ops-" (ops-session, ...)
    roles: tuple[str, ...]  # who may sign in
    templates: Jinja2Templates

    @property
    def session_cookie(self) -> str:
        return f"{self.cookie_prefix}_session"

    @property
    def login_cookie(self) -> str:
        return f"{self.cookie_prefix}_login"

    @property
    def flash_cookie(self) -> str:
        return f"{self.cookie_prefix}_flash"

    def signer(self, request: Request) -> Signer:
        return signer_for(get_state(request).settings)

    def db(self, request: Request) -> str:
        return get_state(request).settings.db_url

    def session(self, request: Request) -> Session | None:
        """The signed-in caller (of a role that may sign in here) and their session's nonce, or None."""
        cookie = request.cookies.get(self.session_cookie)
        data = self.signer(request).loads(f"{self.purpose_prefix}session", cookie, SESSION_MAX_AGE)
        if not data or not isinstance(data.get("h"), str) or not isinstance(data.get("n"), str):
            return None
        caller = caller_for_hash(self.db(request), data["h"])
        if caller is None or caller.role not in self.roles:
            return None
        return caller, data["n"]

    def set_cookie(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        secure = request.url.scheme == "https"
        response.set_cookie(name, value, max_age=max_age, path=self.path, httponly=True, samesite="lax", secure=secure)

    def forget(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path=self.path, httponly=True, samesite="lax")

    @staticmethod
    def secure(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    def redirect(self, request: Request, to: str, message: str | None = None, kind: str = "ok") -> Response:
        """A 303 to ``to``, with a message shown there once."""
        response = RedirectResponse(to, status_code=303)
        if message:
            signed = self.signer(request).dumps(f"{self.purpose_prefix}flash", {"m": message, "k": kind})
            self.set_cookie(request, response, self.flash_cookie, signed, FLASH_MAX_AGE)
        return self.secure(response)

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        """A template rendered with the flash message waiting for it (which is then forgotten)."""
        cookie = request.cookies.get(self.flash_cookie)
        flash = self.signer(request).loads(f"{self.purpose_prefix}flash", cookie, FLASH_MAX_AGE)
        response = self.templates.TemplateResponse(request, name, {**context, "flash": flash}, status_code=status)
        if self.flash_cookie in request.cookies:
            self.forget(response, self.flash_cookie)
        return self.secure(response)

    def login_form(self, request: Request, name: str, context: dict[str, Any]) -> Response:
        """The sign-in page, with the CSRF token of a nonce kept in the login cookie (the same one while it lasts)."""
        signer = self.signer(request)
        data = signer.loads(f"{self.purpose_prefix}login", request.cookies.get(self.login_cookie), LOGIN_MAX_AGE)
        nonce = data["n"] if data and isinstance(data.get("n"), str) else secrets.token_urlsafe(16)
        response = self.page(request, name, {**context, "csrf": signer.csrf_token(nonce)})
        signed = signer.dumps(f"{self.purpose_prefix}login", {"n": nonce})
        self.set_cookie(request, response, self.login_cookie, signed, LOGIN_MAX_AGE)
        return response

    def check_login(self, request: Request, form: FormData) -> tuple[Caller, str] | str:
        """The caller and token a sign-in form gives, or why it is refused (the role is the caller's to check)."""
        signer = self.signer(request)
        data = signer.loads(f"{self.purpose_prefix}login", request.cookies.get(self.login_cookie), LOGIN_MAX_AGE)
        if not signer.csrf_ok(data.get("n") if data else None, form.get("csrf")):
            return "The sign-in form had expired: paste your token again."
        token = str(form.get("token") or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        caller = caller_for(self.db(request), token) if token else None
        if caller is None:
            return "That API token is unknown or revoked."
        return caller, token

    def signed_in(self, request: Request, caller: Caller, token: str) -> Response:
        """The redirect to the pages after a sign-in, carrying the new session."""
        response = self.redirect(request, self.path, f"Signed in as {caller.name}.")
        session = self.signer(request).dumps(
            f"{self.purpose_prefix}session", {"h": hash_token(token), "n": secrets.token_urlsafe(16)}
        )
        self.set_cookie(request, response, self.session_cookie, session, SESSION_MAX_AGE)
        self.forget(response, self.login_cookie)
        return response

    def sign_out(self, request: Request, form: FormData, refused: str) -> Response:
        """Ends the session when the form came from one of its pages (its CSRF token); else says ``refused``."""
        session = self.session(request)
        if session is not None and not self.signer(request).csrf_ok(session[1], form.get("csrf")):
            return self.redirect(request, self.path, refused, "error")
        response = self.redirect(request, f"{self.path}/login", "Signed out.")
        self.forget(response, self.session_cookie)
        return response
