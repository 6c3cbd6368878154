"""Encrypted histories (docs/encryption.md): the AES-256-GCM payload codec, its keys and their rotation, the
run's result without email bodies, and end to end on a real Temporal dev server: a run that emails a contact
leaves no address, name or body in clear in Temporal's history, while the engine's own clients (the worker, the
API over HTTP, `playbook runs show`) and the `temporal` CLI through the API's /codec endpoint show them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from google.protobuf.message import Message
from sqlalchemy import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes
from typer.testing import CliRunner

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider, OutgoingEmail
from activities.playbook_activities import PlaybookActivities
from api.app import create_app
from api.security import create_token
from engine.cli import app as cli_app
from engine.interpreter.effects import ALL_STEPS, body_readers
from engine.interpreter.messages import RunResult
from engine.language.model import Playbook
from engine.language.validator import validate_playbook_text
from engine.runtime.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadDecryptError,
    parse_payload_keys,
    with_codec,
)
from engine.runtime.connect import connect, data_converter, quiet_runtime
from engine.runtime.devstack import DevServer, free_port, temporal_binary
from engine.runtime.runs import start_run
from engine.runtime.settings import Settings, SettingsError
from engine.runtime.workers import DATA_CONVERTER, build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.asgi import serving
from tests.paths import ROOT

pytestmark = pytest.mark.timeout(120)

OLD = "2026-01:" + base64.b64encode(b"o" * 32).decode()
NEW = "2026-07:" + base64.b64encode(b"n" * 32).decode()
UI_ORIGIN = "http://127.0.0.1:8233"


def json_payload(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def encode(codec: EncryptionCodec, *payloads: Payload) -> list[Payload]:
    return asyncio.run(codec.encode(payloads))


def decode(codec: EncryptionCodec, *payloads: Payload) -> list[Payload]:
    return asyncio.run(codec.decode(payloads))


# ------------------------------------------------------------------------------------------ the codec


def test_round_trip_hides_the_value_and_its_encoding():
    codec = EncryptionCodec(parse_payload_keys(NEW))
    plain = json_payload({"email": "eva@nordlicht.example", "first_name": "Eva"})
    first, second = encode(codec, plain, plain)
    assert first.metadata["encoding"] == ENCODING and first.metadata[KEY_ID_METADATA] == b"2026-07"
    assert set(first.metadata) == {"encoding", KEY_ID_METADATA}  # json/plain is inside the ciphertext
    assert b"eva@" not in first.data and b"Eva" not in first.data and b"json" not in first.data
    assert first.data != second.data  # a random nonce per payload
    assert len(first.data) == 12 + len(plain.SerializeToString()) + 16  # nonce + ciphertext + tag
    assert decode(codec, first, second) == [plain, plain]


def test_rotation_new_key_encrypts_old_key_still_decrypts():
    before = EncryptionCodec(parse_payload_keys(OLD))
    after = EncryptionCodec(parse_payload_keys(f"{NEW},{OLD}"))
    written_before = encode(before, json_payload("hello"))[0]
    written_after = encode(after, json_payload("hello"))[0]
    assert written_after.metadata[KEY_ID_METADATA] == b"2026-07"
    assert decode(after, written_before, written_after) == [json_payload("hello")] * 2
    # a process that still has only the old key cannot read the new payloads, and says which key it lacks
    with pytest.raises(PayloadDecryptError) as err:
        decode(before, written_after)
    message = str(err.value)
    assert "'2026-07'" in message and "PLAYBOOK_PAYLOAD_KEYS" in message and "2026-01" in message
    assert NEW.split(":")[1] not in message and OLD.split(":")[1] not in message


def test_payloads_written_before_encryption_are_read_as_they_are():
    codec = EncryptionCodec(parse_payload_keys(NEW))
    plain = json_payload([1, 2])
    assert decode(codec, plain) == [plain]


def test_tampered_or_relabelled_ciphertext_fails_clearly():
    codec = EncryptionCodec(parse_payload_keys(f"{NEW},{OLD}"))
    sealed = encode(codec, json_payload("pay me"))[0]
    flipped = Payload()
    flipped.CopyFrom(sealed)
    flipped.data = sealed.data[:20] + bytes([sealed.data[20] ^ 1]) + sealed.data[21:]
    with pytest.raises(PayloadDecryptError, match="key id '2026-07' does not authenticate: it was altered"):
        decode(codec, flipped)
    # the key id is authenticated: the same ciphertext claimed by the other key fails too
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = b"2026-01"
    with pytest.raises(PayloadDecryptError, match="'2026-01' does not authenticate"):
        decode(codec, relabelled)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "PLAYBOOK_PAYLOAD_KEYS is empty"),
        ("k1", "entry 1 is not KEY_ID:BASE64"),
        (f"{NEW},", "entry 2 is empty"),
        ("k1:not base64!", "the key of id 'k1' is not valid base64"),
        ("k1:" + base64.b64encode(b"x" * 16).decode(), "the key of id 'k1' is 16 bytes; AES-256 needs 32"),
        (f"{NEW},{NEW}", "key id '2026-07' appears twice"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), "key id 'bad id' must be 1-64 letters"),
    ],
)
def test_bad_keys_setting_is_refused_in_one_line_without_the_key(text, message):
    with pytest.raises(ValueError) as err:
        parse_payload_keys(text)
    assert message in str(err.value) and "\n" not in str(err.value)
    secret = text.split(":", 1)[-1].split(",")[0]
    if len(secret) > 8:
        assert secret not in str(err.value)


def test_keys_new_prints_a_ready_entry():
    runner = CliRunner()
    made = runner.invoke(cli_app, ["keys", "new", "--id", "2027-01"])
    assert made.exit_code == 0, made.output
    keys = parse_payload_keys(made.output.strip())
    assert keys.current == "2027-01" and len(keys.keys[0][1]) == 32
    two = [runner.invoke(cli_app, ["keys", "new"]).output.strip() for _ in range(2)]
    assert parse_payload_keys(",".join(two)).ids[0].startswith("k") and two[0] != two[1]
    bad = runner.invoke(cli_app, ["keys", "new", "--id", "no spaces"])
    assert bad.exit_code == 2


def test_the_settings_choose_the_converter():
    clear = data_converter(Settings(environment="dev"))
    assert clear is DATA_CONVERTER and clear.payload_codec is None
    encrypted = data_converter(Settings(environment="dev", payload_keys=f"{NEW},{OLD}"))
    assert isinstance(encrypted.payload_codec, EncryptionCodec) and encrypted.payload_codec.key_id == "2026-07"
    # the engine's payload converter stays; failure messages go into the encrypted attributes
    assert encrypted.payload_converter_class is DATA_CONVERTER.payload_converter_class
    assert encrypted.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    assert with_codec(DATA_CONVERTER, None) is DATA_CONVERTER


# ------------------------------------------------------------------------------------------ results keep references


def playbook(text: str) -> Playbook:
    checked = validate_playbook_text(text, "<test>")
    assert checked.ok and checked.playbook is not None, [p.header() for p in checked.problems]
    return checked.playbook


READS_BODY = """\
id: reads-body
title: A later step reads an email's body
trigger: { manual: true }
steps:
  - id: hello
    email: { to: "{{ contact.email }}", subject: Hi, body: Hello there }
  - id: again
    email: { to: "{{ contact.email }}", subject: Again, body: "You got: {{ steps.hello.body }}" }
  - id: third
    email: { to: "{{ contact.email }}", subject: "{{ steps['again'].status }}", body: Bye }
"""


def test_body_readers_find_the_steps_whose_body_is_read():
    assert body_readers(playbook(READS_BODY)) == {"hello"}
    assert body_readers(playbook(READS_BODY.replace("steps.hello.body", "steps['hello']['body']"))) == {"hello"}
    # a use the pattern cannot name keeps every body
    odd = READS_BODY.replace("{{ steps.hello.body }}", "{{ steps.hello | attr('body') }}")
    assert body_readers(playbook(odd)) == {ALL_STEPS}


# ------------------------------------------------------------------------------------------ end to end

CONTACT = {"email": "evangeline.lindqvist@nordlicht.example", "first_name": "Evangeline"}
BODY = "Your onboarding code word is Zebra-Quartz-4711."
ACCOUNT = {"id": "acc-enc", "name": "Nordlicht GmbH", "language": "en", "timezone": "UTC", "owner": "csm-1"}
TEAM = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]
WELCOME = f"""\
id: encrypted-welcome
title: A welcome email to the account's contact
trigger: {{ manual: true }}
steps:
  - id: welcome
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Welcome, {{{{ contact.first_name }}}}"
      body: "Hi {{{{ contact.first_name }}}}. {BODY}"
"""
SECRETS = (CONTACT["email"].encode(), CONTACT["first_name"].encode(), BODY.encode())


class RefusingOutbox(OutboxProvider):
    """The outbox, except that an email whose subject starts with "Refused" fails with an error quoting its
    recipients (as a provider's error text may): the failure's message is in the history too."""

    def send(self, email: OutgoingEmail) -> str:
        if email.subject.startswith("Refused"):
            raise RuntimeError(f"the provider refused {', '.join(email.to)}")
        return super().send(email)


REFUSED = """\
id: refused-email
title: An email the provider refuses
trigger: { manual: true }
steps:
  - id: refused
    retry: { max_attempts: 1 }
    on_error: continue
    email: { to: "{{ contact.email }}", subject: "Refused, {{ contact.first_name }}", body: Hi }
"""


@dataclass
class Stack:
    server: DevServer
    settings: Settings
    api_url: str
    ops_token: str
    csm_token: str
    queue: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("codec")
    server = DevServer(home / "temporal", port=0, ui_port=0)
    asyncio.run(server.start())
    queue = f"codec-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        environment="dev", home=str(home), database_url=f"sqlite:///{home / 'playbook.db'}",
        library=str(home / "library"), temporal_address=server.address, task_queue=queue,
        payload_keys=f"{NEW},{OLD}", codec_cors_origins=f"{UI_ORIGIN}, https://cloud.temporal.io",
        worker_versioning=False,
    )
    (home / "library").mkdir()
    migrate(settings.db_url)
    seed(settings.db_url, dict(ACCOUNT), [dict(CONTACT)], [dict(m) for m in TEAM])
    ops = create_token(settings.db_url, "ui", "ops")
    csm = create_token(settings.db_url, "mia", "csm", "csm-1")
    port = free_port()
    api = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not api.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        yield Stack(server, settings, f"http://127.0.0.1:{port}", ops, csm, queue)
    finally:
        api.should_exit = True
        thread.join(10)
        server.stop(kill=True)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload inside a protobuf message (history events, their inputs, results, failures, headers)."""
    if isinstance(message, Payload):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if isinstance(value, Message):
            values: Any = [value]
        elif hasattr(value, "values"):  # a map field
            values = value.values()
        else:  # a repeated field
            values = value
        for item in values:
            if isinstance(item, Message):
                yield from payloads_in(item)


def json_payloads(output: str) -> bytes:
    """The metadata values and data of every payload in `temporal workflow show -o json` (base64 there), decoded."""
    found: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("metadata"), dict) and "data" in value:
                found.extend(base64.b64decode(v) for v in value["metadata"].values())
                found.append(base64.b64decode(value["data"]))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(json.loads(output))
    return b"\n".join(found)


def cli(settings: Settings, *args: str, keys: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_")}
    env |= {
        "PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_TEMPORAL_ADDRESS": settings.temporal_address,
        "PLAYBOOK_DATABASE_URL": settings.db_url, "PLAYBOOK_HOME": settings.home,
    }
    if keys:
        env["PLAYBOOK_PAYLOAD_KEYS"] = f"{NEW},{OLD}"
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_history_holds_no_personal_data_in_clear_but_the_engine_and_the_ui_codec_show_it(stack: Stack):
    async def go() -> None:
        client = await connect(stack.settings, runtime=quiet_runtime())
        activities = PlaybookActivities(stack.settings.db_url, BuiltinCrm(stack.settings.db_url), RefusingOutbox())
        async with build_worker(client, stack.queue, activities.all()):
            handle = await start_run(client, stack.queue, playbook(WELCOME), ACCOUNT["id"])
            wid = handle.id
            result = await client.get_workflow_handle(wid, result_type=RunResult).result()
            assert result.outcome == "completed", result

            # the raw history, as Temporal stores it and `temporal workflow show` reads it: no personal data
            raw_client = await Client.connect(stack.server.address, runtime=quiet_runtime())
            history = await raw_client.get_workflow_handle(wid).fetch_history()
            raw = b"".join(event.SerializeToString() for event in history.events)
            for secret in SECRETS:
                assert secret not in raw, f"{secret!r} is in the raw history"
            assert ACCOUNT["id"].encode() in raw  # the scan sees text in clear: ids and search attributes stay
            payloads = [p for e in history.events for p in payloads_in(e)]
            encrypted = [p for p in payloads if p.metadata.get("encoding") == ENCODING]
            assert len(encrypted) >= 6, len(encrypted)  # input, activity inputs and results, the result
            clear = [p for p in payloads if p.metadata.get("encoding") != ENCODING]
            # what stays clear is Temporal's own: search attributes, patch markers, a local activity's bookkeeping
            for p in clear:
                value = json.loads(p.data)
                assert "type" in p.metadata or set(value) == {"id", "deprecated"} or "activity_type" in value, p
            # ... and the same payloads, decrypted, hold all three
            assert isinstance(client.data_converter.payload_codec, EncryptionCodec)
            decrypted = b"".join(p.SerializeToString() for p in await client.data_converter.payload_codec.decode(
                encrypted
            ))
            for secret in SECRETS:
                assert secret in decrypted, secret

            # the worker decrypted: the run's result says what was sent, as a reference without the body
            welcome = result.steps["welcome"]["result"]
            assert welcome["status"] == "sent" and welcome["subject"] == "Welcome, Evangeline"
            assert welcome["message_id"] and "body" not in welcome

            # a later step that reads steps.ID.body (documented) still gets it; a step nobody reads keeps none
            reads = await start_run(client, stack.queue, playbook(READS_BODY), ACCOUNT["id"])
            compatible = await client.get_workflow_handle(reads.id, result_type=RunResult).result()
            assert compatible.steps["hello"]["result"]["body"] == "Hello there"
            assert "body" not in compatible.steps["again"]["result"]
            with session(stack.settings.db_url) as s:
                sent = s.scalars(select(t.OutboxEmail.body).where(
                    t.OutboxEmail.workflow_id == reads.id, t.OutboxEmail.step_id == "again"
                )).all()
            assert [b.split("\n")[0] for b in sent] == ["You got: Hello there"], sent

            # a failure's message is encrypted too (an error text can quote an address); the worker reads it
            refused = await start_run(client, stack.queue, playbook(REFUSED), ACCOUNT["id"])
            failed = await client.get_workflow_handle(refused.id, result_type=RunResult).result()
            assert CONTACT["email"] in failed.steps["refused"]["result"]["error"], failed.steps
            events = (await raw_client.get_workflow_handle(refused.id).fetch_history()).events
            failures = [e.activity_task_failed_event_attributes.failure for e in events
                        if e.HasField("activity_task_failed_event_attributes")]
            assert failures and all(f.message == "Encoded failure" and f.HasField("encoded_attributes")
                                    for f in failures), failures
            assert all(CONTACT["email"].encode() not in e.SerializeToString() for e in events)

            # the API (its own connection, from the settings) shows the run over HTTP
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
                shown = await http.get(f"/runs/{wid}", headers={"Authorization": f"Bearer {stack.ops_token}"})
            assert shown.status_code == 200, shown.text
            details = [e["detail"] for e in shown.json()["timeline"] if e["step"] == "welcome"]
            assert any("subject=Welcome, Evangeline" in d for d in details), details

            # an API process whose keys differ cannot read the run: a 503 naming the key id it lacks, not a 500
            other = stack.settings.replace(payload_keys="2027-01:" + base64.b64encode(b"x" * 32).decode())
            app = create_app(other, client=await connect(other, runtime=quiet_runtime()))
            async with serving(app) as http:
                lacking = await http.get(f"/runs/{wid}", headers={"Authorization": f"Bearer {stack.ops_token}"})
            assert lacking.status_code == 503, lacking.text
            assert "2026-07" in lacking.json()["detail"] and "PLAYBOOK_PAYLOAD_KEYS" in lacking.json()["detail"]

            # `playbook runs show` with the keys shows the timeline; without them it cannot read the run
            shown_cli, unreadable = await asyncio.gather(
                asyncio.to_thread(cli, stack.settings, "runs", "show", wid),
                asyncio.to_thread(cli, stack.settings, "runs", "show", wid, keys=False),
            )
            assert shown_cli.returncode == 0, shown_cli.stderr
            assert "Welcome, Evangeline" in shown_cli.stdout
            assert unreadable.returncode == 1 and "binary/encrypted" in unreadable.stderr, unreadable.stderr

            # the `temporal` CLI: without a codec it shows ciphertext; with the API's /codec, the values
            tctl = [temporal_binary(), "workflow", "show", "-w", wid, "--address", stack.server.address, "-o", "json"]
            # (the endpoint as a template: the CLI puts the namespace in)
            codec_flags = ["--codec-endpoint", f"{stack.api_url}/codec/{{namespace}}",
                           "--codec-auth", f"Bearer {stack.ops_token}"]
            plain, decoded = await asyncio.gather(
                asyncio.to_thread(subprocess.run, tctl, capture_output=True, text=True, timeout=60, check=False),
                asyncio.to_thread(
                    subprocess.run, tctl + codec_flags, capture_output=True, text=True, timeout=60, check=False
                ),
            )
            assert plain.returncode == 0 and decoded.returncode == 0, (plain.stderr, decoded.stderr)
            shown_plain, shown_decoded = json_payloads(plain.stdout), json_payloads(decoded.stdout)
            assert ENCODING in shown_plain and ENCODING not in shown_decoded
            for secret in SECRETS:
                assert secret not in shown_plain, secret
                assert secret in shown_decoded, secret

    asyncio.run(go())


# ------------------------------------------------------------------------------------------ the codec endpoint


def test_codec_endpoint_round_trip_needs_an_ops_token(stack: Stack):
    ops = {"Authorization": f"Bearer {stack.ops_token}", "X-Namespace": "default"}
    body = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                          "data": base64.b64encode(json.dumps(CONTACT).encode()).decode()}]}
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        encoded = http.post("/codec/encode", json=body, headers=ops)
        assert encoded.status_code == 200, encoded.text
        sealed = encoded.json()["payloads"][0]
        assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
        assert base64.b64decode(sealed["metadata"][KEY_ID_METADATA]) == b"2026-07"
        assert CONTACT["email"].encode() not in base64.b64decode(sealed["data"])
        decoded = http.post("/codec/decode", json=encoded.json(), headers=ops)
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["content-type"] == "application/json"
        assert decoded.json() == body
        # under a namespace segment (an endpoint written as .../codec/{namespace}): ours only
        assert http.post("/codec/default/decode", json=encoded.json(), headers=ops).json() == body
        elsewhere = http.post("/codec/other/decode", json=encoded.json(), headers=ops)
        assert elsewhere.status_code == 404 and "namespace default, not other" in elsewhere.json()["detail"]

        # who may not
        anonymous = http.post("/codec/decode", json=encoded.json())
        assert anonymous.status_code == 401 and "Authorization: Bearer" in anonymous.json()["detail"]
        unknown = http.post("/codec/decode", json=encoded.json(), headers={"Authorization": "Bearer pb_ops_nope"})
        assert unknown.status_code == 401
        csm = http.post("/codec/decode", json=encoded.json(), headers={"Authorization": f"Bearer {stack.csm_token}"})
        assert csm.status_code == 403 and "role ops" in csm.json()["detail"]

        # bad bodies are 400s with a reason, never a 500
        for bad in (b"not json", b'{"payloads": [{"data": 5}]}', b'{"payloads": 3}', b'{"payload": []}', b"\xff"):
            answer = http.post("/codec/decode", content=bad, headers={**ops, "Content-Type": "application/json"})
            assert answer.status_code == 400 and "Payloads" in answer.json()["detail"], answer.text
        unknown_key = dict(sealed, metadata={**sealed["metadata"],
                                             KEY_ID_METADATA: base64.b64encode(b"2025-01").decode()})
        refused = http.post("/codec/decode", json={"payloads": [unknown_key]}, headers=ops)
        assert refused.status_code == 400 and "'2025-01'" in refused.json()["detail"]


def test_codec_endpoint_is_404_when_encryption_is_off(stack: Stack):
    settings = stack.settings.replace(payload_keys=None)

    async def steps(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/codec/decode", json={"payloads": []},
                               headers={"Authorization": f"Bearer {stack.ops_token}"})

    async def go() -> httpx.Response:
        app = create_app(settings, client=await Client.connect(stack.server.address, runtime=quiet_runtime()))
        async with serving(app) as http:
            return await steps(http)

    answer = asyncio.run(go())
    assert answer.status_code == 404 and "PLAYBOOK_PAYLOAD_KEYS is not set" in answer.json()["detail"]


def test_codec_endpoint_answers_cors_for_the_ui_origins_only(stack: Stack):
    preflight = {
        "Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        for path in ("/codec/decode", "/codec/encode"):
            allowed = http.options(path, headers=preflight)
            assert allowed.status_code == 204, allowed.text
            assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
            assert "POST" in allowed.headers["access-control-allow-methods"]
            allowed_headers = {h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "x-namespace"} <= allowed_headers
        cloud = http.options("/codec/decode", headers={**preflight, "Origin": "https://cloud.temporal.io",
                                                       "Access-Control-Request-Private-Network": "true"})
        assert cloud.headers["access-control-allow-private-network"] == "true"

        other = http.options("/codec/decode", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
        assert "PLAYBOOK_CODEC_CORS_ORIGINS" in other.json()["detail"]

        # the answers themselves carry the header for the UI (errors too, so the browser can show them)
        post = http.post("/codec/decode", json={"payloads": []},
                         headers={"Origin": UI_ORIGIN, "Authorization": f"Bearer {stack.ops_token}"})
        assert post.status_code == 200 and post.headers["access-control-allow-origin"] == UI_ORIGIN
        denied = http.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == UI_ORIGIN
        foreign = http.post("/codec/decode", json={"payloads": []},
                            headers={"Origin": "https://evil.example", "Authorization": f"Bearer {stack.ops_token}"})
        assert "access-control-allow-origin" not in foreign.headers


# ------------------------------------------------------------------------------------------ the rest of connect.py


def test_connect_hands_the_hubspot_settings_to_the_provider_and_adds_tracing_when_asked():
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from engine.runtime.connect import crm_provider, tracing_interceptors

    settings = Settings(
        environment="dev", crm_provider="hubspot", hubspot_token="pat-test", hubspot_account_id_property="product_id",
        hubspot_search_per_second=2.0,
    )
    crm = crm_provider(settings)
    assert crm.account_id_property == "product_id"  # type: ignore[attr-defined]
    assert crm._search_pacer.interval == 0.5  # type: ignore[attr-defined]
    assert tracing_interceptors(settings) == []
    assert [type(i) for i in tracing_interceptors(settings.replace(tracing=True))] == [TracingInterceptor]



def test_a_bad_keys_setting_is_a_settings_error_naming_it():
    with pytest.raises(SettingsError) as err:
        data_converter(Settings(environment="dev", payload_keys="2026-12:" + base64.b64encode(b"short").decode()))
    assert str(err.value) == (
        "PLAYBOOK_PAYLOAD_KEYS: the key of id '2026-12' is 5 bytes; AES-256 needs 32 "
        "(make one with `playbook keys new`)"
    )


def test_tracing_without_opentelemetry_says_what_to_install(monkeypatch):
    from engine.runtime.connect import tracing_interceptors

    monkeypatch.setitem(sys.modules, "temporalio.contrib.opentelemetry", None)  # as if the extra were not installed
    with pytest.raises(SettingsError, match=r"install the tracing extra \(pip install 'playbook-engine\[tracing\]'\)"):
        tracing_interceptors(Settings(environment="dev", tracing=True))
