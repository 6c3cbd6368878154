"""HubSpot as the CRM of record, through its CRM v3 and v4 REST APIs with httpx.

The admin's guide is docs/hubspot.md (setup, scopes, properties, limits); in short:

What the playbooks call an account is a HubSpot company; its id is the value of a unique company
property (``account_id_property``, PLAYBOOK_HUBSPOT_ACCOUNT_ID_PROPERTY, by default ``playbook_account_id``,
which the admin creates with "unique values" on); its contacts are the contacts associated with it;
its owner is the company's ``hubspot_owner_id``; the team is HubSpot's owners. With
``account_id_property="hs_object_id"`` the HubSpot company ids are the account ids (how this provider
worked before): reads and writes work as before, but an event cannot create a company (HubSpot gives
the ids), so an intake of an unknown id is refused with NotFoundError.

Scopes of the private app (HubSpot's reference pages, checked 2026-12: the notes guide
https://developers.hubspot.com/docs/api-reference/latest/crm/activities/notes/guide lists
``crm.objects.contacts.read`` and ``crm.objects.contacts.write`` for notes):
``crm.objects.companies.read``, ``crm.objects.companies.write`` (tags, fields, owners, upserts),
``crm.objects.contacts.read``, ``crm.objects.contacts.write`` (contact upserts, and notes:
``POST /crm/v3/objects/notes`` requires it), ``crm.schemas.companies.read``, ``crm.schemas.contacts.read``
and ``crm.objects.owners.read``. Associations need no scope of their own: the objects' scopes cover them.

- Properties are read with their definitions (``/crm/v3/properties/{object}``, fetched once), so values
  reach playbooks typed: number → int/float, bool → True/False, multi-select → list, empty → None.
  Read by default: a few standard properties and every custom one; ``company_properties`` /
  ``contact_properties`` choose. Every read of many properties is a batch POST with the properties in
  the body: a GET's query string past a few kilobytes is answered 414.
- An intake (``upsert_account``) writes only properties HubSpot has and may be written: a field without
  a property (or a read-only one) is left out and logged by its name, once per name, so an event that
  carries more than the portal models still lands. Contacts are upserted by email and associated with
  the company (v4 default association); contacts already associated stay so (HubSpot is the record:
  people add contacts there too).
- Tags are the multi-select company property ``playbook_tags`` (``tags_property``), read-modify-write.
- Notes are idempotent through a note property ``playbook_key`` (``note_key_property``), searched before
  creating (HubSpot's search index lags by seconds: a retry within that window can duplicate a note).
- HubSpot owners have no languages, role or capacity: those come from a team file and/or the built-in
  ``csms`` table. A CSM's load is the number of companies they own, counted from one paged search of the
  owned companies (or one search per member when that is fewer searches).
- Searches (segment pages, team loads, note keys) share one pacer of ``search_per_second`` (HubSpot's search
  allows 5 a second per account). A segment page is one search of up to 100 companies sorted by
  ``hs_object_id``; as HubSpot answers at most 10,000 results per query, the cursor starts a new query
  filtered ``hs_object_id > last`` before it would reach them.
- A 429 waits as its policy says: SECONDLY / TEN_SECONDLY_ROLLING → TransientError with ``retry_after`` from
  Retry-After or the window; DAILY → ``retry_after`` until midnight in ``daily_reset_timezone`` (the portal's
  time zone), when HubSpot resets the daily count. to_application_error turns it into Temporal's
  next_retry_delay.

Errors are mapped in one place, ``_request``: connection errors and timeouts → TransientError; HTTP errors
through ``from_http_status``. Contact writes do not repeat HubSpot's error text (it can quote an address).
"""

from __future__ import annotations

import html
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import yaml

from .assignment import Candidate
from .errors import ConfigurationError, NotFoundError, ProviderError, RejectedError, TransientError, from_http_status
from .types import AccountPage, AccountSnapshot, HealthWrite

log = logging.getLogger(__name__)

# Always read: the name, the owner and the tags are part of every snapshot.
COMPANY_REQUIRED = ("name", "hubspot_owner_id")
COMPANY_STANDARD = ("domain", "industry", "country", "city", "phone", "numberofemployees", "annualrevenue",
                    "lifecyclestage", "createdate", "hs_lastmodifieddate")
CONTACT_REQUIRED = ("email", "firstname", "lastname")
CONTACT_STANDARD = ("phone", "jobtitle", "hs_language")
# Renamed to the names the built-in CRM and the playbooks use, and back when writing.
CONTACT_RENAMES = {"firstname": "first_name", "lastname": "last_name"}
CONTACT_WRITE_NAMES = {v: k for k, v in CONTACT_RENAMES.items()}
HUBSPOT_ID = "hs_object_id"
NOTE_TO_COMPANY = 190  # HubSpot-defined association type: note → company
COMPANY_TO_CONTACT_PRIMARY = 2  # HubSpot-defined association type: company → its contacts' primary company
BATCH_LIMIT = 100  # inputs per batch read, upsert or association call
SEARCH_LIMIT = 100  # results per search page
SEARCH_CAP = 10_000  # HubSpot's search answers at most this many results of one query; deeper `after` is a 400
RATE_WINDOWS = {"SECONDLY": 1.0, "TEN_SECONDLY_ROLLING": 10.0}  # seconds of HubSpot's short rate-limit policies


class _Pacer:
    """A token bucket of one token, shared by threads: calls spaced at least 1/rate seconds apart.

    No burst: HubSpot counts searches per second, so a burst after an idle spell would be refused."""

    def __init__(self, per_second: float) -> None:
        if not per_second > 0:
            raise ConfigurationError(f"search_per_second must be above 0, not {per_second}", provider="hubspot")
        self.interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:  # each caller books its slot under the lock and sleeps outside it
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)

    def hold(self, seconds: float) -> None:
        """No call for ``seconds``: HubSpot said so (a 429)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


@dataclass(frozen=True)
class _Profile:
    """What HubSpot does not know about a CSM."""

    languages: tuple[str, ...] = ()
    role: str | None = None
    capacity: int | None = None
    active: bool = True


@dataclass(frozen=True)
class _Property:
    type: str
    field_type: str
    custom: bool  # created by the portal's admin, not by HubSpot
    read_only: bool = False  # calculated or set by HubSpot: a write is refused


class HubSpotCrm:
    name = "hubspot"

    def __init__(
        self,
        token: str,
        base_url: str = "https://api.hubapi.com",
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = 10.0,
        account_id_property: str = "playbook_account_id",
        search_per_second: float = 4.0,
        daily_reset_timezone: str = "UTC",
        company_properties: Sequence[str] | None = None,
        contact_properties: Sequence[str] | None = None,
        tags_property: str = "playbook_tags",
        note_key_property: str | None = "playbook_key",
        team_file: str | Path | None = None,
        db_url: str | None = None,
        owner_cache_seconds: float = 300.0,
        health_score_property: str = "playbook_health_score",
        health_band_property: str = "playbook_health_band",
    ) -> None:
        if not token:
            raise ConfigurationError("no HubSpot private app token", provider=self.name)
        if not account_id_property:
            raise ConfigurationError("no account id property (hs_object_id for HubSpot's ids)", provider=self.name)
        try:
            self.daily_reset = ZoneInfo(daily_reset_timezone)
        except (ZoneInfoNotFoundError, ValueError) as err:
            message = f"daily_reset_timezone {daily_reset_timezone!r} is not a time zone (e.g. Europe/Berlin)"
            raise ConfigurationError(message, provider=self.name) from err
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,  # the seam: httpx.MockTransport, or None for the network
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        self.account_id_property = account_id_property
        self.company_properties = tuple(company_properties) if company_properties is not None else None
        self.contact_properties = tuple(contact_properties) if contact_properties is not None else None
        self.tags_property = tags_property
        self.note_key_property = note_key_property
        self.team_file = Path(team_file) if team_file else None
        self.db_url = db_url
        self.owner_cache_seconds = owner_cache_seconds
        self.health_score_property = health_score_property
        self.health_band_property = health_band_property
        self._search_pacer = _Pacer(search_per_second)
        self._schemas: dict[str, dict[str, _Property]] = {}
        self._owners: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._hubspot_ids: dict[str, str] = {}  # account id → company id, for the calls that need HubSpot's id
        self._skipped: set[tuple[str, str]] = set()  # (object, field) already logged as not a HubSpot property
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HubSpotCrm(base_url={str(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubSpotCrm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _by_hubspot_id(self) -> bool:
        """The account ids are HubSpot's company ids (account_id_property="hs_object_id")."""
        return self.account_id_property == HUBSPOT_ID

    # CrmProvider: reading --------------------------------------------------------------------------

    def get_account(self, account_id: str) -> AccountSnapshot:
        snapshot = self.get_accounts([account_id]).get(str(account_id))
        if snapshot is None:
            raise NotFoundError(
                f"HubSpot has no company with {self.account_id_property} {str(account_id)!r}",
                provider=self.name, status=404,
            )
        return snapshot

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
        """Companies in batch reads of 100 by the account id property, their contact associations (every page of
        them, v4 batch reads), their contacts (batch reads). A company HubSpot does not have is left out."""
        wanted = list(dict.fromkeys(str(i) for i in account_ids))
        if not wanted:
            return {}
        schema = self._schema("companies")
        properties = self._company_wanted(schema)
        companies = self._read_companies(wanted, properties)
        company_ids = {account_id: str(company["id"]) for account_id, company in companies.items()}
        links = self._contact_links(list(company_ids.values()))
        contacts = self._contacts_by_id(list(dict.fromkeys(c for ids in links.values() for c in ids)))
        return {
            account_id: AccountSnapshot(
                account=self._account(companies[account_id], schema, properties),
                contacts=[contacts[c] for c in links.get(company_ids[account_id], []) if c in contacts],
            )
            for account_id in wanted
            if account_id in companies
        }

    def account_page(self, after: str | None, limit: int) -> AccountPage:
        """Up to ``limit`` (at most 100) accounts from HubSpot's search, in ``hs_object_id`` order (unique, numeric
        and never edited, unlike the account id property); ``after`` is this provider's cursor (see _search)."""
        schema = self._schema("companies")
        floor, colon, offset = (after or ":").partition(":")
        if not colon or not (floor.isdigit() or not floor) or not (offset.isdigit() or not offset):
            raise RejectedError(f"{after!r} is not a page cursor of the HubSpot provider (None, or one it returned)",
                                provider=self.name)
        filters = [] if self._by_hubspot_id else [{"propertyName": self.account_id_property,
                                                   "operator": "HAS_PROPERTY"}]
        properties = self._company_wanted(schema)
        answer, cursor = self._search(
            "companies", filters, properties, after, max(1, min(int(limit), SEARCH_LIMIT))
        )
        results = answer.get("results") or []
        self._remember_ids(results)
        return AccountPage([self._account(company, schema, properties) for company in results], cursor)

    def account_ids_for(self, company_ids: Sequence[str]) -> dict[str, str]:
        """HubSpot company id → account id, for the companies that have one (webhooks name HubSpot's ids)."""
        wanted = list(dict.fromkeys(str(i) for i in company_ids))
        if self._by_hubspot_id:
            return {i: i for i in wanted}
        found: dict[str, str] = {}
        for chunk in _chunks(wanted, BATCH_LIMIT):
            body = {"properties": [self.account_id_property], "inputs": [{"id": i} for i in chunk]}
            answer = self._request("POST", "/crm/v3/objects/companies/batch/read", json=body, missing_ok=True) or {}
            results = answer.get("results") or []
            self._remember_ids(results)
            for company in results:
                if (account_id := self._account_id_of(company)) is not None:
                    found[str(company["id"])] = account_id
        return {i: found[i] for i in wanted if i in found}

    # CrmProvider: writing --------------------------------------------------------------------------

    def upsert_account(self, account: dict[str, Any], contacts: list[dict[str, Any]] | None, at: datetime) -> None:
        """The company created or updated by its account id (batch upsert on the unique property), then its
        contacts upserted by email and associated with it. The same event twice writes the same."""
        account_id = str(account["id"])
        fields = {k: v for k, v in account.items() if k not in ("id", "owner", "tags")}
        properties = self._writable("companies", fields)
        if "owner" in account:
            owner = account["owner"]
            owner_id = owner.get("id") if isinstance(owner, dict) else owner
            properties["hubspot_owner_id"] = "" if owner_id in (None, "") else str(owner_id)
        if self._by_hubspot_id:
            try:
                self._patch_company(account_id, properties)
            except NotFoundError as err:
                hint = ("with account_id_property=hs_object_id an event can only update companies HubSpot has: "
                        "create a unique company property for the account ids to let events create companies")
                raise NotFoundError(f"{err.message}; {hint}", provider=self.name, status=err.status) from err
            company_id = account_id
        else:
            body = {"inputs": [{"idProperty": self.account_id_property, "id": account_id, "properties": properties}]}
            answer = self._request("POST", "/crm/v3/objects/companies/batch/upsert", json=body)
            _refuse_batch_errors(answer, f"upsert of account {account_id!r}")
            company_id = str((answer.get("results") or [{}])[0].get("id") or "")
            if not company_id:
                raise TransientError(f"HubSpot's upsert of account {account_id!r} answered no company id",
                                     provider=self.name)
            with self._lock:
                self._hubspot_ids[account_id] = company_id
        if contacts:
            self._associate_contacts(company_id, self._upsert_contacts(contacts))

    def update_fields(self, account_id: str, fields: dict[str, Any], at: datetime) -> None:
        # ``at`` is not sent: HubSpot stamps hs_lastmodifieddate itself and refuses writes to it.
        properties = {k: _to_hubspot(k, v) for k, v in fields.items() if k not in ("id", "owner", "tags")}
        if properties:
            self._patch_company(account_id, properties)

    def add_note(self, key: str, account_id: str, text: str, at: datetime) -> None:
        if self.note_key_property:
            query = _search_eq(self.note_key_property, key)
            try:
                found = self._request("POST", "/crm/v3/objects/notes/search", json=query)
            except RejectedError as err:  # HubSpot refuses a search on a property that does not exist
                hint = f"create the note property '{self.note_key_property}' in HubSpot, or set note_key_property=None"
                raise ConfigurationError(f"{err.message}; {hint}", provider=self.name, status=err.status) from err
            if found.get("total") or found.get("results"):
                return
        company_id = self._company_id(account_id)  # a note is associated by HubSpot's id
        properties = {
            # hs_note_body is HTML: our text is data, so it is escaped, never interpreted
            "hs_note_body": html.escape(text).replace("\n", "<br>"),
            "hs_timestamp": _hubspot_time(at),
        }
        if self.note_key_property:
            properties[self.note_key_property] = key
        self._request(
            "POST",
            "/crm/v3/objects/notes",
            json={
                "properties": properties,
                "associations": [
                    {
                        "to": {"id": company_id},
                        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": NOTE_TO_COMPANY}],
                    }
                ],
            },
        )

    def add_tag(self, account_id: str, tag: str) -> None:
        tag = (tag or "").strip()
        if not tag or ";" in tag:
            raise RejectedError(f"tag {tag!r}: a HubSpot tag must be non-empty and without ';'", provider=self.name)
        company = self._request(
            "GET", self._company_path(account_id), params={**self._id_params(), "properties": self.tags_property}
        )
        tags = _split((company.get("properties") or {}).get(self.tags_property))
        if tag not in tags:
            self._patch_company(account_id, {self.tags_property: ";".join([*tags, tag])})

    def set_owner(self, account_id: str, csm_id: str, at: datetime) -> None:
        self._patch_company(account_id, {"hubspot_owner_id": str(csm_id)})

    # CrmProvider: the team -------------------------------------------------------------------------

    def team(self) -> list[Candidate]:
        owners = self._all_owners()
        profiles = self._profiles()
        members: list[tuple[dict[str, Any], _Profile | None]] = []
        for owner in owners:
            profile = _match(profiles, owner)
            if profiles and profile is None:
                continue
            if profile is not None and not profile.active:
                continue
            members.append((owner, profile))
        loads = self._loads([str(owner["id"]) for owner, _ in members])
        return [
            Candidate(
                str(owner["id"]),
                profile.languages if profile else (),
                (profile.role if profile and profile.role else None) or _primary_team(owner),
                profile.capacity if profile else None,
                loads.get(str(owner["id"]), 0),
            )
            for owner, profile in sorted(members, key=lambda m: str(m[0]["id"]))
        ]

    def csm(self, csm_id: str) -> dict[str, Any] | None:
        owner = self._owner(str(csm_id))
        return self._csm_dict(owner) if owner else None

    def write_health(self, scores: Sequence[HealthWrite], at: datetime) -> None:
        """Into the company properties ``health_score_property`` and ``health_band_property`` (created by the portal's
        admin: a number and a single-line text), by batch updates of 100 on the account id property. A company
        HubSpot does not have is left out (its input answers an error in the 207, not raised)."""
        latest = {str(w.account_id): w for w in scores}
        inputs = []
        for account_id, w in latest.items():
            properties = {self.health_score_property: _to_hubspot(self.health_score_property, w.score),
                          self.health_band_property: _to_hubspot(self.health_band_property, w.band)}
            entry: dict[str, Any] = {"id": account_id, "properties": properties}
            if not self._by_hubspot_id:
                entry["idProperty"] = self.account_id_property
            inputs.append(entry)
        for chunk in _chunks(inputs, BATCH_LIMIT):
            self._request("POST", "/crm/v3/objects/companies/batch/update", json={"inputs": list(chunk)},
                          missing_ok=True)

    # companies ------------------------------------------------------------------------------------

    def _company_path(self, account_id: str) -> str:
        return f"/crm/v3/objects/companies/{_segment(account_id)}"

    def _id_params(self) -> dict[str, str]:
        """The query parameter that makes HubSpot take the path's id as the account id property's value."""
        return {} if self._by_hubspot_id else {"idProperty": self.account_id_property}

    def _patch_company(self, account_id: str, properties: dict[str, str]) -> None:
        self._request("PATCH", self._company_path(account_id), params=self._id_params() or None,
                      json={"properties": properties})

    def _company_wanted(self, schema: dict[str, _Property]) -> list[str]:
        required = [*COMPANY_REQUIRED, self.tags_property]
        if not self._by_hubspot_id:
            required.append(self.account_id_property)
        return self._wanted(schema, required, COMPANY_STANDARD, self.company_properties)

    def _read_companies(self, account_ids: list[str], properties: list[str]) -> dict[str, dict[str, Any]]:
        """Account id → company, by batch reads of 100 on the account id property."""
        companies: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(account_ids, BATCH_LIMIT):
            body: dict[str, Any] = {"properties": properties, "inputs": [{"id": i} for i in chunk]}
            body.update(self._id_params())
            # ids HubSpot does not have come back in "errors" with a 207 (a 404 when none is found): not in results
            answer = self._request("POST", "/crm/v3/objects/companies/batch/read", json=body, missing_ok=True) or {}
            results = answer.get("results") or []
            self._remember_ids(results)
            for company in results:
                account_id = self._account_id_of(company)
                if account_id is not None:
                    companies[account_id] = company
        return companies

    def _account_id_of(self, company: dict[str, Any]) -> str | None:
        if self._by_hubspot_id:
            return str(company["id"])
        value = (company.get("properties") or {}).get(self.account_id_property)
        return str(value) if value not in (None, "") else None

    def _remember_ids(self, companies: list[dict[str, Any]]) -> None:
        if self._by_hubspot_id:
            return
        ids = {a: str(c["id"]) for c in companies if (a := self._account_id_of(c)) is not None}
        with self._lock:
            if len(self._hubspot_ids) > 100_000:  # a bound, not an LRU: ids are cheap to read again
                self._hubspot_ids.clear()
            self._hubspot_ids.update(ids)

    def _company_id(self, account_id: str) -> str:
        """HubSpot's id of the account's company (read once, then remembered: it does not change)."""
        account_id = str(account_id)
        if self._by_hubspot_id:
            return account_id
        with self._lock:
            known = self._hubspot_ids.get(account_id)
        if known is not None:
            return known
        company = self._read_companies([account_id], [self.account_id_property]).get(account_id)
        if company is None:
            raise NotFoundError(f"HubSpot has no company with {self.account_id_property} {account_id!r}",
                                provider=self.name, status=404)
        return str(company["id"])

    def _account(self, company: dict[str, Any], schema: dict[str, _Property], asked: list[str]) -> dict[str, Any]:
        """A company as playbooks see an account (its contacts aside): the properties asked for, typed."""
        props = _typed(_only(company.get("properties") or {}, asked), schema)
        tags = _split(company.get("properties", {}).get(self.tags_property))
        props.pop(self.tags_property, None)
        if not self._by_hubspot_id:
            props.pop(self.account_id_property, None)  # it is the account's "id"
        owner_id = props.get("hubspot_owner_id")
        return {
            **props,
            "id": self._account_id_of(company) or str(company["id"]),
            "name": props.get("name") or "",
            "owner": self._owner_summary(str(owner_id)) if owner_id not in (None, "") else None,
            "tags": tags,
        }

    # contacts -------------------------------------------------------------------------------------

    def _contact_links(self, company_ids: list[str]) -> dict[str, list[str]]:
        """Company id → its contacts' ids, primary first, through every page of HubSpot's associations (v4 batch
        reads: a company's page ends with ``paging.next.after`` when it has more contacts)."""
        links: dict[str, list[dict[str, Any]]] = {}
        pending: list[dict[str, str]] = [{"id": i} for i in company_ids]
        seen: set[tuple[str, str]] = set()
        while pending:
            following: list[dict[str, str]] = []
            for chunk in _chunks(pending, BATCH_LIMIT):
                # a company without contacts is in "errors" (NO_ASSOCIATIONS_FOUND) with a 207, or all are with a 404
                answer = self._request(
                    "POST", "/crm/v4/associations/companies/contacts/batch/read", json={"inputs": chunk},
                    missing_ok=True,
                ) or {}
                for result in answer.get("results") or []:
                    company_id = str((result.get("from") or {}).get("id"))
                    links.setdefault(company_id, []).extend(result.get("to") or [])
                    after = ((result.get("paging") or {}).get("next") or {}).get("after")
                    if after and (company_id, str(after)) not in seen:  # a cursor seen twice would loop forever
                        seen.add((company_id, str(after)))
                        following.append({"id": company_id, "after": str(after)})
            pending = following
        return {company_id: _contact_ids(to) for company_id, to in links.items()}

    def _contacts_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        schema = self._schema("contacts")
        wanted = self._wanted(schema, CONTACT_REQUIRED, CONTACT_STANDARD, self.contact_properties)
        by_id: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, BATCH_LIMIT):
            answer = self._request(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={"properties": wanted, "inputs": [{"id": i} for i in chunk]},
            )
            for result in answer.get("results") or []:
                by_id[str(result["id"])] = result
        contacts = {}
        for contact_id, result in by_id.items():  # callers order them: HubSpot's batch answer is unordered
            props = _typed(_only(result.get("properties") or {}, wanted), schema)
            contact = {CONTACT_RENAMES.get(k, k): v for k, v in props.items()}
            contact.update(id=contact_id, email=contact.get("email") or "", first_name=contact.get("first_name") or "")
            contacts[contact_id] = contact
        return contacts

    def _upsert_contacts(self, contacts: list[dict[str, Any]]) -> list[str]:
        """Contacts created or updated by email (HubSpot's unique contact property) in batches of 100; their ids."""
        by_email: dict[str, tuple[str, dict[str, str]]] = {}
        without_email = 0
        for contact in contacts:
            email = str(contact.get("email") or "").strip()
            if not email:
                without_email += 1
                continue
            fields = {CONTACT_WRITE_NAMES.get(k, k): v for k, v in contact.items() if k not in ("id", "email")}
            # HubSpot compares addresses without case: one input per address (a batch with two is refused)
            by_email[email.lower()] = (email, self._writable("contacts", fields))
        if without_email:
            log.warning("%d contact(s) without an email address left out of a HubSpot upsert", without_email)
        ids: list[str] = []
        for chunk in _chunks(list(by_email.values()), BATCH_LIMIT):
            inputs = [{"idProperty": "email", "id": email, "properties": props} for email, props in chunk]
            answer = self._request("POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs},
                                   redact=True)
            _refuse_batch_errors(answer, "contact upsert")
            ids += [str(result["id"]) for result in answer.get("results") or []]
        return ids

    def _associate_contacts(self, company_id: str, contact_ids: list[str]) -> None:
        """HubSpot's default company → contact association (v4), 100 a call; associating twice changes nothing."""
        for chunk in _chunks(contact_ids, BATCH_LIMIT):
            inputs = [{"from": {"id": company_id}, "to": {"id": c}} for c in chunk]
            answer = self._request("POST", "/crm/v4/associations/companies/contacts/batch/associate/default",
                                   json={"inputs": inputs})
            _refuse_batch_errors(answer, f"association of company {company_id}'s contacts")

    def _writable(self, object_type: str, fields: dict[str, Any]) -> dict[str, str]:
        """The fields HubSpot has a writable property for, as HubSpot text; the others left out, logged by name."""
        schema = self._schema(object_type)
        properties: dict[str, str] = {}
        for name, value in fields.items():
            prop = schema.get(name)
            if prop is not None and not prop.read_only:
                properties[name] = _to_hubspot(name, value)
                continue
            with self._lock:
                first = (object_type, name) not in self._skipped
                self._skipped.add((object_type, name))
            if first:  # the name only: a value can be personal
                why = "is read-only" if prop is not None else "does not exist"
                log.warning("HubSpot %s property %r %s: the field is left out of upserts", object_type, name, why)
        return properties

    # searches -------------------------------------------------------------------------------------

    def _search(
        self, object_type: str, filters: list[dict[str, Any]], properties: list[str], cursor: str | None, limit: int
    ) -> tuple[dict[str, Any], str | None]:
        """One search page sorted by hs_object_id, and the cursor of the next (None after the last).

        The cursor is ``"<floor>:<after>"``: HubSpot's ``after`` within a query filtered ``hs_object_id > floor``.
        HubSpot answers at most 10,000 results of a query, so before ``after`` would pass them the next cursor
        starts a new query above the page's last id, with no ``after``."""
        floor, _, after = (cursor or ":").partition(":")
        every = [*filters, *([{"propertyName": HUBSPOT_ID, "operator": "GT", "value": floor}] if floor else [])]
        body: dict[str, Any] = {
            "filterGroups": [{"filters": every}] if every else [],
            "sorts": [{"propertyName": HUBSPOT_ID, "direction": "ASCENDING"}],
            "properties": properties,
            "limit": limit,
        }
        if after:
            body["after"] = after
        answer = self._request("POST", f"/crm/v3/objects/{object_type}/search", json=body)
        results = answer.get("results") or []
        next_after = ((answer.get("paging") or {}).get("next") or {}).get("after")
        if not next_after or not results:
            return answer, None
        if str(next_after).isdigit() and int(next_after) + limit > SEARCH_CAP:
            return answer, f"{results[-1]['id']}:"
        return answer, f"{floor}:{next_after}"

    def _loads(self, owner_ids: list[str]) -> dict[str, int]:
        """Companies owned per owner: one paged search of the owned companies counted here, or, when the first
        page shows that would take more searches than there are owners to count, one count search per owner."""
        if not owner_ids:
            return {}
        owned = [{"propertyName": "hubspot_owner_id", "operator": "HAS_PROPERTY"}]
        answer, cursor = self._search("companies", owned, ["hubspot_owner_id"], None, SEARCH_LIMIT)
        pages_left = math.ceil(int(answer.get("total") or 0) / SEARCH_LIMIT) - 1
        if cursor is not None and pages_left > len(owner_ids):
            return {owner_id: self._owned_count(owner_id) for owner_id in owner_ids}
        loads: dict[str, int] = {}
        while True:
            for company in answer.get("results") or []:
                owner_id = (company.get("properties") or {}).get("hubspot_owner_id")
                if owner_id:
                    loads[str(owner_id)] = loads.get(str(owner_id), 0) + 1
            if cursor is None:
                return loads
            answer, cursor = self._search("companies", owned, ["hubspot_owner_id"], cursor, SEARCH_LIMIT)

    def _owned_count(self, owner_id: str) -> int:
        query = _search_eq("hubspot_owner_id", owner_id)
        answer = self._request("POST", "/crm/v3/objects/companies/search", json=query)
        return int(answer.get("total") or 0)

    # owners ---------------------------------------------------------------------------------------

    def _all_owners(self) -> list[dict[str, Any]]:
        owners: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100, "archived": "false"}
        while True:
            page = self._request("GET", "/crm/v3/owners", params=params)
            owners.extend(page.get("results") or [])
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
            params = {**params, "after": after}
        now = time.monotonic()
        with self._lock:
            for owner in owners:
                self._owners[str(owner["id"])] = (now, owner)
        return owners

    def _owner(self, owner_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            cached = self._owners.get(owner_id)
        if cached is not None and now - cached[0] < self.owner_cache_seconds:
            return cached[1]
        owner: dict[str, Any] | None = self._request("GET", f"/crm/v3/owners/{_segment(owner_id)}", missing_ok=True)
        with self._lock:
            self._owners[owner_id] = (now, owner)
        return owner

    def _owner_summary(self, owner_id: str) -> dict[str, Any]:
        owner = self._owner(owner_id)
        if owner is None:  # archived or deleted in HubSpot: keep the id, the rest is unknown
            return {"id": owner_id, "name": "", "email": "", "languages": [], "role": None}
        return self._csm_dict(owner)

    def _csm_dict(self, owner: dict[str, Any]) -> dict[str, Any]:
        profile = _match(self._profiles(), owner)
        full_name = " ".join(p for p in (owner.get("firstName"), owner.get("lastName")) if p)
        return {
            "id": str(owner["id"]),
            "name": full_name or owner.get("email") or str(owner["id"]),
            "email": owner.get("email") or "",
            "languages": list(profile.languages) if profile else [],
            "role": (profile.role if profile and profile.role else None) or _primary_team(owner),
        }

    # schema and team profiles -------------------------------------------------------------------

    def _schema(self, object_type: str) -> dict[str, _Property]:
        with self._lock:
            cached = self._schemas.get(object_type)
        if cached is not None:
            return cached
        answer = self._request("GET", f"/crm/v3/properties/{object_type}")
        schema = {
            p["name"]: _Property(
                p.get("type", "string"),
                p.get("fieldType", "text"),
                not p.get("hubspotDefined"),
                bool((p.get("modificationMetadata") or {}).get("readOnlyValue")),
            )
            for p in answer.get("results") or []
        }
        with self._lock:
            self._schemas[object_type] = schema
        return schema

    @staticmethod
    def _wanted(
        schema: dict[str, _Property], required: Iterable[str], standard: Iterable[str], chosen: Sequence[str] | None
    ) -> list[str]:
        if chosen is not None:
            names = [*required, *chosen]
        else:
            custom = sorted(n for n, p in schema.items() if p.custom)
            names = [*required, *(n for n in standard if n in schema), *custom]
        return list(dict.fromkeys(names))

    def _profiles(self) -> dict[str, _Profile]:
        """CSM profiles keyed by owner id and by lower-case email; the team file wins over the table."""
        entries: list[dict[str, Any]] = []
        if self.db_url:
            from sqlalchemy import select

            from engine.storage import models as t
            from engine.storage.db import session

            with session(self.db_url) as s:
                entries += [
                    {"id": c.id, "email": c.email, "languages": c.languages, "role": c.role,
                     "capacity": c.capacity, "active": c.active}
                    for c in s.scalars(select(t.Csm))
                ]
        if self.team_file:
            try:
                loaded = yaml.safe_load(self.team_file.read_text(encoding="utf-8")) or []
            except (OSError, yaml.YAMLError) as err:
                raise ConfigurationError(f"team file {self.team_file}: {err}", provider=self.name) from err
            entries += loaded.get("team", []) if isinstance(loaded, dict) else loaded
        profiles: dict[str, _Profile] = {}
        for entry in entries:
            profile = _Profile(
                languages=tuple(str(x) for x in entry.get("languages") or ()),
                role=entry.get("role"),
                capacity=entry.get("capacity"),
                active=bool(entry.get("active", True)),
            )
            if entry.get("id") is not None:
                profiles[f"id:{entry['id']}"] = profile
            if entry.get("email"):
                profiles[f"email:{str(entry['email']).lower()}"] = profile
        return profiles

    # the one boundary --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        missing_ok: bool = False,
        redact: bool = False,
    ) -> Any:
        """Every call to HubSpot goes through here: searches paced, httpx's and HubSpot's errors made ProviderError
        kinds. ``redact``: HubSpot's error text is left out of the message (it can quote a contact's address)."""
        what = f"{method} {path}"
        searching = path.endswith("/search")
        if searching:
            self._search_pacer.wait()
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as err:
            message = f"{what}: HubSpot did not answer in time ({type(err).__name__})"
            raise TransientError(message, provider=self.name) from err
        except httpx.RequestError as err:  # refused, reset, DNS, TLS, a broken answer
            message = f"{what}: could not reach HubSpot ({type(err).__name__}: {err})"
            raise TransientError(message, provider=self.name) from err
        if response.status_code == 404 and missing_ok:
            return None
        if not response.is_success:
            error = _http_error(what, response, self.name, self.daily_reset, redact=redact)
            if searching and error.status == 429 and error.retry_after is not None:
                self._search_pacer.hold(min(error.retry_after, max(RATE_WINDOWS.values())))
            raise error
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as err:
            message = f"{what}: HubSpot answered {response.status_code} with no JSON"
            raise TransientError(message, provider=self.name) from err


def _http_error(
    what: str, response: httpx.Response, provider: str, daily_reset: ZoneInfo, *, redact: bool = False
) -> ProviderError:
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else {}
        detail = body.get("message") or json.dumps(parsed)[:300]
    except ValueError:
        detail = response.text[:300] or response.reason_phrase
    message = f"{what}: HubSpot answered {response.status_code}"
    if not redact:
        message += f": {detail}"
    if body.get("category"):
        message += f" [{body['category']}]"
    if body.get("correlationId"):
        message += f" (correlationId {body['correlationId']})"
    retry_after = None
    if response.status_code == 429:
        policy = str(body.get("policyName") or "")
        retry_after = _rate_limit_wait(policy, response.headers, daily_reset)
        message += f"; rate limited ({policy or 'no policy named'})"
        if retry_after is not None:
            message += f", retry after {retry_after:g} s"
    return from_http_status(response.status_code, message, provider, retry_after=retry_after)


def _refuse_batch_errors(answer: Any, what: str) -> None:
    """A batch write answered 207 with errors did not write them all: a RejectedError with the errors' categories
    (their messages can quote values, an address)."""
    errors = (answer or {}).get("errors") or []
    if errors:
        categories = sorted({str(e.get("category") or "?") for e in errors})
        raise RejectedError(f"{what}: HubSpot refused {len(errors)} input(s) [{', '.join(categories)}]",
                            provider="hubspot")


def _rate_limit_wait(policy: str, headers: httpx.Headers, daily_reset: ZoneInfo) -> float | None:
    """Seconds until HubSpot takes requests again, from the 429's policy and headers; None when nothing says.

    DAILY: until midnight in the portal's time zone, when HubSpot resets the daily count (retrying sooner only
    spends the attempts). The short windows: Retry-After when sent, else the window
    (X-HubSpot-RateLimit-Interval-Milliseconds, or the policy's own)."""
    retry_after = _seconds(headers.get("Retry-After"))
    if policy == "DAILY":
        now = datetime.now(daily_reset)
        midnight = datetime.combine(now.date() + timedelta(days=1), clock_time(0), tzinfo=daily_reset)
        # aware datetimes of one tzinfo subtract as wall times: through UTC, a DST night counts right
        until = (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
        return max(until, retry_after or 0.0)
    if retry_after is not None:
        return retry_after
    interval = _seconds(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
    if interval is not None and policy != "SECONDLY":
        return interval / 1000
    return RATE_WINDOWS.get(policy)


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


# values --------------------------------------------------------------------------------------------


def _only(properties: dict[str, Any], asked: list[str]) -> dict[str, Any]:
    """The properties asked for: HubSpot adds a few to every answer (hs_object_id; in searches more)."""
    return {name: properties.get(name) for name in asked if name in properties}


def _typed(properties: dict[str, Any], schema: dict[str, _Property]) -> dict[str, Any]:
    return {name: _from_hubspot(value, schema.get(name)) for name, value in properties.items()}


def _from_hubspot(value: Any, prop: _Property | None) -> Any:
    if value is None or value == "":
        return None
    if prop is None or not isinstance(value, str):
        return value
    if prop.type == "number":
        for parse in (int, float):  # int first: a float would round large ids and counts
            try:
                return parse(value)
            except ValueError:
                pass
        return value
    if prop.type == "bool":
        return value.strip().lower() == "true"
    if prop.type == "enumeration" and prop.field_type == "checkbox":
        return _split(value)
    return value


def _to_hubspot(name: str, value: Any) -> str:
    """HubSpot property values are text: booleans lower case, lists ';'-joined, None clears."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ";".join(str(v) for v in value)
    if isinstance(value, datetime):
        return _hubspot_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        raise RejectedError(f"field {name!r}: a HubSpot property cannot hold an object", provider="hubspot")
    return str(value)


def _hubspot_time(at: datetime | None) -> str:
    # An activity always passes the workflow's time; now is only for a caller that passes none.
    at = at or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _search_eq(prop: str, value: str) -> dict[str, Any]:
    """A search for objects whose ``prop`` equals ``value``; only the count and one id are needed."""
    return {
        "filterGroups": [{"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]}],
        "properties": [prop],
        "limit": 1,
    }


def _split(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part for part in str(value).split(";") if part]


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _contact_ids(links: list[dict[str, Any]]) -> list[str]:
    """Contact ids in HubSpot's order, those whose primary company this is first, each once (v4 lists a contact
    once with all its association types)."""

    def primary(link: dict[str, Any]) -> bool:
        return any(
            t.get("category") == "HUBSPOT_DEFINED" and t.get("typeId") == COMPANY_TO_CONTACT_PRIMARY
            for t in link.get("associationTypes") or []
        )

    first = [str(link["toObjectId"]) for link in links if primary(link)]
    return list(dict.fromkeys([*first, *(str(link["toObjectId"]) for link in links)]))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _primary_team(owner: dict[str, Any]) -> str | None:
    teams = owner.get("teams") or []
    primary = next((t for t in teams if t.get("primary")), teams[0] if teams else None)
    return primary.get("name") if primary else None


def _match(profiles: dict[str, _Profile], owner: dict[str, Any]) -> _Profile | None:
    return profiles.get(f"id:{owner.get('id')}") or profiles.get(f"email:{str(owner.get('email') or '').lower()}")
