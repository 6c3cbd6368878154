"""The CRM behind the playbooks: a small interface, and the built-in one in the engine's tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.storage import models as t
from engine.storage.db import in_chunks, session, sqlite_driver

from .assignment import Candidate
from .errors import NotFoundError
from .types import AccountPage, AccountSnapshot, HealthWrite

# The account fields the built-in CRM keeps an account's health in (its primary scorecard's, docs/health.md).
HEALTH_SCORE_FIELD, HEALTH_BAND_FIELD = "health_score", "health_band"


class CrmProvider(Protocol):
    name: str

    def get_account(self, account_id: str) -> AccountSnapshot: ...
    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
        """Many accounts in a few queries (a schedule tick's page): each as get_account reads it, keyed by id; an
        account the CRM does not have is left out."""
        ...
    def upsert_account(
        self, account: dict[str, Any], contacts: list[dict[str, Any]] | None, at: datetime
    ) -> None:
        """Creates or updates the account ``account["id"]`` as an event describes it: fields merged into the stored
        ones, ``name`` and ``owner`` (a CSM id) when given; when ``contacts`` is not empty, each is created or
        updated by email and becomes one of the account's contacts (the built-in CRM replaces the account's list
        with them; None or [] leaves the contacts as they are). What an event's intake writes, so that triggers,
        segments and runs all read one CRM. Writing the same twice changes nothing: a retried event is safe."""
        ...
    def account_page(self, after: str | None, limit: int) -> AccountPage:
        """Up to ``limit`` accounts after the cursor ``after`` (None: from the start), for segment checks: each as
        get_account reads it but without contacts, in a stable order; the page's ``after`` is the next cursor, None
        after the last page. A provider may answer fewer than ``limit`` before the last page (HubSpot: 100 at most);
        the cursor, not the count, says whether there is more."""
        ...
    def update_fields(self, account_id: str, fields: dict[str, Any], at: datetime) -> None: ...
    def write_health(self, scores: Sequence[HealthWrite], at: datetime) -> None:
        """Writes accounts' health score and band (the nightly recompute's page, an event's changes) in as few calls
        as the CRM allows; an account the CRM does not have is left out. Writing the same twice changes nothing."""
        ...
    def add_note(self, key: str, account_id: str, text: str, at: datetime) -> None: ...
    def add_tag(self, account_id: str, tag: str) -> None: ...
    def set_owner(self, account_id: str, csm_id: str, at: datetime) -> None: ...
    def team(self) -> list[Candidate]: ...
    def csm(self, csm_id: str) -> dict[str, Any] | None: ...


def _csm_dict(c: Any) -> dict[str, Any]:  # a Csm, or a row of its columns
    return {"id": c.id, "name": c.name, "email": c.email, "languages": list(c.languages or []), "role": c.role}


class BuiltinCrm:
    """Accounts, contacts, CSMs, notes and tags in the engine's own database."""

    name = "builtin"

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def get_account(self, account_id: str) -> AccountSnapshot:
        with session(self.db_url) as s:
            snapshot = read_account(s, account_id)
        if snapshot is None:
            raise NotFoundError(f"no account '{account_id}'", provider=self.name)
        return snapshot

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
        with session(self.db_url) as s:
            return read_accounts(s, account_ids)

    def upsert_account(
        self, account: dict[str, Any], contacts: list[dict[str, Any]] | None, at: datetime
    ) -> None:
        # Two writers creating the same account at once: the one the unique id refuses runs again and updates it.
        try:
            with session(self.db_url) as s:
                write_account(s, account, contacts)
        except IntegrityError:
            with session(self.db_url) as s:
                write_account(s, account, contacts)

    def account_page(self, after: str | None, limit: int) -> AccountPage:
        """Keyset by id: the accounts with ids after ``after``, their owners and tags (two queries; no contacts)."""
        with session(self.db_url) as s:
            return read_account_page(s, after or "", limit)

    def update_fields(self, account_id: str, fields: dict[str, Any], at: datetime) -> None:
        with session(self.db_url) as s:
            account = s.get(t.Account, account_id)
            if account is None:
                raise NotFoundError(f"no account '{account_id}'", provider=self.name)
            merged = dict(account.fields or {})
            for key, value in fields.items():
                if key == "name":
                    account.name = str(value)
                elif key not in ("id", "owner"):
                    merged[key] = value
            account.fields = merged
            account.updated_at = at

    def write_health(self, scores: Sequence[HealthWrite], at: datetime) -> None:
        """Into the accounts' fields ``health_score`` and ``health_band``, in one transaction."""
        if scores:
            with session(self.db_url) as s:
                write_health_fields(s, scores)

    def add_note(self, key: str, account_id: str, text: str, at: datetime) -> None:
        with session(self.db_url) as s:
            if s.scalar(select(t.Note.id).where(t.Note.key == key)) is None:
                s.add(t.Note(key=key, account_id=account_id, text=text, created_at=at))

    def add_tag(self, account_id: str, tag: str) -> None:
        with session(self.db_url) as s:
            exists = s.scalar(select(t.Tag.id).where(t.Tag.account_id == account_id, t.Tag.tag == tag))
            if exists is None:
                s.add(t.Tag(account_id=account_id, tag=tag))

    def set_owner(self, account_id: str, csm_id: str, at: datetime) -> None:
        with session(self.db_url) as s:
            account = s.get(t.Account, account_id)
            if account is None:
                raise NotFoundError(f"no account '{account_id}'", provider=self.name)
            account.owner_id = csm_id
            account.updated_at = at

    def team(self) -> list[Candidate]:
        with session(self.db_url) as s:
            owned = (
                select(t.Account.owner_id, func.count())
                .where(t.Account.owner_id.is_not(None))
                .group_by(t.Account.owner_id)
            )
            loads = dict(s.execute(owned).all())
            return [
                Candidate(c.id, tuple(c.languages or ()), c.role, c.capacity, loads.get(c.id, 0))
                for c in s.scalars(select(t.Csm).where(t.Csm.active.is_(True)).order_by(t.Csm.id))
            ]

    def csm(self, csm_id: str) -> dict[str, Any] | None:
        with session(self.db_url) as s:
            c = s.get(t.Csm, csm_id)
            return _csm_dict(c) if c else None


def seed(db_url: str, account: dict[str, Any], contacts: list[dict[str, Any]], team: list[dict[str, Any]]) -> None:
    """Puts an account, its contacts and a team into the built-in CRM (scenarios, events, the dev stack)."""
    with session(db_url) as s:
        for member in team:
            csm = s.get(t.Csm, member["id"]) or t.Csm(id=member["id"])
            csm.name = member.get("name", member["id"])
            csm.email = member.get("email") or f"{member['id']}@example.invalid"
            csm.languages = list(member.get("languages") or [])
            csm.role = member.get("role")
            csm.capacity = member.get("capacity")
            s.merge(csm)
        s.flush()
        write_account(s, account, contacts)


# Statements built once: SQLAlchemy keeps their compiled form, so an event's few queries cost little Python.
_ACCOUNTS, _CONTACTS, _CSMS, _TAGS = (t.Account.__table__, t.Contact.__table__, t.Csm.__table__, t.Tag.__table__)
_ACCOUNT_ROW = select(_ACCOUNTS.c.name, _ACCOUNTS.c.owner_id, _ACCOUNTS.c.fields).where(
    _ACCOUNTS.c.id == bindparam("account_id")
)
_CONTACT_ROWS = (
    select(_CONTACTS.c.email, _CONTACTS.c.first_name, _CONTACTS.c.fields)
    .where(_CONTACTS.c.account_id == bindparam("account_id"))
    .order_by(_CONTACTS.c.position, _CONTACTS.c.id)
)
_CSM_ROW = select(_CSMS.c.id, _CSMS.c.name, _CSMS.c.email, _CSMS.c.languages, _CSMS.c.role).where(
    _CSMS.c.id == bindparam("csm_id")
)
_TAG_ROWS = select(_TAGS.c.tag).where(_TAGS.c.account_id == bindparam("account_id")).order_by(_TAGS.c.tag)
# read_accounts: a page of accounts with their owners, their contacts, their tags (an expanding IN each)
_WITH_OWNERS = (
    select(_ACCOUNTS.c.id, _ACCOUNTS.c.name, _ACCOUNTS.c.fields, _CSMS.c.id.label("owner_id"),
           _CSMS.c.name.label("owner_name"), _CSMS.c.email.label("owner_email"),
           _CSMS.c.languages.label("owner_languages"), _CSMS.c.role.label("owner_role"))
    .select_from(_ACCOUNTS.outerjoin(_CSMS, _CSMS.c.id == _ACCOUNTS.c.owner_id))
)
_ACCOUNT_ROWS = _WITH_OWNERS.where(_ACCOUNTS.c.id.in_(bindparam("account_ids", expanding=True)))
# account_page: the next accounts by id, with their owners (keyset: no OFFSET, every page costs the same)
_ACCOUNT_PAGE = (
    _WITH_OWNERS.where(_ACCOUNTS.c.id > bindparam("after")).order_by(_ACCOUNTS.c.id).limit(bindparam("limit"))
)
_CONTACTS_OF = (
    select(_CONTACTS.c.account_id, _CONTACTS.c.email, _CONTACTS.c.first_name, _CONTACTS.c.fields)
    .where(_CONTACTS.c.account_id.in_(bindparam("account_ids", expanding=True)))
    .order_by(_CONTACTS.c.account_id, _CONTACTS.c.position, _CONTACTS.c.id)
)
_TAGS_OF = (
    select(_TAGS.c.account_id, _TAGS.c.tag)
    .where(_TAGS.c.account_id.in_(bindparam("account_ids", expanding=True)))
    .order_by(_TAGS.c.account_id, _TAGS.c.tag)
)
READ_CHUNK = 500  # ids per IN list: well below any database's limit on bound parameters
_INSERT_ACCOUNT = insert(_ACCOUNTS)
_UPDATE_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account_id"))
    .values(name=bindparam("name"), owner_id=bindparam("owner_id"), fields=bindparam("fields"))
)
_DELETE_CONTACTS = delete(_CONTACTS).where(_CONTACTS.c.account_id == bindparam("account_id"))
_INSERT_CONTACT = insert(_CONTACTS)


def read_account(s: Session, account_id: str) -> AccountSnapshot | None:
    """The account as templates see it, read in the caller's transaction; None when there is no such account."""
    return read_account_and_fields(s, account_id)[0]


def read_account_and_fields(s: Session, account_id: str) -> tuple[AccountSnapshot | None, dict[str, Any] | None]:
    """read_account, and the account's stored fields as they are (what write_health_fields merges into: the intake
    passes them on rather than read them again)."""
    row = s.execute(_ACCOUNT_ROW, {"account_id": account_id}).first()
    if row is None:
        return None, None
    owner = s.execute(_CSM_ROW, {"csm_id": row.owner_id}).first() if row.owner_id else None
    tags = s.scalars(_TAG_ROWS, {"account_id": account_id}).all()
    contacts = s.execute(_CONTACT_ROWS, {"account_id": account_id}).all()
    return AccountSnapshot(
        account={
            **(row.fields or {}),
            "id": account_id,
            "name": row.name,
            "owner": _csm_dict(owner) if owner else None,
            "tags": list(tags),
        },
        contacts=[_contact_dict(c) for c in contacts],
    ), dict(row.fields or {})


def read_accounts(s: Session, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
    """Many accounts as read_account reads each, in three queries per 500 ids (accounts with their owners, contacts,
    tags) instead of four per account; keyed by id, in the order asked, without the ids there is no account for."""
    wanted = list(dict.fromkeys(account_ids))
    found: dict[str, AccountSnapshot] = {}
    for ids in in_chunks(wanted, READ_CHUNK):
        chunk = {"account_ids": list(ids)}
        rows = {r.id: r for r in s.execute(_ACCOUNT_ROWS, chunk)}
        tags: dict[str, list[str]] = {}
        for account_id, tag in s.execute(_TAGS_OF, chunk):
            tags.setdefault(account_id, []).append(tag)
        contacts: dict[str, list[dict[str, Any]]] = {}
        for c in s.execute(_CONTACTS_OF, chunk):
            contacts.setdefault(c.account_id, []).append(_contact_dict(c))
        for account_id in chunk["account_ids"]:
            row = rows.get(account_id)
            if row is not None:
                found[account_id] = AccountSnapshot(_account_dict(row, tags), contacts.get(account_id, []))
    return found


def read_account_page(s: Session, after: str, limit: int) -> AccountPage:
    """The accounts with ids after ``after`` (up to ``limit``, in id order) as read_accounts reads them, without
    their contacts: two queries (accounts with their owners, tags). The next cursor is the last id of a full page."""
    rows = s.execute(_ACCOUNT_PAGE, {"after": after, "limit": limit}).all()
    tags: dict[str, list[str]] = {}
    if rows:
        for account_id, tag in s.execute(_TAGS_OF, {"account_ids": [r.id for r in rows]}):
            tags.setdefault(account_id, []).append(tag)
    return AccountPage([_account_dict(r, tags) for r in rows], rows[-1].id if rows and len(rows) == limit else None)


def _account_dict(row: Any, tags: dict[str, list[str]]) -> dict[str, Any]:  # a row of _WITH_OWNERS
    owner = None
    if row.owner_id is not None:
        owner = {"id": row.owner_id, "name": row.owner_name, "email": row.owner_email,
                 "languages": list(row.owner_languages or []), "role": row.owner_role}
    return {**(row.fields or {}), "id": row.id, "name": row.name, "owner": owner, "tags": tags.get(row.id, [])}


def _contact_dict(c: Any) -> dict[str, Any]:
    # An empty name is no name: templates see it undefined (an error, or their `default`), never "".
    return {**(c.fields or {}), **{k: v for k, v in (("email", c.email), ("first_name", c.first_name)) if v}}


def write_account(s: Session, account: dict[str, Any], contacts: list[dict[str, Any]] | None) -> None:
    """Upserts an account (its fields merged into the stored ones) and, when given, replaces its contacts, in the
    caller's transaction. What is stored already as given is not written again: repeated events cost reads only."""
    account_id = account["id"]
    fields = {k: v for k, v in account.items() if k not in ("id", "name", "owner")}
    row = s.execute(_ACCOUNT_ROW, {"account_id": account_id}).first()
    if row is None:
        values = {"id": account_id, "name": account.get("name", ""), "owner_id": account.get("owner"), "fields": fields}
        s.execute(_INSERT_ACCOUNT, values)
    else:
        name = account.get("name", row.name or "")
        owner_id = account.get("owner", row.owner_id)
        merged = {**(row.fields or {}), **fields}
        if (name, owner_id, merged) != (row.name, row.owner_id, row.fields):
            s.execute(_UPDATE_ACCOUNT, {"account_id": account_id, "name": name, "owner_id": owner_id, "fields": merged})
    if not contacts:
        return
    wanted = [
        {
            "account_id": account_id,
            "position": i,
            "email": c.get("email", ""),
            "first_name": c.get("first_name", ""),
            "fields": {k: v for k, v in c.items() if k not in ("email", "first_name")},
        }
        for i, c in enumerate(contacts)
    ]
    stored = [] if row is None else s.execute(_CONTACT_ROWS, {"account_id": account_id}).all()
    if [(w["email"], w["first_name"], w["fields"]) for w in wanted] != [tuple(c) for c in stored]:
        if stored:
            s.execute(_DELETE_CONTACTS, {"account_id": account_id})
        s.execute(_INSERT_CONTACT, wanted)


_FIELDS_OF = select(_ACCOUNTS.c.id, _ACCOUNTS.c.fields).where(
    _ACCOUNTS.c.id.in_(bindparam("account_ids", expanding=True))
)
_UPDATE_FIELDS = update(_ACCOUNTS).where(_ACCOUNTS.c.id == bindparam("account_id")).values(fields=bindparam("fields"))
_SET_HEALTH_FIELDS = (
    "UPDATE accounts SET fields = json_set(CASE json_type(fields) WHEN 'object' THEN fields ELSE '{}' END, "
    f"'$.{HEALTH_SCORE_FIELD}', ?, '$.{HEALTH_BAND_FIELD}', ?) WHERE id = ?"
)
_ABSENT = object()


def write_health_fields(
    s: Session, scores: Sequence[HealthWrite], known: Mapping[str, dict[str, Any]] | None = None
) -> None:
    """The accounts' fields ``health_score`` and ``health_band`` set, in the caller's transaction (the intake's, with
    the built-in CRM); an account the CRM does not have is left out, one already holding them is not written.
    ``known``: account id -> its stored fields, read earlier in this transaction (read_account_and_fields): those
    are not read again."""
    latest = {w.account_id: w for w in scores}  # the last write of an account wins
    if not latest:
        return
    known = known or {}
    stored = [(account_id, known[account_id]) for account_id in latest if account_id in known]
    for ids in in_chunks([a for a in latest if a not in known], READ_CHUNK):
        stored += s.execute(_FIELDS_OF, {"account_ids": list(ids)}).all()
    updates = []
    for account_id, fields in stored:
        w = latest[account_id]
        fields = fields or {}
        if fields.get(HEALTH_SCORE_FIELD, _ABSENT) != w.score or fields.get(HEALTH_BAND_FIELD, _ABSENT) != w.band:
            updates.append((account_id, fields, w))
    if not updates:
        return
    if (driver := sqlite_driver(s)) is not None:
        # the two keys set by SQLite's json_set, through the driver: not the account's whole fields dumped again in
        # Python and bound through SQLAlchemy's JSON type (an event's write: 80 -> 31 us on a busy API)
        driver.executemany(_SET_HEALTH_FIELDS, [(w.score, w.band, account_id) for account_id, _, w in updates])
        return
    s.execute(_UPDATE_FIELDS, [
        {"account_id": account_id, "fields": {**fields, HEALTH_SCORE_FIELD: w.score, HEALTH_BAND_FIELD: w.band}}
        for account_id, fields, w in updates
    ])


def csm_exists(s: Session, csm_id: str) -> bool:
    return s.execute(_CSM_ROW, {"csm_id": csm_id}).first() is not None
