"""Health in scenarios: events go through the library's scorecards (scorecards/repricer-health.yaml), a run can
start from events alone (start.events), a score change reaches a live run, `{health: ...}` is checked at a moment.

The bundled scenario (a burst of urgent tickets starting risk-intervention-health) runs in test_scenarios.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.language.library import Resolver
from engine.language.scenario import validate_scenario_text
from engine.testing.scenarios import run_scenarios
from tests.paths import PLAYBOOKS

ACCOUNT = """\
account:
  { id: acc-1, name: Gartenwelt, timezone: Europe/Berlin, owner: csm-de, plan: pro, mrr: 400,
    renews_on: "2026-07-01", last_login_at: "2026-03-01T08:00:00Z" }
contacts: [ { email: lukas@gartenwelt.example, first_name: Lukas } ]
team: [ { id: csm-de, name: Jonas, email: jonas@repricer.example, languages: [de] } ]
"""


def urgent(at: str, priority: str = "urgent") -> str:
    return f"    - {{ at: {at}, event: {{ type: support.ticket_opened, data: {{ priority: {priority} }} }} }}\n"


def run(tmp_path: Path, *texts: str) -> list:
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"s{i}.scenario.yaml"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return asyncio.run(run_scenarios(paths, library=PLAYBOOKS))


def test_health_through_events_not_started_changes_reaching_a_live_run(tmp_path):
    # two urgent tickets and a normal one: yellow (58.9), never red, so risk-intervention-health never starts
    not_started = (
        "playbook: risk-intervention-health\nstart:\n  at: 2026-03-03T12:00:00Z\n  events:\n"
        + urgent("0h") + urgent("1h") + urgent("2h", "normal") + ACCOUNT
        + "expect:\n"
        "  - { outcome: not_started }\n"
        "  - { health: { score: 58.9, band: yellow, scorecard: repricer-health } }\n"
        "  - { health: { score: 99, band: red }, at: 0h }\n"  # wrong on purpose: the failure says why
    )
    # a live run waits for the score change the third urgent ticket causes (delivered like any event)
    (tmp_path / "waits.yaml").write_text(
        "id: waits\ntitle: Waits for red\ntrigger: { manual: true }\nsteps:\n"
        "  - id: red\n    wait_for:\n      event: health.score_changed\n"
        '      match: event.data.band == "red"\n      timeout: 1d\n'
        "  - crm:\n      update:\n"
        '        flagged: "{{ steps.red.event.data.previous_band }}-{{ steps.red.event.data.band }}"\n',
        encoding="utf-8",
    )
    live = (
        "playbook: waits.yaml\nstart: { at: 2026-03-03T12:00:00Z, manual: true }\n" + ACCOUNT
        + "script:\n" + urgent("1h").replace("    -", "  -") + urgent("2h").replace("    -", "  -")
        + urgent("3h").replace("    -", "  -")
        + "expect:\n"
        "  - { step: red, result: { timed_out: false } }\n"
        "  - { account: { flagged: yellow-red, health_band: red, health_score: 45.6 } }\n"
        "  - { health: { score: 45.6, band: red }, at: 3h }\n"
        "  - { outcome: completed }\n"
    )
    first, second = run(tmp_path, not_started, live)

    assert first.outcome == "not_started"
    assert "accepted by the trigger" in first.timeline[0]["detail"]
    assert first.failures[:2] == [
        "health at +0h: score 78.9, expected 99",
        "health at +0h: band green, expected red",
    ]
    assert first.failures[2].startswith("health at +0h: repricer-health components: support_tickets 1->100, ")
    assert len(first.failures) == 3
    assert second.passed, (second.failures, second.timeline)


def test_start_events_are_checked():
    text = (
        "playbook: risk-intervention-health\nstart:\n  event: { type: health.score_changed }\n  events:\n"
        + urgent("-1h") + ACCOUNT
        + "expect:\n  - { health: { colour: red } }\n"
    )
    result = validate_scenario_text(text, "s.scenario.yaml", Resolver(), PLAYBOOKS / "tests" / "s.scenario.yaml")
    messages = [p.header() for p in result.problems]
    assert any(m.startswith("s.scenario.yaml:3:10: start takes events or event, not both") for m in messages), messages
    assert any("s.scenario.yaml:5:" in m and "at" in m for m in messages), messages
    assert any("colour" in m for m in messages), messages
