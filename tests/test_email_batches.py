"""The send_emails activity: many emails as one batch, against a real SQLite database, the outbox and a fake SendGrid.

Every email of a batch keeps its own key, outbox row, suppression check and result; a retried batch sends
nobody twice. SendGrid is driven through its official client against tests/fakes/fake_sendgrid.py.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from sqlalchemy import func, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crm import BuiltinCrm
from activities.email import OutboxProvider, OutgoingEmail
from activities.playbook_activities import PlaybookActivities
from activities.sendgrid_email import BODY_TAG, SendGridProvider
from activities.types import EmailBatchRequest, EmailBatchResult, EmailRequest, EmailResult, LeftOut, RunRef
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.fakes import FakeSendGrid
from tests.fakes.fake_sendgrid import API_KEY

REF = RunRef(workflow_id="wf-1", playbook_id="renewal", account_id="acct-1", step_id="remind")


class CountingOutbox(OutboxProvider):
    """The embedded outbox, counting every email it is asked to deliver."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()

    def send(self, email: OutgoingEmail) -> str:
        self.asked[email.message_id] += 1
        return super().send(email)


def _email(i: int, **changes) -> EmailRequest:
    values = dict(
        key=f"wf-1/4/{i}",
        ref=REF,
        to=[f"person{i}@acme.example"],
        at="2024-05-01T10:00:00+00:00",
        subject=f"Renewal for item {i}",
        body=f"Hello person {i},\nyour renewal is due.",
    )
    values.update(changes)
    return EmailRequest(**values)


def _batch(n: int, **changes) -> EmailBatchRequest:
    return EmailBatchRequest(emails=[_email(i, **changes) for i in range(n)])


def _url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(url)
    return url


def _rows(url: str) -> dict[str, t.OutboxEmail]:
    with session(url) as s:
        return {row.key: row for row in s.scalars(select(t.OutboxEmail))}


def _row_count(url: str) -> int:
    with session(url) as s:
        return s.scalar(select(func.count()).select_from(t.OutboxEmail)) or 0


@pytest.fixture
def outbox() -> CountingOutbox:
    return CountingOutbox()


@pytest.fixture
def acts(tmp_path, outbox) -> PlaybookActivities:
    url = _url(tmp_path)
    return PlaybookActivities(url, BuiltinCrm(url), outbox, default_sender="success@vendor.example")


@pytest.fixture
def sendgrid():
    with FakeSendGrid(refuse={"bounced@acme.example"}) as server:
        yield server


@pytest.fixture
def sg_acts(tmp_path, sendgrid) -> PlaybookActivities:
    url = _url(tmp_path)
    provider = SendGridProvider(API_KEY, host=sendgrid.url, timeout=5)
    return PlaybookActivities(url, BuiltinCrm(url), provider, default_sender="success@vendor.example")


# the activity, with the embedded outbox ------------------------------------------------------------


def test_send_emails_is_registered_wherever_send_email_is(acts):
    names = [activity._Definition.must_from_callable(fn).name for fn in acts.all()]
    assert "send_email" in names and "send_emails" in names


def test_a_batch_of_1500_writes_1500_rows_and_answers_1500_results_in_order(acts, outbox):
    batch = _batch(1500)

    result = acts.send_emails(batch)

    assert isinstance(result, EmailBatchResult)
    assert [r.status for r in result.results] == ["sent"] * 1500
    rows = _rows(acts.db_url)
    assert len(rows) == 1500
    # in order: each result is the row of its own request
    assert [r.message_id for r in result.results] == [rows[e.key].message_id for e in batch.emails]
    assert len({r.message_id for r in result.results}) == 1500
    assert all(row.status == "sent" and row.provider == "outbox" for row in rows.values())
    assert rows["wf-1/4/7"].to == ["person7@acme.example"] and rows["wf-1/4/7"].body.startswith("Hello person 7,")
    assert sorted(outbox.asked.values()) == [1] * 1500


def test_the_same_key_gets_the_same_message_id_from_send_email_and_send_emails(tmp_path):
    url_a, url_b = _url(tmp_path / "a"), _url(tmp_path / "b")
    one = PlaybookActivities(url_a, BuiltinCrm(url_a), OutboxProvider()).send_email(_email(3))
    many = PlaybookActivities(url_b, BuiltinCrm(url_b), OutboxProvider()).send_emails(_batch(5))
    assert many.results[3] == one


def test_a_rerun_batch_returns_the_same_results_and_writes_and_sends_nothing(acts, outbox):
    batch = _batch(300)
    first = acts.send_emails(batch)
    asked = sum(outbox.asked.values())

    again = acts.send_emails(batch)  # a retried or replayed activity

    assert again == first
    assert _row_count(acts.db_url) == 300
    assert sum(outbox.asked.values()) == asked == 300


def test_a_batch_after_some_single_sends_sends_only_the_others(acts, outbox):
    singles = [acts.send_email(_email(i)) for i in (0, 2)]

    result = acts.send_emails(_batch(4))

    assert [result.results[0], result.results[2]] == singles
    assert sum(outbox.asked.values()) == 4  # 2 single sends, then 2 in the batch
    assert _row_count(acts.db_url) == 4


def test_a_suppressed_recipient_in_a_batch_is_suppressed_and_the_others_sent(acts, outbox):
    with session(acts.db_url) as s:
        s.add(t.Suppression(email="person1@acme.example", reason="unsubscribed"))

    result = acts.send_emails(_batch(3))

    assert [r.status for r in result.results] == ["sent", "suppressed", "sent"]
    assert result.results[1].detail == "every recipient is on the suppression list"
    assert _rows(acts.db_url)["wf-1/4/1"].status == "suppressed"
    assert result.results[1].message_id not in outbox.asked
    # case and spaces do not hide an address from the suppression list, as in send_email
    shouty = acts.send_emails(EmailBatchRequest([_email(9, to=["  Person1@ACME.example "])]))
    assert shouty.results[0].status == "suppressed"


def test_an_invalid_recipient_is_rejected_and_the_others_sent(acts, outbox):
    batch = EmailBatchRequest([_email(0), _email(1, to=["not-an-address"]), _email(2, to=[]), _email(3)])

    result = acts.send_emails(batch)

    assert [r.status for r in result.results] == ["sent", "rejected", "rejected", "sent"]
    assert result.results[1].detail == "invalid recipient(s): not-an-address"
    assert result.results[2].detail == "invalid recipient(s): none"
    rows = _rows(acts.db_url)
    assert (rows["wf-1/4/1"].status, rows["wf-1/4/2"].status) == ("rejected", "rejected")
    assert len(outbox.asked) == 2
    assert acts.send_emails(batch).results == [
        result.results[0],
        EmailResult(result.results[1].message_id, "rejected", left_out=[LeftOut("not-an-address", "invalid")]),
        EmailResult(result.results[2].message_id, "rejected"), result.results[3],
    ]  # stored results, as send_email returns them on a retry: the status and who was left out, not the detail


def test_a_key_twice_in_one_batch_is_one_email_answered_twice(acts, outbox):
    result = acts.send_emails(EmailBatchRequest([_email(0), _email(1), _email(0)]))

    assert result.results[0] == result.results[2]
    assert _row_count(acts.db_url) == 2
    assert sum(outbox.asked.values()) == 2


def test_an_empty_batch_is_an_empty_result(acts):
    assert acts.send_emails(EmailBatchRequest([])) == EmailBatchResult(results=[])


# SendGrid --------------------------------------------------------------------------------------------


def _received(sendgrid: FakeSendGrid) -> Counter[str]:
    """How often each address was delivered an email, over every accepted request."""
    return Counter(a.lower() for d in sendgrid.deliveries() for kind in ("to", "cc", "bcc") for a in d[kind])


def _message_ids(sendgrid: FakeSendGrid, mail: dict) -> list[str]:
    """Our message ids in one request: per personalization in a batch, the message's in a single send."""
    return sorted(d["message_id"] for d in sendgrid.deliveries([mail]))


def test_sendgrid_packs_1000_emails_per_request_each_with_its_recipient_subject_and_body(sg_acts, sendgrid):
    n = 2100
    batch = _batch(n)

    result = sg_acts.send_emails(batch)

    assert [r.status for r in result.results] == ["sent"] * n
    requests = sendgrid.requests_to("POST", "/v3/mail/send")
    assert len(requests) == math.ceil(n / 1000) == 3
    assert [len(r.json["personalizations"]) for r in requests] == [1000, 1000, 100]
    mail = requests[0].json
    assert mail["from"] == {"email": "success@vendor.example"}
    assert mail["content"] == [{"type": "text/plain", "value": BODY_TAG}]
    assert "subject" not in mail and "custom_args" not in mail  # per personalization
    p = mail["personalizations"][7]
    assert p["to"] == [{"email": "person7@acme.example"}]
    assert p["subject"] == "Renewal for item 7"
    assert p["substitutions"] == {BODY_TAG: "Hello person 7,\nyour renewal is due."}
    message_id = result.results[7].message_id  # and what the webhook correlates its events with
    assert p["custom_args"] == {"playbook_message_id": message_id, "message_id": message_id, "workflow_id": "wf-1",
                                "account_id": "acct-1", "step_id": "remind", "category": ""}
    assert p["headers"] == {"X-Playbook-Message-Id": result.results[7].message_id}
    # what each recipient gets, substitutions applied: its own subject and body, once
    deliveries = {d["to"][0]: d for d in sendgrid.deliveries()}
    assert len(deliveries) == n
    for i, email in enumerate(batch.emails):
        got = deliveries[email.to[0]]
        assert (got["subject"], got["body"]) == (email.subject, email.body)
        assert got["message_id"] == result.results[i].message_id
    assert set(_received(sendgrid).values()) == {1}
    rows = _rows(sg_acts.db_url)
    assert [rows[e.key].provider_message_id for e in batch.emails[999:1001]] == ["sg-0001", "sg-0002"]
    assert sg_acts.send_emails(batch) == result  # a retry asks SendGrid nothing
    assert len(sendgrid.requests) == 3


def test_sendgrid_template_emails_share_a_request_with_their_own_data(sg_acts, sendgrid):
    batch = EmailBatchRequest([
        _email(i, template_id="d-renewal", body="", subject="", data={"first_name": f"P{i}", "seats": i})
        for i in range(3)
    ])

    result = sg_acts.send_emails(batch)

    assert [r.status for r in result.results] == ["sent"] * 3
    [request] = sendgrid.requests
    mail = request.json
    assert mail["template_id"] == "d-renewal" and "content" not in mail
    assert [p["dynamic_template_data"] for p in mail["personalizations"]] == [
        {"first_name": f"P{i}", "seats": i} for i in range(3)
    ]
    assert all("substitutions" not in p and "subject" not in p for p in mail["personalizations"])


def test_sendgrid_splits_by_sender_reply_to_and_template_and_keeps_addresses_once_per_request(sg_acts, sendgrid):
    emails = [
        _email(0),
        _email(1, sender="Other <other@vendor.example>"),
        _email(2),
        _email(3, reply_to="csm@vendor.example"),
        _email(4, cc=["csm@vendor.example"]),
        _email(5, cc=["CSM@vendor.example"]),  # the same address again: not in the same request
        _email(6, to=["person0@acme.example"]),  # the recipient of email 0 again
    ]

    result = sg_acts.send_emails(EmailBatchRequest(emails))

    assert [r.status for r in result.results] == ["sent"] * 7
    requests = [r.json for r in sendgrid.requests]
    assert len(sendgrid.sent) == len(requests)  # the fake refused none
    groups = [_message_ids(sendgrid, mail) for mail in requests]
    ids = [r.message_id for r in result.results]
    assert groups[0] == sorted([ids[0], ids[2], ids[4]])  # one sender, no reply-to, no shared address
    assert sorted(map(tuple, groups)) == sorted(
        map(tuple, [sorted([ids[0], ids[2], ids[4]]), [ids[1]], [ids[3]], sorted([ids[5], ids[6]])])
    )
    assert _received(sendgrid)["person0@acme.example"] == 2  # two emails to one person: each sent once
    assert _received(sendgrid)["csm@vendor.example"] == 2


def test_sendgrid_sends_alone_what_cannot_be_a_substitution(sg_acts, sendgrid):
    big = "x" * 10_000  # with the tag, over SendGrid's 10,000 bytes of substitutions per personalization
    emails = [_email(0), _email(1, body=big), _email(2, body=f"see {BODY_TAG}"), _email(3)]

    result = sg_acts.send_emails(EmailBatchRequest(emails))

    assert [r.status for r in result.results] == ["sent"] * 4
    requests = [r.json for r in sendgrid.requests]
    assert len(requests) == 3
    assert [len(m["personalizations"]) for m in requests] == [2, 1, 1]
    assert requests[1]["content"] == [{"type": "text/plain", "value": big}]  # send's own request
    bodies = {d["to"][0]: d["body"] for d in sendgrid.deliveries()}
    assert bodies["person1@acme.example"] == big and bodies["person2@acme.example"] == f"see {BODY_TAG}"


def test_a_refused_batch_falls_back_to_single_sends_so_only_the_bad_recipient_is_rejected(sg_acts, sendgrid):
    emails = [_email(i) for i in range(5)]
    emails[2] = _email(2, to=["bounced@acme.example"])  # looks fine to us; SendGrid refuses it

    result = sg_acts.send_emails(EmailBatchRequest(emails))

    assert [r.status for r in result.results] == ["sent", "sent", "rejected", "sent", "sent"]
    assert "Does not contain a valid address." in result.results[2].detail
    requests = sendgrid.requests
    assert [len(r.json["personalizations"]) for r in requests] == [5, 1, 1, 1, 1, 1]  # the batch, then one by one
    assert len(sendgrid.sent) == 4
    assert set(_received(sendgrid)) == {f"person{i}@acme.example" for i in (0, 1, 3, 4)}
    assert set(_received(sendgrid).values()) == {1}
    rows = _rows(sg_acts.db_url)
    assert rows["wf-1/4/2"].status == "rejected"
    assert sg_acts.send_emails(EmailBatchRequest(emails)).results[2].status == "rejected"
    assert len(sendgrid.requests) == 6


@pytest.mark.parametrize("status", [429, 500])
def test_a_transient_error_fails_retryably_and_the_retry_sends_only_what_was_not_sent(sg_acts, sendgrid, status):
    n = 2500  # three requests: 1000, 1000, 500
    batch = _batch(n)
    sendgrid.fail_next(1, status, body={"errors": [{"message": "try later"}]}, skip=1)  # the second request

    with pytest.raises(ApplicationError) as caught:
        sg_acts.send_emails(batch)

    assert caught.value.non_retryable is False and caught.value.type == "TransientError"
    assert len(sendgrid.requests) == 2  # after the failure, the third request is not attempted
    statuses = Counter(row.status for row in _rows(sg_acts.db_url).values())
    assert statuses == {"sent": 1000, "sending": 1500}

    retried = sg_acts.send_emails(batch)  # Temporal's retry, SendGrid has recovered

    assert [r.status for r in retried.results] == ["sent"] * n
    assert len(sendgrid.requests) == 4  # 1000 + (failed) + 1000 + 500
    received = _received(sendgrid)
    assert len(received) == n and set(received.values()) == {1}  # nobody twice, nobody missed
    assert sg_acts.send_emails(batch) == retried
    assert len(sendgrid.requests) == 4


def test_a_transient_error_during_the_single_send_fallback_keeps_what_was_sent(sg_acts, sendgrid):
    emails = [_email(i) for i in range(4)]
    sendgrid.fail_next(1, 400, body={"errors": [{"message": "bad", "field": "personalizations"}]})
    sendgrid.fail_next(1, 503, body={"errors": [{"message": "busy"}]}, skip=1)  # the 2nd single send

    with pytest.raises(ApplicationError) as caught:
        sg_acts.send_emails(EmailBatchRequest(emails))

    assert caught.value.non_retryable is False
    rows = _rows(sg_acts.db_url)
    assert [rows[e.key].status for e in emails] == ["sent", "sending", "sending", "sending"]

    assert [r.status for r in sg_acts.send_emails(EmailBatchRequest(emails)).results] == ["sent"] * 4
    received = _received(sendgrid)
    assert len(received) == 4 and set(received.values()) == {1}


def test_a_wrong_key_fails_the_batch_for_good_and_sends_nothing(tmp_path, sendgrid):
    url = _url(tmp_path)
    acts = PlaybookActivities(url, BuiltinCrm(url), SendGridProvider("SG.wrong.key", host=sendgrid.url, timeout=5))

    with pytest.raises(ApplicationError) as caught:
        acts.send_emails(_batch(1200))

    assert caught.value.non_retryable is True and caught.value.type == "ConfigurationError"
    assert len(sendgrid.requests) == 1 and sendgrid.sent == []
    assert set(row.status for row in _rows(url).values()) == {"sending"}
