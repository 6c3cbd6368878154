"""Messaging governance on a real SQLite database: consent, suppression, unsubscribe tokens, webhook events
(engine/storage/governance.py), and the email activities' admission and frequency caps (docs/messaging.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from engine.storage import governance as g
from engine.storage import models as t
from engine.storage.db import migrate, session

AT = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
LATER = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path) -> str:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(url)
    return url


# addresses -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Anna <ANNA@X.example>", "anna@x.example"),
    ("anna@x.example", "anna@x.example"),
    ("  Bob@Acme.Example ", "bob@acme.example"),
    ('"Kraus, Anna" <anna@kraus.example>', "anna@kraus.example"),
    ("not an address", None),
    ("anna@", None),
    ("anna@localhost", None),
    ("", None),
])
def test_addresses_are_normalised_or_refused(text, expected):  # type: ignore[no-untyped-def]
    assert g.normalize_address(text) == expected


# consent ---------------------------------------------------------------------------------------------------


def test_a_consent_is_one_row_per_address_and_category_and_the_first_time_stays(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        g.set_consent(s, "Anna <ANNA@X.example>", "marketing", False, "link", AT)
        g.set_consent(s, "anna@x.example", "marketing", False, "api", LATER)  # same choice again: first stays
        g.set_consent(s, "anna@x.example", "onboarding", True, "api", AT)
    with session(db) as s:
        views = g.consents(s, "ANNA@x.example")
        assert [(c.category, c.status, c.source) for c in views] == [
            ("marketing", "unsubscribed", "link"), ("onboarding", "subscribed", "api")]
        assert views[0].at.replace(tzinfo=None) == AT.replace(tzinfo=None)
        assert g.is_unsubscribed(s, ["Anna <anna@x.example>", "bob@x.example"], "marketing") == {"anna@x.example"}
        assert g.is_unsubscribed(s, ["anna@x.example"], "onboarding") == set()


def test_a_new_choice_replaces_the_old_one(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        g.set_consent(s, "anna@x.example", "marketing", False, "link", AT)
    with session(db) as s:
        g.set_consent(s, "anna@x.example", "marketing", True, "api", LATER)
    with session(db) as s:
        [view] = g.consents(s, "anna@x.example")
        assert (view.status, view.source) == ("subscribed", "api")
        assert view.at.replace(tzinfo=None) == LATER.replace(tzinfo=None)
        assert g.is_unsubscribed(s, ["anna@x.example"], "marketing") == set()
        assert s.scalar(select(t.Consent.id).where(t.Consent.category == "marketing")) is not None


def test_an_invalid_address_cannot_be_given_a_consent(db):  # type: ignore[no-untyped-def]
    with session(db) as s, pytest.raises(ValueError, match="not a valid email address"):
        g.set_consent(s, "nobody", "marketing", False, "api", AT)
    with session(db) as s:
        assert g.consents(s, "nobody") == []


# suppression -----------------------------------------------------------------------------------------------


def test_suppression_keeps_the_first_reason_and_can_be_lifted(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        assert g.suppress(s, "Anna <Anna@X.example>", "bounced", "sendgrid", AT, detail="550 no such user")
        assert not g.suppress(s, "anna@x.example", "manual", "api", LATER)
        g.suppress(s, "bob@x.example", "spam_report", "sendgrid", AT)
    with session(db) as s:
        [anna] = g.list_suppressions(s, email="ANNA@x.example")
        assert (anna.email, anna.reason, anna.source, anna.detail) == (
            "anna@x.example", "bounced", "sendgrid", "550 no such user")
        assert [v.email for v in g.list_suppressions(s)] == ["anna@x.example", "bob@x.example"]
        assert [v.email for v in g.list_suppressions(s, limit=1, offset=1)] == ["bob@x.example"]
        assert g.suppressed(s, ["Anna <anna@x.example>", "carl@x.example"]) == {"anna@x.example": "bounced"}
        assert g.unsuppress(s, "anna@X.example")
        assert not g.unsuppress(s, "anna@x.example")
        assert not g.unsuppress(s, "garbage")
    with session(db) as s:
        assert [v.email for v in g.list_suppressions(s)] == ["bob@x.example"]
        assert g.list_suppressions(s, email="garbage") == []


# unsubscribe tokens ----------------------------------------------------------------------------------------


def test_a_token_reads_back_to_its_address_and_category():  # type: ignore[no-untyped-def]
    tokens = g.UnsubscribeTokens(b"s3cret")
    token = tokens.make("Anna <ANNA@x.example>", "marketing")
    assert tokens.read(token) == ("anna@x.example", "marketing")
    assert "anna" not in token and "marketing" not in token  # opaque
    assert token != tokens.make("anna@x.example", "marketing")  # not enumerable: fresh randomness each time
    link = g.UnsubscribeLinks("https://engine.example/", tokens).url("anna@x.example", "marketing")
    assert link.startswith("https://engine.example/u/")
    assert tokens.read(link.rsplit("/", 1)[1]) == ("anna@x.example", "marketing")


def test_forged_altered_truncated_or_foreign_tokens_read_as_nothing():  # type: ignore[no-untyped-def]
    tokens = g.UnsubscribeTokens(b"s3cret")
    token = tokens.make("anna@x.example", "marketing")
    flipped = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    for bad in ["", "garbage", token[:-5], flipped, token + "x", "%00", "A" * 5000,
                g.UnsubscribeTokens(b"other secret").make("anna@x.example", "marketing")]:
        assert tokens.read(bad) is None, bad
    with pytest.raises(ValueError):
        g.UnsubscribeTokens(b"")


# webhook events --------------------------------------------------------------------------------------------


def test_a_webhook_event_is_remembered_once(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        assert g.remember_webhook_event(s, "sg-1", AT)
        assert not g.remember_webhook_event(s, "sg-1", LATER)
        assert g.remember_webhook_event(s, "sg-2", AT)
    with session(db) as s:
        assert not g.remember_webhook_event(s, "sg-1", LATER)
