"""Consent and suppression endpoints, and the `playbook consent` / `playbook suppressions` commands, on real SQLite.

In process (httpx over the ASGI app, no Temporal: nothing here reaches a run); tokens are real API tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.security import create_token
from engine import cli
from engine.runtime.settings import Settings
from engine.storage import governance as gov
from engine.storage.db import migrate, session
from tests.asgi import call
from tests.paths import PLAYBOOKS


@pytest.fixture
def api(tmp_path: Path) -> tuple[Any, Settings, dict[str, dict[str, str]]]:
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS))
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    tokens = {
        "ops": create_token(settings.db_url, "ops", "ops"),
        "csm": create_token(settings.db_url, "Jonas", "csm", "csm-de"),
        "system": create_token(settings.db_url, "backend", "system"),
    }
    return app, settings, {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}


def test_consent_is_read_by_people_and_changed_by_ops(api) -> None:  # type: ignore[no-untyped-def]
    app, settings, as_ = api

    async def steps(http: httpx.AsyncClient) -> None:
        empty = await http.get("/contacts/ANNA@Kraus.example/consent", headers=as_["csm"])
        assert empty.status_code == 200, empty.text
        assert empty.json() == {"email": "anna@kraus.example", "consents": []}
        out = await http.put("/contacts/anna@kraus.example/consent/marketing", json={"subscribed": False},
                             headers=as_["ops"])
        assert out.status_code == 200, out.text
        [choice] = out.json()["consents"]
        assert (choice["category"], choice["status"], choice["source"]) == ("marketing", "unsubscribed", "api")
        assert choice["at"].endswith("Z") or choice["at"].endswith("+00:00")
        # a CSM may read it, not change it; a system token neither
        read = await http.get("/contacts/anna@kraus.example/consent", headers=as_["csm"])
        assert read.json()["consents"] == out.json()["consents"]
        refused = await http.put("/contacts/anna@kraus.example/consent/marketing", json={"subscribed": True},
                                 headers=as_["csm"])
        assert refused.status_code == 403 and "ops" in refused.json()["detail"]
        assert (await http.get("/contacts/anna@kraus.example/consent", headers=as_["system"])).status_code == 403
        assert (await http.get("/contacts/anna@kraus.example/consent")).status_code == 401
        back = await http.put("/contacts/anna@kraus.example/consent/marketing", json={"subscribed": True},
                              headers=as_["ops"])
        assert back.json()["consents"][0]["status"] == "subscribed"

    call(app, steps)
    with session(settings.db_url) as s:
        assert gov.is_unsubscribed(s, ["anna@kraus.example"], "marketing") == set()


def test_consent_refuses_bad_addresses_categories_and_bodies(api) -> None:  # type: ignore[no-untyped-def]
    app, _settings, as_ = api
    ops = as_["ops"]

    async def steps(http: httpx.AsyncClient) -> None:
        for text in ("not-an-address", "anna@kraus.test", "Anna%20%3Canna@kraus.example%3E", "a..b@kraus.example"):
            refused = await http.get(f"/contacts/{text}/consent", headers=ops)
            assert refused.status_code == 422, text
        bad = await http.get("/contacts/not-an-address/consent", headers=ops)
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["detail"] == "path.email: not a valid email address"
        unknown = await http.put("/contacts/anna@kraus.example/consent/newsletter", json={"subscribed": False},
                                 headers=ops)
        assert unknown.status_code == 404
        assert "no category 'newsletter'" in unknown.json()["detail"] and "marketing" in unknown.json()["detail"]
        locked = await http.put("/contacts/anna@kraus.example/consent/transactional", json={"subscribed": False},
                                headers=ops)
        assert locked.status_code == 422 and "cannot be opted out of" in locked.json()["detail"]
        not_bool = await http.put("/contacts/anna@kraus.example/consent/marketing", json={"subscribed": "nah"},
                                  headers=ops)
        assert not_bool.status_code == 422 and "subscribed" in not_bool.json()["detail"]

    call(app, steps)


def test_the_suppression_list_can_be_added_to_paged_and_emptied(api) -> None:  # type: ignore[no-untyped-def]
    app, settings, as_ = api
    ops = as_["ops"]

    async def steps(http: httpx.AsyncClient) -> None:
        added = await http.post("/suppressions", json={"email": "BOB@Acme.example", "reason": "manual",
                                                        "detail": "asked by phone"}, headers=ops)
        assert added.status_code == 201, added.text
        body = added.json()
        assert (body["email"], body["reason"], body["source"], body["detail"]) == (
            "bob@acme.example", "manual", "api", "asked by phone")
        again = await http.post("/suppressions", json={"email": "bob@acme.example", "reason": "bounced"}, headers=ops)
        assert again.status_code == 200 and again.json()["reason"] == "manual"  # the first reason stays
        for n in range(5):
            await http.post("/suppressions", json={"email": f"p{n}@acme.example"}, headers=ops)
        first = (await http.get("/suppressions?limit=4", headers=ops)).json()
        assert [x["email"] for x in first["items"]] == ["bob@acme.example"] + [f"p{n}@acme.example" for n in range(3)]
        assert first["next_offset"] == 4
        rest = (await http.get("/suppressions?limit=4&offset=4", headers=ops)).json()
        assert [x["email"] for x in rest["items"]] == ["p3@acme.example", "p4@acme.example"]
        assert rest["next_offset"] is None
        one = (await http.get("/suppressions?email=BOB@acme.example", headers=ops)).json()
        assert [x["email"] for x in one["items"]] == ["bob@acme.example"]
        gone = await http.delete("/suppressions/bob@acme.example", headers=ops)
        assert gone.status_code == 204
        twice = await http.delete("/suppressions/bob@acme.example", headers=ops)
        assert twice.status_code == 404 and "not on the suppression list" in twice.json()["detail"]
        csm = await http.get("/suppressions", headers=as_["csm"])
        assert csm.status_code == 403

    call(app, steps)
    with session(settings.db_url) as s:
        assert gov.suppressed(s, ["bob@acme.example", "p0@acme.example"]) == {"p0@acme.example": "manual"}


def test_suppressions_refuse_bad_input(api) -> None:  # type: ignore[no-untyped-def]
    app, _settings, as_ = api
    ops = as_["ops"]

    async def steps(http: httpx.AsyncClient) -> None:
        bad = await http.post("/suppressions", json={"email": "bob@@acme"}, headers=ops)
        assert bad.status_code == 422 and bad.json()["detail"] == "body.email: not a valid email address"
        reason = await http.post("/suppressions", json={"email": "bob@acme.example", "reason": "Because!"},
                                 headers=ops)
        assert reason.status_code == 422 and "reason" in reason.json()["detail"]
        extra = await http.post("/suppressions", json={"email": "bob@acme.example", "why": "x"}, headers=ops)
        assert extra.status_code == 422
        assert (await http.delete("/suppressions/nobody", headers=ops)).status_code == 422
        assert (await http.get("/suppressions?email=nobody", headers=ops)).status_code == 422
        assert (await http.get("/suppressions?limit=0", headers=ops)).status_code == 422
        for padded in ("1%0C", "%201", "1_0", "+1"):  # pydantic alone would read these as numbers
            assert (await http.get(f"/suppressions?limit={padded}", headers=ops)).status_code == 422, padded

    call(app, steps)


# ------------------------------------------------------------------------------------------------ the CLI


def playbook(home: Path, *args: str) -> Any:
    env = {"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": str(home)}
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("PLAYBOOK_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_cli_suppressions_add_list_remove(home: Path) -> None:
    added = playbook(home, "suppressions", "add", "Bob <BOB@acme.example>", "--reason", "manual")
    assert added.exit_code == 0, added.output
    assert "bob@acme.example" in added.output and "suppressed" in added.output
    listed = playbook(home, "suppressions", "list")
    assert listed.exit_code == 0 and "bob@acme.example" in listed.output and "manual" in listed.output
    removed = playbook(home, "suppressions", "remove", "bob@acme.example")
    assert removed.exit_code == 0 and "removed" in removed.output
    again = playbook(home, "suppressions", "remove", "bob@acme.example")
    assert again.exit_code == 1 and "not on the suppression list" in again.output
    bad = playbook(home, "suppressions", "add", "bob@@acme")
    assert bad.exit_code == 2 and "not a valid email address" in bad.output and "Traceback" not in bad.output


def test_cli_consent_show_and_set(home: Path) -> None:
    empty = playbook(home, "consent", "show", "anna@kraus.example")
    assert empty.exit_code == 0 and "no recorded choice" in empty.output
    done = playbook(home, "consent", "set", "Anna <anna@kraus.example>", "marketing", "unsubscribed")
    assert done.exit_code == 0, done.output
    shown = playbook(home, "consent", "show", "anna@kraus.example")
    assert "marketing" in shown.output and "unsubscribed" in shown.output and "cli" in shown.output
    with session(Settings(environment="dev", home=str(home)).db_url) as s:
        assert gov.is_unsubscribed(s, ["anna@kraus.example"], "marketing") == {"anna@kraus.example"}
    wrong = playbook(home, "consent", "set", "anna@kraus.example", "marketing", "maybe")
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output
    bad = playbook(home, "consent", "show", "anna")
    assert bad.exit_code == 2 and "not a valid email address" in bad.output
