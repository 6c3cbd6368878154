"""A small real HTTP server for provider tests: stdlib only, 127.0.0.1, a free port, one thread.

Subclasses answer requests in ``answer``; the base records every request and can be told to fail,
stall or hang up on the next N of them, so tests exercise the real client's sockets, headers and
error paths instead of a mock of the client library.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it. Header names are lower-case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; bytes/str as is; None → empty
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Rule:
    remaining: int
    status: int | None  # None: answer normally (after the delay)
    body: Any
    headers: dict[str, str]
    delay: float
    drop: bool  # close the connection without answering
    method: str | None
    path: str | None  # a prefix
    skip: int = 0  # matching requests passed over before the rule applies

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or path.startswith(self.path))


class FakeServer:
    """Base of the fakes. Use as a context manager, or start()/stop()."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # test controls ---------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
        path: str | None = None,
        skip: int = 0,
    ) -> None:
        """The next ``count`` matching requests get ``status`` (and body/headers) instead of an answer;
        with ``skip``, only after passing over that many matching requests (answered normally, or by another rule)."""
        self._add(_Rule(count, status, body, dict(headers or {}), 0.0, False, method, path, skip))

    def delay_next(self, seconds: float, count: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        """The next ``count`` matching requests are answered normally, but only after ``seconds``."""
        self._add(_Rule(count, None, None, {}, seconds, False, method, path))

    def drop_next(self, count: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        """The next ``count`` matching requests get no answer: the connection is closed."""
        self._add(_Rule(count, None, None, {}, 0.0, True, method, path))

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.matches(method, path):
                    if rule.skip > 0:
                        rule.skip -= 1
                        continue
                    rule.remaining -= 1
                    return rule
        return None

    # answering -------------------------------------------------------------------------------

    def answer(self, request: Recorded) -> Reply:  # pragma: no cover - subclasses answer
        return Reply(404, {"error": "not found"})

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        request = Recorded(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
        rule = self._take_rule(request.method, request.path)
        if rule is not None and rule.drop:
            handler.close_connection = True
            return
        if rule is not None and rule.delay:
            time.sleep(rule.delay)
        if rule is not None and rule.status is not None:
            reply = Reply(rule.status, rule.body, rule.headers)
        else:
            try:
                reply = self.answer(request)
            except Exception as err:  # a bug in the fake must show up as a 500, not a hung test
                reply = Reply(500, {"error": f"fake server bug: {type(err).__name__}: {err}"})
        _write(handler, reply)


def _write(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    if reply.body is None:
        payload = b""
    elif isinstance(reply.body, bytes):
        payload = reply.body
    elif isinstance(reply.body, str):
        payload = reply.body.encode()
    else:
        payload = json.dumps(reply.body).encode()
    try:
        handler.send_response(reply.status)
        headers = {"Content-Type": "application/json", **reply.headers} if payload else dict(reply.headers)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (a timeout test): nothing to answer


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs do: httpx reuses connections
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:
            fake._dispatch(self)

        do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

    return Handler
