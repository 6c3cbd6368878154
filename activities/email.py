"""Email: the provider interface and the embedded outbox.

The outbox table is the record of every email, whatever the provider: a row is written before the
provider is called, keyed by run and step, so a retried activity never sends twice. With the
embedded provider, writing the row is the delivery (a developer reads the outbox); SendGrid is in
``activities/sendgrid_email.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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


class EmailProvider(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> str:
        """Delivers the email; returns the provider's message id. Raises ProviderError kinds."""
        ...


class OutboxProvider:
    """The embedded default: the outbox row is the delivery. Nothing leaves the machine."""

    name = "outbox"

    def send(self, email: OutgoingEmail) -> str:
        return email.message_id
