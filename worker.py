"""The Temporal worker: runs playbook workflows and their activities.

    python worker.py            # settings from PLAYBOOK_* environment variables (docs/operations.md)

Start as many as you like against the same Temporal namespace, task queue and database: Temporal
spreads the work, and every effect is keyed, so no two workers do the same one.

Each worker is one version of the engine's Worker Deployment (PLAYBOOK_DEPLOYMENT_NAME, PLAYBOOK_BUILD_ID,
by default a hash of the code) and the runs it starts stay pinned to that version; `playbook deploy` makes
a new version current (docs/operations.md, "Deploying new engine code"). PLAYBOOK_WORKER_VERSIONING=false
turns that off.

With PLAYBOOK_WORKER_METRICS_ADDRESS (host:port) it serves Prometheus metrics there: Temporal's SDK metrics and the
engine's worker counters (runs started and ended, activity errors); with PLAYBOOK_TRACING, OpenTelemetry traces
(docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from engine.runtime import connect as rt
from engine.runtime.health import health_activities
from engine.runtime.logs import configure
from engine.runtime.metrics import TracingError, WorkerMetrics, start_tracing, worker_runtime
from engine.runtime.settings import Settings, SettingsError, load_settings
from engine.runtime.workers import (
    DeployError,
    Versioning,
    build_worker,
    make_current,
    runs_on_other_versions,
    tune_garbage_collection,
    versioning,
)
from engine.storage.db import migrate

log = structlog.get_logger("worker")


async def run_worker(settings: Settings, stop: asyncio.Event, *, current: bool = False) -> None:
    """Runs a worker until `stop`. With `current` (`playbook dev`) its version becomes the current one; without,
    only if the deployment has no current version yet (the first versioned worker ever)."""
    if settings.is_dev:
        migrate(settings.db_url)  # in production, `playbook migrate` runs once per deploy (docs/operations.md)
    # PLAYBOOK_TRACING: where the spans of the client's tracing interceptor go (OTEL_* variables, docs/metrics.md)
    stop_tracing = start_tracing("playbook-worker") if settings.tracing else None
    try:
        await _serve(settings, stop, current=current)
    finally:
        if stop_tracing is not None:
            stop_tracing()  # flushes the spans not yet exported
    log.info("worker stopped")


async def _serve(settings: Settings, stop: asyncio.Event, *, current: bool) -> None:
    # the runtime serves the SDK's metrics and the engine's worker counters on PLAYBOOK_WORKER_METRICS_ADDRESS
    client = await rt.connect(settings, runtime=worker_runtime(settings.worker_metrics_address))
    version = versioning(settings)
    worker = build_worker(
        client,
        settings.task_queue,
        with_health_activities(settings, client, rt.activities(settings, client)),
        max_concurrent_activities=settings.max_concurrent_activities,
        versioning=version,
        interceptors=[WorkerMetrics()],
    )
    tune_garbage_collection()
    async with worker:
        where = {
            "address": settings.temporal_address,
            "namespace": settings.temporal_namespace,
            "task_queue": settings.task_queue,
            "metrics": f"http://{address}/metrics" if (address := settings.worker_metrics_address) else "off",
        }
        if version is None:
            log.info("worker started", **where, versioning="off")
        else:
            current_build = await _take_current(client, settings.task_queue, version, force=current)
            log.info(
                "worker started", **where, deployment=version.deployment_name, build_id=version.build_id,
                current_build_id=current_build,
            )
        await stop.wait()


async def _take_current(client: Client, task_queue: str, version: Versioning, *, force: bool) -> str | None:
    """Makes the worker's version current (force) or only if none is; returns the current build id."""
    try:
        promotion = await make_current(client, version, task_queue, timeout=60, only_if_none=not force)
    except DeployError as e:
        if force:
            raise
        log.warning("this worker's version could not be made current", reason=str(e))
        return None
    except RPCError as e:
        if e.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        log.error("this Temporal server has no Worker Deployments (1.28+ has): set PLAYBOOK_WORKER_VERSIONING=false")
        return None
    if promotion.changed:
        log.info("this worker's version is now current: new runs start on it", previous_build_id=promotion.previous)
    elif promotion.current != version.build_id:
        log.info(
            "this worker's version is not current: it runs only the runs pinned to it until `playbook deploy`",
            current_build_id=promotion.current,
        )
    if force and (others := await runs_on_other_versions(client, version)):
        log.warning(
            f"{others} runs are pinned to other versions of the engine: they go on only on workers of their version "
            "(docs/operations.md, 'Deploying new engine code', says how to move them)"
        )
    return promotion.current


def with_health_activities(
    settings: Settings, client: Client | None, acts: list[Callable[..., Any]]
) -> list[Callable[..., Any]]:
    """The activities, with the nightly health recompute's (docs/health.md) when engine.runtime.connect.activities
    does not build them already."""
    names = {activity_name(a) for a in acts}
    health = health_activities(
        settings.db_url, rt.crm_provider(settings), client, settings.library, settings.scorecards_folder
    )
    return [*acts, *(a for a in health if activity_name(a) not in names)]


def activity_name(fn: Callable[..., Any]) -> str | None:
    definition = getattr(fn, "__temporal_activity_definition", None)
    return getattr(definition, "name", None)


def main() -> None:
    try:
        settings = load_settings().check()
    except SettingsError as err:  # one line, as `playbook worker` says it; never a traceback or a secret
        sys.exit(f"worker.py: refusing to start: {err}")
    configure(settings.logs_as_json)
    stop = asyncio.Event()

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    try:
        asyncio.run(runner())
    except TracingError as err:  # PLAYBOOK_TRACING without an exporter to send to: one line, as settings errors
        sys.exit(f"worker.py: refusing to start: {err}")


if __name__ == "__main__":
    main()
