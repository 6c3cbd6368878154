"""Email: the provider interface and the embedded outbox.

The outbox table is the record of every email, whatever the provider: a row is written before the
provider is called, keyed by run and step, so a retried activity never sends twice. With the
embedded provider, writing the row is the delivery (a developer reads the outbox); SendGrid is in
``activities/sendgrid_email.py``.

Batches (the ``send_emails`` activity): a provider may also have

    send_batch(emails: list[OutgoingEmail]) -> list[str | ProviderError]

which delivers many emails at once and answers one entry per email, in order: the provider's
message id, or the ProviderError of that one email. A RejectedError there refuses that email only.
Any other kind (TransientError, ConfigurationError) means the email was not sent and the activity
fails after recording the others, so Temporal's retry sends only what is still unsent. A
``send_batch`` raises only when it knows that nothing of the batch was sent. ``send_batch`` is
optional: ``send_all`` uses it when the provider has one, else ``send`` per email (``send_each``),
so a provider written against ``send`` alone keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ProviderError, RejectedError


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # ours; providers get it as a header/custom arg for tracing
    to: list[str]
    subject: str
    body: str
    sender: str
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    template_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    # messaging governance (docs/messaging.md): headers to send as they are (List-Unsubscribe...), the
    # category, the values a provider's webhook echoes back to correlate its events (message_id,
    # workflow_id, account_id, step_id, category) and the provider's suppression group, if any
    headers: dict[str, str] = field(default_factory=dict)
    category: str = ""
    custom_args: dict[str, str] = field(default_factory=dict)
    asm_group: int | None = None


class EmailProvider(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> str:
        """Delivers the email; returns the provider's message id. Raises ProviderError kinds."""
        ...


class BatchEmailProvider(EmailProvider, Protocol):
    def send_batch(self, emails: list[OutgoingEmail]) -> list[str | ProviderError]:
        """Delivers the emails; per email, in order, the provider's message id or that email's error."""
        ...


def send_each(provider: EmailProvider, emails: list[OutgoingEmail]) -> list[str | ProviderError]:
    """One ``send`` per email, in order. A rejection is that email's answer; after any other error
    (the provider is down, the key is wrong) the rest are not attempted and get that error too."""
    results: list[str | ProviderError] = []
    for n, email in enumerate(emails):
        try:
            results.append(provider.send(email))
        except RejectedError as err:
            results.append(err)
        except ProviderError as err:
            results.extend([err] * (len(emails) - n))
            break
    return results


def send_all(provider: EmailProvider, emails: list[OutgoingEmail]) -> list[str | ProviderError]:
    """The provider's ``send_batch`` when it has one, else ``send_each``; checks one answer per email."""
    batch = getattr(provider, "send_batch", None)
    results: list[str | ProviderError] = batch(emails) if callable(batch) else send_each(provider, emails)
    if len(results) != len(emails):
        raise RuntimeError(f"email provider {provider.name!r} answered {len(results)} results for {len(emails)} emails")
    return results


class OutboxProvider:
    """The embedded default: the outbox row is the delivery. Nothing leaves the machine."""

    name = "outbox"

    def send(self, email: OutgoingEmail) -> str:
        return email.message_id

    def send_batch(self, emails: list[OutgoingEmail]) -> list[str | ProviderError]:
        # through send, so a subclass that overrides send (tests count and hold sends) sees every email
        return send_each(self, emails)
