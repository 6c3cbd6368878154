"""GET /playbooks/{id}/funnel: a playbook's funnel from the run_progress projection (docs/funnel.md)."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BeforeValidator

from engine.storage import funnel as fn
from engine.storage.db import session

from ..deps import OpsDep, StateDep
from ..problems import UPSTREAM, Problem, documented
from ..schemas import FunnelOut

router = APIRouter(tags=["runs and playbooks"])
ERRORS = documented(
    {
        401: "No or unknown token",
        403: "Needs an ops token",
        404: "No such playbook (neither in the library nor in any run) or no such version of it",
        422: "A malformed or ambiguous version, or a malformed since",
        **UPSTREAM,
    }
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ].*)?$")


def parse_since(value: object) -> object:
    """An RFC 3339 date-time or a date (midnight UTC); no offset: UTC. A number is refused, not read as seconds."""
    if isinstance(value, datetime) or value is None:
        return value
    if not isinstance(value, str) or not _DATE.match(value):
        raise ValueError("must be a date (2026-11-01) or an RFC 3339 date-time (2026-11-01T09:00:00Z)")
    text = value[:-1] + "Z" if value.endswith("z") else value
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be a date (2026-11-01) or an RFC 3339 date-time (2026-11-01T09:00:00Z)") from None


def as_utc(moment: datetime) -> datetime:
    """In UTC; a time whose offset takes it past the calendar's ends is clamped there (before or after every run)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year < 5000 else datetime.max).replace(tzinfo=UTC)


PlaybookPath = Annotated[str, Path(max_length=200, pattern=r"^[a-z0-9-]+$", description="The playbook's id")]
VersionQuery = Annotated[
    str | None,
    Query(
        min_length=fn.MIN_PREFIX,
        max_length=100,
        pattern=r"^[0-9a-f]+$",
        description="A version or a unique prefix of it (at least 4 characters); absent: every version",
    ),
]
SinceQuery = Annotated[
    datetime | None,
    Query(description="Only runs started at or after this date-time (a date: midnight UTC; no offset: UTC)"),
    BeforeValidator(parse_since),
]


@router.get(
    "/playbooks/{playbook_id}/funnel",
    response_model=FunnelOut,
    summary="A playbook's funnel: runs entered, each step, exits, goals, control versus treated",
    responses=ERRORS,
    description=(
        "Counted from the projection the runs keep as they move (docs/funnel.md). Every rate is over the runs "
        "entered, live ones included. Steps are in the library's order when the version asked is the library's "
        "(or none is asked); steps of other versions follow by id."
    ),
)
def get_funnel(
    playbook_id: PlaybookPath, state: StateDep, _caller: OpsDep, version: VersionQuery = None, since: SinceQuery = None
) -> FunnelOut:
    with session(state.settings.db_url) as s:
        try:
            result = fn.playbook_funnel(
                s,
                playbook_id,
                state.library.get(playbook_id),
                version=version,
                since=as_utc(since) if since is not None else None,
            )
        except (fn.UnknownPlaybook, fn.UnknownVersion) as err:
            raise Problem(404, "Not Found", str(err)) from None
        except fn.FunnelError as err:
            errors = [{"location": "query.version", "message": str(err)}]
            raise Problem(422, "Invalid request", f"query.version: {err}", errors=errors) from None
    return FunnelOut.model_validate(asdict(result))
