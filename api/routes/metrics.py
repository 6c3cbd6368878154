"""GET /metrics: the engine's metrics in Prometheus' text format (docs/metrics.md).

Read from the engine's tables at each scrape (engine/runtime/metrics.EngineCollector), so every API process
answers the same numbers. With PLAYBOOK_METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>`;
unset, the endpoint is open: keep the API's port internal or set the token (docs/metrics.md).
"""

from __future__ import annotations

import hmac
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from engine.runtime.metrics import engine_registry
from engine.runtime.settings import reveal

from ..deps import StateDep
from ..problems import documented
from ..security import bearer_token

router = APIRouter(tags=["metrics"])


@lru_cache(maxsize=8)
def _registry(db_url: str) -> CollectorRegistry:
    return engine_registry(db_url)


def _check_token(expected: str, authorization: str | None) -> None:
    given = bearer_token(authorization) or ""
    # compared in constant time, as bytes (compare_digest refuses non-ASCII str)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "GET /metrics needs Authorization: Bearer <PLAYBOOK_METRICS_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get(
    "/metrics",
    summary="The engine's metrics (Prometheus text format)",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_PLAIN_0_0_4: {}, "application/openmetrics-text": {}},
            "description": "Prometheus' text format (0.0.4 by default; what Accept asks for: 1.0.0, OpenMetrics)",
        },
        **documented({
            401: "PLAYBOOK_METRICS_TOKEN is set and the request does not carry it as a bearer token",
            503: "the engine's database does not answer: scrape again later",
        }),
    },
)
def metrics(
    state: StateDep,
    authorization: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    # a plain def: FastAPI runs it in a thread, so the scrape's queries do not hold up the event loop
    expected = reveal(state.settings.metrics_token)
    if expected:
        _check_token(expected, authorization)
    # the format the scraper asks for (Accept), as prometheus_client's own exporters choose it
    encode, content_type = choose_encoder(accept or "")
    return Response(encode(_registry(state.settings.db_url)), headers={"Content-Type": content_type})
