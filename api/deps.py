"""Dependencies: settings, the Temporal client, the library, and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request
from temporalio.client import Client

from engine.language.library import Library
from engine.language.model import Playbook
from engine.language.policy import DEFAULT_POLICY, Policy
from engine.language.scorecard import Scorecard
from engine.runtime.connect import crm_provider
from engine.runtime.health import read_scorecards
from engine.runtime.settings import Settings

from .problems import Problem
from .security import Caller, bearer_token, caller_for

if TYPE_CHECKING:  # the type only: api reaches the providers through engine.runtime
    from activities.crm import CrmProvider


@dataclass
class AppState:
    settings: Settings
    client: Client
    library: dict[str, Playbook] = field(default_factory=dict)
    policy: Policy = DEFAULT_POLICY  # the library's messaging policy: which categories people may leave
    # The CRM of record (PLAYBOOK_CRM_PROVIDER), built once per app from the settings when not given: what POST /events
    # upserts accounts into and judges triggers on, the same provider the worker's runs read.
    crm: CrmProvider = field(default=None)  # type: ignore[assignment]
    # The health scorecards (settings.scorecards_folder), reloaded with the library; () = no health scores
    scorecards: tuple[Scorecard, ...] = ()

    def __post_init__(self) -> None:
        if self.crm is None:
            self.crm = crm_provider(self.settings)

    def reload_library(self) -> None:
        library = Library.load(self.settings.library)
        self.library = dict(library.playbooks)
        # a broken policy.yaml loads no playbook that uses it; the built-in policy stands in for the pages
        self.policy = library.policy or DEFAULT_POLICY
        self.scorecards = read_scorecards(self.settings.scorecards_folder)


def library_policy(state: AppState) -> Policy:
    """The messaging policy of the library (its policy.yaml, else the built-in one)."""
    return state.policy


def get_state(request: Request) -> AppState:
    return request.app.state.engine


async def _state(request: Request) -> AppState:  # async: FastAPI runs a plain-def dependency in a thread, per request
    return get_state(request)


StateDep = Annotated[AppState, Depends(_state)]


def current_caller(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> Caller:
    token = bearer_token(authorization)
    if not token:
        raise Problem(401, "Unauthorized", "send an API token: Authorization: Bearer <token>")
    caller = caller_for(state.settings.db_url, token)
    if caller is None:
        raise Problem(401, "Unauthorized", "this API token is unknown or revoked")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def require(*roles: str) -> Callable[[Caller], Caller]:
    def check(caller: CallerDep) -> Caller:
        if caller.role not in roles:
            needed = " or ".join(roles)
            raise Problem(403, "Forbidden", f"this needs a token with role {needed}; yours is {caller.role}")
        return caller

    return check


OpsDep = Annotated[Caller, Depends(require("ops"))]
PeopleDep = Annotated[Caller, Depends(require("ops", "csm"))]
