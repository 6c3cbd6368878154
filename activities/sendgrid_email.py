"""SendGrid as the email provider, through SendGrid's official client (``sendgrid``).

One email is one v3 ``/mail/send`` call with one personalization: every ``to`` sees the others,
as in a mail client. Our message id travels as the custom arg ``playbook_message_id`` (SendGrid
echoes custom args in every event webhook) and as the header ``X-Playbook-Message-Id`` (visible to
the recipient's mail system), so delivery events and replies can be traced to the run and step.

Errors from the client and the network are mapped to our kinds in one place, ``_mapped_errors``:

    python_http_client.exceptions.HTTPError (status_code)
        400, 413, other 4xx   → RejectedError       the message itself is wrong: retrying won't help
        401, 403              → ConfigurationError  the key is wrong or lacks the mail.send scope
        404                   → ConfigurationError  the host is wrong (mail/send always exists)
        429, 5xx              → TransientError
    URLError, OSError (refused, reset, timed out), http.client.HTTPException
                              → TransientError
    TypeError                 → RejectedError       template data that is not JSON
    ValueError                → ConfigurationError  urllib refusing the host URL

The helpers refusing to build the message (a SendGrid key in the body) is a RejectedError too.

The API key is never logged or put in a message: python_http_client logs request headers at
DEBUG, so a filter on its logger blanks the Authorization value.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parseaddr
from typing import Any
from urllib.error import URLError

import sendgrid
from python_http_client import exceptions as sg_errors
from sendgrid.helpers.mail import (
    Bcc,
    Cc,
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    Personalization,
    ReplyTo,
    Subject,
    TemplateId,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from .email import OutgoingEmail
from .errors import ConfigurationError, ProviderError, RejectedError, TransientError, from_http_status

MESSAGE_ID_ARG = "playbook_message_id"
MESSAGE_ID_HEADER = "X-Playbook-Message-Id"


class _RedactAuthorization(logging.Filter):
    """python_http_client logs ``HEADERS: {...'Authorization': 'Bearer SG...'}`` at DEBUG: blank the key."""

    _bearer = re.compile(r"(Bearer\s+)[^'\"\s,}]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Bearer" in message:
            record.msg, record.args = self._bearer.sub(r"\1[redacted]", message), ()
        return True


def _install_redaction() -> None:
    logger = logging.getLogger("python_http_client.client")
    if not any(isinstance(f, _RedactAuthorization) for f in logger.filters):
        logger.addFilter(_RedactAuthorization())


_install_redaction()


class SendGridProvider:
    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        host: str = "https://api.sendgrid.com",
        default_sender: str = "success@example.com",
        *,
        timeout: float = 10.0,
    ) -> None:
        if not api_key:
            # Checked here, not left to the client: it would silently fall back to $SENDGRID_API_KEY.
            raise ConfigurationError("no SendGrid API key", provider=self.name)
        self.host = host
        self.default_sender = default_sender
        self._client = sendgrid.SendGridAPIClient(api_key=api_key, host=host)
        # The client's default is no timeout at all: a stalled connection would hold the activity
        # until its start-to-close timeout. A timeout is a TransientError and Temporal retries.
        self._client.client.timeout = timeout

    def __repr__(self) -> str:
        return f"SendGridProvider(host={self.host!r})"

    def send(self, email: OutgoingEmail) -> str:
        body = self._body(email)
        with _mapped_errors(self.name, self.host):
            response = self._client.send(body)
        # SendGrid answers 202 with the id its events carry as ``sg_message_id`` (prefixed by it).
        return response.headers.get("X-Message-Id") or email.message_id

    def _body(self, email: OutgoingEmail) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self._message(email).get()  # the JSON of the v3 mail/send request
            return body
        except (SendGridException, TypeError, ValueError) as err:
            # the helpers refuse a message: a SendGrid key in the body, a malformed address list
            raise RejectedError(f"SendGrid's client refused the message: {type(err).__name__}: {err}",
                                provider=self.name) from err

    def _message(self, email: OutgoingEmail) -> Mail:
        mail = Mail(from_email=From(email.sender or self.default_sender))
        personalization = Personalization()
        # SendGrid refuses an address that appears twice across to/cc/bcc of one personalization.
        seen: set[str] = set()
        for kind, addresses in ((To, email.to), (Cc, email.cc), (Bcc, email.bcc)):
            for address in addresses:
                key = (parseaddr(address)[1] or address).strip().lower()
                if key and key not in seen:
                    seen.add(key)
                    personalization.add_email(kind(address.strip()))
        if email.template_id:
            # A dynamic template brings its own subject and content; the data fills it.
            mail.template_id = TemplateId(email.template_id)
            personalization.dynamic_template_data = dict(email.data)
            if email.subject:
                mail.subject = Subject(email.subject)
        else:
            mail.subject = Subject(email.subject)
            mail.add_content(Content("text/plain", email.body))
        mail.add_personalization(personalization)
        if email.reply_to:
            mail.reply_to = ReplyTo(email.reply_to)
        mail.custom_arg = CustomArg(MESSAGE_ID_ARG, email.message_id)
        mail.header = Header(MESSAGE_ID_HEADER, email.message_id)
        return mail


@contextmanager
def _mapped_errors(provider: str, host: str) -> Iterator[None]:
    """The one boundary where SendGrid's and the network's exceptions become ProviderError kinds."""
    try:
        yield
    except sg_errors.HTTPError as err:
        raise _from_http_error(err, provider) from None
    except URLError as err:
        raise TransientError(f"could not reach SendGrid: {err.reason}", provider=provider) from err
    except (OSError, http.client.HTTPException) as err:  # timeouts, resets, a half-closed connection
        raise TransientError(f"could not reach SendGrid: {type(err).__name__}: {err}", provider=provider) from err
    except TypeError as err:  # the template data is not JSON
        raise RejectedError(f"the message cannot be sent as JSON: {err}", provider=provider) from err
    except ValueError as err:  # urllib refusing the URL: the host setting is wrong
        raise ConfigurationError(f"SendGrid host {host!r} is not usable: {err}", provider=provider) from err


def _from_http_error(err: sg_errors.HTTPError, provider: str) -> ProviderError:
    # ``from None`` above: the library's exception carries the response headers and body, and its
    # __cause__ the urllib error; SendGrid's own error text below is what a person needs.
    status = int(getattr(err, "status_code", 0) or 0)
    message = f"SendGrid answered {status}: {_error_text(err)}"
    if status == 429:
        headers = getattr(err, "headers", None) or {}
        wait = headers.get("Retry-After") or headers.get("X-RateLimit-Reset")
        if wait:
            message += f" (rate limited; Retry-After/X-RateLimit-Reset: {wait})"
    if status == 413:
        return RejectedError(message, provider=provider, status=status)
    if status == 404:
        return ConfigurationError(message, provider=provider, status=status)
    return from_http_status(status, message, provider)


def _error_text(err: sg_errors.HTTPError) -> str:
    raw = getattr(err, "body", b"") or b""
    try:
        errors = json.loads(raw.decode("utf-8", "replace")).get("errors") or []
        parts = [f"{e.get('message')}" + (f" (field {e['field']})" if e.get("field") else "") for e in errors]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    text = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else str(raw)
    return text[:300] or str(getattr(err, "reason", "")) or "no details"
