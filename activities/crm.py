"""The CRM behind the playbooks: a small interface, and the built-in one in the engine's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select

from engine.storage import models as t
from engine.storage.db import session

from .assignment import Candidate
from .errors import NotFoundError
from .types import AccountSnapshot


class CrmProvider(Protocol):
    name: str

    def get_account(self, account_id: str) -> AccountSnapshot: ...
    def update_fields(self, account_id: str, fields: dict[str, Any], at: datetime) -> None: ...
    def add_note(self, key: str, account_id: str, text: str, at: datetime) -> None: ...
    def add_tag(self, account_id: str, tag: str) -> None: ...
    def set_owner(self, account_id: str, csm_id: str, at: datetime) -> None: ...
    def team(self) -> list[Candidate]: ...
    def csm(self, csm_id: str) -> dict[str, Any] | None: ...


def _csm_dict(c: t.Csm) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "email": c.email, "languages": list(c.languages or []), "role": c.role}


class BuiltinCrm:
    """Accounts, contacts, CSMs, notes and tags in the engine's own database."""

    name = "builtin"

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def get_account(self, account_id: str) -> AccountSnapshot:
        with session(self.db_url) as s:
            account = s.get(t.Account, account_id)
            if account is None:
                raise NotFoundError(f"no account '{account_id}'", provider=self.name)
            owner = s.get(t.Csm, account.owner_id) if account.owner_id else None
            contacts = s.scalars(
                select(t.Contact).where(t.Contact.account_id == account_id).order_by(t.Contact.position, t.Contact.id)
            ).all()
            tags = s.scalars(select(t.Tag.tag).where(t.Tag.account_id == account_id).order_by(t.Tag.tag)).all()
            data = {
                **(account.fields or {}),
                "id": account.id,
                "name": account.name,
                "owner": _csm_dict(owner) if owner else None,
                "tags": list(tags),
            }
            return AccountSnapshot(
                account=data,
                # An empty name is no name: templates see it undefined (an error, or their `default`), never "".
                contacts=[
                    {**(c.fields or {}), **{k: v for k, v in (("email", c.email), ("first_name", c.first_name)) if v}}
                    for c in contacts
                ],
            )

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
            loads = dict(
                s.execute(select(t.Account.owner_id, func.count()).where(t.Account.owner_id.is_not(None)).group_by(t.Account.owner_id)).all()
            )
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
        fields = {k: v for k, v in account.items() if k not in ("id", "name", "owner")}
        existing = s.get(t.Account, account["id"])
        row = existing or t.Account(id=account["id"])
        row.name = account.get("name", row.name or "")
        row.fields = {**(existing.fields if existing else {}), **fields}
        if "owner" in account:
            row.owner_id = account["owner"]
        s.merge(row)
        s.flush()
        if contacts:
            for old in s.scalars(select(t.Contact).where(t.Contact.account_id == account["id"])):
                s.delete(old)
            for i, c in enumerate(contacts):
                s.add(
                    t.Contact(
                        account_id=account["id"],
                        position=i,
                        email=c.get("email", ""),
                        first_name=c.get("first_name", ""),
                        fields={k: v for k, v in c.items() if k not in ("email", "first_name")},
                    )
                )
