"""Logs are structured, carry the run's context, and never show people's addresses or names in clear."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from engine.runtime.logs import configure, mask_email


def test_email_addresses_are_masked():
    assert mask_email("write to anna@kraus.example today") == "write to a***@k***.example today"


def test_addresses_in_url_paths_are_masked_too():
    # uvicorn's access log prints the path as requested: the consent and suppression endpoints hold an address
    line = '"PUT /contacts/anna.kraus%40kraus.example/consent/marketing HTTP/1.1" 200'
    assert mask_email(line) == '"PUT /contacts/a***%40k***.example/consent/marketing HTTP/1.1" 200'


def test_json_logs_mask_people_and_keep_context(capsys):
    configure(json_output=True)
    try:
        log = structlog.get_logger("test")
        with structlog.contextvars.bound_contextvars(run_id="repricer-onboarding/acc-1/x", step="welcome"):
            log.info("email sent", to=["anna@kraus.example"], first_name="Anna", name="Kraus GmbH")
        logging.getLogger("temporalio").warning("from stdlib with %s", "jonas@success.example")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    ours, theirs = lines
    assert ours["event"] == "email sent"
    assert ours["run_id"] == "repricer-onboarding/acc-1/x" and ours["step"] == "welcome"
    assert ours["to"] == ["a***@k***.example"]
    assert ours["first_name"] == "***" and ours["name"] == "***"
    assert "jonas@" not in json.dumps(theirs) and "j***@s***.example" in theirs["event"]


@pytest.mark.parametrize("json_output", [True, False])
def test_an_address_in_a_logged_exception_is_masked(capsys, json_output):
    # Temporal's worker logs a failed activity with its exception; a provider's error can quote the recipient
    configure(json_output=json_output)
    try:
        try:
            raise RuntimeError("SendGrid refused anna.kraus@kraus.example: bounced")
        except RuntimeError:
            logging.getLogger("temporalio.activity").warning("Completing activity as failed", exc_info=True)
            structlog.get_logger("test").exception("send failed")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "anna.kraus@" not in err
    assert err.count("RuntimeError: SendGrid refused a***@k***.example: bounced") == 2
