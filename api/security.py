"""API tokens (stored hashed) and signed events (HMAC-SHA256 over timestamp and body, replays refused)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from engine.storage import models as t
from engine.storage.db import session

ROLES = ("ops", "csm", "system")
SIGNATURE_HEADER = "X-Playbook-Signature"
TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class Caller:
    name: str
    role: str  # ops | csm | system
    csm_id: str | None = None

    @property
    def is_ops(self) -> bool:
        return self.role == "ops"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db_url: str, name: str, role: str, csm_id: str | None = None) -> str:
    """Creates a token and returns it; only its hash is kept, so it is shown once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "csm" and not csm_id:
        raise ValueError("a csm token needs the CSM's id")
    token = f"pb_{role}_{secrets.token_urlsafe(32)}"
    with session(db_url) as s:
        s.add(t.ApiToken(name=name, token_hash=hash_token(token), role=role, csm_id=csm_id,
                         created_at=datetime.now(UTC)))
    return token


def caller_for(db_url: str, token: str) -> Caller | None:
    return caller_for_hash(db_url, hash_token(token))


def caller_for_hash(db_url: str, digest: str) -> Caller | None:
    """The caller whose live (unrevoked) token has this SHA-256; the inbox's session keeps only the hash."""
    with session(db_url) as s:
        row = s.scalar(select(t.ApiToken).where(t.ApiToken.token_hash == digest, t.ApiToken.revoked.is_(False)))
        return Caller(row.name, row.role, row.csm_id) if row else None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value the product's backend sends: t=<unix seconds>,v1=<hex hmac>."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={_signature(secret, ts, body)}"


def check_signature(secret: str, header: str, body: bytes, now: float | None = None) -> str | None:
    """None when the signature is good and fresh; else why not."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return f"{SIGNATURE_HEADER} must look like t=<unix seconds>,v1=<hex HMAC-SHA256>"
    try:
        ts = int(parts["t"])
    except ValueError:
        return "the signature timestamp is not a number"
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_SECONDS:
        return f"the signature timestamp is more than {TOLERANCE_SECONDS} s away from now (replayed or clock skew)"
    if not hmac.compare_digest(_signature(secret, ts, body), parts["v1"]):
        return "the signature does not match the body"
    return None
