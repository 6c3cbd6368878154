"""A fake of SendGrid's v3 mail send endpoint, enough to check what the provider sends.

It checks the bearer key and the few rules of /v3/mail/send that a provider can get wrong (a from
address, at least one personalization with a recipient, content unless a template is used), and
answers like SendGrid: 202 with an ``X-Message-Id`` header, or ``{"errors": [...]}``.
"""

from __future__ import annotations

import itertools

from ._server import FakeServer, Recorded, Reply

API_KEY = "SG.fake-key-for-tests.not-a-secret"


def _errors(*pairs: tuple[str, str | None]) -> dict:
    return {"errors": [{"message": message, "field": field_, "help": None} for message, field_ in pairs]}


class FakeSendGrid(FakeServer):
    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self._ids = itertools.count(1)
        self.sent: list[dict] = []  # the accepted request bodies

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
        for p in personalizations:
            seen: set[str] = set()
            for kind in ("to", "cc", "bcc"):
                for address in p.get(kind) or []:
                    email = address.get("email", "").lower()
                    if "@" not in email:
                        problems.append(("Does not contain a valid address.", f"personalizations.0.{kind}.0.email"))
                    if email in seen:
                        problems.append(("Each email address in the personalization block should be unique.", kind))
                    seen.add(email)
        if problems:
            return Reply(400, _errors(*problems))
        self.sent.append(mail)
        return Reply(202, None, {"X-Message-Id": f"sg-{next(self._ids):04d}"})
