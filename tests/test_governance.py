"""Messaging governance on a real SQLite database: consent, suppression, unsubscribe tokens, webhook events
(engine/storage/governance.py), and the email activities' admission and frequency caps (docs/messaging.md)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from activities.crm import BuiltinCrm
from activities.email import OutboxProvider, OutgoingEmail
from activities.errors import RejectedError
from activities.playbook_activities import PlaybookActivities
from activities.types import CapRule, EmailBatchRequest, EmailRequest, EmailResult, LeftOut, RunRef
from engine.storage import governance as g
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.postgres import empty

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
    ("Kraus; Anna <Anna@Kraus.example>", "anna@kraus.example"),  # one recipient, as a template writes it
    ("anna@x.example, bob@x.example", None),  # two addresses in one entry: refused, not one of them
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


def test_links_signed_before_a_rotation_still_open_and_new_ones_use_the_new_secret():  # type: ignore[no-untyped-def]
    before = g.UnsubscribeTokens(b"old secret")
    sent_last_year = before.make("anna@x.example", "marketing")
    rotated = g.UnsubscribeTokens(b"new secret", (b"old secret",))
    assert rotated.read(sent_last_year) == ("anna@x.example", "marketing")
    made_now = rotated.make("ben@x.example", "onboarding")
    assert g.UnsubscribeTokens(b"new secret").read(made_now) == ("ben@x.example", "onboarding")  # signed anew
    assert before.read(made_now) is None
    assert g.UnsubscribeTokens(b"new secret").read(sent_last_year) is None  # previous secret dropped: retired


# webhook events --------------------------------------------------------------------------------------------


def test_a_webhook_event_is_remembered_once(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        assert g.remember_webhook_event(s, "sg-1", AT)
        assert not g.remember_webhook_event(s, "sg-1", LATER)
        assert g.remember_webhook_event(s, "sg-2", AT)
    with session(db) as s:
        assert not g.remember_webhook_event(s, "sg-1", LATER)


# admission: send_email and send_emails -------------------------------------------------------------------

REF = RunRef(workflow_id="wf-1", playbook_id="webinar", account_id="acct-1", step_id="invite")
DAY = 86_400


class CountingOutbox(OutboxProvider):
    """The embedded outbox, remembering every email it was asked to deliver (the network edge, as seen)."""

    def __init__(self, *, pause: float = 0.0, refuse: set[str] | None = None) -> None:
        self.delivered: list[OutgoingEmail] = []
        self.pause = pause
        self.refuse = refuse or set()
        self._lock = threading.Lock()

    def send(self, email: OutgoingEmail) -> str:
        time.sleep(self.pause)  # a slow provider keeps concurrent sends overlapping
        if set(email.to) & self.refuse:
            raise RejectedError("the provider refused the address", provider=self.name)
        with self._lock:
            self.delivered.append(email)
        return super().send(email)


def _req(key: str, *, at: datetime = AT, **changes: Any) -> EmailRequest:
    values: dict[str, Any] = dict(key=key, ref=REF, to=["anna@x.example"], at=at.isoformat(),
                                  subject="Our monthly webinar", body="Join us on Thursday.",
                                  category="marketing", unsubscribe=True)
    values.update(changes)
    return EmailRequest(**values)


def _acts(url: str, provider: OutboxProvider, links: g.UnsubscribeLinks | None = None) -> PlaybookActivities:
    return PlaybookActivities(url, BuiltinCrm(url), provider, default_sender="success@vendor.example",
                              unsubscribe_links=links)


def _row(url: str, key: str) -> t.OutboxEmail:
    with session(url) as s:
        row = s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == key))
        assert row is not None
        return row


def test_a_mixed_list_goes_to_the_allowed_and_says_who_was_left_out_and_why(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        g.suppress(s, "bounced@x.example", "bounced", "sendgrid", AT)
        g.set_consent(s, "gone@x.example", "marketing", False, "link", AT)
        g.set_consent(s, "other@x.example", "onboarding", False, "link", AT)  # another category: still reached
    outbox = CountingOutbox()
    request = _req("wf-1/1", to=["Anna <ANNA@x.example>", "Bounced <BOUNCED@x.example>", "not an address"],
                   cc=["gone@x.example", "other@x.example"], bcc=["bounced@x.example", "carl@x.example"])

    result = _acts(db, outbox).send_email(request)

    assert result.status == "sent"
    assert result.left_out == [
        LeftOut("bounced@x.example", "suppressed: bounced"),
        LeftOut("not an address", "invalid"),
        LeftOut("gone@x.example", "unsubscribed"),
    ]  # bounced@ in bcc is the same person as in to: left out once
    [sent] = outbox.delivered
    assert (sent.to, sent.cc, sent.bcc) == (["Anna <ANNA@x.example>"], ["other@x.example"], ["carl@x.example"])
    row = _row(db, "wf-1/1")
    assert (row.status, row.category, row.to, row.cc, row.bcc) == (
        "sent", "marketing", ["Anna <ANNA@x.example>"], ["other@x.example"], ["carl@x.example"])
    assert row.left_out == [{"address": "bounced@x.example", "reason": "suppressed: bounced"},
                            {"address": "not an address", "reason": "invalid"},
                            {"address": "gone@x.example", "reason": "unsubscribed"}]
    # a retry or replay answers the stored result, sends nothing
    assert _acts(db, outbox).send_email(request) == EmailResult(result.message_id, "sent", left_out=result.left_out)
    assert len(outbox.delivered) == 1


def test_no_one_left_in_to_means_nothing_is_sent(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        g.suppress(s, "bounced@x.example", "spam_report", "sendgrid", AT)
        g.set_consent(s, "anna@x.example", "marketing", False, "one_click", AT)
    outbox = CountingOutbox()
    acts = _acts(db, outbox)

    unsubscribed = acts.send_email(_req("wf-1/1", cc=["carl@x.example"]))
    suppressed = acts.send_email(_req("wf-1/2", to=["Bounced@x.example"], category="", unsubscribe=False))
    invalid = acts.send_email(_req("wf-1/3", to=["nobody", ""]))
    # a category without opting out (transactional) ignores consent, not the suppression list
    receipt = acts.send_email(_req("wf-1/4", category="transactional", unsubscribe=False))

    assert (unsubscribed.status, unsubscribed.detail) == ("suppressed", "every recipient unsubscribed from marketing")
    assert unsubscribed.left_out == [LeftOut("anna@x.example", "unsubscribed")]
    assert (suppressed.status, suppressed.left_out) == ("suppressed", [LeftOut("bounced@x.example",
                                                                                 "suppressed: spam_report")])
    assert (invalid.status, invalid.detail) == ("rejected", "invalid recipient(s): nobody, ")
    assert receipt.status == "sent"
    assert [e.to for e in outbox.delivered] == [["anna@x.example"]]
    assert [_row(db, f"wf-1/{n}").status for n in (1, 2, 3, 4)] == ["suppressed", "suppressed", "rejected", "sent"]


def test_a_legacy_request_without_a_category_gets_the_suppression_list_on_every_recipient(db):  # type: ignore[no-untyped-def]
    with session(db) as s:
        g.suppress(s, "bob@x.example", "manual", "api", AT)
        g.set_consent(s, "anna@x.example", "marketing", False, "link", AT)
    outbox = CountingOutbox()

    result = _acts(db, outbox).send_email(_req("wf-1/1", category="", unsubscribe=False, cc=["Bob <BOB@x.example>"]))

    assert (result.status, result.left_out) == ("sent", [LeftOut("bob@x.example", "suppressed: manual")])
    assert outbox.delivered[0].cc == [] and outbox.delivered[0].headers == {}


def test_an_email_that_allows_opting_out_carries_the_link_and_the_one_click_headers(db):  # type: ignore[no-untyped-def]
    tokens = g.UnsubscribeTokens(b"test secret")
    outbox = CountingOutbox()
    acts = _acts(db, outbox, g.UnsubscribeLinks("https://engine.example", tokens))

    acts.send_email(_req("wf-1/1", to=["Anna <Anna@x.example>", "bob@x.example"]))
    acts.send_email(_req("wf-1/2", category="transactional", unsubscribe=False))
    acts.send_email(_req("wf-1/3", template_id="d-123", body="", data={"name": "Anna"}))

    marketing, receipt, templated = outbox.delivered
    url = marketing.headers["List-Unsubscribe"].strip("<>")
    assert marketing.headers == {"List-Unsubscribe": f"<{url}>",
                                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert url.startswith("https://engine.example/u/")
    assert tokens.read(url.rsplit("/", 1)[1]) == ("anna@x.example", "marketing")  # the first `to`, the category
    assert marketing.body == f"Join us on Thursday.\n\n--\nTo stop emails like this: {url}"
    assert marketing.custom_args == {"message_id": marketing.message_id, "workflow_id": "wf-1",
                                     "account_id": "acct-1", "step_id": "invite", "category": "marketing"}
    assert receipt.headers == {} and receipt.body == "Join us on Thursday."
    assert templated.data["name"] == "Anna" and templated.data["unsubscribe_url"].startswith("https://engine.example/u/")
    row = _row(db, "wf-1/1")  # the outbox keeps exactly what the provider got
    assert (row.headers, row.body) == (marketing.headers, marketing.body)
    assert _row(db, "wf-1/2").headers == {}


# frequency caps ------------------------------------------------------------------------------------------


def test_a_cap_skips_what_is_over_it_and_says_when_it_has_room_again(db):  # type: ignore[no-untyped-def]
    caps = [CapRule(max=1, per_seconds=DAY, categories=["marketing", "onboarding"]),
            CapRule(max=3, per_seconds=7 * DAY)]
    outbox = CountingOutbox()
    acts = _acts(db, outbox)
    hour = timedelta(hours=1)

    first = acts.send_email(_req("a/1", caps=caps))
    second = acts.send_email(_req("b/1", caps=caps, at=AT + hour, category="onboarding"))
    receipt = acts.send_email(_req("c/1", at=AT + 2 * hour, category="transactional", unsubscribe=False))
    other = acts.send_email(_req("d/1", caps=caps, at=AT + hour, to=["bob@x.example"]))
    mixed = acts.send_email(_req("e/1", caps=caps, at=AT + hour, to=["anna@x.example", "carl@x.example"]))

    assert [first.status, receipt.status, other.status, mixed.status] == ["sent"] * 4
    assert (second.status, second.retry_at, second.left_out) == (
        "capped", (AT + timedelta(days=1)).isoformat(), [LeftOut("anna@x.example", "capped")])
    assert mixed.left_out == [LeftOut("anna@x.example", "capped")] and outbox.delivered[-1].to == ["carl@x.example"]
    assert _row(db, "b/1").status == "capped"
    # a day later: room for marketing again, but the 7-day cap of 3 counts the receipt too (categories: all)
    later = acts.send_email(_req("f/1", caps=caps, at=AT + timedelta(days=1, hours=1)))
    assert later.status == "sent"
    full = acts.send_email(_req("g/1", caps=caps, at=AT + timedelta(days=3)))
    assert (full.status, full.retry_at) == ("capped", (AT + timedelta(days=7)).isoformat())


def test_a_deferred_email_is_admitted_afresh_when_called_again_with_its_key(db):  # type: ignore[no-untyped-def]
    caps = [CapRule(max=1, per_seconds=DAY)]
    outbox = CountingOutbox()
    acts = _acts(db, outbox)
    acts.send_email(_req("a/1", caps=caps))
    capped = acts.send_email(_req("b/1", caps=caps, at=AT + timedelta(hours=2)))
    assert capped.status == "capped" and capped.retry_at is not None

    # the interpreter waited until retry_at (when_capped: defer) and asks again with the same key
    again = acts.send_email(_req("b/1", caps=caps, at=datetime.fromisoformat(capped.retry_at)))

    assert again.status == "sent" and again.message_id == capped.message_id
    assert _row(db, "b/1").status == "sent"
    assert acts.send_email(_req("b/1", caps=caps, at=datetime.fromisoformat(capped.retry_at))) == again


def test_only_emails_that_really_went_out_count(db):  # type: ignore[no-untyped-def]
    caps = [CapRule(max=1, per_seconds=DAY)]
    outbox = CountingOutbox(refuse={"anna@x.example"})
    acts = _acts(db, outbox)

    refused = acts.send_email(_req("a/1", caps=caps))
    outbox.refuse = set()
    sent = acts.send_email(_req("b/1", caps=caps, at=AT + timedelta(minutes=1)))

    assert (refused.status, sent.status) == ("rejected", "sent")
    with session(db) as s:
        assert sorted((d.key, d.status) for d in s.scalars(select(t.EmailDelivery))) == [
            ("a/1", "rejected"), ("b/1", "sent")]


def test_a_batch_counts_its_own_earlier_emails(db):  # type: ignore[no-untyped-def]
    caps = [CapRule(max=2, per_seconds=DAY)]
    outbox = CountingOutbox()
    acts = _acts(db, outbox)
    batch = EmailBatchRequest([_req(f"wf-{n}/1", caps=caps, at=AT + timedelta(minutes=n)) for n in range(4)]
                              + [_req("wf-9/1", caps=caps, to=["bob@x.example"])])

    result = acts.send_emails(batch)

    assert [r.status for r in result.results] == ["sent", "sent", "capped", "capped", "sent"]
    assert result.results[2].retry_at == (AT + timedelta(days=1)).isoformat()
    assert acts.send_emails(batch).results[:2] == result.results[:2]
    assert len(outbox.delivered) == 3


def _twenty_at_once(url: str) -> list[str]:
    """20 runs send to one contact at once (20 keys, 20 threads, each its own transactions), cap 3 a day."""
    outbox = CountingOutbox(pause=0.01)
    acts = _acts(url, outbox)
    caps = [CapRule(max=3, per_seconds=DAY)]
    start = threading.Barrier(20)

    def send(n: int) -> str:
        start.wait()
        return str(acts.send_email(_req(f"run-{n}/1", caps=caps, at=AT + timedelta(seconds=n))).status)

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(send, range(20)))
    assert len(outbox.delivered) == 3
    return statuses


def test_twenty_runs_at_once_never_exceed_a_cap_on_sqlite(db):  # type: ignore[no-untyped-def]
    assert Counter(_twenty_at_once(db)) == {"sent": 3, "capped": 17}


def test_twenty_runs_at_once_never_exceed_a_cap_on_postgresql(postgres):  # type: ignore[no-untyped-def]  # noqa: F811
    assert Counter(_twenty_at_once(empty(postgres))) == {"sent": 3, "capped": 17}


def test_the_records_work_on_postgresql(postgres):  # type: ignore[no-untyped-def]  # noqa: F811
    url = empty(postgres)
    with session(url) as s:
        g.set_consent(s, "Anna <anna@x.example>", "marketing", False, "link", AT)
        g.set_consent(s, "anna@x.example", "marketing", False, "api", LATER)
        assert g.suppress(s, "bob@x.example", "bounced", "sendgrid", AT)
        assert not g.suppress(s, "bob@x.example", "manual", "api", AT)
        assert g.remember_webhook_event(s, "sg-1", AT)
        assert not g.remember_webhook_event(s, "sg-1", AT)
    with session(url) as s:
        assert [(c.status, c.source) for c in g.consents(s, "anna@x.example")] == [("unsubscribed", "link")]
        assert [(v.email, v.reason) for v in g.list_suppressions(s)] == [("bob@x.example", "bounced")]
