"""When Temporal is down, POST /events says so: a 503 with Retry-After and a reason, and keeps nothing.

`playbook api` in a subprocess on a real Temporal dev server started here; the server is stopped under the
running API. The product's backend can then send the event again, and once Temporal is back, it starts its
run as if it were the first time (the event id was not remembered by the failed attempt).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.security import sign
from engine.runtime.devstack import DevServer
from engine.storage.db import migrate
from tests.dev_stack import free_port
from tests.paths import PLAYBOOKS, ROOT

SECRET = "outage-signing-secret-0123456789"


def signup(account_id: str) -> dict:
    return {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "account.signed_up",
        "account_id": account_id,
        "data": {"product": "repricer", "plan": "pro"},
        "account": {"name": "Nordlicht GmbH", "language": "de", "timezone": "Europe/Berlin"},
        "contacts": [{"email": "eva@nordlicht.example", "first_name": "Eva"}],
    }


def post(http: httpx.Client, event: dict) -> httpx.Response:
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Playbook-Signature": sign(SECRET, body)}
    return http.post("/events", content=body, headers=headers)


@pytest.fixture()
def api_on_a_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    api_port = free_port()
    server = DevServer(tmp_path / "temporal", port=0, ui_port=0)
    asyncio.run(server.start())
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_")},
        "PLAYBOOK_ENVIRONMENT": "dev",  # SQLite, outbox, built-in CRM: refused by the production checks (the default)
        "PLAYBOOK_HOME": str(tmp_path),
        "PLAYBOOK_LIBRARY": str(PLAYBOOKS),
        "PLAYBOOK_DATABASE_URL": db_url,
        "PLAYBOOK_TEMPORAL_ADDRESS": server.address,
        "PLAYBOOK_EVENT_SIGNING_SECRET": SECRET,
        "PLAYBOOK_TASK_QUEUE": "outage",
    }
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "api", "--host", "127.0.0.1", "--port", str(api_port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60)
    try:
        deadline = time.time() + 60
        while True:
            assert api.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        yield http, server, tmp_path / "playbook.db"
    finally:
        http.close()
        api.terminate()
        api.wait(timeout=20)
        log.close()
        server.stop()


def test_an_event_while_temporal_is_down_is_a_503_and_can_be_sent_again(api_on_a_server):  # type: ignore[no-untyped-def]
    http, server, db = api_on_a_server
    started = post(http, signup("acc-up"))
    assert started.status_code == 200, started.text
    assert [r["status"] for r in started.json()["runs"]] == ["started"]

    server.stop()
    event = signup("acc-down")
    refused = post(http, event)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.headers["retry-after"] == "5"
    assert "Temporal did not answer" in refused.json()["detail"]
    with sqlite3.connect(db) as connection:  # the event id is not remembered: sending it again is not a duplicate
        assert connection.execute("select 1 from received_events where id = ?", (event["id"],)).fetchall() == []

    asyncio.run(server.start())  # the same address and database file: Temporal is back
    again = post(http, event)
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is False
    assert [r["status"] for r in again.json()["runs"]] == ["started"]
