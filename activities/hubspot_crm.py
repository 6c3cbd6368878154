"""HubSpot as the CRM, through its CRM v3 REST API with httpx.

What the playbooks call an account is a HubSpot company; its contacts are the contacts associated
with it; its owner is the company's ``hubspot_owner_id``; the team is HubSpot's owners.

Choices a HubSpot admin has to know about (the private app needs the scopes
``crm.objects.companies.read/write``, ``crm.objects.contacts.read``, ``crm.schemas.companies.read``,
``crm.schemas.contacts.read`` and ``crm.objects.owners.read``; notes are written with the companies
scope):

- Properties are read with their definitions (``/crm/v3/properties/{object}``, fetched once), so
  values reach playbooks typed: ``health_score >= 70`` needs a number, not HubSpot's ``"70"``.
  number → int/float, bool → True/False, multi-select → list, empty → None; dates stay ISO text.
  Read by default: a few standard properties and every custom one; pass ``company_properties`` /
  ``contact_properties`` to choose.
- Tags are the multi-select company property ``playbook_tags`` (``tags_property``), changed by
  read-modify-write. HubSpot only accepts values that are options of a multi-select, so either add
  the tags playbooks use as options, or make it a single-line text property (the ``;``-joined
  format is the same). Two runs tagging one company at the same instant can lose a tag: HubSpot has
  no conditional update.
- Notes are idempotent through a custom *note* property ``playbook_key`` (``note_key_property``),
  which the admin creates: before creating, the provider searches for a note with the activity's
  key. HubSpot's search index lags writes by a few seconds, so a retry within that window after a
  lost response can still create a second note; a local table cannot do better without knowing
  whether HubSpot's create went through. ``note_key_property=None`` skips the search.
- HubSpot owners have no languages, role or capacity. Those come from a local team file
  (``team_file``, YAML or JSON: a list of ``{id or email, languages, role, capacity, active}``)
  and/or the built-in ``csms`` table (``db_url``), matched to owners by HubSpot owner id or email.
  When either is given, the team is only the owners it lists (HubSpot owners include sales and
  support users, who must not be handed accounts); otherwise every active owner is on the team,
  with their primary HubSpot team as role. A CSM's id is always the HubSpot owner id.
- A candidate's load is the number of companies they own (one search per owner; HubSpot's search
  is rate limited, and a 429 is a TransientError that Temporal retries).

Errors are mapped in one place, ``_request``: connection errors and timeouts → TransientError;
HTTP errors through ``from_http_status`` (429 carries Retry-After in its message).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from .assignment import Candidate
from .errors import ConfigurationError, ProviderError, RejectedError, TransientError, from_http_status
from .types import AccountSnapshot

# Always read: the name, the owner and the tags are part of every snapshot.
COMPANY_REQUIRED = ("name", "hubspot_owner_id")
COMPANY_STANDARD = ("domain", "industry", "country", "city", "phone", "numberofemployees", "annualrevenue",
                    "lifecyclestage", "createdate", "hs_lastmodifieddate")
CONTACT_REQUIRED = ("email", "firstname", "lastname")
CONTACT_STANDARD = ("phone", "jobtitle", "hs_language")
# Renamed to the names the built-in CRM and the playbooks use.
CONTACT_RENAMES = {"firstname": "first_name", "lastname": "last_name"}
NOTE_TO_COMPANY = 190  # HubSpot-defined association type: note → company
BATCH_LIMIT = 100  # inputs per batch read


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


class HubSpotCrm:
    name = "hubspot"

    def __init__(
        self,
        token: str,
        base_url: str = "https://api.hubapi.com",
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = 10.0,
        company_properties: Sequence[str] | None = None,
        contact_properties: Sequence[str] | None = None,
        tags_property: str = "playbook_tags",
        note_key_property: str | None = "playbook_key",
        team_file: str | Path | None = None,
        db_url: str | None = None,
        owner_cache_seconds: float = 300.0,
    ) -> None:
        if not token:
            raise ConfigurationError("no HubSpot private app token", provider=self.name)
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,  # the seam: httpx.MockTransport, or None for the network
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        self.company_properties = tuple(company_properties) if company_properties is not None else None
        self.contact_properties = tuple(contact_properties) if contact_properties is not None else None
        self.tags_property = tags_property
        self.note_key_property = note_key_property
        self.team_file = Path(team_file) if team_file else None
        self.db_url = db_url
        self.owner_cache_seconds = owner_cache_seconds
        self._schemas: dict[str, dict[str, _Property]] = {}
        self._owners: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HubSpotCrm(base_url={str(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubSpotCrm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # CrmProvider -----------------------------------------------------------------------------

    def get_account(self, account_id: str) -> AccountSnapshot:
        schema = self._schema("companies")
        required = (*COMPANY_REQUIRED, self.tags_property)
        wanted = self._wanted(schema, required, COMPANY_STANDARD, self.company_properties)
        company = self._request(
            "GET",
            f"/crm/v3/objects/companies/{_segment(account_id)}",
            params={"properties": ",".join(wanted), "associations": "contacts"},
        )
        links = ((company.get("associations") or {}).get("contacts") or {}).get("results") or []
        return AccountSnapshot(account=self._account(company, account_id, schema),
                               contacts=self._contacts(_contact_ids(links)))

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountSnapshot]:
        """A page of companies in batch reads of 100: the companies, their contact associations, the contacts.

        Six calls for 200 accounts where get_account makes two per account (and one per owner not cached). HubSpot's
        companies batch read has no associations parameter, so they come from the v3 associations batch read,
        which answers in the shape get_account's ``associations=contacts`` has (``{id, type}``, a contact once per
        association type); like get_account it reads the first page of a company's associations (100 contacts).
        A company that does not exist (or is archived) is left out.
        """
        wanted = list(dict.fromkeys(str(i) for i in account_ids))
        if not wanted:
            return {}
        schema = self._schema("companies")
        required = (*COMPANY_REQUIRED, self.tags_property)
        properties = self._wanted(schema, required, COMPANY_STANDARD, self.company_properties)
        companies: dict[str, dict[str, Any]] = {}
        links: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(wanted), BATCH_LIMIT):
            inputs = [{"id": i} for i in wanted[start : start + BATCH_LIMIT]]
            # ids HubSpot does not have come back in "errors" with a 207 (a 404 when none is found): not in results
            answer = self._request(
                "POST", "/crm/v3/objects/companies/batch/read", json={"properties": properties, "inputs": inputs},
                missing_ok=True,
            ) or {}
            for result in answer.get("results") or []:
                companies[str(result["id"])] = result
            found = [i for i in inputs if i["id"] in companies]
            if not found:
                continue
            # a company without contacts is in "errors" (NO_ASSOCIATIONS_FOUND) with a 207, or all are with a 404
            answer = self._request(
                "POST", "/crm/v3/associations/companies/contacts/batch/read", json={"inputs": found}, missing_ok=True
            ) or {}
            for result in answer.get("results") or []:
                links[str((result.get("from") or {}).get("id"))] = result.get("to") or []
        contact_ids = {i: _contact_ids(links.get(i, [])) for i in companies}
        contacts = self._contacts_by_id(list(dict.fromkeys(c for ids in contact_ids.values() for c in ids)))
        return {
            i: AccountSnapshot(
                account=self._account(companies[i], i, schema),
                contacts=[contacts[c] for c in contact_ids[i] if c in contacts],
            )
            for i in wanted
            if i in companies
        }

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
                        "to": {"id": str(account_id)},
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
            "GET", f"/crm/v3/objects/companies/{_segment(account_id)}", params={"properties": self.tags_property}
        )
        tags = _split((company.get("properties") or {}).get(self.tags_property))
        if tag not in tags:
            self._patch_company(account_id, {self.tags_property: ";".join([*tags, tag])})

    def set_owner(self, account_id: str, csm_id: str, at: datetime) -> None:
        self._patch_company(account_id, {"hubspot_owner_id": str(csm_id)})

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
        return [
            Candidate(
                str(owner["id"]),
                profile.languages if profile else (),
                (profile.role if profile and profile.role else None) or _primary_team(owner),
                profile.capacity if profile else None,
                self._owned_count(str(owner["id"])),
            )
            for owner, profile in sorted(members, key=lambda m: str(m[0]["id"]))
        ]

    def csm(self, csm_id: str) -> dict[str, Any] | None:
        owner = self._owner(str(csm_id))
        return self._csm_dict(owner) if owner else None

    # companies, contacts, owners ------------------------------------------------------------------

    def _patch_company(self, account_id: str, properties: dict[str, str]) -> None:
        self._request("PATCH", f"/crm/v3/objects/companies/{_segment(account_id)}", json={"properties": properties})

    def _account(self, company: dict[str, Any], account_id: str, schema: dict[str, _Property]) -> dict[str, Any]:
        """A company as playbooks see an account (its contacts aside)."""
        props = _typed(company.get("properties") or {}, schema)
        tags = _split(company.get("properties", {}).get(self.tags_property))
        props.pop(self.tags_property, None)
        owner_id = props.get("hubspot_owner_id")
        return {
            **props,
            "id": str(company.get("id", account_id)),
            "name": props.get("name") or "",
            "owner": self._owner_summary(str(owner_id)) if owner_id not in (None, "") else None,
            "tags": tags,
        }

    def _contacts(self, ids: list[str]) -> list[dict[str, Any]]:
        by_id = self._contacts_by_id(ids)
        return [by_id[i] for i in ids if i in by_id]  # one archived or deleted since the association was read: left out

    def _contacts_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        schema = self._schema("contacts")
        wanted = self._wanted(schema, CONTACT_REQUIRED, CONTACT_STANDARD, self.contact_properties)
        by_id: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH_LIMIT):
            answer = self._request(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={"properties": wanted, "inputs": [{"id": i} for i in ids[start : start + BATCH_LIMIT]]},
            )
            for result in answer.get("results") or []:
                by_id[str(result["id"])] = result
        contacts = {}
        for contact_id, result in by_id.items():  # callers order them: HubSpot's batch answer is unordered
            props = _typed(result.get("properties") or {}, schema)
            contact = {CONTACT_RENAMES.get(k, k): v for k, v in props.items()}
            contact.update(id=contact_id, email=contact.get("email") or "", first_name=contact.get("first_name") or "")
            contacts[contact_id] = contact
        return contacts

    def _owned_count(self, owner_id: str) -> int:
        query = _search_eq("hubspot_owner_id", owner_id)
        answer = self._request("POST", "/crm/v3/objects/companies/search", json=query)
        return int(answer.get("total") or 0)

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
            p["name"]: _Property(p.get("type", "string"), p.get("fieldType", "text"), not p.get("hubspotDefined"))
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
    ) -> Any:
        """Every call to HubSpot goes through here: httpx's and HubSpot's errors become ProviderError kinds."""
        what = f"{method} {path}"
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
            raise _http_error(what, response, self.name)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as err:
            message = f"{what}: HubSpot answered {response.status_code} with no JSON"
            raise TransientError(message, provider=self.name) from err


def _http_error(what: str, response: httpx.Response, provider: str) -> ProviderError:
    try:
        body = response.json()
        detail = body.get("message") or json.dumps(body)[:300]
        category = body.get("category")
        correlation = body.get("correlationId")
    except ValueError:
        detail, category, correlation = response.text[:300] or response.reason_phrase, None, None
    message = f"{what}: HubSpot answered {response.status_code}: {detail}"
    if category:
        message += f" [{category}]"
    if correlation:
        message += f" (correlationId {correlation})"
    if response.status_code == 429:
        retry_after = response.headers.get("Retry-After")
        message += f"; retry after {retry_after} s" if retry_after else "; rate limited"
    return from_http_status(response.status_code, message, provider)


# values --------------------------------------------------------------------------------------------


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
    """Contact ids in order, primary associations first, each once (HubSpot lists one per type)."""
    primary = [str(link["id"]) for link in links if link.get("type") == "company_to_contact"]
    rest = [str(link["id"]) for link in links]
    return list(dict.fromkeys([*primary, *rest]))


def _primary_team(owner: dict[str, Any]) -> str | None:
    teams = owner.get("teams") or []
    primary = next((t for t in teams if t.get("primary")), teams[0] if teams else None)
    return primary.get("name") if primary else None


def _match(profiles: dict[str, _Profile], owner: dict[str, Any]) -> _Profile | None:
    return profiles.get(f"id:{owner.get('id')}") or profiles.get(f"email:{str(owner.get('email') or '').lower()}")
