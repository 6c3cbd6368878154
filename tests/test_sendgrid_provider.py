"""SendGridProvider with SendGrid's real client against a fake SendGrid on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError

from activities.crm import BuiltinCrm
from activities.email import OutgoingEmail
from activities.errors import (
    ConfigurationError,
    ProviderError,
    RejectedError,
    TransientError,
    to_application_error,
)
from activities.playbook_activities import PlaybookActivities
from activities.sendgrid_email import SendGridProvider
from activities.types import EmailRequest, RunRef
from engine.storage import models as t
from engine.storage.db import migrate, session
from engine.storage.governance import UnsubscribeLinks, UnsubscribeTokens
from tests.fakes import FakeSendGrid, closed_port_url, fake_sendgrid_fixture  # noqa: F401 - the fake_sendgrid fixture
from tests.fakes.fake_sendgrid import API_KEY


def _email(**changes) -> OutgoingEmail:
    values = dict(
        message_id="msg_0123456789abcdef",
        to=["Anna Alt <anna@acme.example>", "ben@acme.example"],
        subject="Welcome aboard",
        body="Hi Anna,\nwelcome.",
        sender="Success Team <success@vendor.example>",
        cc=["csm@vendor.example"],
        bcc=["archive@vendor.example"],
        reply_to="csm@vendor.example",
    )
    values.update(changes)
    return OutgoingEmail(**values)


@pytest.fixture
def provider(fake_sendgrid: FakeSendGrid) -> SendGridProvider:
    return SendGridProvider(API_KEY, host=fake_sendgrid.url, default_sender="default@vendor.example", timeout=2)


# request shape -----------------------------------------------------------------------------------


def test_plain_text_email_is_one_personalization_with_our_id_as_custom_arg_and_header(provider, fake_sendgrid):
    provider_id = provider.send(_email())

    assert provider_id == "sg-0001"  # the X-Message-Id response header
    [request] = fake_sendgrid.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    mail = request.json
    assert mail["from"] == {"email": "success@vendor.example", "name": "Success Team"}
    assert mail["subject"] == "Welcome aboard"
    assert mail["content"] == [{"type": "text/plain", "value": "Hi Anna,\nwelcome."}]
    # csm@ is both cc and reply-to: allowed; SendGrid only refuses duplicates across to/cc/bcc
    assert mail["personalizations"] == [
        {
            "to": [{"email": "anna@acme.example", "name": "Anna Alt"}, {"email": "ben@acme.example"}],
            "cc": [{"email": "csm@vendor.example"}],
            "bcc": [{"email": "archive@vendor.example"}],
        }
    ]
    assert mail["reply_to"] == {"email": "csm@vendor.example"}
    assert mail["custom_args"] == {"playbook_message_id": "msg_0123456789abcdef"}
    assert mail["headers"] == {"X-Playbook-Message-Id": "msg_0123456789abcdef"}
    assert "template_id" not in mail


def test_template_email_sends_template_id_and_data_and_no_content(provider, fake_sendgrid):
    data = {"first_name": "Anna", "account": {"name": "Acme", "mrr": 1200}, "steps": ["a", "b"]}
    provider.send(_email(template_id="d-5f1c0a", data=data, body="", subject="", cc=[], bcc=[]))

    mail = fake_sendgrid.requests[-1].json
    assert mail["template_id"] == "d-5f1c0a"
    assert mail["personalizations"][0]["dynamic_template_data"] == data
    assert "content" not in mail and "subject" not in mail  # the template brings both
    assert mail["custom_args"] == {"playbook_message_id": "msg_0123456789abcdef"}


def test_an_address_in_to_and_cc_and_bcc_is_sent_once(provider, fake_sendgrid):
    provider.send(
        _email(to=["anna@acme.example"], cc=["ANNA@acme.example", "csm@vendor.example"], bcc=["anna@acme.example"])
    )

    [p] = fake_sendgrid.sent[0]["personalizations"]  # the fake refuses duplicates, as SendGrid does
    assert p["to"] == [{"email": "anna@acme.example"}]
    assert p["cc"] == [{"email": "csm@vendor.example"}]
    assert "bcc" not in p


def test_default_sender_is_used_when_the_email_has_none(provider, fake_sendgrid):
    provider.send(_email(sender=""))
    assert fake_sendgrid.requests[-1].json["from"] == {"email": "default@vendor.example"}


# error mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, RejectedError, False),
        (401, ConfigurationError, False),
        (403, ConfigurationError, False),
        (404, ConfigurationError, False),
        (413, RejectedError, False),
        (422, RejectedError, False),
        (429, TransientError, True),
        (500, TransientError, True),
        (502, TransientError, True),
        (503, TransientError, True),
    ],
)
def test_http_errors_map_to_provider_error_kinds(provider, fake_sendgrid, status, kind, retryable):
    fake_sendgrid.fail_next(
        1, status, body={"errors": [{"message": f"nope {status}", "field": "personalizations", "help": None}]}
    )
    with pytest.raises(ProviderError) as caught:
        provider.send(_email())

    err = caught.value
    assert type(err) is kind
    assert (err.status, err.retryable, err.provider) == (status, retryable, "sendgrid")
    assert f"nope {status} (field personalizations)" in err.message
    assert API_KEY not in str(err)
    app_error = to_application_error(err)
    assert app_error.non_retryable is (not retryable)
    assert app_error.type == kind.__name__


def test_rate_limit_says_when_to_retry(provider, fake_sendgrid):
    fake_sendgrid.fail_next(1, 429, body={"errors": [{"message": "too many requests"}]}, headers={"Retry-After": "12"})
    with pytest.raises(TransientError, match="Retry-After/X-RateLimit-Reset: 12"):
        provider.send(_email())


def test_a_wrong_key_is_a_configuration_error_that_never_shows_the_key(fake_sendgrid):
    wrong = "SG.wrong-key.totally-secret"
    provider = SendGridProvider(wrong, host=fake_sendgrid.url)
    with pytest.raises(ConfigurationError) as caught:
        provider.send(_email())
    assert "authorization grant is invalid" in caught.value.message
    assert wrong not in str(caught.value) and wrong not in repr(provider)
    assert fake_sendgrid.requests[0].headers["authorization"] == f"Bearer {wrong}"


def test_the_key_is_not_in_the_clients_debug_log(provider, caplog):
    with caplog.at_level(logging.DEBUG, logger="python_http_client"):
        provider.send(_email())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HEADERS" in logged  # the client did log its headers...
    assert API_KEY not in logged and "Bearer [redacted]" in logged  # ...without the key


def test_the_client_refusing_the_body_is_a_rejection(provider, fake_sendgrid):
    with pytest.raises(RejectedError, match="ApiKeyIncludedException"):
        provider.send(_email(body="SG.abcdef.ghijkl is our key"))
    assert fake_sendgrid.requests == []


def test_template_data_that_is_not_json_is_a_rejection(provider, fake_sendgrid):
    with pytest.raises(RejectedError, match="JSON"):
        provider.send(_email(template_id="d-1", data={"when": object()}))
    assert fake_sendgrid.requests == []


def test_a_host_that_is_not_a_url_is_a_configuration_error():
    provider = SendGridProvider(API_KEY, host="api.sendgrid.com")  # the scheme is missing
    with pytest.raises(ConfigurationError, match="host 'api.sendgrid.com'"):
        provider.send(_email())


def test_connection_refused_is_transient():
    provider = SendGridProvider(API_KEY, host=closed_port_url(), timeout=2)
    with pytest.raises(TransientError, match="could not reach SendGrid") as caught:
        provider.send(_email())
    assert caught.value.retryable and API_KEY not in str(caught.value)


def test_a_timeout_is_transient(fake_sendgrid):
    provider = SendGridProvider(API_KEY, host=fake_sendgrid.url, timeout=0.2)
    fake_sendgrid.delay_next(1.0)
    with pytest.raises(TransientError, match="timed out"):
        provider.send(_email())


def test_a_dropped_connection_is_transient(provider, fake_sendgrid):
    fake_sendgrid.drop_next()
    with pytest.raises(TransientError):
        provider.send(_email())


def test_no_key_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.from-the-environment.x")  # the client would quietly use this
    with pytest.raises(ConfigurationError):
        SendGridProvider("", host="http://127.0.0.1:9")


# end to end through the send_email activity --------------------------------------------------------


@pytest.fixture
def activities(tmp_path, fake_sendgrid) -> PlaybookActivities:
    url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(url)
    email = SendGridProvider(API_KEY, host=fake_sendgrid.url, timeout=2)
    return PlaybookActivities(url, crm=BuiltinCrm(url), email=email, default_sender="success@vendor.example")


def _request(key: str = "wf-1/3/0") -> EmailRequest:
    return EmailRequest(
        key=key,
        ref=RunRef(workflow_id="wf-1", playbook_id="onboarding", account_id="acct-1", step_id="welcome"),
        to=["anna@acme.example"],
        at="2024-05-01T10:00:00+00:00",
        subject="Welcome",
        body="Hello Anna",
    )


def _row(acts: PlaybookActivities, key: str) -> t.OutboxEmail:
    with session(acts.db_url) as s:
        return s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == key))


def test_send_email_records_sent_with_the_provider_id_and_never_sends_twice(activities, fake_sendgrid):
    first = activities.send_email(_request())

    assert first.status == "sent"
    row = _row(activities, "wf-1/3/0")
    assert (row.status, row.provider, row.provider_message_id) == ("sent", "sendgrid", "sg-0001")
    assert fake_sendgrid.sent[0]["custom_args"] == {
        "playbook_message_id": first.message_id, "message_id": first.message_id, "workflow_id": "wf-1",
        "account_id": "acct-1", "step_id": "welcome", "category": ""}
    assert fake_sendgrid.sent[0]["from"] == {"email": "success@vendor.example"}

    again = activities.send_email(_request())  # a retried or replayed activity
    assert (again.message_id, again.status) == (first.message_id, "sent")
    assert len(fake_sendgrid.requests) == 1


def test_send_email_marks_a_400_rejected_and_does_not_retry(activities, fake_sendgrid):
    fake_sendgrid.fail_next(1, 400, body={"errors": [{"message": "Does not contain a valid address.", "field": "to"}]})

    result = activities.send_email(_request())

    assert result.status == "rejected"
    assert "Does not contain a valid address." in result.detail
    assert _row(activities, "wf-1/3/0").status == "rejected"
    assert activities.send_email(_request()).status == "rejected"
    assert len(fake_sendgrid.requests) == 1


def test_send_email_503_is_retryable_and_the_retry_sends_exactly_once(activities, fake_sendgrid):
    fake_sendgrid.fail_next(1, 503, body={"errors": [{"message": "Service Unavailable"}]})

    with pytest.raises(ApplicationError) as caught:
        activities.send_email(_request())
    assert caught.value.non_retryable is False
    assert caught.value.type == "TransientError"
    assert _row(activities, "wf-1/3/0").status == "sending"

    retried = activities.send_email(_request())  # Temporal's retry
    assert retried.status == "sent"
    assert _row(activities, "wf-1/3/0").provider_message_id == "sg-0001"
    activities.send_email(_request())  # and a replay after that
    assert len(fake_sendgrid.requests) == 2  # the failed attempt and the one that went through
    assert len(fake_sendgrid.sent) == 1


# messaging governance: headers, correlation, suppression groups, sandbox, rate limits -------------------


def test_governance_headers_custom_args_and_the_suppression_group_travel_with_the_email(provider, fake_sendgrid):
    headers = {"List-Unsubscribe": "<https://engine.example/u/tok>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    args = {"message_id": "msg_0123456789abcdef", "workflow_id": "wf-9", "account_id": "acct-9", "step_id": "invite",
            "category": "marketing"}
    provider.send(_email(headers=headers, custom_args=args, asm_group=42, category="marketing"))

    mail = fake_sendgrid.sent[-1]
    assert mail["headers"] == {"X-Playbook-Message-Id": "msg_0123456789abcdef", **headers}
    assert mail["custom_args"] == {"playbook_message_id": "msg_0123456789abcdef", **args}
    assert mail["asm"] == {"group_id": 42}
    assert "mail_settings" not in mail


def test_a_batch_carries_each_emails_headers_and_custom_args_and_splits_by_suppression_group(provider, fake_sendgrid):
    emails = [
        _email(message_id=f"msg_{n}", to=[f"p{n}@acme.example"], cc=[], bcc=[], asm_group=group,
               headers={"List-Unsubscribe": f"<https://engine.example/u/{n}>"}, custom_args={"workflow_id": f"wf-{n}"})
        for n, group in enumerate([7, 7, 8])
    ]
    assert provider.send_batch(emails) == ["sg-0001", "sg-0001", "sg-0002"]

    first, second = fake_sendgrid.sent
    assert (first["asm"], second["asm"]) == ({"group_id": 7}, {"group_id": 8})
    assert [p["headers"]["List-Unsubscribe"] for p in first["personalizations"]] == [
        "<https://engine.example/u/0>", "<https://engine.example/u/1>"]
    assert [p["custom_args"]["workflow_id"] for p in first["personalizations"]] == ["wf-0", "wf-1"]


def test_sandbox_mode_is_validated_and_delivers_nothing(fake_sendgrid):
    provider = SendGridProvider(API_KEY, host=fake_sendgrid.url, timeout=2, sandbox=True)
    provider.send(_email())
    provider.send_batch([_email(to=["a@acme.example"], cc=[], bcc=[]), _email(to=["b@acme.example"], cc=[], bcc=[])])

    assert fake_sendgrid.sent == []
    assert [m["mail_settings"] for m in fake_sendgrid.sandboxed] == [{"sandbox_mode": {"enable": True}}] * 2


@pytest.mark.parametrize("changes", [dict(subject=""), dict(body=""), dict(subject="  ", body="text")])
def test_an_email_without_a_template_needs_a_subject_and_a_body(provider, fake_sendgrid, changes):
    with pytest.raises(RejectedError, match="an email without a template needs a subject and a body"):
        provider.send(_email(**changes))
    assert fake_sendgrid.requests == []  # refused before asking SendGrid, which would answer 400


def test_a_legacy_template_gets_substitution_tags_and_a_dynamic_one_gets_json(provider, fake_sendgrid):
    data = {"first_name": "Anna", "seats": 12, "account": {"name": "Acme"}}
    provider.send(_email(template_id="d-5f1c0a", data=data, body="", subject="", cc=[], bcc=[]))
    provider.send(_email(template_id="13b8f94f-bcae-4ec6-b752-70d6cb59f932", data=data, body="", subject="",
                         cc=[], bcc=[]))

    dynamic, legacy = (m["personalizations"][0] for m in fake_sendgrid.sent)
    assert dynamic["dynamic_template_data"] == data and "substitutions" not in dynamic
    assert legacy["substitutions"] == {"-first_name-": "Anna", "-seats-": "12"}  # no tag for a nested value
    assert "dynamic_template_data" not in legacy


def test_display_names_with_commas_or_semicolons_are_quoted(provider, fake_sendgrid):
    provider.send(_email(to=['"Kraus, Anna" <anna@kraus.example>', "Meier; Ben <ben@kraus.example>"],
                         cc=["Plain Name <carl@kraus.example>"], bcc=[],
                         sender="Success, Team <success@vendor.example>", reply_to="CSM; Desk <csm@vendor.example>"))

    mail = fake_sendgrid.sent[-1]
    [p] = mail["personalizations"]
    assert p["to"] == [{"email": "anna@kraus.example", "name": '"Kraus, Anna"'},
                       {"email": "ben@kraus.example", "name": '"Meier; Ben"'}]
    assert p["cc"] == [{"email": "carl@kraus.example", "name": "Plain Name"}]
    assert mail["from"] == {"email": "success@vendor.example", "name": '"Success, Team"'}
    assert mail["reply_to"] == {"email": "csm@vendor.example", "name": '"CSM; Desk"'}


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "12"}, 12.0),
    ({"X-RateLimit-Reset": "RESET_IN_30"}, 30.0),
    ({"X-RateLimit-Reset": "0"}, 1.0),  # a reset in the past: try again soon, not at once
    ({}, None),  # no hint: Temporal's retry policy decides
])
def test_a_rate_limit_waits_until_sendgrid_resets(provider, fake_sendgrid, headers, expected):
    if headers.get("X-RateLimit-Reset") == "RESET_IN_30":
        headers = {"X-RateLimit-Reset": str(int(time.time()) + 30)}
    fake_sendgrid.fail_next(1, 429, body={"errors": [{"message": "too many requests"}]}, headers=headers)
    with pytest.raises(TransientError) as caught:
        provider.send(_email())

    delay = to_application_error(caught.value).next_retry_delay
    if expected is None:
        assert delay is None
    else:
        assert delay is not None and expected - 2 <= delay.total_seconds() <= expected


def test_send_email_tells_temporal_when_to_retry_after_a_rate_limit(activities, fake_sendgrid):
    fake_sendgrid.fail_next(1, 429, body={"errors": [{"message": "too many requests"}]}, headers={"Retry-After": "20"})
    with pytest.raises(ApplicationError) as caught:
        activities.send_email(_request())
    assert caught.value.type == "TransientError" and not caught.value.non_retryable
    assert caught.value.next_retry_delay == timedelta(seconds=20)
    assert activities.send_email(_request()).status == "sent"  # the retry
    assert len(fake_sendgrid.sent) == 1


def test_an_unsubscribable_email_reaches_sendgrid_with_its_link_and_one_click_headers(tmp_path, fake_sendgrid):
    url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(url)
    tokens = UnsubscribeTokens(b"test secret")
    acts = PlaybookActivities(url, crm=BuiltinCrm(url), email=SendGridProvider(API_KEY, host=fake_sendgrid.url),
                              unsubscribe_links=UnsubscribeLinks("https://engine.example", tokens))
    request = replace(_request(), to=["Anna <anna@acme.example>"], category="marketing", unsubscribe=True,
                      sendgrid_group=5)

    assert acts.send_email(request).status == "sent"

    [delivery] = fake_sendgrid.deliveries()
    link = delivery["headers"]["List-Unsubscribe"].strip("<>")
    assert tokens.read(link.rsplit("/", 1)[1]) == ("anna@acme.example", "marketing")
    assert delivery["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert delivery["body"] == f"Hello Anna\n\n--\nTo stop emails like this: {link}"
    assert fake_sendgrid.sent[0]["asm"] == {"group_id": 5}
    assert fake_sendgrid.sent[0]["custom_args"]["category"] == "marketing"
    row = _row(acts, "wf-1/3/0")  # the outbox shows what SendGrid got
    assert row.body == delivery["body"]
    assert {**row.headers, "X-Playbook-Message-Id": row.message_id} == delivery["headers"]
