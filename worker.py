"""The Temporal worker: runs playbook workflows and their activities.

    python worker.py            # settings from PLAYBOOK_* environment variables (docs/operations.md)

Start as many as you like against the same Temporal namespace, task queue and database: Temporal
spreads the work, and every effect is keyed, so no two workers do the same one.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from engine.runtime import connect as rt
from engine.runtime.logs import configure
from engine.runtime.settings import Settings, load_settings
from engine.runtime.workers import build_worker
from engine.storage.db import migrate

log = structlog.get_logger("worker")


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    if settings.is_dev:
        migrate(settings.db_url)  # in production, `playbook migrate` runs once per deploy (docs/operations.md)
    client = await rt.connect(settings)
    worker = build_worker(
        client, settings.task_queue, rt.activities(settings, client), max_concurrent_activities=settings.max_concurrent_activities
    )
    log.info("worker started", address=settings.temporal_address, namespace=settings.temporal_namespace, task_queue=settings.task_queue)
    async with worker:
        await stop.wait()
    log.info("worker stopped")


def main() -> None:
    settings = load_settings().check()
    configure(settings.logs_as_json)
    stop = asyncio.Event()

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(runner())


if __name__ == "__main__":
    main()
