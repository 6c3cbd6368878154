"""Who an email may go to: the admission rules of messaging governance (docs/messaging.md).

Every recipient (to, cc, bcc) is normalised; an invalid one is left out (``invalid``), a suppressed one
(``suppressed: <reason>``), and, when the email's category allows opting out, one unsubscribed from that
category (``unsubscribed``). Then the frequency caps, per remaining ``to`` recipient: one at a cap is left
out (``capped``). The email goes to whoever remains; with no ``to`` left it is not sent: ``rejected`` when
no ``to`` address was valid, ``capped`` when the caps alone kept it back, else ``suppressed``.

Runs started before policies existed send requests without a category: only the suppression list applies.
The caller holds the admission transaction (``governance.begin_admission``) so counting and recording a
delivery are one step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from engine.storage import governance

from .types import EmailRequest, LeftOut


@dataclass
class Admission:
    status: str  # sending | suppressed | rejected | capped
    to: list[str] = field(default_factory=list)  # as written ("Anna <anna@x.example>"), once per address
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    to_addresses: list[str] = field(default_factory=list)  # the admitted `to`, normalised
    left_out: list[LeftOut] = field(default_factory=list)
    detail: str | None = None
    retry_at: datetime | None = None  # capped: when every cap it hit has room again


def addresses_of(requests: Iterable[EmailRequest], *, to_only: bool = False) -> set[str]:
    found: set[str] = set()
    for req in requests:
        for text in (req.to if to_only else [*req.to, *req.cc, *req.bcc]):
            address = governance.normalize_address(text)
            if address is not None:
                found.add(address)
    return found


def capped_addresses(requests: Iterable[EmailRequest]) -> set[str]:
    """The `to` addresses whose caps an admission counts: the ones to lock."""
    return addresses_of([r for r in requests if r.caps], to_only=True)


def look_up(s: Session, requests: list[EmailRequest]) -> governance.OptOuts:
    """The suppressions of every address of the requests, and their opt-outs from the categories that allow
    opting out: read once for a batch."""
    return governance.opt_outs(
        s, addresses_of(requests), {r.category for r in requests if r.unsubscribe and r.category}
    )


def admit(s: Session, req: EmailRequest, lookups: governance.OptOuts, at: datetime) -> Admission:
    """The email's admission; when it is to be sent, its `to` recipients enter the caps' ledger."""
    admission = Admission(status="sending")
    kept = {"to": admission.to, "cc": admission.cc, "bcc": admission.bcc}
    seen: set[str] = set()
    any_valid_to = False
    for kind, texts in (("to", req.to), ("cc", req.cc), ("bcc", req.bcc)):
        for text in texts:
            address = governance.normalize_address(text)
            if address is None:
                admission.left_out.append(LeftOut(address=text, reason="invalid"))
                continue
            any_valid_to = any_valid_to or kind == "to"
            if address in seen:
                continue  # once per email: SendGrid refuses an address twice, and nobody wants two copies
            seen.add(address)
            reason = lookups.suppressed.get(address)
            if reason is not None:
                admission.left_out.append(LeftOut(address=address, reason=f"suppressed: {reason}"))
            elif req.unsubscribe and req.category and (address, req.category) in lookups.unsubscribed:
                admission.left_out.append(LeftOut(address=address, reason="unsubscribed"))
            else:
                kept[kind].append(text.strip())
                if kind == "to":
                    admission.to_addresses.append(address)
    if not admission.to_addresses:
        admission.status = "suppressed" if any_valid_to else "rejected"
        admission.detail = (_why_suppressed(admission.left_out, req.category) if any_valid_to
                            else f"invalid recipient(s): {', '.join(req.to) or 'none'}")
        return admission
    if req.caps:
        _apply_caps(s, req, admission, at)
    if admission.status == "sending" and req.category:
        governance.record_deliveries(s, req.key, admission.to_addresses, req.category, at)
    return admission


def _apply_caps(s: Session, req: EmailRequest, admission: Admission, at: datetime) -> None:
    allowed_to: list[str] = []
    allowed_addresses: list[str] = []
    moments: list[datetime] = []
    caps = [governance.Cap(cap.max, cap.per_seconds, tuple(cap.categories)) for cap in req.caps]
    for text, address in zip(admission.to, admission.to_addresses, strict=True):
        hit = governance.caps_reached(s, address, caps, at, req.key)
        if hit:
            admission.left_out.append(LeftOut(address=address, reason="capped"))
            moments.extend(hit)
        else:
            allowed_to.append(text)
            allowed_addresses.append(address)
    admission.to, admission.to_addresses = allowed_to, allowed_addresses
    if not allowed_to:
        admission.status = "capped"
        admission.retry_at = max(moments)
        admission.detail = "every recipient in to is at a frequency cap"


def _why_suppressed(left_out: list[LeftOut], category: str) -> str:
    reasons = {entry.reason.split(":")[0] for entry in left_out if entry.reason != "invalid"}
    if reasons == {"suppressed"}:
        return "every recipient is on the suppression list"
    if reasons == {"unsubscribed"}:
        return f"every recipient unsubscribed from {category}"
    return "every recipient is on the suppression list or unsubscribed"
