"""Where the repository's files are, for tests."""

from __future__ import annotations

from pathlib import Path

from engine.language.library import is_playbook_file

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOKS = ROOT / "playbooks"
# the language contract's examples, copied into the repository (the contract itself is kept elsewhere)
CONTRACT_EXAMPLES = ROOT / "docs" / "language-contract-examples.md"


def bundled_playbooks() -> list[Path]:
    return sorted(p for p in PLAYBOOKS.glob("*.yaml") if is_playbook_file(p))  # not policy.yaml


def bundled_scenarios() -> list[Path]:
    return sorted(PLAYBOOKS.rglob("*.scenario.yaml"))
