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

Batches (``send_batch``, for the ``send_emails`` activity): many emails in one ``/mail/send``, one
personalization per email, each with its own to/cc/bcc, subject, custom arg and header with our
message id, and ``dynamic_template_data`` when a template is used. What SendGrid documents, and what
we rely on:

* at most 1,000 personalizations per request, and at most 1,000 recipients (to + cc + bcc) over all
  of them; "Each unique email address in the personalizations array should only be included once"
  (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors). We read that as: an address
  may not appear in two personalizations of one request, so an email sharing an address with the
  request being packed (a CSM in cc of every email) goes into another request. A cc or bcc that
  every email carries therefore makes every request hold one email: no worse than ``send``.
* substitutions apply to the content, subject and reply-to, and "the total collective size of your
  substitutions may not exceed 10,000 bytes per personalization object" (mail send reference,
  ``personalizations[].substitutions``); the substitution tags page now says 50,000, we keep 10,000.
  The bodies differ per email, so the shared content is the tag ``-playbook-body-`` and each
  personalization substitutes its own body for it.
* custom args: at most 10,000 bytes per personalization after merging (ours is ~30).
* the total size of the email must be under 30 MB
  (https://docs.sendgrid.com/api-reference/mail-send/limitations); we keep each request's JSON
  under 20 MB.
* a personalization's ``subject`` and ``headers`` override the message's; sender, reply-to, template
  id and content are the message's, so only emails that share those can share a request.

An email that cannot share a request is sent alone through ``send``, the same request as a single
send: an empty subject or body, a body over the substitution limit or containing the tag, a subject
containing the tag, a body with a SendGrid key in it, template data that is not JSON.

SendGrid answers one ``X-Message-Id`` per request; every email of the request stores it as its
provider id (SendGrid's events carry ``sg_message_id`` = that id plus a per-recipient suffix, and our
``playbook_message_id`` tells the emails apart).

Errors in a batch: a 400 (or 413, or any rejection) refuses the whole request, so its emails are sent
again one by one and only the bad one is rejected. A TransientError (429, 5xx, the network) or a
ConfigurationError stops the batch: that request's emails and every later one answer the error, the
activity records the earlier requests as sent and fails retryably, and the retry sends only the
rows still "sending". About duplicates, honestly: an answer lost after SendGrid accepted (a timeout,
a reset connection, a crash of the worker before the second transaction) leaves up to 1,000 rows
"sending" that SendGrid did send, and the retry sends them again. That is send_email's window,
multiplied by the request size; SendGrid's mail send has no idempotency key to close it.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError

import sendgrid
from python_http_client import exceptions as sg_errors
from sendgrid.helpers.mail import (
    Asm,
    Bcc,
    Cc,
    Content,
    CustomArg,
    From,
    GroupId,
    Header,
    Mail,
    MailSettings,
    Personalization,
    ReplyTo,
    SandBoxMode,
    Subject,
    Substitution,
    TemplateId,
    To,
    ValidateApiKey,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from engine.storage.governance import split_address

from .email import OutgoingEmail, send_each
from .errors import ConfigurationError, ProviderError, RejectedError, TransientError, from_http_status

MESSAGE_ID_ARG = "playbook_message_id"
MESSAGE_ID_HEADER = "X-Playbook-Message-Id"

# SendGrid's limits for one mail send (see the module docstring), and our margin under its 30 MB
BATCH_PERSONALIZATIONS = 1000
BATCH_RECIPIENTS = 1000
SUBSTITUTION_BYTES = 10_000
REQUEST_BYTES = 20_000_000
BODY_TAG = "-playbook-body-"  # the shared content of a batch; each personalization substitutes its body
# how long a 429 may make us wait at most, whatever its reset header says (a clock far off, a bad header)
LONGEST_RATE_LIMIT_WAIT = 3600.0


@dataclass
class _Part:
    """One email as a personalization of a batched request."""

    personalization: Personalization
    addresses: set[str]  # lower-cased, for SendGrid's once-per-request rule and the recipient count
    size: int  # bytes of its JSON


@dataclass
class _Request:
    """The emails packed into one mail send: the same sender, reply-to and template, within the limits."""

    indices: list[int] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)
    recipients: int = 0
    size: int = 0

    def fits(self, part: _Part) -> bool:
        return (
            len(self.indices) < BATCH_PERSONALIZATIONS
            and self.recipients + len(part.addresses) <= BATCH_RECIPIENTS
            and self.size + part.size <= REQUEST_BYTES
            and self.addresses.isdisjoint(part.addresses)
        )

    def add(self, index: int, part: _Part) -> None:
        self.indices.append(index)
        self.addresses |= part.addresses
        self.recipients += len(part.addresses)
        self.size += part.size


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
        sandbox: bool = False,
    ) -> None:
        if not api_key:
            # Checked here, not left to the client: it would silently fall back to $SENDGRID_API_KEY.
            raise ConfigurationError("no SendGrid API key", provider=self.name)
        self.host = host
        self.default_sender = default_sender
        # SendGrid's sandbox mode: it validates every request and answers as usual, but delivers nothing
        self.sandbox = sandbox
        self._client = sendgrid.SendGridAPIClient(api_key=api_key, host=host)
        # The client's default is no timeout at all: a stalled connection would hold the activity
        # until its start-to-close timeout. A timeout is a TransientError and Temporal retries.
        self._client.client.timeout = timeout

    def __repr__(self) -> str:
        return f"SendGridProvider(host={self.host!r}, sandbox={self.sandbox})"

    def send(self, email: OutgoingEmail) -> str:
        if not email.template_id and not (email.subject.strip() and email.body.strip()):
            # SendGrid would answer 400; say what is wrong without a request
            raise RejectedError("an email without a template needs a subject and a body", provider=self.name)
        body = self._body(email)
        with _mapped_errors(self.name, self.host):
            response = self._client.send(body)
        # SendGrid answers 202 with the id its events carry as ``sg_message_id`` (prefixed by it).
        return response.headers.get("X-Message-Id") or email.message_id

    def send_batch(self, emails: list[OutgoingEmail]) -> list[str | ProviderError]:
        """As few mail sends as SendGrid's limits allow; per email, our answer (see the module docstring)."""
        parts: dict[int, _Part] = {}
        requests: list[_Request] = []  # in the order of their first email
        open_: dict[tuple[str, str | None, str | None, int | None], list[_Request]] = {}
        for index, email in enumerate(emails):
            part = self._part(email)
            if part is None:
                requests.append(_Request(indices=[index]))  # alone: through send
                continue
            parts[index] = part
            shared = (email.sender or self.default_sender, email.reply_to, email.template_id, email.asm_group)
            candidates = open_.setdefault(shared, [])
            request = next((r for r in candidates if r.fits(part)), None)
            if request is None:
                request = _Request()
                candidates.append(request)
                requests.append(request)
            request.add(index, part)
        results: list[str | ProviderError | None] = [None] * len(emails)
        stopped: ProviderError | None = None
        for request in requests:
            group = [emails[i] for i in request.indices]
            if stopped is not None:
                answers: list[str | ProviderError] = [stopped] * len(group)
            elif len(group) == 1:
                answers = send_each(self, group)
            else:
                try:
                    answers = [self._send_batch(group, [parts[i] for i in request.indices])] * len(group)
                except RejectedError:
                    answers = send_each(self, group)  # one bad email must not refuse the others
                except ProviderError as err:
                    answers = [err] * len(group)
            for index, answer in zip(request.indices, answers, strict=True):
                results[index] = answer
                if isinstance(answer, ProviderError) and not isinstance(answer, RejectedError):
                    stopped = stopped or answer  # down, rate limited or misconfigured: send no more now
        return [r if r is not None else TransientError("not attempted", provider=self.name) for r in results]

    def _send_batch(self, emails: list[OutgoingEmail], parts: list[_Part]) -> str:
        first = emails[0]
        mail = Mail(from_email=_from(first.sender or self.default_sender))
        if first.template_id:
            mail.template_id = TemplateId(first.template_id)
        else:
            mail.add_content(Content("text/plain", BODY_TAG))
        if first.reply_to:
            mail.reply_to = _reply_to(first.reply_to)
        self._message_settings(mail, first)
        for n, part in enumerate(parts):
            mail.add_personalization(part.personalization, index=n)  # the helper's default index 0 prepends
        with _mapped_errors(self.name, self.host):
            response = self._client.send(mail.get())
        return response.headers.get("X-Message-Id") or first.message_id

    def _part(self, email: OutgoingEmail) -> _Part | None:
        """The email as a personalization of a shared request, or None when it must be sent alone."""
        try:
            personalization, addresses = _personalization(email)
        except (SendGridException, TypeError, ValueError):
            return None  # a malformed address list: send refuses it as a rejection
        if email.template_id:
            _template_data(personalization, email)
            if email.subject:
                personalization.subject = email.subject
        else:
            body_bytes = len(email.body.encode()) + len(BODY_TAG.encode())
            if not email.subject or not email.body or body_bytes > SUBSTITUTION_BYTES:
                return None
            if BODY_TAG in email.body or BODY_TAG in email.subject:
                return None
            try:
                ValidateApiKey().validate_message_text(email.body)  # what Content checks in a single send
            except SendGridException:
                return None
            personalization.subject = email.subject
            personalization.add_substitution(Substitution(BODY_TAG, email.body))
        for key, value in _custom_args(email).items():
            personalization.add_custom_arg(CustomArg(key, value))
        for name, value in _headers(email).items():
            personalization.add_header(Header(name, value))
        try:
            size = len(json.dumps(personalization.get()).encode())
        except (TypeError, ValueError):
            return None  # template data that is not JSON: send refuses it without a request
        if not addresses or len(addresses) > BATCH_RECIPIENTS or size > REQUEST_BYTES:
            return None
        return _Part(personalization, addresses, size)

    def _body(self, email: OutgoingEmail) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self._message(email).get()  # the JSON of the v3 mail/send request
            return body
        except (SendGridException, TypeError, ValueError) as err:
            # the helpers refuse a message: a SendGrid key in the body, a malformed address list
            raise RejectedError(f"SendGrid's client refused the message: {type(err).__name__}: {err}",
                                provider=self.name) from err

    def _message(self, email: OutgoingEmail) -> Mail:
        mail = Mail(from_email=_from(email.sender or self.default_sender))
        personalization, _ = _personalization(email)
        if email.template_id:
            # A template brings its own subject and content; the data fills it.
            mail.template_id = TemplateId(email.template_id)
            _template_data(personalization, email)
            if email.subject:
                mail.subject = Subject(email.subject)
        else:
            mail.subject = Subject(email.subject)
            mail.add_content(Content("text/plain", email.body))
        mail.add_personalization(personalization)
        if email.reply_to:
            mail.reply_to = _reply_to(email.reply_to)
        for key, value in _custom_args(email).items():
            mail.custom_arg = CustomArg(key, value)  # the helper's setter adds one more
        for name, value in _headers(email).items():
            mail.header = Header(name, value)
        self._message_settings(mail, email)
        return mail

    def _message_settings(self, mail: Mail, email: OutgoingEmail) -> None:
        """What is per message, not per personalization: the suppression group and sandbox mode."""
        if email.asm_group is not None:
            # the category's SendGrid unsubscribe group: SendGrid's own list and preference page apply too
            mail.asm = Asm(GroupId(email.asm_group))
        if self.sandbox:
            settings = MailSettings()
            settings.sandbox_mode = SandBoxMode(True)
            mail.mail_settings = settings


def _custom_args(email: OutgoingEmail) -> dict[str, str]:
    """What SendGrid echoes in every webhook event of the email: our message id (also under its old name)
    and the run, account, step and category the webhook correlates with. Values must be strings."""
    return {MESSAGE_ID_ARG: email.message_id, **{k: str(v) for k, v in email.custom_args.items()}}


def _headers(email: OutgoingEmail) -> dict[str, str]:
    return {MESSAGE_ID_HEADER: email.message_id, **email.headers}


def _template_data(personalization: Personalization, email: OutgoingEmail) -> None:
    """Dynamic templates (ids "d-...") take the data as JSON; legacy templates only know substitution
    tags, so each top-level value that is text or a number fills the tag -name-."""
    if email.template_id and email.template_id.startswith("d-"):
        personalization.dynamic_template_data = dict(email.data)
        return
    for name, value in email.data.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            personalization.add_substitution(Substitution(f"-{name}-", str(value)))


def _display_name(name: str) -> str | None:
    """SendGrid reads a name with a comma or semicolon as several recipients unless it is quoted."""
    if not name:
        return None
    if "," in name or ";" in name:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _from(text: str) -> From:
    name, address = split_address(text)
    return From(address, _display_name(name))


def _reply_to(text: str) -> ReplyTo:
    name, address = split_address(text)
    return ReplyTo(address, _display_name(name))


def _personalization(email: OutgoingEmail) -> tuple[Personalization, set[str]]:
    """The email's recipients as one personalization, and their addresses (lower-cased)."""
    personalization = Personalization()
    # SendGrid refuses an address that appears twice across to/cc/bcc of one personalization.
    seen: set[str] = set()
    for kind, addresses in ((To, email.to), (Cc, email.cc), (Bcc, email.bcc)):
        for text in addresses:
            name, address = split_address(text)
            key = address.lower()
            if key and key not in seen:
                seen.add(key)
                personalization.add_email(kind(address, _display_name(name)))
    return personalization, seen


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
    retry_after = None
    if status == 429:
        headers = getattr(err, "headers", None) or {}
        wait = headers.get("Retry-After") or headers.get("X-RateLimit-Reset")
        if wait:
            message += f" (rate limited; Retry-After/X-RateLimit-Reset: {wait})"
        retry_after = _rate_limit_wait(headers.get("Retry-After"), headers.get("X-RateLimit-Reset"))
    if status == 413:
        return RejectedError(message, provider=provider, status=status)
    if status == 404:
        return ConfigurationError(message, provider=provider, status=status)
    return from_http_status(status, message, provider, retry_after=retry_after)


def _rate_limit_wait(retry_after: str | None, reset: str | None, now: float | None = None) -> float | None:
    """Seconds until SendGrid takes requests again: Retry-After (seconds), else X-RateLimit-Reset (the Unix
    time the limit resets). At least one second, at most LONGEST_RATE_LIMIT_WAIT; None without either."""
    try:
        if retry_after:
            wait = float(retry_after)
        elif reset:
            wait = float(reset) - (time.time() if now is None else now)
        else:
            return None
    except ValueError:
        return None
    return min(max(wait, 1.0), LONGEST_RATE_LIMIT_WAIT)


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
