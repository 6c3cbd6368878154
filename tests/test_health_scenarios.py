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


# ------------------------------------------------------------------------------ the nightly recompute

WAITS_FOR_RECOVERY = """\
id: waits-recovery
title: Waits for the account to leave red
trigger: { manual: true }
steps:
  - id: recovered
    wait_for:
      event: health.score_changed
      match: event.data.previous_band == "red" and event.data.band != "red"
      timeout: 60d
  - id: welcome_back
    call_task: { assignee: owner, title: "{{ account.name }} is {{ steps.recovered.event.data.band }} again" }
"""

# the night after the three urgent tickets (posted at +1h..+3h, 2026-03-03 13:00-15:00) left the 30-day window:
# 2026-04-03 02:00 UTC, +30d14h
RECOVERY_NIGHT = "734h"


def test_tickets_leaving_the_window_change_the_score_at_that_night(tmp_path):
    (tmp_path / "waits-recovery.yaml").write_text(WAITS_FOR_RECOVERY, encoding="utf-8")
    script = "".join(urgent(at).replace("    -", "  -") for at in ("1h", "2h", "3h"))
    text = (
        "playbook: waits-recovery.yaml\nstart: { at: 2026-03-03T12:00:00Z, manual: true }\n" + ACCOUNT
        + "script:\n" + script
        + "expect:\n"
        "  - { health: { score: 45.6, band: red }, at: 3h }\n"
        f"  - {{ health: {{ score: 75.6, band: green }}, at: {RECOVERY_NIGHT} }}\n"
        f"  - {{ call_task: welcome_back, after: {RECOVERY_NIGHT}, within: 735h }}\n"  # that night, not the one before
        "  - { step: recovered, result: { timed_out: false, event: { data: { band: green, score: 75.6 } } } }\n"
        "  - { health: { score: 75.6, band: green } }\n"
        "  - { account: { health_band: green } }\n"
        "  - { outcome: completed }\n"
    )
    (report,) = run(tmp_path, text)

    assert report.passed, (report.failures, report.timeline)
    changes = [e for e in report.timeline if e["kind"] == "health"]
    # the last login a week old (03-08), a month old (03-31: no band change, nothing sent), then the tickets gone
    assert [(e["at"], e["detail"].endswith("sent health.score_changed")) for e in changes] == [
        ("+4d14h", False), ("+27d14h", False), ("+30d14h", True),
    ], changes
    assert "28.9 red -> 75.6 green" in changes[-1]["detail"]
    # 31 nights, recomputed at the first (it scores an account no event has) and where a score could change
    assert report.nights == 4


def test_the_nights_follow_playbook_health_nightly(tmp_path):
    """Scenarios recompute at production's nights (PLAYBOOK_HEALTH_NIGHTLY, which `playbook test` passes): at 09:00
    UTC the same changes come seven hours later than at 02:00; with the nightly recompute off, never."""
    (tmp_path / "waits-recovery.yaml").write_text(WAITS_FOR_RECOVERY, encoding="utf-8")
    script = "".join(urgent(at).replace("    -", "  -") for at in ("1h", "2h", "3h"))
    text = (
        "playbook: waits-recovery.yaml\nstart: { at: 2026-03-03T12:00:00Z, manual: true }\n" + ACCOUNT
        + "script:\n" + script + "expect:\n  - { health: { score: 45.6, band: red }, at: 3h }\n"
    )
    path = tmp_path / "nights.scenario.yaml"
    path.write_text(text, encoding="utf-8")
    (at_nine,) = asyncio.run(run_scenarios([path], library=PLAYBOOKS, nightly="0 9 * * *"))
    (never,) = asyncio.run(run_scenarios([path], library=PLAYBOOKS, nightly=""))

    assert at_nine.passed and never.passed, (at_nine.failures, never.failures)
    changes = [e["at"] for e in at_nine.timeline if e["kind"] == "health"]
    assert changes == ["+4d21h", "+27d21h", "+30d21h"], at_nine.timeline
    assert never.nights == 0 and not [e for e in never.timeline if e["kind"] == "health"]


def test_no_nightly_work_for_a_playbook_that_does_not_listen_to_health(tmp_path):
    (tmp_path / "waits-long.yaml").write_text(
        "id: waits-long\ntitle: Waits\ntrigger: { manual: true }\nsteps:\n"
        "  - wait: 365d\n  - id: later\n    call_task: { assignee: owner, title: A year on }\n",
        encoding="utf-8",
    )
    quiet = (
        "playbook: waits-long.yaml\nstart: { at: 2026-03-03T12:00:00Z, manual: true }\n" + ACCOUNT
        + "script:\n" + urgent("1h").replace("    -", "  -")
        + "expect:\n  - { call_task: later, after: 365d }\n  - { outcome: completed }\n"
    )
    # the same run checking the score at the end: a year of nights, recomputed at five (the first; the last login
    # 7 and 30 days old; the ticket gone and the renewal under 90 days, the same night; the renewal under 30 days)
    checked = quiet + "  - { health: { score: 71.1, band: yellow } }\n"
    first, second = run(tmp_path, quiet, checked)

    assert first.passed and second.passed, (first.failures, second.failures)
    assert first.nights == 0
    assert not [e for e in first.timeline if e["kind"] == "health"]
    assert second.nights == 5, second.timeline


def test_a_night_starts_a_run_from_start_events(tmp_path):
    # two urgent tickets leave the account yellow (57.2); the night the last login turns 30 days old takes it red
    # (48.9), which starts risk-intervention-health while a start event is still to come (it then reaches the run)
    account = ACCOUNT.replace("2026-03-01T08:00:00Z", "2026-02-02T08:00:00Z")
    text = (
        "playbook: risk-intervention-health\nstart:\n  at: 2026-03-03T12:00:00Z\n  events:\n"
        + urgent("0h") + urgent("1h") + urgent("2d", "normal") + account
        + "expect:\n"
        "  - { health: { score: 57.2, band: yellow }, at: 1h }\n"
        "  - { call_task: diagnose_call, assignee: csm-de, after: 14h, within: 15h }\n"  # the night: 03-04 02:00
        "  - { health: { score: 42.2, band: red } }\n"  # and the normal ticket at 2d: three tickets in 30 days
    )
    (report,) = run(tmp_path, text)

    assert report.passed, (report.failures, report.timeline)
    night = [e for e in report.timeline if e["kind"] == "health"]
    assert night[0]["at"] == "+14h" and "57.2 yellow -> 48.9 red" in night[0]["detail"], night
