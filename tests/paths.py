"""Where the repository's files are, for tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOKS = ROOT / "playbooks"
CONTRACT = ROOT.parent / "shared" / "design" / "playbook-language.md"


def bundled_playbooks() -> list[Path]:
    return sorted(PLAYBOOKS.glob("*.yaml"))


def bundled_scenarios() -> list[Path]:
    return sorted(PLAYBOOKS.rglob("*.scenario.yaml"))
