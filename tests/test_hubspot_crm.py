"""HubSpotCrm with httpx against a fake HubSpot on 127.0.0.1 (and once through httpx.MockTransport)."""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.assignment import Candidate
from activities.email import OutboxProvider
from activities.errors import (
    ConfigurationError,
    NotFoundError,
    ProviderError,
    RejectedError,
    TransientError,
    to_application_error,
)
from activities.hubspot_crm import HubSpotCrm
from activities.playbook_activities import PlaybookActivities
from activities.types import AccountRequest, CrmRequest, RunRef
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.fakes import FakeHubSpot, closed_port_url, fake_hubspot_fixture  # noqa: F401 - the fake_hubspot fixture
from tests.fakes.fake_hubspot import TOKEN

AT = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def hub(fake_hubspot: FakeHubSpot) -> FakeHubSpot:
    fake_hubspot.add_owner("101", "anna@vendor.example", "Anna", "Berg", teams=["Onboarding", "EMEA"])
    fake_hubspot.add_owner("102", "ben@vendor.example", "Ben", "Chan", teams=["Sales"])
    fake_hubspot.add_owner("103", "cleo@vendor.example", "Cleo", "Diaz")
    fake_hubspot.add_owner("104", "old@vendor.example", "Old", "Timer", archived=True)
    fake_hubspot.add_company(
        "5001",
        playbook_account_id="acme",
        name="Acme GmbH",
        domain="acme.example",
        website="https://acme.example",
        health_score="85",
        mrr="1200.5",
        cancelled="false",
        renewal_date="2025-01-31",
        language="de",
        playbook_tags="vip;onboarding",
        hubspot_owner_id="101",
    )
    fake_hubspot.add_contact("701", "5001", email="anna@acme.example", firstname="Anna", lastname="Alt", jobtitle="CEO")
    fake_hubspot.add_contact("702", "5001", email="bo@acme.example", firstname="Bo")
    fake_hubspot.add_contact("703", "5001", email="cy@acme.example", firstname="Cy", lastname="Cole")
    fake_hubspot.add_company("5002", playbook_account_id="beta", name="Beta Ltd", hubspot_owner_id="101")
    fake_hubspot.add_company("5003", playbook_account_id="gamma", name="Gamma Inc", hubspot_owner_id="103")
    return fake_hubspot


@pytest.fixture
def crm(hub: FakeHubSpot):
    with HubSpotCrm(TOKEN, base_url=hub.url, timeout=2) as client:
        yield client


# reading -----------------------------------------------------------------------------------------


def test_get_account_reads_by_the_account_id_property_in_a_batch_post(crm, hub):
    crm.get_account("acme")

    [company] = hub.requests_to("POST", "/crm/v3/objects/companies/batch/read")
    assert company.headers["authorization"] == f"Bearer {TOKEN}"
    assert company.query == {}  # the properties are in the body, never in a query string (414 past ~8 KB)
    assert company.json["idProperty"] == "playbook_account_id" and company.json["inputs"] == [{"id": "acme"}]
    asked = company.json["properties"]
    assert asked[:4] == ["name", "hubspot_owner_id", "playbook_tags", "playbook_account_id"]
    assert {"domain", "industry", "health_score", "mrr", "cancelled", "renewal_date", "language"} <= set(asked)
    assert "website" not in asked  # a standard property nobody asked for
    [links] = hub.requests_to("POST", "/crm/v4/associations/companies/contacts/batch/read")
    assert links.json == {"inputs": [{"id": "5001"}]}  # associations are read by HubSpot's id
    [batch] = hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read")
    assert batch.json["inputs"] == [{"id": "701"}, {"id": "702"}, {"id": "703"}]
    assert {"email", "firstname", "lastname", "jobtitle"} <= set(batch.json["properties"])


def test_get_account_returns_typed_fields_owner_tags_and_contacts_in_order(crm):
    snapshot = crm.get_account("acme")

    account = snapshot.account
    assert snapshot.found
    assert (account["id"], account["name"]) == ("acme", "Acme GmbH")  # the product's id, not HubSpot's
    assert "playbook_account_id" not in account
    # typed from HubSpot's property definitions, so `account.health_score >= 70` works in a playbook
    assert account["health_score"] == 85 and account["mrr"] == 1200.5 and account["cancelled"] is False
    assert account["renewal_date"] == "2025-01-31" and account["language"] == "de"
    assert account["industry"] is None  # unset in HubSpot
    assert account["tags"] == ["vip", "onboarding"] and "playbook_tags" not in account
    assert account["owner"] == {
        "id": "101",
        "name": "Anna Berg",
        "email": "anna@vendor.example",
        "languages": [],
        "role": "Onboarding",
    }
    assert [c["id"] for c in snapshot.contacts] == ["701", "702", "703"]  # not the batch answer's order
    assert snapshot.contacts[0] == {
        "id": "701",
        "email": "anna@acme.example",
        "first_name": "Anna",
        "last_name": "Alt",
        "jobtitle": "CEO",
        "phone": None,
        "hs_language": None,
    }
    assert snapshot.contacts[1]["last_name"] is None


def test_property_definitions_and_owners_are_fetched_once(crm, hub):
    crm.get_account("acme")
    crm.get_account("acme")
    assert len(hub.requests_to("GET", "/crm/v3/properties/companies")) == 1
    assert len(hub.requests_to("GET", "/crm/v3/properties/contacts")) == 1
    assert len(hub.requests_to("GET", "/crm/v3/owners/101")) == 1
    assert len(hub.requests_to("POST", "/crm/v3/objects/companies/batch/read")) == 2


def test_chosen_properties_replace_the_default_set(hub):
    with HubSpotCrm(TOKEN, base_url=hub.url, company_properties=["website"], contact_properties=[]) as crm:
        snapshot = crm.get_account("acme")
    assert snapshot.account["website"] == "https://acme.example"
    assert "health_score" not in snapshot.account
    asked = hub.requests_to("POST", "/crm/v3/objects/companies/batch/read")[0].json["properties"]
    assert asked == ["name", "hubspot_owner_id", "playbook_tags", "playbook_account_id", "website"]
    assert hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read")[0].json["properties"] == [
        "email", "firstname", "lastname"
    ]


@pytest.fixture
def engine_db(tmp_path):
    """The engine's own database beside HubSpot (activities read health scores from it), migrated as a worker's is."""
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(url)
    return url


def test_an_unknown_company_is_not_found_and_the_activity_says_so(crm, engine_db):
    with pytest.raises(NotFoundError) as caught:
        crm.get_account("999")
    assert caught.value.status == 404 and not caught.value.retryable

    activities = PlaybookActivities(engine_db, crm=crm, email=OutboxProvider())
    snapshot = activities.load_account(AccountRequest(account_id="999"))
    assert snapshot.found is False


def test_an_owner_gone_from_hubspot_keeps_its_id(crm, hub):
    hub.companies["5001"]["hubspot_owner_id"] = "104"  # archived: /owners/104 answers 404
    assert crm.get_account("acme").account["owner"] == {
        "id": "104", "name": "", "email": "", "languages": [], "role": None
    }


def test_a_company_without_owner_or_contacts(crm, hub):
    hub.add_company("5009", playbook_account_id="solo", name="Solo")
    snapshot = crm.get_account("solo")
    assert snapshot.account["owner"] is None and snapshot.account["tags"] == [] and snapshot.contacts == []
    assert hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read") == []


def test_get_accounts_reads_a_page_as_get_account_reads_each(crm, hub):
    hub.add_company("5009", playbook_account_id="solo", name="Solo")
    hub.add_contact("704", "5002", email="dee@beta.example", firstname="Dee")
    ids = ["gamma", "acme", "nope", "solo", "beta"]  # nope: no such company

    many = crm.get_accounts(ids)

    assert list(many) == ["gamma", "acme", "solo", "beta"]  # the order asked, without the unknown one
    with HubSpotCrm(TOKEN, base_url=hub.url, timeout=2) as fresh:
        assert many == {i: fresh.get_account(i) for i in many}


def test_get_accounts_makes_batch_calls_of_100_not_calls_per_account(crm, hub):
    for n in range(250):
        hub.add_company(str(6000 + n), playbook_account_id=f"shop-{n}", name=f"Shop {n}",
                        hubspot_owner_id="101" if n % 2 else "103")
        hub.add_contact(str(8000 + n), str(6000 + n), email=f"o{n}@shop.example", firstname=f"O{n}")
    hub.requests.clear()

    many = crm.get_accounts([f"shop-{n}" for n in range(250)])

    assert len(many) == 250 and many["shop-7"].contacts[0]["email"] == "o7@shop.example"
    assert many["shop-7"].account["owner"]["id"] == "101" and many["shop-8"].account["owner"]["id"] == "103"
    paths = [r.path for r in hub.requests if r.method == "POST"]
    assert paths.count("/crm/v3/objects/companies/batch/read") == 3
    assert paths.count("/crm/v4/associations/companies/contacts/batch/read") == 3
    assert paths.count("/crm/v3/objects/contacts/batch/read") == 3
    assert all(len(r.json["inputs"]) <= 100 for r in hub.requests if r.method == "POST")
    assert not [r for r in hub.requests if r.path.startswith("/crm/v3/objects/companies/shop")]  # no single reads
    assert len(hub.requests) <= 9 + 2 + 2  # + property definitions, + the two owners


def test_get_accounts_of_companies_none_of_which_exists_or_none(crm, hub):
    assert crm.get_accounts(["nope", "none"]) == {}
    assert crm.get_accounts([]) == {}


def test_get_accounts_of_companies_without_contacts(crm, hub):
    many = crm.get_accounts(["beta", "gamma"])
    assert [s.contacts for s in many.values()] == [[], []]
    assert hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read") == []


# writing -----------------------------------------------------------------------------------------


def test_update_fields_patches_text_values_and_skips_what_is_not_a_property(crm, hub):
    crm.update_fields(
        "acme",
        {"name": "Acme AG", "health_score": 70, "cancelled": True, "renewal_date": "2025-03-01", "language": None,
         "id": "x", "owner": {"id": "1"}, "tags": ["x"]},
        AT,
    )
    [patch] = hub.requests_to("PATCH", "/crm/v3/objects/companies/acme")
    assert patch.json == {"properties": {
        "name": "Acme AG", "health_score": "70", "cancelled": "true", "renewal_date": "2025-03-01", "language": ""
    }}
    account = crm.get_account("acme").account
    assert (account["name"], account["health_score"], account["cancelled"], account["language"]) == (
        "Acme AG", 70, True, None
    )


def test_update_fields_with_an_unknown_property_is_rejected(crm):
    with pytest.raises(RejectedError, match='Property "renewal_stage" does not exist') as caught:
        crm.update_fields("acme", {"renewal_stage": "90_days"}, AT)
    assert caught.value.status == 400
    assert to_application_error(caught.value).non_retryable


def test_add_note_searches_by_key_then_creates_it_on_the_company_once(crm, hub):
    crm.add_note("wf-1/4/0", "acme", "Called <Anna>:\nall good & happy", AT)
    crm.add_note("wf-1/4/0", "acme", "Called <Anna>:\nall good & happy", AT)  # a retry

    searches = hub.requests_to("POST", "/crm/v3/objects/notes/search")
    assert len(searches) == 2
    assert searches[0].json["filterGroups"] == [
        {"filters": [{"propertyName": "playbook_key", "operator": "EQ", "value": "wf-1/4/0"}]}
    ]
    [create] = hub.requests_to("POST", "/crm/v3/objects/notes")
    assert create.json == {
        "properties": {
            "hs_note_body": "Called &lt;Anna&gt;:<br>all good &amp; happy",
            "hs_timestamp": "2024-05-01T10:00:00.000Z",
            "playbook_key": "wf-1/4/0",
        },
        "associations": [
            {"to": {"id": "5001"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 190}]}
        ],
    }
    assert len(hub.notes) == 1


def test_add_note_without_a_key_property_just_creates(hub):
    with HubSpotCrm(TOKEN, base_url=hub.url, note_key_property=None) as crm:
        crm.add_note("k", "acme", "hello", AT)
    assert hub.requests_to("POST", "/crm/v3/objects/notes/search") == []
    [note] = hub.notes.values()
    assert note["properties"] == {"hs_note_body": "hello", "hs_timestamp": "2024-05-01T10:00:00.000Z"}


def test_add_note_without_the_key_property_in_hubspot_is_a_configuration_error(crm, hub):
    hub.note_properties.discard("playbook_key")
    with pytest.raises(ConfigurationError, match="create the note property 'playbook_key'") as caught:
        crm.add_note("wf-1/4/0", "acme", "hello", AT)
    assert caught.value.status == 400 and not caught.value.retryable
    assert hub.notes == {}


def test_add_tag_reads_modifies_and_writes_the_multi_select(crm, hub):
    crm.add_tag("acme", "onboarding")  # already there: nothing to write
    assert hub.requests_to("PATCH", "/crm/v3/objects/companies/acme") == []

    crm.add_tag("acme", "at-risk")
    [patch] = hub.requests_to("PATCH", "/crm/v3/objects/companies/acme")
    assert patch.json == {"properties": {"playbook_tags": "vip;onboarding;at-risk"}}
    assert crm.get_account("acme").account["tags"] == ["vip", "onboarding", "at-risk"]


def test_add_tag_that_is_not_an_option_is_rejected(crm):
    with pytest.raises(RejectedError, match="not one of the allowed options"):
        crm.add_tag("acme", "brand-new-tag")
    with pytest.raises(RejectedError):
        crm.add_tag("acme", "a;b")


def test_set_owner_patches_hubspot_owner_id(crm, hub):
    crm.set_owner("acme", "103", AT)
    assert hub.requests_to("PATCH", "/crm/v3/objects/companies/acme")[0].json == {
        "properties": {"hubspot_owner_id": "103"}
    }
    assert crm.get_account("acme").account["owner"]["name"] == "Cleo Diaz"
    with pytest.raises(RejectedError, match="not a valid owner"):
        crm.set_owner("acme", "999", AT)


def test_update_crm_activity_tags_through_hubspot(crm, engine_db):
    activities = PlaybookActivities(engine_db, crm=crm, email=OutboxProvider())
    ref = RunRef(workflow_id="wf-1", playbook_id="renewal", account_id="acme", step_id="flag")
    request = CrmRequest(key="wf-1/2/0", ref=ref, action="tag", at=AT.isoformat(), text="renewal")
    snapshot = activities.update_crm(request)
    assert snapshot.account["tags"] == ["vip", "onboarding", "renewal"]


# the team ----------------------------------------------------------------------------------------


def test_team_without_local_profiles_is_every_active_owner_with_its_load(crm, hub):
    team = crm.team()

    assert team == [
        Candidate("101", (), "Onboarding", None, 2),
        Candidate("102", (), "Sales", None, 0),
        Candidate("103", (), None, None, 1),
    ]
    pages = hub.requests_to("GET", "/crm/v3/owners")
    assert [p.query.get("after") for p in pages] == [None, ["2"]]  # followed HubSpot's paging
    assert pages[0].query["archived"] == ["false"]
    [search] = hub.requests_to("POST", "/crm/v3/objects/companies/search")  # one search, not one per owner
    assert search.json["filterGroups"] == [
        {"filters": [{"propertyName": "hubspot_owner_id", "operator": "HAS_PROPERTY"}]}
    ]
    assert search.json["properties"] == ["hubspot_owner_id"] and search.json["limit"] == 100


def test_team_file_gives_languages_roles_capacity_and_limits_the_team(hub, tmp_path):
    team_file = tmp_path / "team.yaml"
    team_file.write_text(
        "team:\n"
        "  - email: ANNA@vendor.example\n    languages: [de, en]\n    role: onboarding\n    capacity: 30\n"
        "  - id: '103'\n    languages: [es]\n"
        "  - id: '102'\n    active: false\n",
        encoding="utf-8",
    )
    with HubSpotCrm(TOKEN, base_url=hub.url, team_file=team_file) as crm:
        assert crm.team() == [
            Candidate("101", ("de", "en"), "onboarding", 30, 2),
            Candidate("103", ("es",), None, None, 1),
        ]
        assert crm.csm("101") == {
            "id": "101",
            "name": "Anna Berg",
            "email": "anna@vendor.example",
            "languages": ["de", "en"],
            "role": "onboarding",
        }


def test_team_profiles_from_the_builtin_csms_table(hub, tmp_path):
    url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(url)
    with session(url) as s:
        s.add(t.Csm(id="cleo", name="Cleo", email="cleo@vendor.example", languages=["fr"], role="renewals", capacity=5))
    with HubSpotCrm(TOKEN, base_url=hub.url, db_url=url) as crm:
        assert crm.team() == [Candidate("103", ("fr",), "renewals", 5, 1)]


def test_csm_by_owner_id(crm):
    assert crm.csm("102") == {
        "id": "102", "name": "Ben Chan", "email": "ben@vendor.example", "languages": [], "role": "Sales"
    }
    assert crm.csm("999") is None


# errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, RejectedError, False),
        (401, ConfigurationError, False),
        (403, ConfigurationError, False),
        (404, NotFoundError, False),
        (409, RejectedError, False),
        (429, TransientError, True),
        (500, TransientError, True),
        (502, TransientError, True),
        (503, TransientError, True),
    ],
)
def test_http_errors_map_to_provider_error_kinds(crm, hub, status, kind, retryable):
    body = {"status": "error", "message": f"nope {status}", "category": "X", "correlationId": "c-1"}
    hub.fail_next(1, status, body=body)
    with pytest.raises(ProviderError) as caught:
        crm.update_fields("acme", {"health_score": 1}, AT)

    err = caught.value
    assert type(err) is kind
    assert (err.status, err.retryable, err.provider) == (status, retryable, "hubspot")
    expected = f"PATCH /crm/v3/objects/companies/acme: HubSpot answered {status}: nope {status} [X] (correlationId c-1)"
    assert expected in err.message
    assert TOKEN not in str(err)
    assert to_application_error(err).non_retryable is (not retryable)


def test_rate_limit_carries_retry_after(crm, hub):
    hub.fail_next(1, 429, body={"status": "error", "message": "You have reached your secondly limit."},
                  headers={"Retry-After": "7"})
    with pytest.raises(TransientError, match="retry after 7 s"):
        crm.csm("101")


def test_a_transient_failure_is_not_cached_and_the_retry_works(crm, hub, engine_db):
    hub.fail_next(1, 503, path="/crm/v3/properties/companies")
    activities = PlaybookActivities(engine_db, crm=crm, email=OutboxProvider())
    with pytest.raises(ApplicationError) as caught:
        activities.load_account(AccountRequest(account_id="acme"))
    assert caught.value.non_retryable is False and caught.value.type == "TransientError"
    assert activities.load_account(AccountRequest(account_id="acme")).account["health_score"] == 85


def test_a_wrong_token_is_a_configuration_error_without_the_token(hub):
    wrong = "pat-na1-wrong-secret"
    with (
        HubSpotCrm(wrong, base_url=hub.url) as crm,
        pytest.raises(ConfigurationError, match="Authentication credentials not found") as caught,
    ):
        crm.get_account("acme")
    assert wrong not in str(caught.value) and wrong not in repr(crm)
    assert hub.requests[0].headers["authorization"] == f"Bearer {wrong}"


def test_connection_refused_is_transient():
    with (
        HubSpotCrm(TOKEN, base_url=closed_port_url()) as crm,
        pytest.raises(TransientError, match="could not reach HubSpot") as caught,
    ):
        crm.get_account("acme")
    assert caught.value.retryable


def test_a_timeout_is_transient(hub):
    hub.delay_next(1.0)
    with (
        HubSpotCrm(TOKEN, base_url=hub.url, timeout=0.2) as crm,
        pytest.raises(TransientError, match="did not answer in time"),
    ):
        crm.csm("101")


def test_a_dropped_connection_is_transient(crm, hub):
    hub.drop_next()
    with pytest.raises(TransientError, match="could not reach HubSpot"):
        crm.csm("101")


def test_no_token_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        HubSpotCrm("")


def test_the_transport_seam_takes_an_httpx_mock_transport():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/crm/v3/owners/101":
            return httpx.Response(200, json={"id": "101", "email": "a@v.example", "firstName": "Anna", "lastName": "B"})
        raise httpx.ConnectError("no route", request=request)

    with HubSpotCrm(TOKEN, base_url="https://api.hubapi.com", transport=httpx.MockTransport(handler)) as crm:
        assert crm.csm("101")["name"] == "Anna B"
        with pytest.raises(TransientError, match="ConnectError"):
            crm.csm("102")
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"


# the CRM of record: ids, upserts, pages (issue 12) ----------------------------------------------


def _companies(hub: FakeHubSpot, count: int, *, first: int = 20000, owners: tuple[str, ...] = ()) -> None:
    for n in range(count):
        owner = {"hubspot_owner_id": owners[n % len(owners)]} if owners else {}
        hub.add_company(str(first + n), playbook_account_id=f"acct-{n:05d}", name=f"Company {n}", **owner)


def test_a_company_with_250_contacts_has_them_all_through_the_association_pages(crm, hub):
    hub.add_company("5100", playbook_account_id="big", name="Big Corp")
    for n in range(250):
        hub.add_contact(str(30000 + n), "5100", email=f"p{n}@big.example", firstname=f"P{n}")

    snapshot = crm.get_account("big")

    assert [c["email"] for c in snapshot.contacts] == [f"p{n}@big.example" for n in range(250)]
    reads = hub.requests_to("POST", "/crm/v4/associations/companies/contacts/batch/read")
    assert len(reads) == 3  # pages of 100, each asked with HubSpot's opaque cursor of the one before
    assert reads[0].json == {"inputs": [{"id": "5100"}]}
    assert [list(r.json["inputs"][0]) for r in reads[1:]] == [["id", "after"], ["id", "after"]]
    assert len(hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read")) == 3


def test_account_page_pages_250_companies_by_100_with_the_search_cursor(crm, hub):
    _companies(hub, 250)
    seen, after, calls = [], None, 0
    while True:
        page = crm.account_page(after, 500)  # more than HubSpot takes: capped at 100
        calls += 1
        seen += [a["id"] for a in page.accounts]
        after = page.after
        if after is None:
            break

    assert calls == 3
    assert sorted(seen) == sorted(["acme", "beta", "gamma", *(f"acct-{n:05d}" for n in range(250))])
    searches = hub.requests_to("POST", "/crm/v3/objects/companies/search")
    assert [s.json["limit"] for s in searches] == [100, 100, 100]
    assert [s.json.get("after") for s in searches] == [None, "100", "200"]
    assert searches[0].json["sorts"] == [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
    assert searches[0].json["filterGroups"] == [
        {"filters": [{"propertyName": "playbook_account_id", "operator": "HAS_PROPERTY"}]}
    ]
    first = crm.account_page(None, 100).accounts
    acme = next(a for a in first if a["id"] == "acme")
    assert acme == {**crm.get_account("acme").account}  # as get_account shows it (contacts aside)


def test_account_page_goes_past_hubspots_10000_search_results(crm, hub):
    _companies(hub, 10_150)
    # every company in hs_object_id order (the fixture's three first), as the pages must give them
    in_order = [c["playbook_account_id"] for _, c in sorted(hub.companies.items(), key=lambda kv: int(kv[0]))]
    seen: list[str] = []
    after: str | None = ":9800"  # the cursor 98 pages in (docs/hubspot.md): the test pages the last 353 only
    while after is not None:
        page = crm.account_page(after, 100)
        seen += [a["id"] for a in page.accounts]
        after = page.after

    assert seen == in_order[9800:]  # each once, none skipped, across the new query at the 10,000th
    searches = hub.requests_to("POST", "/crm/v3/objects/companies/search")
    assert [s.json.get("after") for s in searches] == ["9800", "9900", None, "100"]
    assert max(int(s.json.get("after") or 0) + s.json["limit"] for s in searches) <= 10_000
    assert searches[2].json["filterGroups"][0]["filters"][1] == {
        "propertyName": "hs_object_id", "operator": "GT", "value": hub.company_by("playbook_account_id", seen[199])
    }
    deep = httpx.post(f"{hub.url}/crm/v3/objects/companies/search", headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"limit": 100, "after": "10000"})
    assert deep.status_code == 400  # what a client paging on by `after` alone would meet


def test_searches_are_paced_across_threads_under_the_search_rate(hub):
    hub.search_per_second = 50  # HubSpot's limit, scaled up so the test is fast: more is refused with a 429
    searches, rate = 21, 50.0
    with HubSpotCrm(TOKEN, base_url=hub.url, search_per_second=rate) as crm:
        crm.account_page(None, 1)  # the property definitions, read once
        hub.searches_refused = 0
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: crm.account_page(None, 1), range(searches)))
        elapsed = time.monotonic() - started
    assert elapsed >= (searches - 1) / rate
    assert hub.searches_refused == 0


def test_unpaced_searches_meet_hubspots_secondly_limit_and_wait_a_second(hub):
    hub.search_per_second = 5
    with (
        HubSpotCrm(TOKEN, base_url=hub.url, search_per_second=1000) as crm,
        pytest.raises(TransientError, match="SECONDLY") as caught,
    ):
        for _ in range(10):
            crm.account_page(None, 1)
    assert caught.value.retry_after == 1.0 and caught.value.status == 429
    assert to_application_error(caught.value).next_retry_delay == timedelta(seconds=1)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-HubSpot-RateLimit-Interval-Milliseconds": "10000", "X-HubSpot-RateLimit-Max": "100",
          "X-HubSpot-RateLimit-Remaining": "0"}, 10.0),
        ({"Retry-After": "3", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}, 3.0),
        ({}, 10.0),
    ],
)
def test_a_ten_secondly_429_waits_what_headers_or_window_say(crm, hub, headers, expected):
    body = {"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT", "correlationId": "c-2", "policyName": "TEN_SECONDLY_ROLLING"}
    hub.fail_next(1, 429, body=body, headers=headers)
    with pytest.raises(TransientError, match="TEN_SECONDLY_ROLLING") as caught:
        crm.csm("101")
    assert caught.value.retry_after == expected
    assert to_application_error(caught.value).next_retry_delay == timedelta(seconds=expected)


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Tokyo"])
def test_a_daily_429_waits_until_midnight_in_the_portals_time_zone(hub, zone):
    body = {"status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT",
            "correlationId": "c-3", "policyName": "DAILY"}
    hub.fail_next(1, 429, body=body, headers={"Retry-After": "1"})  # not through the night every second
    with (
        HubSpotCrm(TOKEN, base_url=hub.url, daily_reset_timezone=zone) as crm,
        pytest.raises(TransientError, match="DAILY") as caught,
    ):
        crm.csm("101")
    now = datetime.now(ZoneInfo(zone))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=ZoneInfo(zone))
    expected = (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
    assert abs(caught.value.retry_after - expected) < 5


def test_an_unknown_time_zone_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not a time zone"):
        HubSpotCrm(TOKEN, daily_reset_timezone="Mars/Olympus")


def test_long_property_lists_never_go_in_a_query_string(hub):
    for n in range(300):  # a portal with many custom properties and long names: ~20 KB of names
        hub.company_properties[f"custom_property_with_a_rather_long_name_{n:04d}"] = ("string", "text", False, [])
        hub.contact_properties[f"contact_property_with_a_rather_long_name_{n:04d}"] = ("string", "text", False, [])
    refused = httpx.get(f"{hub.url}/crm/v3/objects/companies/5001", headers={"Authorization": f"Bearer {TOKEN}"},
                        params={"properties": ",".join(hub.company_properties)})
    assert refused.status_code == 414  # what HubSpot answers, and what the old GET read would have met
    hub.requests.clear()

    with HubSpotCrm(TOKEN, base_url=hub.url) as crm:
        snapshot = crm.get_account("acme")
        crm.account_page(None, 10)
        crm.add_tag("acme", "renewal")
    assert "custom_property_with_a_rather_long_name_0299" in snapshot.account and len(snapshot.contacts) == 3
    assert all(len(urlencode(r.query, doseq=True)) < 1024 for r in hub.requests)
    batch = hub.requests_to("POST", "/crm/v3/objects/contacts/batch/read")[0]
    assert "contact_property_with_a_rather_long_name_0299" in batch.json["properties"]


def test_upsert_account_creates_the_company_and_its_contacts_and_twice_writes_the_same(crm, hub, caplog):
    account = {"id": "acct-new", "name": "Newco", "health_score": 70, "cancelled": False, "owner": "103",
               "plan": "gold", "tags": ["vip"]}
    contacts = [
        {"email": "Ada@Newco.example", "first_name": "Ada", "last_name": "Lovelace", "jobtitle": "CTO"},
        {"email": "bob@newco.example", "first_name": "Bob", "seat": "admin"},
    ]
    caplog.set_level(logging.WARNING, logger="activities.hubspot_crm")

    crm.upsert_account(account, contacts, AT)
    state = (copy.deepcopy(hub.companies), copy.deepcopy(hub.contacts), copy.deepcopy(hub.company_contacts))
    crm.upsert_account(account, contacts, AT)  # the same event again

    assert (hub.companies, hub.contacts, hub.company_contacts) == state
    company_id = hub.company_by("playbook_account_id", "acct-new")
    assert company_id is not None and len(hub.companies) == 4
    assert hub.companies[company_id]["health_score"] == "70" and hub.companies[company_id]["hubspot_owner_id"] == "103"
    assert [c["email"] for c in hub.contacts_of(company_id)] == ["ada@newco.example", "bob@newco.example"]
    assert hub.company_contacts[company_id] == list(dict.fromkeys(hub.company_contacts[company_id]))  # once each

    upsert = hub.requests_to("POST", "/crm/v3/objects/companies/batch/upsert")[0].json
    assert upsert == {"inputs": [{"idProperty": "playbook_account_id", "id": "acct-new", "properties": {
        "name": "Newco", "health_score": "70", "cancelled": "false", "hubspot_owner_id": "103"}}]}
    people = hub.requests_to("POST", "/crm/v3/objects/contacts/batch/upsert")[0].json["inputs"]
    assert people[0] == {"idProperty": "email", "id": "Ada@Newco.example",
                         "properties": {"firstname": "Ada", "lastname": "Lovelace", "jobtitle": "CTO"}}
    [link, _] = hub.requests_to("POST", "/crm/v4/associations/companies/contacts/batch/associate/default")
    assert link.json["inputs"][0] == {"from": {"id": company_id}, "to": {"id": hub.company_contacts[company_id][0]}}

    snapshot = crm.get_account("acct-new")
    assert (snapshot.account["name"], snapshot.account["health_score"], snapshot.account["owner"]["id"]) == (
        "Newco", 70, "103")
    assert [(c["first_name"], c["last_name"]) for c in snapshot.contacts] == [("Ada", "Lovelace"), ("Bob", None)]
    # fields HubSpot has no property for are left out and logged by name, once, never with values or addresses
    skipped = [r.getMessage() for r in caplog.records]
    assert sum("'plan'" in m for m in skipped) == 1 and sum("'seat'" in m for m in skipped) == 1
    assert not [m for m in skipped if "gold" in m or "admin" in m or "@" in m]


def test_upsert_account_updates_a_known_company_and_keeps_its_other_contacts(crm, hub):
    crm.upsert_account({"id": "acme", "health_score": 40}, [{"email": "new@acme.example", "first_name": "Nia"}], AT)

    assert hub.companies["5001"]["health_score"] == "40" and hub.companies["5001"]["name"] == "Acme GmbH"
    assert len(hub.companies) == 3
    snapshot = crm.get_account("acme")
    assert [c["email"] for c in snapshot.contacts] == [
        "anna@acme.example", "bo@acme.example", "cy@acme.example", "new@acme.example"
    ]


def test_upsert_account_with_250_contacts_upserts_and_associates_in_batches_of_100(crm, hub):
    people = [{"email": f"u{n}@many.example", "first_name": f"U{n}"} for n in range(250)]
    crm.upsert_account({"id": "many", "name": "Many"}, [*people, {"first_name": "No address"}], AT)

    company_id = hub.company_by("playbook_account_id", "many")
    assert len(hub.contacts_of(company_id)) == 250
    upserts = hub.requests_to("POST", "/crm/v3/objects/contacts/batch/upsert")
    links = hub.requests_to("POST", "/crm/v4/associations/companies/contacts/batch/associate/default")
    assert [len(r.json["inputs"]) for r in upserts] == [100, 100, 50]
    assert [len(r.json["inputs"]) for r in links] == [100, 100, 50]


def test_a_refused_contact_upsert_does_not_repeat_hubspots_text(crm, hub):
    body = {"status": "error", "message": "Property values were not valid: ada@newco.example is invalid",
            "category": "VALIDATION_ERROR", "correlationId": "c-4"}
    hub.fail_next(1, 400, body=body, path="/crm/v3/objects/contacts/batch/upsert")
    with pytest.raises(RejectedError) as caught:
        crm.upsert_account({"id": "acct-new"}, [{"email": "ada@newco.example"}], AT)
    assert "ada@newco.example" not in str(caught.value) and "VALIDATION_ERROR" in str(caught.value)


def test_the_fake_refuses_an_upsert_on_a_property_without_unique_values(hub):
    with HubSpotCrm(TOKEN, base_url=hub.url, account_id_property="name") as crm:
        with pytest.raises(RejectedError, match="not a unique identifier property"):
            crm.upsert_account({"id": "Acme GmbH"}, None, AT)
        with pytest.raises(RejectedError, match="not a unique identifier property"):
            crm.get_account("Acme GmbH")


def test_account_ids_for_maps_hubspot_ids_in_one_batch_read(crm, hub):
    hub.add_company("5010", name="No account id")
    assert crm.account_ids_for(["5001", "5003", "5010", "424242"]) == {"5001": "acme", "5003": "gamma"}
    [read] = hub.requests_to("POST", "/crm/v3/objects/companies/batch/read")
    assert "idProperty" not in read.json and read.json["properties"] == ["playbook_account_id"]
    assert crm.account_ids_for([]) == {}


def test_hubspot_ids_as_account_ids_keep_working(hub):
    with HubSpotCrm(TOKEN, base_url=hub.url, account_id_property="hs_object_id") as crm:
        snapshot = crm.get_account("5001")
        assert snapshot.account["id"] == "5001" and len(snapshot.contacts) == 3
        assert "idProperty" not in hub.requests_to("POST", "/crm/v3/objects/companies/batch/read")[0].json
        crm.update_fields("5001", {"health_score": 12}, AT)
        assert hub.requests_to("PATCH", "/crm/v3/objects/companies/5001")[0].query == {}
        crm.upsert_account({"id": "5002", "name": "Beta AG"}, [{"email": "x@beta.example"}], AT)
        assert hub.companies["5002"]["name"] == "Beta AG" and len(hub.contacts_of("5002")) == 1
        with pytest.raises(NotFoundError, match="can only update companies HubSpot has"):
            crm.upsert_account({"id": "777", "name": "Nope"}, None, AT)
        assert [a["id"] for a in crm.account_page(None, 10).accounts] == ["5001", "5002", "5003"]
        assert crm.account_ids_for(["5001"]) == {"5001": "5001"}
        crm.add_note("k-1", "5003", "hi", AT)
    assert [n["associations"][0]["to"]["id"] for n in hub.notes.values()] == ["5003"]


def test_add_note_for_an_unknown_account_is_not_found(crm, hub):
    with pytest.raises(NotFoundError, match="no company with playbook_account_id 'nope'"):
        crm.add_note("k-2", "nope", "hello", AT)
    assert hub.notes == {}


@pytest.mark.parametrize(("owned", "searches"), [(250, 3), (450, 4)])
def test_team_loads_take_the_fewest_paced_searches(crm, hub, owned, searches):
    # 250 owned companies: 3 pages counted here; 450: 5 pages would be more than 1 + one count per owner (3)
    _companies(hub, owned - 3, owners=("101", "102", "103"))
    owners = [c.get("hubspot_owner_id") for c in hub.companies.values()]
    expected = {o: owners.count(o) for o in ("101", "102", "103")}

    team = crm.team()

    assert {c.id: c.load for c in team} == expected
    assert len(hub.requests_to("POST", "/crm/v3/objects/companies/search")) == searches


def test_a_batch_write_answered_207_with_errors_is_refused_without_their_text(crm, hub):
    body = {"status": "COMPLETE", "results": [], "numErrors": 1, "errors": [
        {"status": "error", "category": "VALIDATION_ERROR", "message": "ada@newco.example: INVALID_EMAIL"}]}
    hub.fail_next(1, 207, body=body, path="/crm/v3/objects/contacts/batch/upsert")
    with pytest.raises(RejectedError, match=r"refused 1 input\(s\) \[VALIDATION_ERROR\]") as caught:
        crm.upsert_account({"id": "acct-new"}, [{"email": "ada@newco.example"}], AT)
    assert "ada@" not in str(caught.value)


def test_a_page_cursor_the_provider_did_not_give_is_refused(crm, hub):
    with pytest.raises(RejectedError, match="not a page cursor"):
        crm.account_page("acct-00042", 100)
    assert hub.requests_to("POST", "/crm/v3/objects/companies/search") == []
