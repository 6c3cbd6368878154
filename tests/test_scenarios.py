"""Every scenario (the bundled library's, the language contract's, and the engine's own edge cases) passes on the
time-skipping Temporal test server, through the real interpreter and the real activities. The contract's scenario
is the one copied into docs/language-contract-examples.md."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from engine.testing.scenarios import ScenarioReport, run_scenarios
from tests.paths import CONTRACT_EXAMPLES, PLAYBOOKS, ROOT

EDGE_CASES = ROOT / "tests" / "scenarios"


def contract_scenario(tmp: Path) -> Path:
    """The scenario of the language contract, as a file (its playbook id resolves in the library)."""
    blocks = re.findall(r"```yaml\n(.*?)```", CONTRACT_EXAMPLES.read_text(encoding="utf-8"), re.S)
    scenario = next(b for b in blocks if b.lstrip().startswith("playbook:"))
    path = tmp / "contract.scenario.yaml"
    path.write_text(scenario, encoding="utf-8")
    return path


def all_scenarios() -> list[Path]:
    return sorted(PLAYBOOKS.rglob("*.scenario.yaml")) + sorted(EDGE_CASES.rglob("*.scenario.yaml"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, ScenarioReport]:
    contract = contract_scenario(tmp_path_factory.mktemp("contract"))
    results = asyncio.run(run_scenarios([*all_scenarios(), contract], library=PLAYBOOKS))
    by_name = {Path(r.file).name: r for r in results}
    by_name["contract"] = by_name.pop(contract.name)
    return by_name


def _explain(report: ScenarioReport) -> str:
    lines = [f"{report.file}: outcome {report.outcome}"]
    lines += [f"  {t['at']:>8} {t['step']} {t['kind']} {t['status']} {t['detail']}" for t in report.timeline]
    lines += [f"  FAILED: {f}" for f in report.failures]
    return "\n".join(lines)


def test_the_contract_scenario_passes(reports):
    assert reports["contract"].passed, _explain(reports["contract"])


@pytest.mark.parametrize("path", all_scenarios(), ids=lambda p: p.name.removesuffix(".scenario.yaml"))
def test_scenario_passes(reports, path):
    report = reports[path.name]
    assert report.passed, _explain(report)
