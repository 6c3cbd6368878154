"""The engine's metrics (docs/metrics.md): what the API's GET /metrics reads from the engine's tables, and what the
worker counts itself and serves beside Temporal's SDK metrics.

Two places, because the facts live in two places:

- Emails, approvals, call tasks and events are rows in the shared database. `EngineCollector` reads them at scrape
  time with a few GROUP BY queries, so every API process behind a load balancer answers the same numbers and no
  process has to stay up to keep a count.
- Runs starting and ending, and activities failing, are only seen by the worker that runs them (no table records a
  run's end or a provider's error). `WorkerMetrics` counts them through Temporal's metric meter, which the worker's
  Runtime exports on PLAYBOOK_WORKER_METRICS_ADDRESS with the SDK's own temporal_* metrics. The workflow's meter
  records nothing while a history is replayed, so a run counts once however often its history is replayed.

No label holds personal data or an unbounded value: playbook ids, statuses, event types, activity names and error
kinds only; never an address, a name or an account id.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.runtime import (
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from engine.interpreter.messages import WORKFLOW_NAME
from engine.storage import models as t
from engine.storage.db import engine_for

# Outbox statuses that never change again: counters. "sending" (handed to the provider, not yet confirmed) and
# "capped" (held back, may be admitted later) are states a row leaves, so they are gauges.
FINAL_EMAIL_STATUSES = ("sent", "suppressed", "rejected")
PASSING_EMAIL_STATUSES = ("sending", "capped")
FINAL_APPROVAL_STATUSES = ("approved", "rejected", "timed_out")
FINAL_TASK_STATUSES = ("done", "timed_out", "cancelled")

# ------------------------------------------------------------------------------------------ API: from the tables


def _age_seconds(oldest: datetime | None, now: datetime) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite gives back naive datetimes; the engine writes UTC
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())


class EngineCollector(Collector):
    """The engine's metrics read from its database at each scrape: four aggregate queries (outbox, approvals,
    call tasks, received events), each one GROUP BY over its table."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[Any]:
        began = time.perf_counter()
        now = datetime.now(UTC)
        with engine_for(self.db_url).connect() as db:
            outbox = t.OutboxEmail.__table__
            emails = db.execute(
                select(outbox.c.playbook_id, outbox.c.status, func.count()).group_by(
                    outbox.c.playbook_id, outbox.c.status
                )
            ).all()
            approvals = self._by_status(db, t.Approval.__table__)
            tasks = self._by_status(db, t.CallTask.__table__)
            received = t.ReceivedEvent.__table__
            events = db.execute(select(received.c.type, func.count()).group_by(received.c.type)).all()

        sent = CounterMetricFamily(
            "playbook_emails", "Emails by playbook and final status (sent, suppressed, rejected)",
            labels=["playbook", "status"],
        )
        passing = GaugeMetricFamily(
            "playbook_emails_waiting",
            "Emails in a passing state: sending (handed to the provider, not confirmed) or capped (held back by a "
            "frequency cap, may go out later)",
            labels=["playbook", "status"],
        )
        for playbook, status, count in emails:
            if status in FINAL_EMAIL_STATUSES:
                sent.add_metric([playbook, status], count)
            elif status in PASSING_EMAIL_STATUSES:
                passing.add_metric([playbook, status], count)
        yield sent
        yield passing

        yield from self._pending_and_decided(
            approvals, "approvals", "approval", "Approvals (and emails with approval)", "pending",
            FINAL_APPROVAL_STATUSES, now,
        )
        yield from self._pending_and_decided(
            tasks, "call_tasks", "call_task", "Call tasks", "open", FINAL_TASK_STATUSES, now,
        )

        taken = CounterMetricFamily("playbook_events", "Events taken by POST /events, by type", labels=["type"])
        for event_type, count in events:
            taken.add_metric([event_type], count)
        yield taken

        took = GaugeMetricFamily(
            "playbook_metrics_scrape_seconds", "How long this scrape's database queries took (seconds)"
        )
        took.add_metric([], time.perf_counter() - began)
        yield took

    @staticmethod
    def _by_status(db: Any, table: Any) -> list[Any]:
        """(playbook, status, count, oldest created_at) per playbook and status."""
        query = select(table.c.playbook_id, table.c.status, func.count(), func.min(table.c.created_at))
        return list(db.execute(query.group_by(table.c.playbook_id, table.c.status)).all())

    @staticmethod
    def _pending_and_decided(
        rows: Iterable[Any], plural: str, singular: str, what: str, waiting: str, final: tuple[str, ...],
        now: datetime,
    ) -> Iterator[Any]:
        pending = GaugeMetricFamily(f"playbook_{plural}_pending", f"{what} waiting for a person", labels=["playbook"])
        oldest = GaugeMetricFamily(
            f"playbook_{singular}_oldest_age_seconds",
            f"Age of the oldest of the {what.lower()} waiting for a person (seconds; 0 when none waits)",
            labels=["playbook"],
        )
        decided = CounterMetricFamily(
            f"playbook_{plural}", f"{what} closed, by playbook and status", labels=["playbook", "status"]
        )
        waiting_by_playbook: dict[str, tuple[int, float]] = {}
        for playbook, status, count, first in rows:
            waiting_by_playbook.setdefault(playbook, (0, 0.0))  # a playbook with nothing waiting shows 0, not no data
            if status == waiting:
                waiting_by_playbook[playbook] = (count, _age_seconds(first, now))
            elif status in final:
                decided.add_metric([playbook, status], count)
        for playbook, (count, age) in sorted(waiting_by_playbook.items()):
            pending.add_metric([playbook], count)
            oldest.add_metric([playbook], age)
        yield pending
        yield oldest
        yield decided


def engine_registry(db_url: str) -> CollectorRegistry:
    """A registry of our own (not prometheus_client's global one, which holds this process's Python metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(db_url))
    return registry


# ------------------------------------------------------------------------------------------ worker: SDK meter

RUNS_STARTED = "playbook_runs_started_total"
RUNS_ENDED = "playbook_runs_ended_total"
ACTIVITY_ERRORS = "playbook_activity_errors_total"


def worker_runtime(metrics_address: str | None) -> Runtime:
    """The worker's Temporal runtime: core logs errors only (as connect.quiet_runtime), and with an address, a
    Prometheus endpoint at http://<address>/metrics serving the SDK's metrics and the engine's worker counters."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")),
            # durations in seconds, as Prometheus names them (…_seconds), not the SDK's default milliseconds
            metrics=PrometheusConfig(bind_address=metrics_address, durations_as_seconds=True, unit_suffix=True)
            if metrics_address
            else None,
        )
    )


def error_kind(err: BaseException) -> str:
    """What an activity failed with, as a label: an ApplicationError's type (the providers' TransientError,
    RejectedError, NotFoundError, ConfigurationError), else the exception's class name. Never its message, which
    may hold an address."""
    if isinstance(err, ApplicationError) and err.type:
        return err.type
    return type(err).__name__


class _CountActivityErrors(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except asyncio.CancelledError:
            raise  # the worker or the run cancelled it: not an error of the activity
        except Exception as err:
            # the activity's meter labels it with activity_type, workflow_type, task_queue and namespace itself
            activity.metric_meter().create_counter(
                ACTIVITY_ERRORS, "Activity attempts that failed, by activity and error kind"
            ).add(1, {"error": error_kind(err)})
            raise


class _CountRuns(WorkflowInboundInterceptor):
    """Counts playbook runs starting and ending. It runs inside the workflow sandbox: only workflow.* calls, and
    the workflow's meter, which records nothing during replay."""

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        if info.workflow_type != WORKFLOW_NAME:
            return await super().execute_workflow(input)
        playbook = _playbook_of(input.args)
        meter = workflow.metric_meter()
        if info.continued_run_id is None:  # a continue-as-new goes on with the same run
            meter.create_counter(RUNS_STARTED, "Playbook runs started").add(1, {"playbook": playbook})
        ended = meter.create_counter(RUNS_ENDED, "Playbook runs ended, by outcome")
        try:
            result = await super().execute_workflow(input)
        except workflow.ContinueAsNewError:
            raise
        except FailureError:
            ended.add(1, {"playbook": playbook, "outcome": "error"})
            raise
        except asyncio.CancelledError:
            ended.add(1, {"playbook": playbook, "outcome": "cancelled"})
            raise
        ended.add(1, {"playbook": playbook, "outcome": str(getattr(result, "outcome", "completed"))})
        return result


def _playbook_of(args: Any) -> str:
    run_input = args[0] if args else None
    playbook = getattr(run_input, "playbook", None)
    return str(getattr(playbook, "id", "") or "unknown")


class WorkerMetrics(Interceptor):
    """The engine's worker counters (docs/metrics.md): playbook_runs_started_total{playbook},
    playbook_runs_ended_total{playbook, outcome}, playbook_activity_errors_total{activity_type, error}. Without a
    metrics endpoint the SDK's meter is a no-op, so the interceptor can always be on."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountActivityErrors(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _CountRuns


# ------------------------------------------------------------------------------------------ tracing


class TracingError(Exception):
    """PLAYBOOK_TRACING is on but traces cannot be exported; the message says what to install or set."""


def start_tracing(service_name: str) -> Callable[[], None] | None:
    """With PLAYBOOK_TRACING on, the OpenTelemetry tracer provider the Temporal interceptor's spans go to
    (connect.tracing_interceptors adds the interceptor). Configured by OpenTelemetry's own variables:
    OTEL_TRACES_EXPORTER (default otlp; console; none; several comma-separated), and what the SDK and the
    exporter read themselves (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS...). Exporters are found by the entry points they
    register, as OpenTelemetry's auto-configuration finds them. A provider already set (the process runs under
    `opentelemetry-instrument`) is left as it is. Returns what flushes and stops it, or None."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise TracingError(
            f"PLAYBOOK_TRACING needs the tracing extra (pip install 'playbook-engine[tracing]'): {err}"
        ) from None
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return None
    from importlib.metadata import entry_points

    # the default name only: Resource.create lets given attributes win over OTEL_SERVICE_NAME, which must win
    given = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(given))
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in (n for n in names if n and n != "none"):
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            raise TracingError(f"OTEL_TRACES_EXPORTER={name}: no such span exporter is installed{hint}")
        provider.add_span_processor(BatchSpanProcessor(found[0].load()()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
