"""A fake of the HubSpot CRM endpoints the HubSpot provider uses, in HubSpot's published shapes.

In memory: companies, contacts and their associations, owners, notes, and the property definitions.
Like HubSpot (developers.hubspot.com: CRM v3 objects, batch read/upsert, search, v4 associations,
usage details), and enforcing what HubSpot enforces where a client can get it wrong:

- every property value is a string (or null), multi-select values joined with ``;``; unknown or read-only
  properties and unknown options are refused with 400;
- ``idProperty`` (single reads and updates, batch reads, batch upserts) must name a unique-value property;
- batches take at most 100 inputs, and a batch upsert refuses the same id twice;
- a query string over 8 KB is answered 414 (HubSpot's limit on a URL is about that);
- search: at most 100 results a page, ``after`` is an offset, and no query reaches past 10,000 results (400);
  with ``search_per_second`` set, searches beyond it in a second get HubSpot's 429 (policy SECONDLY);
- a company's associations (v4 batch read) come in pages of ``association_page_size`` with an opaque
  ``paging.next.after``; associating twice keeps one association.
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
import time
from collections import deque
from operator import ge as operator_ge
from operator import gt as operator_gt
from operator import le as operator_le
from operator import lt as operator_lt
from typing import Any
from urllib.parse import urlencode

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
    "playbook_account_id": ("string", "text", False, []),  # unique values: the product's account ids
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
    "hs_object_id": ("number", "number", True, []),
    "mobilephone": ("string", "phonenumber", True, []),  # standard, not asked for by default
}
UNIQUE = {"hs_object_id", "playbook_account_id", "email"}  # hasUniqueValue (email: HubSpot's contact key)
READ_ONLY = {"hs_object_id", "createdate", "hs_lastmodifieddate"}  # modificationMetadata.readOnlyValue
ALWAYS_RETURNED = ("hs_object_id",)  # HubSpot adds it to every object it answers
NOTE_PROPERTIES = {"hs_note_body", "hs_timestamp", "playbook_key"}
NOTE_TO_COMPANY = 190
COMPANY_TO_CONTACT = 280  # HubSpot-defined, unlabeled
COMPANY_TO_CONTACT_PRIMARY = 2  # HubSpot-defined: this company is the contact's primary company
BATCH_MAX = 100
SEARCH_MAX_LIMIT = 100
SEARCH_CAP = 10_000
QUERY_MAX = 8 * 1024


def _error(status: int, message: str, category: str, **extra: Any) -> Reply:
    body = {"status": "error", "message": message, "correlationId": "fake-0000", "category": category, **extra}
    return Reply(status, body)


class FakeHubSpot(FakeServer):
    def __init__(self, token: str = TOKEN, *, search_per_second: float | None = None) -> None:
        super().__init__()
        self.token = token
        self.company_properties = dict(COMPANY_PROPERTIES)
        self.contact_properties = dict(CONTACT_PROPERTIES)
        self.note_properties = set(NOTE_PROPERTIES)
        self.companies: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.company_contacts: dict[str, list[str]] = {}  # company id → its contacts, in association order
        self.primary_company: dict[str, str] = {}  # contact id → the company first associated with it
        self.owners: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, dict[str, Any]] = {}  # id → {"properties": ..., "associations": ...}
        self.owner_page_size = 2  # small, so the client's paging is exercised
        self.association_page_size = 100
        self.search_per_second = search_per_second
        self.searches_refused = 0
        self._searches: deque[float] = deque()
        self._ids = itertools.count(9000)
        self._data = threading.Lock()  # the server answers on several threads

    # seeding ---------------------------------------------------------------------------------

    def add_company(self, company_id: str, **properties: Any) -> None:
        _numeric_id(company_id)
        created = "2024-01-02T03:04:05.000Z"
        self.companies[company_id] = {"hs_object_id": company_id, "createdate": created, **properties}
        self.company_contacts.setdefault(company_id, [])

    def add_contact(self, contact_id: str, company_id: str, **properties: Any) -> None:
        _numeric_id(contact_id)
        self.contacts[contact_id] = {"hs_object_id": contact_id, **properties}
        self._associate(company_id, contact_id)

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

    def company_by(self, prop: str, value: str) -> str | None:
        """The id of the company whose ``prop`` is ``value``."""
        return next((i for i, c in self.companies.items() if _text(c.get(prop)) == value), None)

    def contacts_of(self, company_id: str) -> list[dict[str, Any]]:
        return [self.contacts[c] for c in self.company_contacts.get(company_id, [])]

    def _associate(self, company_id: str, contact_id: str) -> None:
        linked = self.company_contacts.setdefault(company_id, [])
        if contact_id not in linked:
            linked.append(contact_id)
        self.primary_company.setdefault(contact_id, company_id)

    # routing ---------------------------------------------------------------------------------

    def answer(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        if len(urlencode(request.query, doseq=True)) > QUERY_MAX:
            return Reply(414, "<html><body><h1>414 Request-URI Too Large</h1></body></html>",
                         {"Content-Type": "text/html"})
        with self._data:
            return self._route(request)

    def _route(self, request: Recorded) -> Reply:
        m, p, body = request.method, request.path, request.json or {}
        if m == "GET" and p == "/crm/v3/properties/companies":
            return self._properties(self.company_properties)
        if m == "GET" and p == "/crm/v3/properties/contacts":
            return self._properties(self.contact_properties)
        if m == "POST" and p.endswith("/search"):
            refused = self._rate_limited()
            if refused is not None:
                return refused
            if p == "/crm/v3/objects/companies/search":
                return self._search(self.companies, self.company_properties, body)
            if p == "/crm/v3/objects/notes/search":
                definitions = {n: ("string", "text", False, []) for n in self.note_properties}
                return self._search({k: v["properties"] for k, v in self.notes.items()}, definitions, body)
        if match := re.fullmatch(r"/crm/v3/objects/companies/([^/]+)", p):
            if m == "GET":
                return self._get_company(match[1], request)
            if m == "PATCH":
                return self._patch_company(match[1], request, body)
        if m == "POST" and p == "/crm/v3/objects/companies/batch/read":
            return self._read_companies(body)
        if m == "POST" and p == "/crm/v3/objects/companies/batch/upsert":
            return self._upsert(self.companies, self.company_properties, body, "COMPANY")
        if m == "POST" and p == "/crm/v3/objects/contacts/batch/upsert":
            return self._upsert(self.contacts, self.contact_properties, body, "CONTACT")
        if m == "POST" and p == "/crm/v4/associations/companies/contacts/batch/read":
            return self._read_company_contacts(body)
        if m == "POST" and p == "/crm/v4/associations/companies/contacts/batch/associate/default":
            return self._associate_default(body)
        if m == "POST" and p == "/crm/v3/objects/contacts/batch/read":
            return self._read_contacts(body)
        if m == "POST" and p == "/crm/v3/objects/notes":
            return self._create_note(body)
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
            item: dict[str, Any] = {
                "name": name,
                "label": name.replace("_", " ").title(),
                "type": type_,
                "fieldType": field_type,
                "groupName": "companyinformation",
                "hasUniqueValue": name in UNIQUE,
                "modificationMetadata": {"archivable": True, "readOnlyDefinition": defined,
                                         "readOnlyValue": name in READ_ONLY},
                "options": [
                    {"label": o, "value": o, "hidden": False, "displayOrder": i} for i, o in enumerate(options)
                ],
            }
            if defined:
                item["hubspotDefined"] = True  # HubSpot leaves the key out for custom properties
            results.append(item)
        return Reply(200, {"results": results})

    def _id_property(self, definitions: dict[str, Any], id_property: str | None) -> Reply | None:
        if id_property and (id_property not in definitions or id_property not in UNIQUE):
            return _error(400, f"{id_property} is not a unique identifier property", "VALIDATION_ERROR")
        return None

    def _find_company(self, value: str, id_property: str | None) -> str | None:
        if not id_property or id_property == "hs_object_id":
            return value if value in self.companies else None
        return self.company_by(id_property, value)

    def _company_in_path(self, value: str, request: Recorded) -> str | Reply:
        """The company a /companies/{value} path names (by ?idProperty= when given), or HubSpot's error answer."""
        id_property = (request.query.get("idProperty") or [None])[0]
        if (refused := self._id_property(self.company_properties, id_property)) is not None:
            return refused
        company_id = self._find_company(value, id_property)
        if company_id is None:
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        return company_id

    def _get_company(self, value: str, request: Recorded) -> Reply:
        company_id = self._company_in_path(value, request)
        if isinstance(company_id, Reply):
            return company_id
        asked = ",".join(request.query.get("properties", [])).split(",")
        return Reply(200, self._company(company_id, [n for n in asked if n]))

    def _company(self, company_id: str, asked: list[str]) -> dict[str, Any]:
        company = self.companies[company_id]
        wanted = [*(asked or ["name", "domain", "createdate", "hs_lastmodifieddate"]), *ALWAYS_RETURNED]
        # HubSpot ignores properties that do not exist and answers null for unset ones
        properties = {n: _text(company.get(n)) for n in wanted if n in self.company_properties}
        return {
            "id": company_id,
            "properties": properties,
            "createdAt": "2024-01-02T03:04:05.000Z",
            "updatedAt": "2024-02-03T04:05:06.000Z",
            "archived": False,
        }

    def _read_companies(self, payload: dict) -> Reply:
        id_property = payload.get("idProperty")
        if (refused := self._id_property(self.company_properties, id_property)) is not None:
            return refused
        values = [str(i["id"]) for i in payload.get("inputs") or []]
        if len(values) > BATCH_MAX:
            return _error(400, f"Too many inputs: at most {BATCH_MAX}", "VALIDATION_ERROR")
        found = {v: c for v in values if (c := self._find_company(v, id_property)) is not None}
        missing = [v for v in values if v not in found]
        if not found:
            return _error(404, "Could not get some COMPANY objects, they may be deleted or not exist.",
                          "OBJECT_NOT_FOUND")
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": [self._company(c, list(payload.get("properties") or [])) for c in reversed(found.values())],
        }
        if missing:  # HubSpot answers the ones it has, and the others as errors, with a 207
            body["errors"] = [{"status": "error", "category": "OBJECT_NOT_FOUND",
                               "message": "Could not get some COMPANY objects, they may be deleted or not exist.",
                               "context": {"ids": missing}}]
            body["numErrors"] = 1
            return Reply(207, body)
        return Reply(200, body)

    def _read_company_contacts(self, payload: dict) -> Reply:
        inputs = payload.get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Too many inputs: at most {BATCH_MAX}", "VALIDATION_ERROR")
        results, lonely = [], []
        for item in reversed(inputs):  # HubSpot does not keep the inputs' order
            company_id = str(item["id"])
            linked = self.company_contacts.get(company_id) or []
            if not linked:
                lonely.append(company_id)
                continue
            start = _offset(item.get("after"))
            page = linked[start : start + self.association_page_size]
            result: dict[str, Any] = {
                "from": {"id": company_id},
                "to": [{"toObjectId": int(c) if c.isdigit() else c, "associationTypes": self._types(company_id, c)}
                       for c in page],
            }
            if start + self.association_page_size < len(linked):
                result["paging"] = {"next": {"after": _cursor(start + self.association_page_size), "link": None}}
            results.append(result)
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if lonely and not results:
            return _error(404, "No associations found.", "OBJECT_NOT_FOUND")
        if lonely:  # a company without contacts (or unknown) is an error of the batch, each its own, with a 207
            body["errors"] = [
                {"status": "error", "category": "OBJECT_NOT_FOUND",
                 "subCategory": "crm.associations.NO_ASSOCIATIONS_FOUND",
                 "message": f"No contact is associated with company {i}.", "context": {"fromObjectId": [i]}}
                for i in lonely
            ]
            body["numErrors"] = len(lonely)
            return Reply(207, body)
        return Reply(200, body)

    def _types(self, company_id: str, contact_id: str) -> list[dict[str, Any]]:
        types: list[dict[str, Any]] = [{"category": "HUBSPOT_DEFINED", "typeId": COMPANY_TO_CONTACT, "label": None}]
        if self.primary_company.get(contact_id) == company_id:
            types.insert(0, {"category": "HUBSPOT_DEFINED", "typeId": COMPANY_TO_CONTACT_PRIMARY, "label": "Primary"})
        return types

    def _associate_default(self, payload: dict) -> Reply:
        inputs = payload.get("inputs") or []
        if len(inputs) > BATCH_MAX:  # HubSpot's own limit may be higher: the provider sends at most 100
            return _error(400, f"Too many inputs: at most {BATCH_MAX}", "VALIDATION_ERROR")
        for item in inputs:
            if str(item["from"]["id"]) not in self.companies or str(item["to"]["id"]) not in self.contacts:
                return _error(400, "One or more objects in the association do not exist.", "VALIDATION_ERROR")
        results = []
        for item in inputs:
            self._associate(str(item["from"]["id"]), str(item["to"]["id"]))
            results.append({"from": {"id": str(item["from"]["id"])}, "to": {"id": str(item["to"]["id"])},
                            "associationSpec": {"associationCategory": "HUBSPOT_DEFINED",
                                                "associationTypeId": COMPANY_TO_CONTACT}})
        return Reply(200, {"status": "COMPLETE", "results": results})

    def _problems(self, definitions: dict[str, tuple[str, str, bool, list[str]]], properties: dict) -> list[str]:
        problems = []
        for name, value in properties.items():
            spec = definitions.get(name)
            if spec is None:
                problems.append(f'Property "{name}" does not exist')
            elif name in READ_ONLY:
                problems.append(f'Property "{name}" is read-only')
            elif not isinstance(value, str):
                problems.append(f'Property "{name}" must be sent as a string in this fake')
            elif name == "hubspot_owner_id" and value and value not in self.owners:
                problems.append(f"{value} is not a valid owner id")
            elif spec[1] in ("checkbox", "select") and spec[3] and value:
                bad = [v for v in value.split(";") if v not in spec[3]]
                if bad:
                    problems.append(f'{bad[0]} was not one of the allowed options for "{name}"')
        return problems

    def _patch_company(self, value: str, request: Recorded, payload: dict) -> Reply:
        company_id = self._company_in_path(value, request)
        if isinstance(company_id, Reply):
            return company_id
        properties = payload.get("properties") or {}
        problems = self._problems(self.company_properties, properties)
        if problems:
            return _error(400, "Property values were not valid: " + "; ".join(problems), "VALIDATION_ERROR")
        company = self.companies[company_id]
        for name, text in properties.items():
            company[name] = text if text != "" else None
        return Reply(200, {"id": company_id, "properties": {k: _text(v) for k, v in company.items()}})

    def _upsert(self, objects: dict[str, dict[str, Any]], definitions: dict, payload: dict, kind: str) -> Reply:
        inputs = payload.get("inputs") or []
        if len(inputs) > BATCH_MAX:
            return _error(400, f"Too many inputs: at most {BATCH_MAX}", "VALIDATION_ERROR")
        keys = []
        for item in inputs:
            id_property = item.get("idProperty")
            if not id_property or id_property == "hs_object_id":
                return _error(400, "idProperty is required and must be a unique property other than hs_object_id",
                              "VALIDATION_ERROR")
            if (refused := self._id_property(definitions, id_property)) is not None:
                return refused
            problems = self._problems(definitions, item.get("properties") or {})
            if problems:
                return _error(400, "Property values were not valid: " + "; ".join(problems), "VALIDATION_ERROR")
            keys.append((id_property, _key(id_property, str(item["id"]))))
        if len(set(keys)) < len(keys):
            return _error(400, "Duplicate IDs found in batch input.", "VALIDATION_ERROR")
        results = []
        for item, (id_property, key) in zip(inputs, keys, strict=True):
            found = next((i for i, o in objects.items() if _key(id_property, _text(o.get(id_property)) or "") == key),
                         None)
            new = found is None
            object_id = found or str(next(self._ids))
            if new:
                objects[object_id] = {"hs_object_id": object_id, "createdate": "2024-06-01T00:00:00.000Z",
                                      id_property: key}
                if kind == "COMPANY":
                    self.company_contacts.setdefault(object_id, [])
            stored = objects[object_id]
            for name, text in (item.get("properties") or {}).items():
                stored[name] = text if text != "" else None
            results.append({"id": object_id, "new": new, "archived": False,
                            "properties": {k: _text(v) for k, v in stored.items()},
                            "createdAt": "2024-06-01T00:00:00.000Z", "updatedAt": "2024-06-01T00:00:00.000Z"})
        return Reply(200, {"status": "COMPLETE", "results": results})

    def _rate_limited(self) -> Reply | None:
        if self.search_per_second is None:
            return None
        now = time.monotonic()
        while self._searches and self._searches[0] <= now - 1.0:
            self._searches.popleft()
        if len(self._searches) >= self.search_per_second:
            self.searches_refused += 1
            return _error(429, "You have reached your secondly limit.", "RATE_LIMITS", errorType="RATE_LIMIT",
                          policyName="SECONDLY")
        self._searches.append(now)
        return None

    def _search(self, objects: dict[str, dict[str, Any]], definitions: dict, query: dict) -> Reply:
        limit = int(query.get("limit", 10))
        after = int(query.get("after") or 0)
        if not 0 < limit <= SEARCH_MAX_LIMIT:
            return _error(400, f"limit must be between 1 and {SEARCH_MAX_LIMIT}", "VALIDATION_ERROR")
        if after + limit > SEARCH_CAP:  # HubSpot answers no result past the 10,000th of a query
            return _error(400, "There was a problem with the request: paging past 10000 results is not supported",
                          "VALIDATION_ERROR")
        groups = query.get("filterGroups") or []
        for group in groups:
            for f in group["filters"]:
                if f["propertyName"] not in definitions:
                    return _error(400, f"There was a problem with the request: unknown property {f['propertyName']}",
                                  "VALIDATION_ERROR")

        tests = [[_predicate(f, definitions) for f in g["filters"]] for g in groups]
        found = [(k, v) for k, v in objects.items() if not tests or any(all(t(v) for t in g) for g in tests)]
        for sort in (query.get("sorts") or [])[:1]:
            name = sort["propertyName"]
            numeric = (definitions.get(name) or ("string",))[0] == "number"
            found.sort(key=lambda kv, n=name, num=numeric: _sort_key(kv[1].get(n), num),
                       reverse=sort.get("direction") == "DESCENDING")
        wanted = [*(query.get("properties") or []), *ALWAYS_RETURNED]
        page = found[after : after + limit]
        body: dict[str, Any] = {
            "total": len(found),
            "results": [{"id": k, "properties": {n: _text(v.get(n)) for n in wanted if n in definitions},
                         "archived": False} for k, v in page],
        }
        if after + limit < len(found):
            body["paging"] = {"next": {"after": str(after + limit)}}
        return Reply(200, body)

    def _read_contacts(self, payload: dict) -> Reply:
        wanted = [*(payload.get("properties") or ["email", "firstname", "lastname"]), *ALWAYS_RETURNED]
        ids = [str(i["id"]) for i in payload.get("inputs") or []]
        if len(ids) > BATCH_MAX:
            return _error(400, f"Too many inputs: at most {BATCH_MAX}", "VALIDATION_ERROR")
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


def _predicate(search_filter: dict[str, Any], definitions: dict) -> Any:
    """The filter as a test of an object's properties (built once per search: 10,000 objects are searched)."""
    operator = search_filter.get("operator")
    name = search_filter["propertyName"]
    numeric = definitions[name][0] == "number"
    if operator == "HAS_PROPERTY":
        return lambda props: props.get(name) not in (None, "")
    if operator == "NOT_HAS_PROPERTY":
        return lambda props: props.get(name) in (None, "")
    if operator in ("EQ", "NEQ"):
        wanted, equal = search_filter.get("value"), operator == "EQ"
        return lambda props: (_text(props.get(name)) == wanted) is equal
    if operator in ("GT", "GTE", "LT", "LTE"):
        compare = {"GT": operator_gt, "GTE": operator_ge, "LT": operator_lt, "LTE": operator_le}[operator]
        value = float if numeric else str
        right = value(search_filter.get("value"))
        return lambda props: (have := props.get(name)) not in (None, "") and compare(value(have), right)
    raise ValueError(f"the fake does not know the operator {operator}")


def _sort_key(value: Any, numeric: bool) -> Any:
    """Unset values last, as HubSpot sorts them."""
    if value in (None, ""):
        return (True, 0.0 if numeric else "")
    return (False, float(value) if numeric else str(value))


def _numeric_id(object_id: str) -> None:
    if not str(object_id).isdigit():  # searches sort and filter hs_object_id as a number
        raise ValueError(f"HubSpot object ids are numbers (hs_object_id), not {object_id!r}")


def _key(id_property: str, value: str) -> str:
    return value.lower() if id_property == "email" else value  # HubSpot compares addresses without case


def _cursor(offset: int) -> str:
    """An opaque paging cursor, as HubSpot's association cursors are: clients pass it back, never compute it."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1]) if cursor else 0


def _text(value: Any) -> str | None:
    """Like HubSpot: every value a string, booleans lower case, unset ones null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)
