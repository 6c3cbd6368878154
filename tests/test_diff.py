"""`playbook diff`: what a change to a playbook changes, as an author or a CI job sees it (the real CLI)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.testing.diff_scenarios import Behaviour, differences
from engine.testing.scenarios import offset_seconds

BASE = """\
id: onboarding-demo
title: Onboarding demo
description: Welcome new trial accounts.
trigger:
  event: account.signed_up
  when: event.data.plan == "trial"
exit_when:
  - event: subscription.activated
    goal: true
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: Welcome to Repricer
      body: Hi {{ contact.first_name }}, welcome aboard.
  - id: pause
    wait: 3d
  - id: sign_off
    approval:
      approvers: owner
      timeout: 2d
  - id: check_in
    email:
      to: "{{ contact.email }}"
      subject: How is it going?
      body: Any questions so far?
  - id: call
    call_task:
      title: Onboarding call
"""


def cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["diff", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def two(tmp_path: Path, new_text: str, old_text: str = BASE) -> tuple[Path, Path]:
    (tmp_path / "old").mkdir(exist_ok=True)
    (tmp_path / "new").mkdir(exist_ok=True)
    old, new = tmp_path / "old" / "demo.yaml", tmp_path / "new" / "demo.yaml"
    old.write_text(old_text)
    new.write_text(new_text)
    return old, new


def as_json(tmp_path: Path, new_text: str, old_text: str = BASE) -> tuple[int, dict]:
    code, out, _err = cli(*two(tmp_path, new_text, old_text), "--json")
    return code, json.loads(out)


def test_moving_a_wait_is_a_timing_change(tmp_path):
    code, out, _ = cli(*two(tmp_path, BASE.replace("wait: 3d", "wait: 5d")))
    assert code == 1
    assert "step pause: duration 3d → 5d" in out
    assert re.search(r"timing\s+│\s+changed", out)
    assert "behaviour changes" in out


def test_the_same_wait_written_otherwise_is_no_change(tmp_path):
    # "3d" and "P3D" are one wait; comments and formatting are not the model
    code, out, _ = cli(*two(tmp_path, BASE.replace("wait: 3d", "wait: P3D  # three days")))
    assert code == 0, out
    assert "behaviour unchanged (no change)" in out


def test_reordering_steps_is_a_flow_change(tmp_path):
    moved = BASE.replace("  - id: pause\n    wait: 3d\n", "").replace(
        "  - id: call\n", "  - id: pause\n    wait: 3d\n  - id: call\n"
    )
    code, data = as_json(tmp_path, moved)
    assert code == 1
    moves = [c for c in data["changes"] if c["change"] == "moved"]
    assert [(c["subject"], c["old"], c["new"]) for c in moves] == [("step pause", "top #2", "top #4")]


def test_removing_an_approval_is_an_approval_and_a_flow_change(tmp_path):
    without = BASE.replace("  - id: sign_off\n    approval:\n      approvers: owner\n      timeout: 2d\n", "")
    code, data = as_json(tmp_path, without)
    assert code == 1
    kinds = {(c["kind"], c["change"], c["subject"]) for c in data["changes"]}
    assert kinds == {("flow", "removed", "step sign_off"), ("approval", "removed", "step sign_off")}
    assert data["summary"] == "behaviour"


def test_rewording_an_email_is_content_only(tmp_path):
    code, out, _ = cli(*two(tmp_path, BASE.replace("Any questions so far?", "Anything we can help with?")))
    assert code == 1  # what customers read changed: a person should look
    assert "Changes: content only" in out
    assert "step check_in: body Any questions so far? → Anything we can help with?" in out


def test_no_change_and_metadata_only_exit_zero(tmp_path):
    code, out, _ = cli(*two(tmp_path, BASE))
    assert (code, "behaviour unchanged (no change)" in out) == (0, True)
    code, data = as_json(tmp_path, BASE.replace("title: Onboarding demo", "title: Trial onboarding"))
    assert code == 0
    assert data["summary"] == "metadata only" and data["behaviour_changed"] is False
    assert [c["text"] for c in data["changes"]] == ["title: Onboarding demo → Trial onboarding"]


def test_trigger_condition_is_an_audience_change(tmp_path):
    code, data = as_json(tmp_path, BASE.replace('plan == "trial"', 'plan in ["trial", "beta"]'))
    assert code == 1
    (change,) = data["changes"]
    assert (change["kind"], change["subject"], change["field"]) == ("audience", "trigger", "when")
    assert change["new"] == 'event.data.plan in ["trial", "beta"]'


def test_json_shape(tmp_path):
    old, new = two(tmp_path, BASE.replace("wait: 3d", "wait: 2bd").replace("goal: true", "goal: false"))
    code, out, _ = cli(old, new, "--json")
    data = json.loads(out)
    assert code == 1
    assert set(data) == {"old", "new", "summary", "kinds", "behaviour_changed", "changes", "scenarios"}
    assert data["old"]["file"] == str(old) and data["new"]["id"] == "onboarding-demo"
    assert len(data["old"]["version"]) == 16 and data["old"]["version"] != data["new"]["version"]
    assert data["kinds"] == ["audience", "timing"] and data["scenarios"] is None
    for change in data["changes"]:
        assert set(change) == {"kind", "change", "subject", "field", "old", "new", "text"}
    timing = next(c for c in data["changes"] if c["kind"] == "timing")
    assert (timing["old"], timing["new"]) == ("3d", "2bd")
    goal = [c["change"] for c in data["changes"] if c["subject"] == "exit_when"]
    assert sorted(goal) == ["added", "removed"]


def test_a_broken_side_is_reported_like_validate(tmp_path):
    old, new = two(tmp_path, BASE.replace("      subject: How is it going?", "      subjet: How is it going?"))
    code, out, err = cli(old, new)
    assert code == 2
    assert f"{new}:25:7: unknown key 'subjet'" in err  # file:line:col of the unknown key
    assert "subjet" in err and out == ""


def test_usage_errors_exit_two(tmp_path):
    old, new = two(tmp_path, BASE)
    assert cli(old)[0] == 2  # neither NEW nor --rev
    assert cli(old, new, "--rev", "HEAD")[0] == 2  # both
    code, _out, err = cli(old, tmp_path / "nope.yaml")
    assert code == 2 and "no such file" in err


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo), *args],
        check=True,
        capture_output=True,
    )


def test_rev_compares_a_file_with_itself_at_a_git_revision(tmp_path):
    repo = tmp_path / "repo"
    (repo / "playbooks").mkdir(parents=True)
    file = repo / "playbooks" / "demo.yaml"
    git(repo, "init", "-q")
    file.write_text(BASE)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    file.write_text(BASE.replace("wait: 3d", "wait: 1w"))
    git(repo, "commit", "-q", "-am", "two")

    code, out, _ = cli(file, "--rev", "HEAD~1")
    assert code == 1
    assert "HEAD~1:playbooks/demo.yaml" in out and "step pause: duration 3d → 1w" in out
    assert cli(file, "--rev", "HEAD")[0] == 0

    code, _out, err = cli(file, "--rev", "no-such-rev")
    assert code == 2
    assert err.strip() == "playbook diff: Git does not know the revision 'no-such-rev' (in " + str(repo) + ")"

    later = repo / "playbooks" / "later.yaml"
    later.write_text(BASE)  # not committed: Git has no such path at HEAD
    code, _out, err = cli(later, "--rev", "HEAD")
    assert code == 2 and "playbooks/later.yaml does not exist at revision HEAD" in err

    outside = tmp_path / "loose.yaml"
    outside.write_text(BASE)
    code, _out, err = cli(outside, "--rev", "HEAD")
    assert code == 2 and "not in a Git repository" in err


SMALL = """\
id: nudge-demo
title: Nudge demo
trigger:
  event: account.signed_up
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subject: Welcome
      body: Hi {{ contact.first_name }}
  - id: pause
    wait: 3d
  - id: nudge
    email:
      to: "{{ contact.email }}"
      subject: Did you set up your first rule?
      body: It takes two minutes.
"""

SCENARIO = """\
playbook: nudge-demo
start:
  event: { type: account.signed_up, data: {} }
account: { id: acc-1, name: Kraus GmbH, language: de, timezone: Europe/Berlin }
contacts: [ { email: anna@kraus.example, first_name: Anna } ]
team: [ { id: csm-de, name: Jonas, languages: [de] } ]
expect:
  - { email: nudge, after: 3d, within: 4d }
  - { outcome: completed }
"""


@pytest.mark.timeout(60)
def test_scenarios_report_the_emails_that_change(tmp_path):
    library = tmp_path / "library"
    (library / "tests").mkdir(parents=True)
    (tmp_path / "old").mkdir()
    old = tmp_path / "old" / "nudge.yaml"
    old.write_text(SMALL)
    new = library / "nudge.yaml"
    new.write_text(SMALL.replace("wait: 3d", "wait: 5d").replace("your first rule?", "your first repricing rule?"))
    (library / "tests" / "nudge.scenario.yaml").write_text(SCENARIO)

    code, out, _err = cli(old, new, "--scenarios", "--json")
    assert code == 1
    (scenario,) = json.loads(out)["scenarios"]
    assert scenario["file"].endswith("nudge.scenario.yaml") and scenario["differs"] is True
    assert scenario["old"]["outcome"] == scenario["new"]["outcome"] == "completed"
    old_nudge = next(e for e in scenario["old"]["emails"] if e["step"] == "nudge")
    new_nudge = next(e for e in scenario["new"]["emails"] if e["step"] == "nudge")
    # the clock of the time-skipping server runs in real time while effects are made: a second or two on a busy machine
    assert 0 <= offset_seconds(old_nudge["at"]) - 3 * 86400 < 60
    assert 0 <= offset_seconds(new_nudge["at"]) - 5 * 86400 < 60
    assert new_nudge["subject"] == "Did you set up your first repricing rule?" and new_nudge["to"] == [
        "anna@kraus.example"
    ]
    assert scenario["differences"] == [
        "email nudge (anna@kraus.example): subject 'Did you set up your first rule?' → "
        "'Did you set up your first repricing rule?'",
        f"email nudge (anna@kraus.example): at {old_nudge['at']} → {new_nudge['at']}",
    ]
    assert scenario["old"]["failures"] == []
    assert scenario["new"]["failures"] == ["email nudge sent at +5d, expected at or before +4d"]
    assert scenario["new"]["steps"]["welcome"] == scenario["old"]["steps"]["welcome"]


def test_an_effect_moved_by_seconds_of_real_time_is_not_a_difference():
    """Two runs of one scenario: the same email a few seconds apart (the test server's clock runs in real time while
    effects are made) is the same email; a minute or more apart, it moved."""
    email = {"step": "nudge", "to": ["anna@kraus.example"], "subject": "Hi", "status": "sent", "at": "+3d"}
    behaviour = Behaviour(outcome="completed", emails=[email])
    for at, moved in (("+3d2s", False), ("+3d59s", False), ("+3d1m", True), ("+2d23h59m", True)):
        other = Behaviour(outcome="completed", emails=[{**email, "at": at}])
        assert differences(behaviour, other) == ([f"email nudge (anna@kraus.example): at +3d → {at}"] if moved else [])
    assert [offset_seconds(x) for x in ("+3d2s", "-1h", "+0s", "+2d23h59m")] == [259202, -3600, 0, 259140]


SWITCH = """\
id: routing-demo
title: Routing demo
steps:
  - id: route
    switch:
      - when: account.sku_count > 100
        steps:
          - id: big
            email: { to: "{{ contact.email }}", subject: Big catalogue, body: Hello }
      - else:
          - id: small
            call_task: { title: Call the seller }
  - id: fan
    parallel:
      - name: mail
        steps:
          - { id: settle, wait: 1d }
      - name: crm
        steps:
          - { id: tag_trial, crm: { tag: trial } }
"""


def test_steps_moved_between_branches_are_named_with_their_path(tmp_path):
    changed = (
        SWITCH.replace("account.sku_count > 100", "account.sku_count > 500")
        .replace(
            "      - else:\n          - id: small\n            call_task: { title: Call the seller }\n",
            "          - id: small\n            call_task: { title: Call the seller }\n",
        )
        .replace("name: crm", "name: hubspot")
    )
    code, data = as_json(tmp_path, changed, SWITCH)
    assert code == 1
    assert [c["text"] for c in data["changes"]] == [
        "moved step small: route else #1 → route case 1 #2",
        "step route: case 1.when account.sku_count > 100 → account.sku_count > 500",
        "step route: else branch removed",
        "step fan: branch 2.name crm → hubspot",  # renaming a branch moves none of its steps
    ]


def test_steps_without_ids_are_matched_by_name_then_by_place(tmp_path):
    unnamed = BASE.replace("  - id: pause\n    wait: 3d\n", "  - name: Give them time\n    wait: 3d\n")
    renamed = unnamed.replace("Give them time", "Let them settle in")
    code, data = as_json(tmp_path, renamed, unnamed)
    assert (code, data["summary"]) == (0, "metadata only")
    inserted = unnamed.replace("  - name: Give", "  - id: tag\n    crm: { tag: onboarding }\n  - name: Give")
    code, data = as_json(tmp_path, inserted, unnamed)
    assert code == 1
    assert [c["text"] for c in data["changes"]] == ["added crm step tag at top #2"]


POLICY = """\
default_category: marketing
categories:
  onboarding: {}
  marketing: {}
caps:
  - { channel: email, max: 3, per: 7d }
"""


def test_the_messaging_policy_is_compared_not_where_it_was_read(tmp_path):
    old, new = two(tmp_path, BASE)
    (old.parent / "policy.yaml").write_text(POLICY)
    (new.parent / "policy.yaml").write_text(POLICY)
    assert cli(old, new)[0] == 0  # two libraries, one policy
    (new.parent / "policy.yaml").write_text(POLICY.replace("max: 3", "max: 2"))
    code, out, _ = cli(old, new, "--json")
    assert code == 1
    assert [(c["kind"], c["field"]) for c in json.loads(out)["changes"]] == [("policy", "caps")]
