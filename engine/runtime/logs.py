"""Structured logs (structlog): readable in dev, JSON in production, with people's data masked.

Temporal's own logs (stdlib logging) go through the same processors, so every line is one format.
Email addresses and names never appear in clear: ``anna@kraus.example`` is logged as ``a***@k***.example``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-])[A-Za-z0-9.-]*?(\.[A-Za-z]{2,})\b")
PERSONAL_KEYS = {
    "email", "to", "cc", "bcc", "reply_to", "sender", "name", "first_name", "last_name", "contact", "contacts"
}


# an address in a URL path (GET /contacts/anna%40x.example/consent, as access logs print it), @ percent-encoded
_EMAIL_IN_URL = re.compile(r"([A-Za-z0-9._+-])[A-Za-z0-9._+-]*%40([A-Za-z0-9-])[A-Za-z0-9.-]*?(\.[A-Za-z]{2,})\b")


def mask_email(text: str) -> str:
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}***{m.group(3)}", text)
    if "%40" in text:
        text = _EMAIL_IN_URL.sub(lambda m: f"{m.group(1)}***%40{m.group(2)}***{m.group(3)}", text)
    return text


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_email(value)
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: ("***" if k in ("name", "first_name", "last_name") and v else _mask(v)) for k, v in value.items()}
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key, value in list(event_dict.items()):
        if key in ("name", "first_name", "last_name") and isinstance(value, str) and value:
            event_dict[key] = "***"
        else:
            event_dict[key] = _mask(value)
    return event_dict


def configure(json_output: bool, level: int = logging.INFO) -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # a traceback becomes text before redact, so an address in an exception's message (a provider's error,
        # logged by Temporal's worker when an activity fails) is masked like any other
        structlog.processors.format_exc_info,
        redact,
    ]
    # default=repr: a value JSON cannot hold is shown, not rendered through structlog's fallback, whose lazy
    # import fails inside Temporal's workflow sandbox and would swallow the very warning being logged.
    # A plain traceback: the rich one renders locals for seconds on the loop the API and worker share.
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=repr)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
