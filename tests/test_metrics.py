"""Metrics (docs/metrics.md): GET /metrics on the API, read from the engine's tables, and the worker's Prometheus
endpoint (Temporal's SDK metrics and the engine's worker counters), scraped after a scenario that really runs.

The scenario: a real worker (`worker.run_worker`, as `python worker.py` runs it, with
PLAYBOOK_WORKER_METRICS_ADDRESS on a free port) on a Temporal dev server (DevServer on free ports), the real API in
process (httpx over its ASGI app), SendGrid played by tests/fakes/fake_sendgrid.py. One signed-up event starts two
playbooks: metrics-welcome sends an email (SendGrid answers its first try with a 500, the retry goes out) and ends;
metrics-offer creates a call task and then waits for the approval of an email. Then /metrics must say: one event
of its type, one email sent, one call task and one approval pending, and the worker: two runs started, one ended
(completed), one TransientError of the email activity, and Temporal's own temporal_* series. With PLAYBOOK_TRACING
on, the event's trace goes from the API's start to the worker's workflows and activities.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.security import create_token
from engine.runtime.devstack import DevServer, free_port
from engine.runtime.settings import Settings, SettingsError, load_settings
from engine.storage.db import migrate
from tests.asgi import call
from tests.fakes.fake_sendgrid import API_KEY, FakeSendGrid
from tests.paths import PLAYBOOKS
from worker import run_worker

pytestmark = pytest.mark.timeout(60)

TOKEN = "metrics-token-for-the-tests-0123456789"
CONTACT = {"email": "greta.metrics@kunde.example", "first_name": "Greta"}
ACCOUNT_ID = "acc-metrics-4711"

TRIGGER = """\
trigger:
  event: account.signed_up
  when: event.data.product == "metrics"
"""
WELCOME = f"""\
id: metrics-welcome
title: A welcome email
{TRIGGER}steps:
  - id: welcome
    retry: {{ initial_interval: 1s }}
    email:
      category: onboarding
      to: "{{{{ contact.email }}}}"
      subject: "Welcome, {{{{ contact.first_name }}}}"
      body: "Glad you are here."
"""
OFFER = f"""\
id: metrics-offer
title: A call, then an offer that waits for approval
{TRIGGER}steps:
  - id: call
    call_task:
      assignee: user:csm-1
      title: "Call {{{{ account.name }}}}"
  - id: offer
    email:
      category: onboarding
      to: "{{{{ contact.email }}}}"
      subject: "An offer for {{{{ account.name }}}}"
      body: "Hi {{{{ contact.first_name }}}}, 15% off."
      approval:
        approvers: user:csm-1
        timeout: 2d
"""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The sum of the samples of `name` that carry these labels (the SDK adds its own: namespace, task_queue...);
    None when there is none."""
    found = [v for (n, have), v in page.items() if n == name and frozenset(labels.items()) <= have]
    return sum(found) if found else None


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


def library(tmp: Path) -> Path:
    folder = tmp / "library"
    folder.mkdir()
    shutil.copy(PLAYBOOKS / "policy.yaml", folder / "policy.yaml")
    (folder / "metrics-welcome.yaml").write_text(WELCOME, encoding="utf-8")
    (folder / "metrics-offer.yaml").write_text(OFFER, encoding="utf-8")
    return folder


def spans_kept() -> InMemorySpanExporter:
    """The spans this process exports from now on, kept in memory. The global tracer provider can be set once per
    process: an SDK provider already there (another test's) gets the exporter added; start_tracing leaves it."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return kept


def test_metrics_count_what_a_scenario_did(tmp_path: Path) -> None:
    gc_thresholds = gc.get_threshold()  # run_worker tunes the collector for a worker process; this one is pytest's
    spans = spans_kept()

    async def scenario() -> tuple[str, str, list[int]]:
        server = DevServer(tmp_path / "temporal", port=0, ui_port=0)
        await server.start()
        with FakeSendGrid() as sendgrid:
            sendgrid.fail_next(1, 500, path="/v3/mail/send")
            metrics_port = free_port()
            settings = Settings(
                environment="dev", home=str(tmp_path / "home"), library=str(library(tmp_path)),
                temporal_address=server.address,
                task_queue=f"metrics-{uuid.uuid4().hex[:8]}", worker_versioning=False,
                email_provider="sendgrid", sendgrid_api_key=API_KEY, sendgrid_host=sendgrid.url,
                worker_metrics_address=f"127.0.0.1:{metrics_port}", metrics_token=TOKEN, tracing=True,
            )
            migrate(settings.db_url)
            system = create_token(settings.db_url, "backend", "system")
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(settings, stop))
            app = create_app(settings)  # its client from the settings, as `playbook api` connects (tracing on)
            try:
                async with app.router.lifespan_context(app):
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                        event = {
                            "id": f"evt-{uuid.uuid4().hex[:10]}", "type": "account.signed_up",
                            "account_id": ACCOUNT_ID, "data": {"product": "metrics"},
                            "account": {"name": "Kunde GmbH"}, "contacts": [CONTACT],
                        }
                        posted = await api.post("/events", json=event, headers={"Authorization": f"Bearer {system}"})
                        assert posted.status_code == 200, posted.text
                        assert len(posted.json()["runs"]) == 2, posted.text

                        refusals = [
                            (await api.get("/metrics")).status_code,
                            (await api.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code,
                            (await api.get("/metrics", headers={"Authorization": f"Bearer {system}"})).status_code,
                        ]

                        async def scraped() -> str | None:
                            answer = await api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                            assert answer.status_code == 200, answer.text
                            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
                            page = samples(answer.text)
                            done = (
                                value(page, "playbook_emails_total", playbook="metrics-welcome", status="sent") == 1
                                and value(page, "playbook_approvals_pending", playbook="metrics-offer") == 1
                            )
                            return answer.text if done else None

                        api_page = await until(scraped)
                        assert api_page, "the email and the approval did not show in /metrics within 30 s"

                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as http:

                    async def worker_scraped() -> str | None:
                        answer = await http.get("/metrics")
                        page = samples(answer.text)
                        ended = {"playbook": "metrics-welcome", "outcome": "completed"}
                        # the SDK counts the completion once the server took the workflow task's answer
                        done = value(page, "playbook_runs_ended_total", **ended) == 1 and value(
                            page, "temporal_workflow_completed_total", workflow_type="PlaybookRun"
                        )
                        return answer.text if done else None

                    worker_page = await until(worker_scraped)
                    last = (await http.get("/metrics")).text
                    assert worker_page, f"the worker's endpoint did not count the ended run within 30 s: {last}"
            finally:
                stop.set()
                await worker
                server.stop()
        return api_page, worker_page, refusals

    try:
        api_text, worker_text, refusals = asyncio.run(scenario())
    finally:
        gc.unfreeze()
        gc.set_threshold(*gc_thresholds)

    # the token is required: none, a wrong one, and another API token are all refused
    assert refusals == [401, 401, 401]

    api = samples(api_text)
    assert value(api, "playbook_events_total", type="account.signed_up") == 1
    assert value(api, "playbook_emails_total", playbook="metrics-welcome", status="sent") == 1
    assert value(api, "playbook_call_tasks_pending", playbook="metrics-offer") == 1
    assert value(api, "playbook_approvals_pending", playbook="metrics-offer") == 1
    age = value(api, "playbook_approval_oldest_age_seconds", playbook="metrics-offer")
    assert age is not None and 0 <= age < 600
    assert value(api, "playbook_metrics_scrape_seconds") is not None
    # nothing personal, and no account id, in any label or value
    for secret in (CONTACT["email"], CONTACT["first_name"], ACCOUNT_ID, "Kunde"):
        assert secret not in api_text and secret not in worker_text

    work = samples(worker_text)
    assert value(work, "playbook_runs_started_total", playbook="metrics-welcome") == 1
    assert value(work, "playbook_runs_started_total", playbook="metrics-offer") == 1
    assert value(work, "playbook_runs_ended_total", playbook="metrics-welcome", outcome="completed") == 1
    assert value(work, "playbook_runs_ended_total", playbook="metrics-offer") is None  # it waits for its approval
    errors = {
        (dict(k[1])["activity_type"], dict(k[1])["error"]): v
        for k, v in work.items() if k[0] == "playbook_activity_errors_total"
    }
    assert errors == {("send_email", "TransientError"): 1}
    # Temporal's own metrics are served beside ours
    assert value(work, "temporal_workflow_completed_total", workflow_type="PlaybookRun") == 1
    # send_email twice, create_call_task, create_approval at least
    assert (value(work, "temporal_activity_schedule_to_start_latency_seconds_count") or 0) >= 4

    # PLAYBOOK_TRACING: the worker's workflows and activities are traced (temporalio's interceptor, on the client)
    finished = spans.get_finished_spans()
    names = {span.name for span in finished}
    assert {"StartWorkflow:PlaybookRun", "RunWorkflow:PlaybookRun", "RunActivity:send_email"} <= names, sorted(names)
    # one trace from the API's POST /events (both starts) to the worker's workflows and activities
    starts = [span.context.trace_id for span in finished if span.name == "StartWorkflow:PlaybookRun"]
    ran = {span.context.trace_id for span in finished if span.name.startswith(("RunWorkflow:", "RunActivity:"))}
    assert len(starts) == 2 and ran == set(starts) and len(ran) == 1
    attributes = " ".join(str(dict(span.attributes or {})) for span in finished)
    assert CONTACT["email"] not in attributes and CONTACT["first_name"] not in attributes


def test_metrics_are_open_without_a_token_and_say_503_when_the_database_is_down(tmp_path: Path) -> None:
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS))
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]

    async def steps(http: httpx.AsyncClient) -> tuple[int, str, httpx.Response]:
        answer = await http.get("/metrics")
        # a scraper that asks for OpenMetrics gets it (prometheus_client chooses the format from Accept)
        open_metrics = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        return answer.status_code, answer.text, open_metrics

    status, text, open_metrics = call(app, steps)
    assert open_metrics.status_code == 200
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert open_metrics.text.endswith("# EOF\n")
    assert status == 200
    page = samples(text)
    assert value(page, "playbook_metrics_scrape_seconds") is not None
    assert not [k for k in page if k[0] == "playbook_emails_total"]  # nothing happened: no series, no error

    down = settings.replace(database_url="postgresql+psycopg://metrics:x@127.0.0.1:1/none?connect_timeout=2")
    app = create_app(down, client=object())  # type: ignore[arg-type]

    async def down_steps(http: httpx.AsyncClient) -> httpx.Response:
        return await http.get("/metrics")

    answer = call(app, down_steps)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "database" in answer.json()["detail"] and answer.headers["retry-after"]


TRACING_SCRIPT = """
import os
from opentelemetry import trace
from engine.runtime.metrics import TracingError, start_tracing

os.environ["OTEL_TRACES_EXPORTER"] = "nonesuch"
try:
    start_tracing("playbook-worker")
except TracingError as err:
    print("REFUSED", err)
os.environ["OTEL_TRACES_EXPORTER"] = "console"
stop = start_tracing("playbook-worker")
with trace.get_tracer("test").start_as_current_span("one-span"):
    pass
stop()
print("AGAIN", start_tracing("playbook-worker"))  # a provider is set: left as it is
"""


def test_tracing_exports_through_the_exporter_opentelemetry_variables_name(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "playbook-worker-eu-1"
    done = subprocess.run(
        [sys.executable, "-c", TRACING_SCRIPT], cwd=Path(__file__).resolve().parents[1], env=env,
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "REFUSED OTEL_TRACES_EXPORTER=nonesuch: no such span exporter is installed" in done.stdout
    assert '"name": "one-span"' in done.stdout  # the console exporter's JSON
    assert '"service.name": "playbook-worker-eu-1"' in done.stdout  # OTEL_SERVICE_NAME wins over the default
    assert "AGAIN None" in done.stdout


# ------------------------------------------------------------------------------------------ deploy/k8s

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    # every manifest of the folder is applied, and nothing listed is missing
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for name in listed for doc in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if doc]


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for d in docs if d["kind"] in ("Deployment", "Job") for c in d["spec"]["template"]["spec"]["containers"]]


def test_the_kubernetes_manifests_name_real_settings_commands_and_ports() -> None:
    from engine.cli import app as cli

    docs = manifests()
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    release = kustomization["images"][0]["newTag"].replace(".", "-")
    by_kind = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    # one worker Deployment and one pair of Jobs per release (runs are pinned to the release that started them)
    assert by_kind == [
        ("ConfigMap", "playbook-settings"), ("Deployment", "playbook-api"),
        ("Deployment", f"playbook-worker-{release}"), ("Job", f"playbook-deploy-{release}"),
        ("Job", f"playbook-migrate-{release}"), ("Secret", "playbook-secrets"), ("Service", "playbook-api"),
    ]
    # docs/deployment.md's release applies them by these labels, in four steps: every resource is in one
    steps = {"playbook-settings", "playbook-secrets", "playbook-migrate", "playbook-worker", "playbook-api",
             "playbook-deploy"}
    assert {d["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs} == steps
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    secrets = next(d for d in docs if d["kind"] == "Secret")["stringData"]

    # a PLAYBOOK_* variable that names no setting is silently ignored by pydantic-settings (only a settings file's
    # unknown key is refused): a typo here would be a setting that never applies
    names = [*settings, *secrets, *(e["name"] for c in containers(docs) for e in c.get("env", []))]
    unknown = [n for n in names if not n.startswith("PLAYBOOK_") or n[9:].lower() not in Settings.model_fields]
    assert names and unknown == []

    commands = {c.name or c.callback.__name__ for c in cli.registered_commands if c.callback}
    for container in containers(docs):
        assert container["image"] == "playbook-engine"  # kustomization.yaml's images: sets the registry and tag
        assert container["command"][0] == "playbook" and container["command"][1] in commands, container["command"]
        assert [r["configMapRef"]["name"] for r in container["envFrom"] if "configMapRef" in r] == ["playbook-settings"]
        assert [r["secretRef"]["name"] for r in container["envFrom"] if "secretRef" in r] == ["playbook-secrets"]

    deployments = {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in docs if d["kind"] == "Deployment"}
    worker_labels = deployments["playbook-worker"]["spec"]["selector"]["matchLabels"]
    assert worker_labels["app.kubernetes.io/version"] == kustomization["images"][0]["newTag"]
    app_routes = set(create_app(Settings(environment="dev")).openapi()["paths"])
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        [container] = pod["spec"]["containers"]
        ports = {p["containerPort"] for p in container["ports"]}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) in ports, name
        assert annotations["prometheus.io/path"] in app_routes or name == "playbook-worker"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert settings["PLAYBOOK_LIBRARY"] in mounts, name  # the library ConfigMap is where the settings look
    worker_port = int(settings["PLAYBOOK_WORKER_METRICS_ADDRESS"].rsplit(":", 1)[1])
    assert worker_port == int(deployments["playbook-worker"]["spec"]["template"]["metadata"]["annotations"]
                              ["prometheus.io/port"])
    api = deployments["playbook-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health" and "/health" in app_routes
    deploy = next(c for c in containers(docs) if c["command"][1] == "deploy")
    assert deploy["command"][deploy["command"].index("--library") + 1] == settings["PLAYBOOK_LIBRARY"]
    assert {m["mountPath"] for m in deploy["volumeMounts"]} == {settings["PLAYBOOK_LIBRARY"]}

    # as shipped, the placeholders keep the engine from starting (one line naming them) ...
    with pytest.raises(SettingsError) as refused:
        load_settings(environ={**settings, **secrets}).check()
    for name in ("PLAYBOOK_SENDGRID_API_KEY", "PLAYBOOK_HUBSPOT_TOKEN", "PLAYBOOK_UNSUBSCRIBE_SECRET"):
        assert name in str(refused.value)
    # ... and with real values in the Secret, the settings of the ConfigMap pass production's checks
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    real = {name: f"not-a-placeholder-{i}-0123456789abcdef" for i, name in enumerate(secrets)}
    real |= {
        "PLAYBOOK_DATABASE_URL": "postgresql+psycopg://playbooks:pw@db.internal/playbooks",
        "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY": base64.b64encode(key).decode(),
        "PLAYBOOK_PAYLOAD_KEYS": f"k1:{base64.b64encode(os.urandom(32)).decode()}",
    }
    checked = load_settings(environ={**settings, **real}).check()
    assert checked.worker_metrics_address == "0.0.0.0:9464" and not checked.is_dev


@pytest.mark.parametrize("command", [["-m", "engine.cli", "api", "--port", "0"], ["worker.py"]])
def test_tracing_with_an_exporter_that_is_not_installed_refuses_to_start_in_one_line(tmp_path: Path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYBOOK_", "OTEL_"))}
    env |= {"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": str(tmp_path), "PLAYBOOK_TRACING": "1",
            "PLAYBOOK_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "OTEL_TRACES_EXPORTER": "no_such_exporter"}
    done = subprocess.run([sys.executable, *command], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode in (1, 2), done.stderr
    assert "no_such_exporter" in done.stderr and "Traceback" not in done.stderr, done.stderr
