"""Debian's Chromium driven by Playwright, for the browser tests. Nothing is downloaded: when /usr/bin/chromium
or Playwright is missing, a browser test module is skipped with the reason, and fails when CI is set (`make test`
installs chromium first when it can: scripts/ensure-chromium)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test may not be skipped)")
    pytest.skip(reason, allow_module_level=True)


def require_browser() -> None:
    """Call at the top of a browser test module, before importing playwright."""
    if importlib.util.find_spec("playwright") is None:  # pragma: no cover - the dev extras install it
        _missing("Playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: apt-get install chromium (scripts/ensure-chromium does it as root)")
