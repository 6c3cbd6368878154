"""`playbook dev` (real Temporal dev server, worker, API) in a subprocess, for the end-to-end tests.

Stack starts it in a temporary PLAYBOOK_HOME on free ports, creates tokens with `playbook token create`,
posts signed events and reads the SQLite database (outbox, inbox tables) directly.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from api.security import sign
from engine.runtime.devstack import free_port
from tests.paths import PLAYBOOKS, ROOT

SECRET = "e2e-signing-secret-0123456789"


def daytime_zone() -> str:
    """A timezone where it is working hours now, so quiet hours (20:00-08:00) do not hold emails back."""
    for name in (
        "Europe/Berlin",
        "America/New_York",
        "Asia/Tokyo",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Australia/Sydney",
        "UTC",
    ):
        if 9 <= datetime.now(ZoneInfo(name)).hour < 18:
            return name
    return "Pacific/Honolulu"


class StackExited(RuntimeError):
    """`playbook dev` ended while starting; the message is its log."""


class Stack:
    START_ATTEMPTS = 3

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "PLAYBOOK_HOME": str(home),
            "PLAYBOOK_LIBRARY": str(PLAYBOOKS),
            "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
        }
        self._choose_ports()
        self.process: subprocess.Popen[bytes] | None = None

    def _choose_ports(self) -> None:
        self.api_port, self.temporal_port, self.ui_port = free_port(), free_port(), free_port()
        self.env["PLAYBOOK_API_PORT"] = str(self.api_port)
        self.env["PLAYBOOK_TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.temporal_port}"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=30)

    def start(self) -> None:
        """A port chosen free can be taken by another process before the stack binds it: then the stack exits while
        starting, and it is started again on new ports."""
        for attempt in range(1, self.START_ATTEMPTS + 1):
            if attempt > 1:
                self.http.close()
                self._choose_ports()
            try:
                self._start_once()
                return
            except StackExited:
                if attempt == self.START_ATTEMPTS:
                    raise

    def _start_once(self) -> None:
        log = open(self.home / "dev.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "dev",
                "--library",
                str(PLAYBOOKS),
                "--port",
                str(self.temporal_port),
                "--ui-port",
                str(self.ui_port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise StackExited((self.home / "dev.log").read_text())
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError((self.home / "dev.log").read_text())

    def __enter__(self) -> Stack:
        """`with Stack(home) as stack:` starts it, and stops it whatever happens (a module fixture's body)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.http.close()

    def token(self, role: str, csm: str | None = None, name: str | None = None) -> str:
        args = [sys.executable, "-m", "engine.cli", "token", "create", "--name", name or f"{role}-test", "--role", role]
        if csm:
            args += ["--csm", csm]
        return subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, check=True).stdout.strip()

    def db(self, query: str, *args: object) -> list[tuple]:
        with sqlite3.connect(self.home / "playbook.db") as conn:
            return conn.execute(query, args).fetchall()

    def post_event(self, event: dict, secret: str = SECRET, signature: str | None = None) -> httpx.Response:
        body = json.dumps(event).encode()
        return self.http.post(
            "/events",
            content=body,
            headers={"Content-Type": "application/json", "X-Playbook-Signature": signature or sign(secret, body)},
        )

    def wait_for(self, what, timeout: float = 30):  # type: ignore[no-untyped-def]
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = what()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError("timed out waiting")
