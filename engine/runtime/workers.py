"""Building Temporal workers for the interpreter: the same setup in production, `playbook dev` and tests.

Worker Versioning (docs/operations.md, "Deploying new engine code"): a worker built with a `Versioning`
registers as one version (deployment name + build id) of the engine's Worker Deployment, and every run it
starts is pinned to that version: the run's workflow tasks and activities go only to workers of the same
version, so new interpreter code never replays a run that older code started. `make_current` (called by
`playbook deploy` and `playbook dev`) makes a version the current one, on which new runs start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, get_type_hints

from temporalio import activity
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionProto
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    value_to_type,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
    WorkerDeploymentConfig,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from engine.interpreter.health_nightly import PlaybookHealthNightly
from engine.interpreter.schedule_tick import PlaybookScheduleTick
from engine.interpreter.workflow import PlaybookForEachChunk, PlaybookRun

from .settings import Settings

# Modules the workflow sandbox takes from the worker instead of re-importing them for every run: pure,
# deterministic code only. Most are needed, not just cheaper: the sandbox's own copies of jinja2 (locks),
# the model's dataclasses and zoneinfo objects do not work inside it (bench/memory.py tries each without).
#
# The interpreter's step families (core, effects, flow, waiting) are passed through for the cost alone: re-executing
# them in a fresh sandbox was ~5 of ~35 ms of worker CPU per run (bench/profile_run.py, `current+pt:...`). What that
# asks of them: no state kept at module level between runs (constants only; a ContextVar set only inside a run's
# tasks), and no non-deterministic call (the clock, randomness, I/O) — the sandbox's runtime restrictions do not
# reach code passed through, so the rule in engine/interpreter/core.py's docstring is what guards them. The
# workflow modules themselves (engine.interpreter.workflow, schedule_tick) stay sandboxed, as does any interpreter
# module not listed here.
PASSTHROUGH = (
    "jinja2",
    "markupsafe",
    "engine.language",
    "engine.interpreter.calendar",
    "engine.interpreter.messages",
    "engine.interpreter.core",
    "engine.interpreter.effects",
    "engine.interpreter.flow",
    "engine.interpreter.waiting",
    "activities.types",
)


def sandbox_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


WORKFLOWS: tuple[type, ...] = (PlaybookRun, PlaybookForEachChunk, PlaybookScheduleTick, PlaybookHealthNightly)


# ------------------------------------------------------------------------------------------ payload decoding

class _KnownDataclasses(JSONTypeConverter):
    """Decodes the engine's own dataclasses as temporalio's default does, field by field, but with each class's
    resolved field types computed once instead of on every value.

    The default decoder calls typing.get_type_hints for every dataclass value it builds: with postponed
    annotations that compiles every field's annotation again, for every step of the playbook in RunInput (and for
    every member tried of a union), ~80% of decoding a run's input (bench/profile_run.py). Only classes of modules
    passed through the sandbox (PASSTHROUGH): they are the same objects for the worker's life, so the cache holds
    a fixed set of classes, shared by all runs; anything else (a workflow's own module, re-imported per run)
    takes the default path.
    The wire format is not touched: encoding is the default's, and what is decoded is the same objects.
    """

    # class -> (field name, resolved type, in __init__) per field; shared by every converter instance (the worker
    # makes one per workflow run)
    _fields: dict[type, tuple[tuple[str, Any, bool], ...]] = {}

    def __init__(self) -> None:
        self._converters = [self]

    def to_typed_value(self, hint: type, value: Any) -> Any:
        fields = self._fields.get(hint) if isinstance(hint, type) else None
        if fields is None:
            if not (isinstance(hint, type) and dataclasses.is_dataclass(hint) and _passed_through(hint.__module__)):
                return JSONTypeConverter.Unhandled
            hints = get_type_hints(hint)
            fields = tuple((f.name, hints[f.name], f.init) for f in dataclasses.fields(hint))
            self._fields[hint] = fields
        if not isinstance(value, dict):
            raise TypeError(f"Cannot convert to dataclass {hint}, value is {type(value)} not dict")
        init: dict[str, Any] = {}
        not_init: dict[str, Any] = {}
        for name, field_hint, in_init in fields:
            if name in value:
                try:
                    converted = value_to_type(field_hint, value[name], self._converters)
                except Exception as err:
                    raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
                (init if in_init else not_init)[name] = converted
        obj = hint(**init)
        for name, converted in not_init.items():
            object.__setattr__(obj, name, converted)
        return obj


def _passed_through(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PASSTHROUGH)


class PayloadConverter(CompositePayloadConverter):
    """temporalio's default payload converter, with the engine's dataclasses decoded by _KnownDataclasses."""

    def __init__(self) -> None:
        super().__init__(
            *(
                JSONPlainPayloadConverter(custom_type_converters=[_KnownDataclasses()])
                if isinstance(c, JSONPlainPayloadConverter)
                else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


def with_payload_converter(client: Client) -> Client:
    """The client, with PayloadConverter in place of the default one (a client with a converter of its own is
    left as it is). The same connection: Client(**config) shares the service client."""
    converter = client.data_converter
    if converter.payload_converter_class is not DefaultPayloadConverter:
        return client
    config = client.config()
    config["data_converter"] = dataclasses.replace(converter, payload_converter_class=PayloadConverter)
    return Client(**config)


DATA_CONVERTER = dataclasses.replace(DataConverter.default, payload_converter_class=PayloadConverter)


# CPython's collector thresholds are (700, 10, 10) by default: the youngest objects every 700 allocations, the
# older ones every 10 and 100 young collections. A worker keeps much alive (up to 1,000 cached runs; a for_each
# slice's 1,000 item coroutines, scopes and futures) and allocates fast, so the collector walked the same objects
# over and over. bench/fanout.py's for_each part (a warm-up and four phases of 10,000 items, a gc callback timing
# each collection): 5.8 s in the collector with the defaults, a quarter of the worker's CPU; 1.4 s with the
# start-up objects frozen (modules, the sandbox's copies of them: never garbage) and young collections every
# 10,000; 0.6 s every 100,000. Peak RSS was the same (186-215 MB) in all three.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_garbage_collection() -> None:
    """For a worker process, once it is built (called by worker.py's run_worker)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    *,
    extra_workflows: Sequence[type] = (),
    max_concurrent_activities: int = 50,
    versioning: Versioning | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Worker:
    """A worker; with `versioning`, one version of the Worker Deployment whose runs are pinned to it (without,
    an unversioned worker: what `playbook test` and the time-skipping test server use).

    `interceptors` (metrics, tracing) come after the heartbeat interceptor, which is always on: the first in the
    list is the outermost, so every other interceptor sees an activity that is already kept alive."""
    return Worker(
        with_payload_converter(client),
        task_queue=task_queue,
        workflows=[*WORKFLOWS, *extra_workflows],
        activities=list(activities),
        # Activities are synchronous (SQLAlchemy, provider SDKs): they run in this pool.
        activity_executor=ThreadPoolExecutor(max_workers=max_concurrent_activities),
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=sandbox_runner(),
        deployment_config=versioning.config() if versioning else None,
        interceptors=[KeepAlive(), *interceptors],
    )


# ------------------------------------------------------------------------------------------ heartbeats

# How often a running activity's worker says it is alive, as a share of the activity's heartbeat timeout. The server
# is told at most every 0.8 x the timeout whatever the rate (the SDK's core throttles heartbeats and sends the newest
# details when it does), so this only needs to be well under that: a few beats per timeout, so that one late beat
# (a busy event loop) is not a missed one.
BEATS_PER_TIMEOUT = 4


class KeepAlive(Interceptor):
    """Heartbeats every activity for as long as it runs, so a worker that dies mid-activity is noticed within the
    heartbeat timeout (the interpreter's: engine.interpreter.core.HEARTBEAT_TIMEOUT) instead of the 30 s
    start-to-close timeout, and another worker retries the step. An activity scheduled without a heartbeat timeout
    is left alone.

    The beats come from the worker's event loop, not from the activity's thread: a synchronous activity is blocked
    in a provider call or a query most of its life and cannot beat itself. The SDK's heartbeat function must be
    called on the event loop (it encodes the details with the async data converter; from a sync activity's thread
    the SDK hops to the loop itself), which is where this interceptor's `execute_activity` runs. So a loop that
    beats is a worker that is alive: the process, its connection to Temporal and its event loop, which is what the
    timeout is there to tell; an activity stuck inside its thread is for start_to_close_timeout to end.

    An activity that reports its progress (send_emails, start_scheduled_runs) keeps doing so through
    `activity.heartbeat(details)`; the beats in between repeat its newest details, so the progress a retry reads
    from `activity.info().heartbeat_details` is never blanked by a keep-alive.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _KeepAliveInbound(next)


class _KeepAliveInbound(ActivityInboundInterceptor):
    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = _LastDetails(outbound)
        super().init(self._outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if not timeout:  # scheduled without one (or a local activity): nothing waits for the beats
            return await super().execute_activity(input)
        beating = asyncio.create_task(self._beat(timeout.total_seconds() / BEATS_PER_TIMEOUT))
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()

    async def _beat(self, every: float) -> None:
        # The first beat after `every`, not at the start: most activities end in milliseconds, and a beat is a call
        # to the server; the server counts the timeout from the start until the first beat comes.
        while True:
            await asyncio.sleep(every)
            self._outbound.heartbeat(*self._outbound.details)


class _LastDetails(ActivityOutboundInterceptor):
    """The activity's outbound calls as they are, keeping the details of its newest own heartbeat."""

    def __init__(self, next: ActivityOutboundInterceptor) -> None:
        super().__init__(next)
        self.details: tuple[Any, ...] = tuple(activity.info().heartbeat_details)  # a retry's starting point

    def heartbeat(self, *details: Any) -> None:
        self.details = details
        super().heartbeat(*details)


# ------------------------------------------------------------------------------------------ Worker Versioning

DEFAULT_DEPLOYMENT_NAME = "playbook-engine"
CODE_PACKAGES = ("engine", "activities")  # the code a worker runs: its build id changes whenever they do


def engine_version() -> str:
    try:
        return metadata.version("playbook-engine")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0"


def code_build_id() -> str:
    """The default build id: the engine's version and a hash of its Python sources (engine/, activities/).

    The same code gives the same id on every machine (paths and file contents only, no timestamps); any
    change to the code gives another one. In production set PLAYBOOK_BUILD_ID (the Git commit) instead.
    """
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        root = Path(str(import_module(package).__file__)).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{engine_version()}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Versioning:
    """One version of the engine's Worker Deployment: what a worker registers as, what `deploy` makes current."""

    deployment_name: str
    build_id: str

    @property
    def version(self) -> WorkerDeploymentVersion:
        return WorkerDeploymentVersion(self.deployment_name, self.build_id)

    @property
    def label(self) -> str:
        """How Temporal's search attributes spell it: TemporalWorkerDeploymentVersion="<deployment>:<build id>"."""
        return f"{self.deployment_name}:{self.build_id}"

    def proto(self) -> VersionProto:
        return VersionProto(deployment_name=self.deployment_name, build_id=self.build_id)

    def config(self) -> WorkerDeploymentConfig:
        # PINNED for every workflow the worker runs (PlaybookRun, its for_each chunks and run_playbook
        # children, schedule ticks): a run stays on the version it started on until it ends.
        return WorkerDeploymentConfig(
            version=self.version, use_worker_versioning=True, default_versioning_behavior=VersioningBehavior.PINNED
        )


def versioning(settings: Settings) -> Versioning | None:
    """The worker's version from the settings (worker_versioning, deployment_name, build_id), or None when off."""
    if not settings.worker_versioning:
        return None
    name = settings.deployment_name
    if not name or "." in name:  # Temporal writes a version as <deployment>.<build id>
        raise ValueError(f"PLAYBOOK_DEPLOYMENT_NAME must be a non-empty name without dots, not {name!r}")
    return Versioning(name, settings.build_id or code_build_id())


class DeployError(Exception):
    """A version could not be made current (no worker of it polls, or the server refused); the text says why."""


@dataclass(frozen=True)
class Promotion:
    previous: str | None  # the build id that was current before (None: none was)
    current: str | None  # the build id current now
    changed: bool
    seconds: float  # how long it took, waiting for the version's workers included


async def current_build_id(client: Client, deployment_name: str) -> str | None:
    """The deployment's current build id; None when it has none (or does not exist yet)."""
    info = await _describe(client, deployment_name)
    return _current(info)


async def runs_on_other_versions(client: Client, versioning: Versioning) -> int:
    """How many runs still open are pinned to another version of the deployment than this one."""
    query = (
        f'ExecutionStatus="Running" AND TemporalWorkerDeployment="{versioning.deployment_name}" '
        f'AND TemporalWorkerDeploymentVersion!="{versioning.label}"'
    )
    return (await client.count_workflows(query)).count


async def _describe(client: Client, deployment_name: str) -> Any:
    try:
        request = DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment_name)
        return await client.workflow_service.describe_worker_deployment(request)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:  # no worker of any version has polled yet
            return None
        raise


def _current(described: Any) -> str | None:
    if described is None:
        return None
    return described.worker_deployment_info.routing_config.current_deployment_version.build_id or None


async def is_polling(client: Client, versioning: Versioning, task_queue: str) -> bool:
    """Whether a worker of this version polls (or polled in the last minutes) the task queue for workflow tasks."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    pollers = (await client.workflow_service.describe_task_queue(request)).pollers
    return any(
        p.deployment_options.deployment_name == versioning.deployment_name
        and p.deployment_options.build_id == versioning.build_id
        for p in pollers
    )


async def make_current(
    client: Client, versioning: Versioning, task_queue: str, *, timeout: float = 60, only_if_none: bool = False
) -> Promotion:
    """Makes the version current, once a worker of it polls the task queue (waiting up to `timeout` seconds).

    With `only_if_none` (what every worker does at start) only when the deployment has no current version yet,
    the first versioned worker ever: without a current version no versioned worker would get a new run.
    Raises DeployError when no worker of the version polls in time, or the server refuses.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    last_refusal = ""
    current: str | None = None
    while True:
        try:
            described = await _describe(client, versioning.deployment_name)
            current = _current(described)
            if current == versioning.build_id or (only_if_none and current):
                return Promotion(current, current, False, loop.time() - started)
            polling = described is not None and await is_polling(client, versioning, task_queue)
        except RPCError as e:
            # Workers started together all ask at once, and the server rate-limits requests per Worker Deployment
            # ("too many requests issued to Worker Deployment"): the next round asks again.
            if e.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                raise
            described, polling, last_refusal = None, False, e.message
        if polling:
            request = SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace,
                deployment_name=versioning.deployment_name,
                build_id=versioning.build_id,
                identity=client.identity,
                # only_if_none: refused if another version became current since the describe above
                conflict_token=described.conflict_token if only_if_none else b"",
            )
            try:
                response = await client.workflow_service.set_worker_deployment_current_version(request)
            except RPCError as e:
                # NOT_FOUND: the server has the poller but not yet the version; RESOURCE_EXHAUSTED: as above; the
                # others: a race with another deploy or worker (the next round sees who won)
                if e.status not in (
                    RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.ABORTED,
                    RPCStatusCode.RESOURCE_EXHAUSTED,
                ):
                    raise DeployError(f"the server refused to make {versioning.label} current: {e.message}") from e
                last_refusal = e.message
            else:
                previous = response.previous_deployment_version.build_id or None
                return Promotion(previous, versioning.build_id, True, loop.time() - started)
        if loop.time() - started > timeout:
            why = f" (the server said: {last_refusal})" if last_refusal else ""
            raise DeployError(
                f"no worker of version {versioning.build_id} (deployment {versioning.deployment_name}) polls "
                f"task queue {task_queue!r} after {timeout:g} s{why}: start the new workers first, with the same "
                f"code or PLAYBOOK_BUILD_ID={versioning.build_id}, then deploy again; runs keep starting on version "
                f"{current or '(none)'} meanwhile"
            )
        await asyncio.sleep(0.5)
