"""The API app called in the test's own process through httpx's ASGI transport, with its lifespan run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan) and a client of it, on the caller's event loop."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def call(app: Any, steps: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Starts the app (its lifespan), runs ``steps`` with a client of it, and returns what they return."""

    async def go() -> Any:
        async with serving(app) as client:
            return await steps(client)

    return asyncio.run(go())
