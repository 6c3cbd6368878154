"""Messaging governance records: consent per contact and category, the suppression list, unsubscribe
tokens and links, and webhook events seen once. Used by the email activities and by the API.

Addresses are stored normalised (``normalize_address``), so "Anna <ANNA@X.example>" and "anna@x.example"
are one person. Times are passed in by the caller (the workflow's clock, or the API's), never read here.
Writes are upserts keyed by a unique constraint, so they are idempotent and safe when two callers race.
See docs/messaging.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, delete, literal, select, text, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import models as t
from .db import in_chunks, utc

SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"


_NAMED = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<address>[^<>]*)>\s*$", re.DOTALL)


def split_address(text: str) -> tuple[str, str]:
    """(display name, address) of one recipient as written: "Anna <a@x.example>", '"Kraus, Anna" <a@x.example>',
    also "Kraus, Anna <a@x.example>" (one recipient whose name has a comma, as templates write it), or a
    bare address. Anything else is kept whole as the address, so "a@x.example, b@x.example" is invalid
    rather than silently one of the two."""
    match = _NAMED.match(text or "")
    if match is None:
        return "", (text or "").strip()
    name = match["name"]
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name, match["address"].strip()


@functools.lru_cache(maxsize=65536)
def normalize_address(text: str) -> str | None:
    """The address alone, lower-cased: "Anna <ANNA@X.example>" -> "anna@x.example"; None when it is no
    valid address. Cached: the same few addresses are checked for every email a contact gets."""
    _name, address = split_address(text)
    if not address or "@" not in address:
        return None
    try:
        return validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def _required(email: str) -> str:
    address = normalize_address(email)
    if address is None:
        raise ValueError(f"not a valid email address: {email!r}")
    return address


def _insert(s: Session, table: Any) -> Any:
    """INSERT with ON CONFLICT for the session's database (SQLite and PostgreSQL spell it alike)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"messaging governance supports SQLite and PostgreSQL, not {dialect}")


# consent -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentView:
    category: str
    status: str  # subscribed | unsubscribed
    source: str
    at: datetime


def set_consent(s: Session, email: str, category: str, subscribed: bool, source: str, at: datetime) -> None:
    """Records a contact's choice for a category. Idempotent: the same choice again keeps its first source
    and time (when it was made); a different choice replaces it. Raises ValueError for an invalid address."""
    table = t.Consent.__table__
    status = SUBSCRIBED if subscribed else UNSUBSCRIBED
    statement = _insert(s, table).values(email=_required(email), category=category, status=status,
                                          source=source, at=at)
    s.execute(statement.on_conflict_do_update(
        index_elements=[table.c.email, table.c.category],
        set_={"status": status, "source": source, "at": at},
        where=table.c.status != status,
    ))


def consents(s: Session, email: str) -> list[ConsentView]:
    """A contact's choices, by category (empty for an invalid address: nobody can have chosen for it)."""
    address = normalize_address(email)
    if address is None:
        return []
    rows = s.scalars(select(t.Consent).where(t.Consent.email == address).order_by(t.Consent.category))
    return [ConsentView(category=r.category, status=r.status, source=r.source, at=r.at) for r in rows]


def is_unsubscribed(s: Session, emails: list[str], category: str) -> set[str]:
    """Which of the (normalised) addresses unsubscribed from the category."""
    return {address for address, _ in opt_outs(s, _normalised(emails), [category]).unsubscribed}


@dataclass(frozen=True)
class OptOuts:
    suppressed: dict[str, str]  # address -> reason
    unsubscribed: set[tuple[str, str]]  # (address, category)


def opt_outs(s: Session, addresses: Iterable[str], categories: Iterable[str]) -> OptOuts:
    """Of these normalised addresses: the suppressed ones with their reason and, for these categories, the
    unsubscribed ones. One query per 500 addresses (a UNION: one round trip, the check every governed email pays)."""
    chosen = sorted(set(categories))
    suppressed: dict[str, str] = {}
    unsubscribed: set[tuple[str, str]] = set()
    suppressions, consents = t.Suppression.__table__, t.Consent.__table__
    for chunk in in_chunks(sorted(set(addresses))):
        query = select(suppressions.c.email, literal("suppressed"), suppressions.c.reason).where(
            suppressions.c.email.in_(chunk))
        if chosen:
            query = union_all(query, select(consents.c.email, literal("unsubscribed"), consents.c.category).where(
                consents.c.email.in_(chunk), consents.c.category.in_(chosen),
                consents.c.status == UNSUBSCRIBED))  # type: ignore[assignment]
        for email, kind, value in s.connection().execute(query):
            if kind == "suppressed":
                suppressed[email] = value
            else:
                unsubscribed.add((email, value))
    return OptOuts(suppressed=suppressed, unsubscribed=unsubscribed)


def _normalised(emails: Iterable[str]) -> set[str]:
    return {a for a in (normalize_address(e) for e in emails) if a}


# suppression ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuppressionView:
    email: str
    reason: str  # bounced | spam_report | dropped | manual | unsubscribed_all | ...
    source: str
    detail: str
    created_at: datetime | None


def suppress(s: Session, email: str, reason: str, source: str, at: datetime, detail: str = "") -> bool:
    """Puts the address on the suppression list; True when it was not on it. Idempotent: an address already
    suppressed keeps its first reason and time (when it began). Raises ValueError for an invalid address."""
    table = t.Suppression.__table__
    statement = _insert(s, table).values(email=_required(email), reason=reason, source=source, detail=detail,
                                          created_at=at)
    # RETURNING says whether a row went in (psycopg's rowcount is -1 for this statement under SQLAlchemy 2.1)
    return s.execute(statement.on_conflict_do_nothing(index_elements=[table.c.email])
                     .returning(table.c.email)).first() is not None


def unsuppress(s: Session, email: str) -> bool:
    """Takes the address off the suppression list; False when it was not on it (or is no valid address)."""
    address = normalize_address(email)
    if address is None:
        return False
    table = t.Suppression.__table__
    return s.execute(delete(table).where(table.c.email == address).returning(table.c.email)).first() is not None


def list_suppressions(
    s: Session, *, email: str | None = None, limit: int = 100, offset: int = 0
) -> list[SuppressionView]:
    """The suppression list in address order, a page at a time; with ``email``, that address's entry or nothing."""
    query = select(t.Suppression).order_by(t.Suppression.email).limit(limit).offset(offset)
    if email is not None:
        address = normalize_address(email)
        if address is None:
            return []
        query = query.where(t.Suppression.email == address)
    return [SuppressionView(email=r.email, reason=r.reason, source=r.source, detail=r.detail,
                            created_at=r.created_at) for r in s.scalars(query)]


def suppressed(s: Session, emails: list[str]) -> dict[str, str]:
    """The (normalised) addresses among ``emails`` that are suppressed, with their reason."""
    return opt_outs(s, _normalised(emails), []).suppressed


# unsubscribe tokens and links ----------------------------------------------------------------------------

# the longest token read: an address (320) and a category, encrypted and base64-encoded, fit well below it
_MAX_TOKEN = 2000


def _fernet(secret: bytes) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"playbook-engine unsubscribe token v1\0" + secret).digest()))


class UnsubscribeTokens:
    """Opaque, signed tokens for (address, category): Fernet (AES-CBC + HMAC-SHA256) under a key derived
    from the secret, so a token reveals nothing, cannot be forged or altered, and cannot be enumerated.
    A token does not expire: a link in a years-old email must still unsubscribe. Tokens are made with the
    secret and read with it or any of ``previous`` (the secrets it replaced), so rotating the secret keeps the
    links already sent working."""

    def __init__(self, secret: bytes, previous: tuple[bytes, ...] = ()) -> None:
        if not secret or not all(previous):
            raise ValueError("the unsubscribe secret must not be empty")
        self._fernet = MultiFernet([_fernet(key) for key in (secret, *previous)])

    def make(self, email: str, category: str) -> str:
        token = self._fernet.encrypt(json.dumps([_required(email), category]).encode())
        return token.decode().rstrip("=")  # padding carries nothing and reads oddly in a URL

    def read(self, token: str) -> tuple[str, str] | None:
        """(address, category), or None for anything forged, altered, truncated or not a token at all."""
        try:
            if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
                return None
            padded = token + "=" * (-len(token) % 4)
            value = json.loads(self._fernet.decrypt(padded.encode()))
            if (isinstance(value, list) and len(value) == 2
                    and isinstance(value[0], str) and isinstance(value[1], str)):
                return value[0], value[1]
            return None
        except (InvalidToken, ValueError, TypeError, UnicodeError):
            return None


class UnsubscribeLinks:
    """The one-click unsubscribe URL of a recipient and category: {base_url}/u/{token}."""

    def __init__(self, base_url: str, tokens: UnsubscribeTokens) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens

    def url(self, email: str, category: str) -> str:
        return f"{self.base_url}/u/{self.tokens.make(email, category)}"


# webhook events ------------------------------------------------------------------------------------------


def remember_webhook_event(s: Session, event_id: str, at: datetime) -> bool:
    """Records a webhook event's id; False when it was seen before (a redelivery). Race-safe: two deliveries
    at once both try the insert and the primary key lets only one of them in."""
    table = t.WebhookEvent.__table__
    return s.execute(_insert(s, table).values(id=event_id, received_at=at)
                     .on_conflict_do_nothing(index_elements=[table.c.id]).returning(table.c.id)).first() is not None


# frequency caps: the delivery ledger -------------------------------------------------------------------

COUNTED = ("sending", "sent")  # a delivery going out or gone out counts; a rejected one stops counting


def begin_admission(s: Session, addresses: Iterable[str]) -> None:
    """Makes the session's transaction the only one admitting email to these addresses until it ends, so a
    cap's count and the delivery it admits are one atomic step. Call it first in the transaction.

    SQLite: BEGIN IMMEDIATE takes the database's write lock at once (others wait, busy_timeout); a deferred
    transaction would read, then fail to upgrade to writing. PostgreSQL: an advisory transaction lock per
    address, taken in sorted order so two admissions of overlapping recipients cannot deadlock."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        for address in sorted(set(addresses)):
            s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:address, 0))"), {"address": address})


@dataclass(frozen=True)
class Cap:
    """At most ``max`` deliveries to one address within any ``per_seconds``, counting ``categories`` (all if empty)."""

    max: int
    per_seconds: int
    categories: tuple[str, ...] = ()


def caps_reached(s: Session, address: str, caps: list[Cap], at: datetime, key: str) -> list[datetime]:
    """For each cap ``address`` is at, the moment it has room again (when enough of the counted deliveries have
    left its rolling window); empty when every cap has room. One query reads the longest window's deliveries.

    A window holds every delivery after at - per, including any "after" ``at``: another run's clock may be a
    little ahead, and what it sent did go out. The email's own deliveries (``key``: a retry of an email already
    admitted) do not count against it."""
    if not caps:
        return []
    at = utc(at)
    table = t.EmailDelivery.__table__
    longest = timedelta(seconds=max(cap.per_seconds for cap in caps))
    query = (select(table.c.at, table.c.category)
             .where(table.c.address == address, table.c.status.in_(COUNTED), table.c.at > at - longest,
                    table.c.key != key)
             .order_by(table.c.at))
    deliveries = [(utc(moment), category) for moment, category in s.connection().execute(query)]
    reached = []
    for cap in caps:
        window = timedelta(seconds=cap.per_seconds)
        if cap.max <= 0:
            reached.append(at + window)
            continue
        counted = [moment for moment, category in deliveries
                   if moment > at - window and (not cap.categories or category in cap.categories)]
        if len(counted) >= cap.max:
            reached.append(counted[len(counted) - cap.max] + window)  # when the count falls to max - 1
    return reached


def record_deliveries(s: Session, key: str, addresses: list[str], category: str, at: datetime) -> None:
    """The email's `to` recipients enter the ledger as "sending" (a retry finds them there and adds nothing)."""
    if not addresses:
        return
    table = t.EmailDelivery.__table__
    rows = [{"key": key, "address": a, "category": category, "at": utc(at), "status": "sending"} for a in addresses]
    s.connection().execute(_insert(s, table).on_conflict_do_nothing(index_elements=[table.c.key, table.c.address]),
                           rows)


_SETTLE = (update(t.EmailDelivery.__table__)
           .where(t.EmailDelivery.__table__.c.key == bindparam("k"))
           .values(status=bindparam("new_status")))


def settle_deliveries(s: Session, outcomes: list[tuple[str, str]]) -> None:
    """The provider's answer per email key: "sent" keeps counting, "rejected" stops."""
    if outcomes:
        s.connection().execute(_SETTLE, [{"k": key, "new_status": status} for key, status in outcomes])
