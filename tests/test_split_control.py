"""`split` steps and `settings.control`: the groups are drawn evenly and stably (pure functions, 10,000 keys), bad
shapes are refused with their positions, and the interpreter on Temporal's time-skipping server takes the drawn path
and holds a control run out of every effect (inline and in the child workflows of a large for_each)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.language.groups import control_draw, held_out, split_index
from engine.language.validator import validate_playbook_text
from engine.testing.scenarios import ScenarioReport, run_scenarios
from tests.paths import ROOT

KEYS = [f"acc-{i}" for i in range(10_000)]
SCENARIOS = ROOT / "tests" / "scenarios"


# ------------------------------------------------------------------ the draw (pure)


@pytest.mark.parametrize("percent", [10, 2.5, 50])
def test_the_control_share_is_within_one_point_of_the_setting(percent):
    share = sum(held_out("onboarding", k, percent) for k in KEYS) / len(KEYS) * 100
    assert abs(share - percent) <= 1.0, share


def test_the_same_keys_land_in_the_same_group_every_time_and_in_every_process():
    first = [held_out("onboarding", k, 10) for k in KEYS]
    assert first == [held_out("onboarding", k, 10) for k in KEYS]
    # another interpreter with another hash seed: the draw is SHA-256, not hash()
    code = (
        "from engine.language.groups import held_out; print(''.join('1' if held_out('onboarding', f'acc-{i}', 10) "
        "else '0' for i in range(10000)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout.strip()
    assert other == "".join("1" if held else "0" for held in first)


def test_a_larger_control_group_keeps_everyone_the_smaller_one_held_out():
    # raising 10% to 20% adds accounts to the control group; nobody held out at 10% is treated at 20%
    assert all(held_out("onboarding", k, 20) for k in KEYS if held_out("onboarding", k, 10))
    assert not any(held_out("onboarding", k, 0) for k in KEYS)


def test_control_groups_of_two_playbooks_are_drawn_independently():
    both = sum(held_out("onboarding", k, 50) and held_out("renewal", k, 50) for k in KEYS) / len(KEYS) * 100
    assert abs(both - 25) <= 1.5, both


def test_split_weights_70_30_within_one_point():
    first = sum(split_index("welcome", "subject_test", k, [70, 30]) == 0 for k in KEYS) / len(KEYS) * 100
    assert abs(first - 70) <= 1.0, first


def test_split_three_paths_and_stability():
    picks = [split_index("welcome", "three", k, [1, 2, 1]) for k in KEYS]
    shares = [picks.count(i) / len(KEYS) * 100 for i in range(3)]
    assert all(abs(s - e) <= 1.0 for s, e in zip(shares, [25, 50, 25], strict=True)), shares
    assert picks == [split_index("welcome", "three", k, [1, 2, 1]) for k in KEYS]


def test_split_and_control_use_different_salts():
    # the treated and the held-out accounts each split 70/30: being held out says nothing of the path
    held = [k for k in KEYS if held_out("welcome", k, 50)]
    treated = [k for k in KEYS if not held_out("welcome", k, 50)]
    for group in (held, treated):
        share = sum(split_index("welcome", "subject_test", k, [70, 30]) == 0 for k in group) / len(group) * 100
        assert abs(share - 70) <= 2.0, share
    # and two split steps of one playbook draw independently
    same = (
        sum(split_index("welcome", "a", k, [1, 1]) == split_index("welcome", "b", k, [1, 1]) for k in KEYS)
        / len(KEYS)
        * 100
    )
    assert abs(same - 50) <= 1.5, same


def test_bad_weights_are_refused_by_the_function_too():
    with pytest.raises(ValueError, match="positive"):
        split_index("p", "s", "k", [1, 0])
    assert 0 <= control_draw("p", "k") < 100


# ------------------------------------------------------------------ validation


def problems_of(text: str) -> list[str]:
    result = validate_playbook_text(textwrap.dedent(text), "pb.yaml")
    return [f"{p.line}:{p.column}: {p.message}" for p in result.problems]


def test_split_shapes_are_refused_with_their_positions():
    found = problems_of(
        """\
        id: bad-split
        title: Bad split
        trigger: { manual: true }
        steps:
          - split:
              paths:
                - { name: a, weight: 1, steps: [ { wait: 1d } ] }
                - { name: b, weight: 1, steps: [ { wait: 1d } ] }
          - id: zero
            split:
              paths:
                - { name: a, weight: 0, steps: [ { wait: 1d } ] }
                - { name: b, weight: -3, steps: [ { wait: 1d } ] }
          - id: missing
            split:
              paths:
                - { name: a, steps: [ { wait: 1d } ] }
                - { name: b, weight: 1.5, steps: [ { wait: 1d } ] }
          - id: twice
            split:
              paths:
                - { name: a, weight: 1, steps: [ { wait: 1d } ] }
                - { name: a, weight: 1, steps: [ { wait: 1d } ] }
          - id: alone
            split:
              paths:
                - { name: only, weight: 1, steps: [ { wait: 1d } ] }
          - id: bad_key
            split:
              key: "{{ acount.id }}"
              paths:
                - { name: a, weight: 1, steps: [ { wait: 1d } ] }
                - { name: b, weight: 1, steps: [ { wait: 1d } ] }
          - id: reads
            when: steps.twice.paht == "a"
            wait: 1d
        """
    )
    expected = [
        "5:5: a split step needs an id",
        "12:30: 'weight' must be at least 1; got 0",
        "13:30: 'weight' must be at least 1; got -3",
        "17:11: missing required key 'weight' in an item of 'paths'",
        "18:30: 'weight' must be a whole number; got the number 1.5",
        "23:19: duplicate path name 'a' (first used at line 22)",
        "27:9: 'paths' needs at least 2 items",
        "30:12: unknown name 'acount'; did you mean 'account'?",
        "35:11: a split step's result has no 'paht'; did you mean 'path'?",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in found), (want, found)
    assert len(found) == len(expected), found


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("60%", "8:12: invalid 'control' '60%': control is a percentage from 0% to 50%, like 10%"),
        ("ten", "8:12: invalid 'control' 'ten': control is a percentage from 0% to 50%, like 10%"),
        ("51", "8:12: 'control' must be at most 50; got 51"),
        ("-1", "8:12: 'control' must be at least 0; got -1"),
        ("true", "8:12: 'control' must be"),
    ],
)
def test_control_outside_0_to_50_percent_is_refused_at_its_position(value, message):
    found = problems_of(
        f"""\
        id: bad-control
        title: Bad control
        trigger: {{ manual: true }}
        steps:
          - id: hello
            crm: {{ tag: hello }}
        settings:
          control: {value}
        """
    )
    assert len(found) == 1 and found[0].startswith(message), found


@pytest.mark.parametrize(("value", "percent"), [("10%", 10.0), ("2.5%", 2.5), ("0%", 0.0), ("50%", 50.0), ("7", 7.0)])
def test_control_values_that_validate_build_their_percentage(value, percent):
    text = (
        f"id: ok-control\ntitle: OK\ntrigger: {{ manual: true }}\nsettings: {{ control: {value} }}\n"
        "steps:\n  - crm: { tag: x }\n"
    )
    result = validate_playbook_text(text, "pb.yaml")
    assert result.ok, result.problems
    assert result.playbook is not None and result.playbook.settings.control == percent


# ------------------------------------------------------------------ the interpreter, on the time-skipping server

FAN_KEYS = 150  # more than INLINE_FOR_EACH_LIMIT: the items run in child workflows (slices)


def fan_out_scenario(folder: Path) -> Path:
    """A held-out account whose for_each of 150 items runs in slices: each item's split (keyed by the item) sends it
    to path `mail` (an email, skipped in the control group) or `broken` (a wait that fails the item). The for_each's
    `failed` counts the items on `broken`; no email goes out."""
    (folder / "fan.yaml").write_text(
        textwrap.dedent(
            f"""\
            id: edge-control-fan
            title: A control run's large for_each
            trigger: {{ manual: true }}
            settings: {{ control: 50% }}
            steps:
              - id: fan
                for_each:
                  items: range({FAN_KEYS}) | list
                  steps:
                    - id: per_item
                      split:
                        key: "item-{{{{ item }}}}"
                        paths:
                          - name: mail
                            weight: 3
                            steps:
                              - id: item_email
                                email: {{ to: "{{{{ contact.email }}}}", subject: Hi, body: Hello. }}
                          - name: broken
                            weight: 1
                            steps:
                              - wait: "{{{{ 'not a duration' }}}}"
            """
        ),
        encoding="utf-8",
    )
    broken = sum(split_index("edge-control-fan", "per_item", f"item-{i}", [3, 1]) == 1 for i in range(FAN_KEYS))
    account = next(k for k in KEYS if held_out("edge-control-fan", k, 50))
    scenario = folder / "fan.scenario.yaml"
    scenario.write_text(
        textwrap.dedent(
            f"""\
            playbook: fan.yaml
            start: {{ at: 2026-03-02T09:00:00Z, manual: true }}
            account: {{ id: {account}, owner: csm-1 }}
            contacts: [ {{ email: anna@kraus.example }} ]
            team: [ {{ id: csm-1, name: Jonas }} ]
            expect:
              - {{ control: true }}
              - {{ step: fan, status: done, result: {{ count: {FAN_KEYS}, failed: {broken} }} }}
              - {{ no_email: item_email }}
              - {{ outcome: completed }}
            """
        ),
        encoding="utf-8",
    )
    return scenario


def enrollment_key_scenario(folder: Path) -> Path:
    """A split without `key` draws by the enrollment key (here the account's domain), not the account id."""
    (folder / "enrolled.yaml").write_text(
        textwrap.dedent(
            """\
            id: edge-split-enrolled
            title: Split by the enrollment key
            trigger: { manual: true }
            enrollment: { key: "{{ account.domain }}" }
            steps:
              - id: by_domain
                split:
                  paths:
                    - { name: first, weight: 1, steps: [ { crm: { tag: first } } ] }
                    - { name: second, weight: 1, steps: [ { crm: { tag: second } } ] }
            """
        ),
        encoding="utf-8",
    )
    by_domain = split_index("edge-split-enrolled", "by_domain", "lindqvist.example", [1, 1])
    assert by_domain != split_index("edge-split-enrolled", "by_domain", "acc-7", [1, 1])  # tells the two apart
    name = ["first", "second"][by_domain]
    scenario = folder / "enrolled.scenario.yaml"
    scenario.write_text(
        textwrap.dedent(
            f"""\
            playbook: enrolled.yaml
            start: {{ at: 2026-03-02T09:00:00Z, manual: true }}
            account: {{ id: acc-7, domain: lindqvist.example, owner: csm-1 }}
            team: [ {{ id: csm-1, name: Jonas }} ]
            expect:
              - {{ step: by_domain, result: {{ path: {name} }} }}
              - {{ account: {{ tags: [{name}] }} }}
            """
        ),
        encoding="utf-8",
    )
    return scenario


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, ScenarioReport]:
    files = [
        SCENARIOS / "split-by-key.scenario.yaml",
        SCENARIOS / "split-other-path.scenario.yaml",
        SCENARIOS / "control-held-out.scenario.yaml",
        SCENARIOS / "control-treated.scenario.yaml",
        fan_out_scenario(tmp_path_factory.mktemp("fan")),
        enrollment_key_scenario(tmp_path_factory.mktemp("enrolled")),
    ]
    return {Path(r.file).name: r for r in asyncio.run(run_scenarios(files))}


def explain(report: ScenarioReport) -> str:
    lines = [f"{report.file}: outcome {report.outcome}", *(f"  FAILED: {f}" for f in report.failures)]
    lines += [f"  {t['at']:>6} {t['step']} {t['kind']} {t['status']} {t['detail']}" for t in report.timeline]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "name",
    [
        "split-by-key.scenario.yaml",
        "split-other-path.scenario.yaml",
        "control-held-out.scenario.yaml",
        "control-treated.scenario.yaml",
        "fan.scenario.yaml",
        "enrolled.scenario.yaml",
    ],
)
def test_the_run_takes_the_drawn_path_and_a_control_run_performs_no_effect(reports, name):
    assert reports[name].passed, explain(reports[name])


def test_the_scenarios_accounts_are_where_the_draw_puts_them():
    # the scenario files name accounts by what the draw gives; this keeps them honest if the draw ever changed
    assert split_index("edge-split", "welcome_test", "acc-10", [70, 30]) == 1
    assert split_index("edge-split", "welcome_test", "acc-1", [70, 30]) == 0
    assert held_out("edge-control", "acc-2", 50) and not held_out("edge-control", "acc-1", 50)


def test_the_timeline_shows_the_path_and_the_control_group(reports):
    split = reports["split-by-key.scenario.yaml"].timeline
    assert {"step": "welcome_test", "status": "info", "detail": "path long"}.items() <= next(
        t for t in split if t["step"] == "welcome_test" and t["status"] == "info"
    ).items()
    held = reports["control-held-out.scenario.yaml"].timeline
    assert held[0]["step"] == "settings.control" and "control group" in held[0]["detail"]
    skipped = [t["step"] for t in held if t["detail"] == "control group: no effect"]
    assert skipped == ["welcome", "tag", "call"]
    treated = reports["control-treated.scenario.yaml"].timeline
    assert not any("control" in t["detail"] for t in treated)


def test_a_control_expectation_that_does_not_hold_fails(tmp_path):
    scenario = tmp_path / "wrong.scenario.yaml"
    text = (SCENARIOS / "control-treated.scenario.yaml").read_text(encoding="utf-8")
    scenario.write_text(
        text.replace("playbooks/edge-control.yaml", str(SCENARIOS / "playbooks" / "edge-control.yaml")).replace(
            "{ control: false }", "{ control: true }"
        ),
        encoding="utf-8",
    )
    (report,) = asyncio.run(run_scenarios([scenario]))
    assert not report.passed
    assert "control: expected true, the run was in the treated group" in report.failures
