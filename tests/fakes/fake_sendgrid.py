"""A fake of SendGrid's v3 mail send endpoint, enough to check what the provider sends.

It checks the bearer key and the few rules of /v3/mail/send that a provider can get wrong (a from
address, at least one personalization with a recipient, content unless a template is used, an
address once per personalization and, for batches, once per request, at most 1,000 personalizations
and 1,000 recipients per request, substitutions of at most 10,000 bytes per personalization), and
answers like SendGrid: 202 with an ``X-Message-Id`` header, or ``{"errors": [...]}``.

In sandbox mode (``mail_settings.sandbox_mode.enable``) it validates the same way and answers 200 without
delivering, as SendGrid does: such requests go to ``sandboxed``, not ``sent``.

``refuse`` names addresses it answers as invalid (a 400 for the whole request, as SendGrid does);
``deliveries()`` lists what the accepted requests deliver, one entry per personalization, with the
substitutions applied, so tests can count who received what.
"""

from __future__ import annotations

import itertools

from ._server import FakeServer, Recorded, Reply

API_KEY = "SG.fake-key-for-tests.not-a-secret"


def _errors(*pairs: tuple[str, str | None]) -> dict:
    return {"errors": [{"message": message, "field": field_, "help": None} for message, field_ in pairs]}


class FakeSendGrid(FakeServer):
    def __init__(self, api_key: str = API_KEY, refuse: set[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.refuse = {a.lower() for a in refuse or set()}
        self._ids = itertools.count(1)
        self.sent: list[dict] = []  # the accepted request bodies
        self.sandboxed: list[dict] = []  # accepted in sandbox mode: validated, not delivered

    def deliveries(self, mails: list[dict] | None = None) -> list[dict]:
        """Per personalization of every accepted request (or of ``mails``): to/cc/bcc addresses, subject,
        body, template data, our message id and the headers."""
        out = []
        for mail in self.sent if mails is None else mails:
            content = next((c.get("value", "") for c in mail.get("content") or []), "")
            for p in mail.get("personalizations") or []:
                body, subject = content, p.get("subject", mail.get("subject", ""))
                for tag, value in (p.get("substitutions") or {}).items():
                    body, subject = body.replace(tag, value), subject.replace(tag, value)
                custom = {**(mail.get("custom_args") or {}), **(p.get("custom_args") or {})}
                out.append({
                    **{kind: [a["email"] for a in p.get(kind) or []] for kind in ("to", "cc", "bcc")},
                    "subject": subject,
                    "body": body,
                    "template_data": p.get("dynamic_template_data"),
                    "message_id": custom.get("playbook_message_id"),
                    "headers": {**(mail.get("headers") or {}), **(p.get("headers") or {})},
                })
        return out

    def answer(self, request: Recorded) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, _errors(("The provided authorization grant is invalid, expired, or revoked", None)))
        if (request.method, request.path) != ("POST", "/v3/mail/send"):
            return Reply(404, _errors(("resource not found", None)))
        mail = request.json or {}
        problems = []
        if not (mail.get("from") or {}).get("email"):
            problems.append(("The from object must be provided for every email send.", "from"))
        personalizations = mail.get("personalizations") or []
        if not personalizations or not all(p.get("to") for p in personalizations):
            problems.append(("The to array is required for all personalization objects.", "personalizations.0.to"))
        if not mail.get("template_id") and not any(c.get("value") for c in mail.get("content") or []):
            problems.append(("Unless a valid template_id is provided, the content parameter is required.", "content"))
        if len(personalizations) > 1000:
            problems.append((f"The personalization block is limited to 1000 personalizations per API request. "
                             f"You have provided {len(personalizations)} personalizations.", "personalizations"))
        everywhere: set[str] = set()
        recipients = 0
        for n, p in enumerate(personalizations):
            seen: set[str] = set()
            for kind in ("to", "cc", "bcc"):
                for address in p.get(kind) or []:
                    email = address.get("email", "").lower()
                    recipients += 1
                    if "@" not in email or email in self.refuse:
                        problems.append(("Does not contain a valid address.", f"personalizations.{n}.{kind}.0.email"))
                    if email in seen:
                        problems.append(("Each email address in the personalization block should be unique.", kind))
                    elif email in everywhere:
                        problems.append(("Each unique email address in the personalizations array should only be "
                                         "included once.", f"personalizations.{n}.{kind}"))
                    seen.add(email)
            everywhere |= seen
            substitutions = p.get("substitutions") or {}
            if sum(len(k.encode()) + len(str(v).encode()) for k, v in substitutions.items()) > 10_000:
                problems.append(("The total collective size of your substitutions may not exceed 10,000 bytes "
                                 "per personalization object.", f"personalizations.{n}.substitutions"))
        if recipients > 1000:
            problems.append(
                ("There is a limit of 1000 total recipients (to + cc + bcc) per request.", "personalizations")
            )
        if problems:
            return Reply(400, _errors(*problems))
        if ((mail.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"):
            self.sandboxed.append(mail)
            return Reply(200, None)
        self.sent.append(mail)
        return Reply(202, None, {"X-Message-Id": f"sg-{next(self._ids):04d}"})
