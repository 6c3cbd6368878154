"""Signed cookies for the web inbox: the session, flash messages and CSRF tokens.

The session cookie holds the SHA-256 of the API token the CSM signed in with (the same hash the
api_tokens table keeps), never the token itself, plus a random per-session nonce and when it was issued.
Every request looks the hash up again, so revoking the token ends its inbox sessions too.
Cookies are HMAC-SHA256 signed, one key per purpose derived from one secret:

- the inbox_secret setting (PLAYBOOK_INBOX_SECRET, or the settings file) when set: give every API process
  the same value, else
- a random key generated once into <PLAYBOOK_HOME>/inbox-session.key (mode 0600), else
- a random key for this process only (sessions then end when it restarts).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from engine.runtime.key_files import secret_or_key_file
from engine.runtime.settings import Settings, reveal

SECRET_ENV = "PLAYBOOK_INBOX_SECRET"
KEY_FILE = "inbox-session.key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _key(self, purpose: str) -> bytes:
        return hmac.new(self._secret, f"playbook-inbox/{purpose}".encode(), hashlib.sha256).digest()

    def _mac(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self._key(purpose), payload.encode(), hashlib.sha256).digest())

    def dumps(self, purpose: str, data: dict[str, Any]) -> str:
        """data, signed for purpose and stamped with the time: <base64 json>.<base64 mac>."""
        payload = _b64(json.dumps({**data, "iat": int(time.time())}, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def loads(self, purpose: str, value: str | None, max_age: int) -> dict[str, Any] | None:
        """The data when the value was signed by us for purpose no more than max_age seconds ago; else None."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("iat"), int):
            return None
        if not 0 <= time.time() - data["iat"] <= max_age:
            return None
        return data

    def csrf_token(self, nonce: str) -> str:
        """The hidden-field token of the forms of the session (or login page) with this nonce."""
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str | None, token: object) -> bool:
        return bool(nonce) and isinstance(token, str) and hmac.compare_digest(token, self.csrf_token(nonce or ""))


@functools.lru_cache(maxsize=8)
def signer_for(settings: Settings) -> Signer:
    return Signer(_secret(settings))


def _secret(settings: Settings) -> bytes:
    return secret_or_key_file(
        reveal(settings.inbox_secret), SECRET_ENV, Path(settings.home) / KEY_FILE,
        "inbox sessions end when this process restarts",
    )
