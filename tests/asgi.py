"""The API app called in the test's own process through httpx's ASGI transport, with its lifespan run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx


def call(app: Any, steps: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Starts the app (its lifespan), runs ``steps`` with a client of it, and returns what they return."""

    async def go() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await steps(client)

    return asyncio.run(go())
