"""A fake of the HubSpot CRM v3 endpoints the HubSpot provider uses, with HubSpot's answer shapes.

In memory: companies, contacts and their associations, owners, notes, and the companies' property
definitions. Like HubSpot, every property value is a string (or null), multi-select values are
joined with ``;``, unknown properties and options are refused with 400, and search counts.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from ._server import FakeServer, Recorded, Reply

TOKEN = "pat-na1-fake-token-for-tests"

# name → (type, fieldType, hubspotDefined, options)
COMPANY_PROPERTIES: dict[str, tuple[str, str, bool, list[str]]] = {
    "name": ("string", "text", True, []),
    "domain": ("string", "text", True, []),
    "industry": ("enumeration", "select", True, ["COMPUTER_SOFTWARE", "RETAIL"]),
    "numberofemployees": ("number", "number", True, []),
    "hubspot_owner_id": ("enumeration", "select", True, []),
    "hs_lastmodifieddate": ("datetime", "date", True, []),
    "createdate": ("datetime", "date", True, []),
    "hs_object_id": ("number", "number", True, []),
    "website": ("string", "text", True, []),  # standard, not asked for by default
    # the account's custom properties, as a HubSpot admin would create them for the playbooks
    "health_score": ("number", "number", False, []),
    "mrr": ("number", "number", False, []),
    "cancelled": ("bool", "booleancheckbox", False, []),
    "renewal_date": ("date", "date", False, []),
    "language": ("string", "text", False, []),
    "playbook_tags": ("enumeration", "checkbox", False, ["vip", "at-risk", "onboarding", "renewal"]),
}
CONTACT_PROPERTIES: dict[str, tuple[str, str, bool, list[str]]] = {
    "email": ("string", "text", True, []),
    "firstname": ("string", "text", True, []),
    "lastname": ("string", "text", True, []),
    "phone": ("string", "phonenumber", True, []),
    "jobtitle": ("string", "text", True, []),
    "hs_language": ("enumeration", "select", True, ["de", "en", "es", "fr"]),
    "createdate": ("datetime", "date", True, []),
    "mobilephone": ("string", "phonenumber", True, []),  # standard, not asked for by default
}
NOTE_PROPERTIES = {"hs_note_body", "hs_timestamp", "playbook_key"}
NOTE_TO_COMPANY = 190


def _error(status: int, message: str, category: str) -> Reply:
    return Reply(status, {"status": "error", "message": message, "correlationId": "fake-0000", "category": category})


class FakeHubSpot(FakeServer):
    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.company_properties = dict(COMPANY_PROPERTIES)
        self.contact_properties = dict(CONTACT_PROPERTIES)
        self.note_properties = set(NOTE_PROPERTIES)
        self.companies: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.company_contacts: dict[str, list[str]] = {}
        self.owners: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, dict[str, Any]] = {}  # id → {"properties": ..., "associations": ...}
        self.owner_page_size = 2  # small, so the client's paging is exercised
        self._ids = itertools.count(9000)

    # seeding ---------------------------------------------------------------------------------

    def add_company(self, company_id: str, **properties: Any) -> None:
        created = "2024-01-02T03:04:05.000Z"
        self.companies[company_id] = {"hs_object_id": company_id, "createdate": created, **properties}
        self.company_contacts.setdefault(company_id, [])

    def add_contact(self, contact_id: str, company_id: str, **properties: Any) -> None:
        self.contacts[contact_id] = {"hs_object_id": contact_id, **properties}
        self.company_contacts.setdefault(company_id, []).append(contact_id)

    def add_owner(
        self, owner_id: str, email: str, first: str, last: str, *, teams: tuple[str, ...] = (), archived: bool = False
    ) -> None:
        self.owners[owner_id] = {
            "id": owner_id,
            "email": email,
            "type": "PERSON",
            "firstName": first,
            "lastName": last,
            "userId": int(owner_id) + 1000,
            "createdAt": "2024-01-01T00:00:00Z",
            "updatedAt": "2024-01-01T00:00:00Z",
            "archived": archived,
            "teams": [{"id": str(100 + i), "name": name, "primary": i == 0} for i, name in enumerate(teams)],
        }

    # routing ---------------------------------------------------------------------------------

    def answer(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        m, p = request.method, request.path
        if m == "GET" and p == "/crm/v3/properties/companies":
            return self._properties(self.company_properties)
        if m == "GET" and p == "/crm/v3/properties/contacts":
            return self._properties(self.contact_properties)
        if match := re.fullmatch(r"/crm/v3/objects/companies/([^/]+)", p):
            if m == "GET":
                return self._get_company(match[1], request)
            if m == "PATCH":
                return self._patch_company(match[1], request.json or {})
        if m == "POST" and p == "/crm/v3/objects/companies/search":
            return self._search(self.companies, request.json or {})
        if m == "POST" and p == "/crm/v3/objects/companies/batch/read":
            return self._read_companies(request.json or {})
        if m == "POST" and p == "/crm/v3/associations/companies/contacts/batch/read":
            return self._read_company_contacts(request.json or {})
        if m == "POST" and p == "/crm/v3/objects/contacts/batch/read":
            return self._read_contacts(request.json or {})
        if m == "POST" and p == "/crm/v3/objects/notes/search":
            return self._search({k: v["properties"] for k, v in self.notes.items()}, request.json or {})
        if m == "POST" and p == "/crm/v3/objects/notes":
            return self._create_note(request.json or {})
        if m == "GET" and p == "/crm/v3/owners":
            return self._list_owners(request)
        if m == "GET" and (match := re.fullmatch(r"/crm/v3/owners/([^/]+)", p)):
            owner = self.owners.get(match[1])
            if owner is None or owner["archived"]:
                return _error(404, f"No owner found with id {match[1]}", "OBJECT_NOT_FOUND")
            return Reply(200, owner)
        return _error(404, f"unknown endpoint {m} {p}", "NOT_FOUND")

    # endpoints -------------------------------------------------------------------------------

    def _properties(self, definitions: dict[str, tuple[str, str, bool, list[str]]]) -> Reply:
        results = []
        for name, (type_, field_type, defined, options) in definitions.items():
            item = {
                "name": name,
                "label": name.replace("_", " ").title(),
                "type": type_,
                "fieldType": field_type,
                "groupName": "companyinformation",
                "options": [
                    {"label": o, "value": o, "hidden": False, "displayOrder": i} for i, o in enumerate(options)
                ],
            }
            if defined:
                item["hubspotDefined"] = True  # HubSpot leaves the key out for custom properties
            results.append(item)
        return Reply(200, {"results": results})

    def _get_company(self, company_id: str, request: Recorded) -> Reply:
        company = self.companies.get(company_id)
        if company is None:
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        asked = ",".join(request.query.get("properties", [])).split(",")
        body = self._company(company_id, [n for n in asked if n])
        if "contacts" in ",".join(request.query.get("associations", [])).split(","):
            results = self._contact_links(company_id)
            if results:
                body["associations"] = {"contacts": {"results": results}}
        return Reply(200, body)

    def _company(self, company_id: str, asked: list[str]) -> dict[str, Any]:
        company = self.companies[company_id]
        wanted = asked or ["name", "domain", "createdate", "hs_lastmodifieddate", "hs_object_id"]
        # HubSpot ignores properties that do not exist and answers null for unset ones
        properties = {n: _text(company.get(n)) for n in wanted if n in self.company_properties}
        return {
            "id": company_id,
            "properties": properties,
            "createdAt": "2024-01-02T03:04:05.000Z",
            "updatedAt": "2024-02-03T04:05:06.000Z",
            "archived": False,
        }

    def _contact_links(self, company_id: str) -> list[dict[str, str]]:
        # HubSpot lists a contact once per association type: primary and unlabeled
        results = []
        for i, cid in enumerate(self.company_contacts.get(company_id, [])):
            results.append({"id": cid, "type": "company_to_contact"})
            if i % 2 == 0:
                results.append({"id": cid, "type": "company_to_contact_unlabeled"})
        return results

    def _read_companies(self, payload: dict) -> Reply:
        ids = [str(i["id"]) for i in payload.get("inputs") or []]
        if len(ids) > 100:
            return _error(400, "Too many inputs: at most 100", "VALIDATION_ERROR")
        found = [i for i in ids if i in self.companies]
        missing = [i for i in ids if i not in self.companies]
        if not found:
            return _error(404, "Could not get some COMPANY objects, they may be deleted or not exist.",
                          "OBJECT_NOT_FOUND")
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": [self._company(i, list(payload.get("properties") or [])) for i in reversed(found)],
        }
        if missing:  # HubSpot answers the ones it has, and the others as errors, with a 207
            body["errors"] = [{"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": "Could not get some COMPANY objects, they may be deleted or not exist.",
                               "context": {"ids": missing}}]
            body["numErrors"] = 1
            return Reply(207, body)
        return Reply(200, body)

    def _read_company_contacts(self, payload: dict) -> Reply:
        ids = [str(i["id"]) for i in payload.get("inputs") or []]
        if len(ids) > 100:
            return _error(400, "Too many inputs: at most 100", "VALIDATION_ERROR")
        results = [{"from": {"id": i}, "to": self._contact_links(i)} for i in reversed(ids) if self._contact_links(i)]
        lonely = [i for i in ids if not self._contact_links(i)]
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if lonely:  # a company without contacts (or unknown) is an error of the batch, each its own
            body["errors"] = [
                {"status": "error", "category": "OBJECT_NOT_FOUND", "subCategory": "NO_ASSOCIATIONS_FOUND",
                 "message": f"No contact is associated with company {i}.", "context": {"fromId": [i]}}
                for i in lonely
            ]
            body["numErrors"] = len(lonely)
            return Reply(207, body)
        return Reply(200, body)

    def _patch_company(self, company_id: str, payload: dict) -> Reply:
        company = self.companies.get(company_id)
        if company is None:
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        properties = payload.get("properties") or {}
        problems = []
        for name, value in properties.items():
            spec = self.company_properties.get(name)
            if spec is None:
                problems.append(f'Property "{name}" does not exist')
            elif not isinstance(value, str):
                problems.append(f'Property "{name}" must be sent as a string in this fake')
            elif name == "hubspot_owner_id" and value and value not in self.owners:
                problems.append(f'{value} is not a valid owner id')
            elif spec[1] == "checkbox" and value:
                bad = [v for v in value.split(";") if v not in spec[3]]
                if bad:
                    problems.append(f'{bad[0]} was not one of the allowed options for "{name}"')
        if problems:
            return _error(400, "Property values were not valid: " + "; ".join(problems), "VALIDATION_ERROR")
        for name, value in properties.items():
            company[name] = value if value != "" else None
        return Reply(200, {"id": company_id, "properties": {k: _text(v) for k, v in company.items()}})

    def _search(self, objects: dict[str, dict[str, Any]], query: dict) -> Reply:
        def keep(props: dict[str, Any]) -> bool:
            groups = query.get("filterGroups") or [{"filters": []}]
            return any(all(_equal(props, f) for f in g["filters"]) for g in groups)

        for group in query.get("filterGroups") or []:
            for f in group["filters"]:
                known = self.note_properties if objects is not self.companies else self.company_properties
                if objects is not self.companies and f["propertyName"] not in known:
                    return _error(400, f"There was a problem with the request: unknown property {f['propertyName']}",
                                  "VALIDATION_ERROR")
        found = [(k, v) for k, v in objects.items() if keep(v)]
        limit = int(query.get("limit", 10))
        return Reply(200, {
            "total": len(found),
            "results": [{"id": k, "properties": {n: _text(x) for n, x in v.items()}} for k, v in found[:limit]],
        })

    def _read_contacts(self, payload: dict) -> Reply:
        wanted = payload.get("properties") or ["email", "firstname", "lastname"]
        ids = [i["id"] for i in payload.get("inputs") or []]
        if len(ids) > 100:
            return _error(400, "Too many inputs: at most 100", "VALIDATION_ERROR")
        found = [i for i in ids if i in self.contacts]
        results = [
            {"id": i, "properties": {n: _text(self.contacts[i].get(n)) for n in wanted if n in self.contact_properties},
             "archived": False}
            for i in reversed(found)  # HubSpot does not keep the order of the inputs
        ]
        return Reply(200, {"status": "COMPLETE", "results": results})

    def _create_note(self, payload: dict) -> Reply:
        properties = payload.get("properties") or {}
        unknown = [n for n in properties if n not in self.note_properties]
        if unknown:
            return _error(400, f'Property values were not valid: Property "{unknown[0]}" does not exist',
                          "VALIDATION_ERROR")
        if not properties.get("hs_timestamp"):
            return _error(400, "hs_timestamp is required", "VALIDATION_ERROR")
        for association in payload.get("associations") or []:
            types = association.get("types") or []
            if association["to"]["id"] not in self.companies or not any(
                t.get("associationTypeId") == NOTE_TO_COMPANY for t in types
            ):
                return _error(400, "invalid association", "VALIDATION_ERROR")
        note_id = str(next(self._ids))
        self.notes[note_id] = {"properties": dict(properties), "associations": payload.get("associations") or []}
        return Reply(201, {"id": note_id, "properties": properties, "archived": False})

    def _list_owners(self, request: Recorded) -> Reply:
        archived = (request.query.get("archived") or ["false"])[0] == "true"
        owners = [o for o in self.owners.values() if o["archived"] == archived]
        limit = min(int((request.query.get("limit") or ["100"])[0]), self.owner_page_size)
        start = int((request.query.get("after") or ["0"])[0])
        page = owners[start : start + limit]
        body: dict[str, Any] = {"results": page}
        if start + limit < len(owners):
            after = str(start + limit)
            body["paging"] = {"next": {"after": after, "link": f"{self.url}/crm/v3/owners?after={after}"}}
        return Reply(200, body)


def _equal(props: dict[str, Any], search_filter: dict[str, Any]) -> bool:
    if search_filter.get("operator") != "EQ":
        raise ValueError(f"the fake only knows EQ, not {search_filter.get('operator')}")
    return _text(props.get(search_filter["propertyName"])) == search_filter.get("value")


def _text(value: Any) -> str | None:
    """Like HubSpot: every value a string, booleans lower case, unset ones null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)
