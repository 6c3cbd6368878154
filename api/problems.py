"""Every error is a problem-details body (RFC 9457): what went wrong, in words, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from temporalio.service import RPCError, RPCStatusCode

from engine.runtime.codec import PayloadDecryptError

from .schemas import ProblemDetails

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5
# Temporal answers that say "not now": the request may simply be sent again
TRANSIENT = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}

log = structlog.get_logger("api")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def documented(codes: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for its error codes: each is a problem, so its media type is application/problem+json."""
    schema = ProblemDetails.model_json_schema()
    return {code: {"description": text, "content": {MEDIA_TYPE: {"schema": schema}}} for code, text in codes.items()}


# What any route that calls Temporal or the database may answer besides its own errors.
UPSTREAM = {
    502: "Temporal refused the request (the reason is in the detail)",
    503: "Temporal or the engine's database does not answer: send the request again after Retry-After seconds",
}


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # a router included with include_router (no extra prefix here)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> set[str]:
    """Every method some route serves at this URL (Starlette's own 405 names only the first matching route's)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict",
        }
        # the headers matter: a 405 names the allowed methods (Allow), a 401 may carry WWW-Authenticate
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405 and (methods := allowed_methods(request)):
            headers["Allow"] = ", ".join(sorted(methods))
        return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors) or "the request is not valid"
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(RPCError)
    async def _temporal(request: Request, exc: RPCError) -> JSONResponse:
        log.warning("temporal error", path=request.url.path, status=exc.status.name, message=exc.message)
        if exc.status in TRANSIENT:
            return problem_response(
                503, "Service Unavailable",
                f"Temporal did not answer ({exc.status.name}): {exc.message}. Send the request again in a moment.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return problem_response(502, "Bad Gateway", f"Temporal refused the request ({exc.status.name}): {exc.message}")

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error", path=request.url.path, error=str(exc.orig))
        return problem_response(
            503,
            "Service Unavailable",
            "the engine's database is unavailable or busy. Send the request again in a moment.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(PayloadDecryptError)
    async def _undecryptable(request: Request, exc: PayloadDecryptError) -> JSONResponse:
        # This process lacks a key the run's data was encrypted with (PLAYBOOK_PAYLOAD_KEYS differs between
        # processes): the operators' problem, which another process may not have. The message names the key id.
        log.error("cannot decrypt run data", path=request.url.path, error=str(exc))
        return problem_response(
            503, "Service Unavailable",
            f"this API process cannot read the run's data: {exc}. Every worker and API process needs the same "
            "PLAYBOOK_PAYLOAD_KEYS (docs/encryption.md).",
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the caller's fault: logged with its traceback (by the server), answered without it.
        return problem_response(500, "Internal Server Error", "the engine failed on this request; it is logged")
