"""POST /codec/encode and /codec/decode: the Temporal Web UI's remote codec (docs/encryption.md).

The protocol is Temporal's remote codec: the body is a `Payloads` message in protobuf's JSON form
({"payloads": [{"metadata": {...}, "data": "<base64>"}]}) and the answer is the same shape, encoded or decoded.
The UI calls it from the browser, so these two paths answer CORS themselves (the preflight and the headers of
every answer, errors included, for the origins of PLAYBOOK_CODEC_CORS_ORIGINS), and the caller must show an ops
API token (Authorization: Bearer): decoding shows personal data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from starlette.concurrency import run_in_threadpool
from temporalio.api.common.v1 import Payload, Payloads

from engine.runtime.codec import EncryptionCodec, PayloadDecryptError, codec
from engine.runtime.settings import Settings, reveal

from ..deps import get_state
from ..problems import documented, problem_response
from ..security import bearer_token, caller_for

router = APIRouter(prefix="/codec", tags=["codec"])

ROLES = ("ops",)  # who may see decrypted payloads (and encrypt new ones)
ALLOWED_HEADERS = "Content-Type, Authorization, X-Namespace"
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer

Transform = Callable[[EncryptionCodec], Callable[[Sequence[Payload]], Awaitable[list[Payload]]]]


@lru_cache(maxsize=4)
def _codec(keys_text: str) -> EncryptionCodec | None:
    return codec(keys_text)


def allowed_origins(settings: Settings) -> set[str]:
    return {o.strip().rstrip("/") for o in settings.codec_cors_origins.split(",") if o.strip()}


def _cors_headers(request: Request) -> dict[str, str]:
    """The CORS headers of an answer to this request: none unless it comes from an allowed origin."""
    origin = request.headers.get("origin")
    if not origin or origin.rstrip("/") not in allowed_origins(get_state(request).settings):
        return {}
    # credentials: the UI may send its requests with the browser's credentials ("include cross-origin credentials")
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


def _preflight(request: Request) -> Response:
    headers = _cors_headers(request)
    if not headers:
        origin = request.headers.get("origin") or "(none)"
        return problem_response(
            403, "Forbidden",
            f"origin {origin} may not call the codec endpoint from a browser: add it to PLAYBOOK_CODEC_CORS_ORIGINS",
            headers={"Vary": "Origin"},
        )
    headers |= {
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
    }
    if request.headers.get("access-control-request-private-network") == "true":
        # a UI on a public address (Temporal Cloud's) calling an API on a private one: Chrome asks first
        headers["Access-Control-Allow-Private-Network"] = "true"
    return Response(status_code=204, headers=headers)


async def _apply(request: Request, transform: Transform) -> Response:
    cors = _cors_headers(request)
    settings = get_state(request).settings
    token = bearer_token(request.headers.get("authorization"))
    if not token:
        return problem_response(
            401, "Unauthorized", "send an API token: Authorization: Bearer <token>",
            headers={**cors, "WWW-Authenticate": "Bearer"},
        )
    caller = await run_in_threadpool(caller_for, settings.db_url, token)  # a database read: off the event loop
    if caller is None:
        return problem_response(
            401, "Unauthorized", "this API token is unknown or revoked", headers={**cors, "WWW-Authenticate": "Bearer"}
        )
    if caller.role not in ROLES:
        return problem_response(
            403, "Forbidden", f"the codec needs a token with role {' or '.join(ROLES)}; yours is {caller.role}",
            headers=cors,
        )
    payload_codec = _codec(reveal(settings.payload_keys))
    if payload_codec is None:
        return problem_response(
            404, "Not Found", "payloads are not encrypted here: PLAYBOOK_PAYLOAD_KEYS is not set", headers=cors
        )
    body = await request.body()
    try:
        payloads = json_format.Parse(body, Payloads())
    except (json_format.ParseError, UnicodeDecodeError) as err:
        return problem_response(
            400, "Bad Request", f"the body is not a Payloads message in protobuf JSON ({err})", headers=cors
        )
    try:
        result = Payloads(payloads=await transform(payload_codec)(payloads.payloads))
    except PayloadDecryptError as err:
        return problem_response(400, "Bad Request", str(err), headers=cors)
    return Response(json_format.MessageToJson(result), media_type="application/json", headers=cors)


_RESPONSES = documented({
    400: "the body is not a Payloads message, or a payload cannot be decrypted (the reason names its key id)",
    401: "no API token, or an unknown one",
    403: "the token's role is not ops",
    404: "payload encryption is off (PLAYBOOK_PAYLOAD_KEYS unset)",
})
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"payloads": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
                    "data": {"type": "string", "format": "byte"},
                },
            }}},
        }}},
    }
}


def _namespace_problem(request: Request, namespace: str) -> Response | None:
    served = get_state(request).settings.temporal_namespace
    if namespace == served:
        return None
    return problem_response(
        404, "Not Found", f"this API decodes the payloads of namespace {served}, not {namespace}",
        headers=_cors_headers(request),
    )


@router.post(
    "/encode", summary="Encrypt payloads (Temporal remote codec)", responses=_RESPONSES, openapi_extra=_BODY,
    response_class=Response,
)
async def encode(request: Request) -> Response:
    """Encrypts a Payloads message (protobuf JSON) with the current key of PLAYBOOK_PAYLOAD_KEYS. For the Temporal
    Web UI and `temporal --codec-endpoint`; needs an ops token."""
    return await _apply(request, lambda c: c.encode)


@router.post(
    "/decode", summary="Decrypt payloads (Temporal remote codec)", responses=_RESPONSES, openapi_extra=_BODY,
    response_class=Response,
)
async def decode(request: Request) -> Response:
    """Decrypts a Payloads message (protobuf JSON); payloads that are not encrypted come back as they are. For the
    Temporal Web UI and `temporal --codec-endpoint`; needs an ops token."""
    return await _apply(request, lambda c: c.decode)


# The same under a namespace segment, for a codec endpoint written as https://.../codec/{namespace} (the CLI and the
# UI fill it in); a namespace other than PLAYBOOK_TEMPORAL_NAMESPACE is a 404.
@router.post("/{namespace}/encode", include_in_schema=False, response_class=Response)
async def encode_in(namespace: str, request: Request) -> Response:
    return _namespace_problem(request, namespace) or await _apply(request, lambda c: c.encode)


@router.post("/{namespace}/decode", include_in_schema=False, response_class=Response)
async def decode_in(namespace: str, request: Request) -> Response:
    return _namespace_problem(request, namespace) or await _apply(request, lambda c: c.decode)


@router.options("/encode", include_in_schema=False)
@router.options("/decode", include_in_schema=False)
@router.options("/{namespace}/encode", include_in_schema=False)
@router.options("/{namespace}/decode", include_in_schema=False)
async def preflight(request: Request) -> Response:
    return _preflight(request)
