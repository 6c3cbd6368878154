"""The FastAPI application. `playbook dev` serves it beside the worker; `playbook api` alone in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from engine.runtime.connect import connect
from engine.runtime.settings import Settings, load_settings

from . import problems
from .deps import AppState
from .routes import codec, events, funnel, hubspot, inbox, messaging, metrics, ops, people, runs, unsubscribe, webhooks
from .routes import health as account_health


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState(settings=settings, client=client or await connect(settings))
        state.reload_library()
        app.state.engine = state
        try:
            yield
        finally:
            close = getattr(state.crm, "close", None)  # HubSpot's provider holds an HTTP connection pool
            if close is not None:
                close()

    app = FastAPI(
        title="Playbook engine",
        version="1.0",
        description="Events from the product start playbooks; CSMs decide approvals and record call outcomes.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(events.router)
    app.include_router(people.router)
    app.include_router(runs.router)
    app.include_router(funnel.router)
    app.include_router(account_health.router)
    app.include_router(inbox.router)
    app.include_router(ops.router)
    app.include_router(messaging.router)
    app.include_router(webhooks.router)
    app.include_router(unsubscribe.router)
    app.include_router(hubspot.router)
    app.include_router(codec.router)
    app.include_router(metrics.router)

    @app.get("/health", tags=["health"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
