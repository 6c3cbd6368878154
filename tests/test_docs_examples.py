"""Every YAML example in the author's guide and in the language contract is what it claims to be.

The contract's examples are the ones copied into docs/language-contract-examples.md: the repository reads
nothing outside itself.

Each ```yaml block is one of:
- a complete playbook (top-level `id` and `steps`): validated as it stands;
- a scenario (top-level `playbook`): validated against the library in playbooks/;
- a messaging policy (top-level `default_category`): validated as a policy.yaml;
- playbook sections without steps (`trigger:`, `vars:`...): given an id and one step, then validated;
- one step (a mapping with a kind key) or a list of steps: wrapped into a minimal playbook, then validated.

A block right after an `<!-- invalid -->` line must produce problems; if a ```text block follows it, that is
exactly what `playbook validate` prints for it today (headers, source lines and carets). A block after
`<!-- not-a-playbook -->` (a CI workflow, say) only has to be YAML.

Every message quoted in the guide's table of common errors must also be printed today, by a small broken file
kept here (TABLE_SNIPPETS).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from engine.language.library import Resolver, validate_paths
from engine.language.policy_file import validate_policy_text
from engine.language.scenario import validate_scenario_text
from engine.language.schema_source import STEP_KINDS
from engine.language.validator import validate_playbook_text
from tests.paths import CONTRACT_EXAMPLES

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "playbook-language.md"
CONTRACT = CONTRACT_EXAMPLES
# Where scenario examples pretend to live, so `playbook: <id>` resolves in the real library.
SCENARIO_HOME = REPO / "playbooks" / "tests" / "docs-example.scenario.yaml"

PLAYBOOK_KEYS = {"id", "title", "description", "trigger", "enrollment", "exit_when", "settings", "vars", "steps"}
MARKERS = {"invalid", "not-a-playbook"}
FENCE = re.compile(r"^```(\w*)\s*$")
HEADER = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<col>\d+): .+ \[\w+\]$")


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence
    text: str
    marker: str | None
    output: str | None  # a ```text block right after this one

    @property
    def name(self) -> str:
        return f"{self.doc.name}:{self.line}"


def extract(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    fenced: list[tuple[int, str, str, str | None]] = []  # (fence line, language, text, marker)
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"{doc.name}:{start + 1}: unclosed code fence"
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = re.fullmatch(r"<!--\s*([\w-]+)\s*-->", prev)
        fenced.append((start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", marker.group(1) if marker else None))
        i = j + 1
    blocks = []
    for n, (line, lang, text, marker) in enumerate(fenced):
        if lang != "yaml":
            continue
        assert marker is None or marker in MARKERS, f"{doc.name}:{line}: unknown marker <!-- {marker} -->"
        following = fenced[n + 1] if n + 1 < len(fenced) else None
        output = following[2] if following and following[1] == "text" else None
        blocks.append(Block(doc, line, text, marker, output))
    return blocks


def is_step(value: object) -> bool:
    return isinstance(value, dict) and any(k in value for k in STEP_KINDS)


def indent(text: str, first: str, rest: str) -> str:
    lines = text.rstrip("\n").splitlines()
    return "\n".join([first + lines[0]] + [(rest + ln) if ln.strip() else ln for ln in lines[1:]]) + "\n"


def load(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # a block showing a YAML error: validated as it stands


def as_playbook(block: Block) -> tuple[str, str]:
    """(kind of block, playbook text to validate)."""
    data = load(block.text)
    if data is None and block.marker == "invalid":
        return "playbook", block.text
    if isinstance(data, dict) and "id" in data and "steps" in data:
        return "playbook", block.text
    if isinstance(data, dict) and data and set(data) <= PLAYBOOK_KEYS - {"id", "steps"}:
        return "sections", f"id: docs-example\n{block.text}steps:\n  - crm: {{ note: docs example }}\n"
    if isinstance(data, list) and data and all(is_step(s) for s in data):
        return "steps", "id: docs-example\nsteps:\n" + indent(block.text, "  ", "  ")
    if is_step(data):
        return "step", "id: docs-example\nsteps:\n" + indent(block.text, "  - ", "    ")
    raise AssertionError(
        f"{block.name}: a ```yaml block must be a playbook, a scenario, playbook sections, a step or a list of steps "
        "(or be marked <!-- not-a-playbook -->)"
    )


def file_of(output: str | None) -> str:
    for line in (output or "").splitlines():
        m = HEADER.match(line)
        if m:
            return m.group("file")
    return "<docs example>"


def problems_of(block: Block) -> tuple[list[str], str]:
    """The problem headers of a block, and what was validated (for failure messages)."""
    file = file_of(block.output)
    data = load(block.text)
    if isinstance(data, dict) and "playbook" in data:
        result = validate_scenario_text(block.text, file, Resolver(), SCENARIO_HOME)
        return [p.header() for p in result.problems], block.text
    if isinstance(data, dict) and "default_category" in data:
        return [p.header() for p in validate_policy_text(block.text, file).problems], block.text
    _, text = as_playbook(block)
    result = validate_playbook_text(text, file)
    return [p.header() for p in result.problems], text


def test_the_contract_examples_are_in_the_repository():
    assert CONTRACT.resolve().is_relative_to(REPO) and GUIDE.resolve().is_relative_to(REPO)
    kinds = [next(iter(yaml.safe_load(b.text))) for b in CONTRACT_BLOCKS]
    assert kinds == ["id", "playbook"], "the contract's examples: its whole playbook, then its scenario"


GUIDE_BLOCKS = extract(GUIDE)
CONTRACT_BLOCKS = extract(CONTRACT)
ALL_BLOCKS = GUIDE_BLOCKS + CONTRACT_BLOCKS


def test_the_documents_have_examples():
    assert len(GUIDE_BLOCKS) >= 25
    assert any(b.marker == "invalid" for b in GUIDE_BLOCKS)
    assert len(CONTRACT_BLOCKS) >= 2


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker is None], ids=lambda b: b.name)
def test_example_is_valid(block: Block):
    problems, text = problems_of(block)
    assert problems == [], f"{block.name} should be valid; validated:\n{text}\nproblems:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "invalid"], ids=lambda b: b.name)
def test_invalid_example_shows_the_problems_printed_today(block: Block):
    problems, text = problems_of(block)
    assert problems, f"{block.name} is marked invalid but validates cleanly:\n{text}"
    shown = [line for line in (block.output or "").splitlines() if HEADER.match(line)]
    missing = [line for line in shown if line not in problems]
    assert missing == [], f"{block.name}: the guide shows messages the validator does not print:\n" + "\n".join(
        missing
    ) + "\nit prints:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.marker == "invalid" and b.output], ids=lambda b: b.name
)
def test_shown_output_is_what_the_command_prints(block: Block, tmp_path: Path):
    """The ```text after an invalid example is exactly what `playbook validate FILE` prints, carets included."""
    file = file_of(block.output)
    assert file != "<docs example>", f"{block.name}: the output shown names no file"
    path = tmp_path / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", file],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert run.returncode == 1, run.stderr
    printed = [line.rstrip() for line in run.stderr.splitlines()]
    shown = [line.rstrip() for line in (block.output or "").splitlines()]
    assert printed == shown


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == "not-a-playbook"], ids=lambda b: b.name)
def test_other_yaml_is_at_least_yaml(block: Block):
    yaml.safe_load(block.text)


def test_wrapping_keeps_a_step_fragment_a_step():
    text = "id: x\nwhen: true\nemail:\n  to: a@b.example\n  subject: s\n  body: |\n    hi\n"
    block = Block(GUIDE, 0, text, None, None)
    kind, text = as_playbook(block)
    assert kind == "step"
    assert yaml.safe_load(text)["steps"][0]["email"]["body"] == "hi\n"


# ---------------------------------------------------------------- the table of common errors
#
# Each message quoted in "Common errors and what to do" is produced by one small broken file here. A new row in
# the table needs a snippet; a changed message fails the test, so the guide never quotes a message of the past.
# `…` in a quoted message stands for text left out.


def _playbook(steps: str, head: str = "") -> str:
    return f"id: broken-example\n{head}steps:\n{steps}"


_EMAIL_TYPO = _playbook(
    '  - id: welcome\n    email:\n      to: "{{ contact.email }}"\n      subjet: Hi\n      body: Hi\n'
)
_CALL = "    call_task: { title: Call, wait: true, outcomes: [done, no_answer, declined] }\n"
_SCENARIO = "playbook: repricer-onboarding\nstart:\n  at: {at}\naccount: {{ id: acc-1 }}\nscript:\n  - {item}\n"

# message in the table -> (what the snippet is, its text)
TABLE_SNIPPETS: dict[str, tuple[str, str]] = {
    "unknown key 'subjet' in email step; did you mean 'subject'?": ("playbook", _EMAIL_TYPO),
    "missing required key 'subject' in email step (or give a provider template_id)": (
        "playbook",
        _playbook("  - email: { to: a@example.com, body: Hi }\n"),
    ),
    "unknown step kind 'emial'; did you mean 'email'? A step has one of: …": (
        "playbook",
        _playbook("  - emial: { to: a@example.com, subject: Hi, body: Hi }\n"),
    ),
    "step has no kind; a step has exactly one of: …": ("playbook", _playbook("  - id: lonely\n    name: Lonely\n")),
    "step has 2 kinds ('email', 'wait'); … Split it into separate steps": (
        "playbook",
        _playbook("  - email: { to: a@example.com, subject: Hi, body: Hi }\n    wait: 2d\n"),
    ),
    "a step must be a mapping with one kind key (…); got 'send the follow-up email'": (
        "playbook",
        _playbook("  - send the follow-up email\n"),
    ),
    "invalid 'wait' '3 days': a duration is like 30s, 15m, 2h, 14d, 2w, 3bd or P14D": (
        "playbook",
        _playbook("  - wait: 3 days\n"),
    ),
    "'5000d' is longer than ten years": ("playbook", _playbook("  - wait: 5000d\n")),
    "'when' is an expression: write it without {{ }}, e.g. when: account.plan == 'pro'. "
    "With braces it is text, which is always true": (
        "playbook",
        _playbook("  - when: \"{{ account.plan == 'pro' }}\"\n    crm: { tag: pro }\n"),
    ),
    "unknown name 'contatc'; did you mean 'contact'? names in scope here: …": (
        "playbook",
        _playbook('  - crm: { note: "{{ contatc.email }}" }\n'),
    ),
    "unknown name 'contact'; names in scope here: event, account": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "trigger:\n  event: account.signed_up\n  when: contact.language == 'de'\n"),
    ),
    "unknown variable 'vars.trail_days'; did you mean 'vars.trial_days'? declare it under 'vars:' or with a set "
    "step before it (declared: trial_days)": (
        "playbook",
        _playbook("  - when: vars.trail_days > 3\n    crm: { note: x }\n", "vars:\n  trial_days: 14\n"),
    ),
    "unknown step 'steps.onboarding_cal'; did you mean 'steps.onboarding_call'?": (
        "playbook",
        _playbook(
            f"  - id: onboarding_call\n{_CALL}"
            "  - when: steps.onboarding_cal.outcome == 'done'\n    crm: { note: x }\n"
        ),
    ),
    "steps.check_in (line 9) has not run at this point: a step can only use the results of steps before it "
    "(not of later steps, nor of another switch case or parallel branch)": (
        "playbook",
        _playbook(
            "  - when: steps.check_in.outcome == 'done'\n    crm: { note: x }\n"
            + "  - crm: { note: y }\n" * 4
            + f"  - id: check_in\n{_CALL}"
        ),
    ),
    "steps.hello runs once per item inside a for_each (line 8); outside it use the for_each step's count and failed": (
        "playbook",
        _playbook(
            "  - id: each_contact\n    for_each:\n      items: contacts\n      as: person\n      steps:\n"
            '        - id: hello\n          email: { to: "{{ person.email }}", subject: Hi, body: Hi }\n'
            "  - when: steps.hello.status == 'sent'\n    crm: { note: x }\n"
        ),
    ),
    "a call_task step's result has no 'result'; it has task_id, outcome, assignee, status, error": (
        "playbook",
        _playbook(
            f"  - id: onboarding_call\n{_CALL}"
            "  - when: steps.onboarding_call.result == 'done'\n    crm: { note: x }\n"
        ),
    ),
    "step 'onboarding_call' cannot use its own result": (
        "playbook",
        _playbook(f"  - id: onboarding_call\n    when: steps.onboarding_call.outcome == 'done'\n{_CALL}"),
    ),
    "'event' has no field 'score'; event data is under event.data.score; fields: id, type, data, occurred_at, "
    "account_id": ("playbook", _playbook("  - when: event.score > 8\n    crm: { note: x }\n")),
    "duplicate step id 'welcome' (first used at line 6); step ids are unique in a playbook": (
        "playbook",
        _playbook(
            "  - crm: { note: a }\n" * 3
            + "  - id: welcome\n    crm: { note: b }\n  - id: welcome\n    crm: { note: c }\n"
        ),
    ),
    "invalid 'id' 'welcome-email': a step id is snake_case: lowercase letters, digits and _, starting with a letter": (
        "playbook",
        _playbook("  - id: welcome-email\n    crm: { note: x }\n"),
    ),
    "invalid 'event' 'SignedUp': an event type is a dotted lowercase name like account.signed_up": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "trigger:\n  event: SignedUp\n"),
    ),
    "invalid cron '0 9 1 1,4,7,10': expected five fields, minute hour day-of-month month day-of-week, "
    'e.g. "0 9 1 1,4,7,10 *"': (
        "playbook",
        _playbook("  - crm: { note: x }\n", 'trigger:\n  schedule:\n    cron: "0 9 1 1,4,7,10"\n'),
    ),
    "unknown timezone 'Europe/Munich'; expected an IANA name like Europe/Berlin or UTC": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "settings:\n  timezone: Europe/Munich\n"),
    ),
    "invalid 'quiet_hours' '8pm-8am': quiet_hours is HH:MM-HH:MM, e.g. 20:00-08:00": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "settings:\n  quiet_hours: 8pm-8am\n"),
    ),
    "assignee must be owner, role:<name>, user:<id> or a template giving a CSM id; got 'team-lead'; "
    "did you mean 'user:team-lead'?": ("playbook", _playbook("  - call_task: { title: Call, assignee: team-lead }\n")),
    "invalid 'approvers' 'boss': an approver is owner, role:<name> or user:<id>": (
        "playbook",
        _playbook("  - approval: { approvers: boss }\n"),
    ),
    "invalid 'on_timeout' 'escalate': on_timeout is reject, approve or escalate:<approver>": (
        "playbook",
        _playbook("  - approval: { approvers: owner, on_timeout: escalate }\n"),
    ),
    "'by' must be one of language, round_robin, least_loaded, owner; got 'langauge'; did you mean 'language'?": (
        "playbook",
        _playbook("  - assign: { by: langauge }\n"),
    ),
    "call_task 'timeout' only applies with 'wait: true'": (
        "playbook",
        _playbook("  - call_task: { title: Call, timeout: 2d }\n"),
    ),
    "'else' must be the last item of a switch; the cases after it never run": (
        "playbook",
        _playbook(
            "  - switch:\n      - else:\n          - crm: { note: a }\n"
            "      - when: account.plan == 'pro'\n        steps:\n          - crm: { note: b }\n"
        ),
    ),
    "wait needs exactly one of 'until' (with an optional offset) or 'business_days'": (
        "playbook",
        _playbook('  - wait: { until: "{{ account.renewal_date }}", business_days: 3 }\n'),
    ),
    "crm step takes exactly one of update, note, tag, lookup; got 'update' and 'note'": (
        "playbook",
        _playbook("  - crm: { update: { plan: pro }, note: x }\n"),
    ),
    "'as: contact' would hide the playbook's own 'contact'; pick another name": (
        "playbook",
        _playbook("  - for_each: { items: contacts, as: contact, steps: [ { crm: { note: x } } ] }\n"),
    ),
    "trigger has both 'event' and 'schedule'; give exactly one of event, schedule, manual": (
        "playbook",
        _playbook(
            "  - crm: { note: x }\n", 'trigger:\n  event: account.signed_up\n  schedule: { cron: "0 9 * * 1" }\n'
        ),
    ),
    "trigger 'when' filters events; it needs 'event' (for schedules use schedule.accounts)": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "trigger:\n  manual: true\n  when: account.plan == 'pro'\n"),
    ),
    "'yes' is read as a boolean: write true or false, or quote it ('yes') for text": (
        "playbook",
        _playbook("  - call_task: { title: Call, outcomes: [yes, no] }\n"),
    ),
    "unknown filter 'days_till'; did you mean 'days_until'?": (
        "playbook",
        _playbook('  - crm: { note: "{{ account.renewal_date | days_till }}" }\n'),
    ),
    "filter 'random' is not allowed: templates must give the same result when a run is replayed": (
        "playbook",
        _playbook('  - when: "[true, false] | random"\n    crm: { note: x }\n'),
    ),
    "'now' is not allowed: templates cannot read the clock (…); days_until and days_since use the run's clock": (
        "playbook",
        _playbook('  - crm: { note: "Sent on {{ now() }}" }\n'),
    ),
    "range(100000) would give 100,000 numbers; a template makes at most 10,000 loop iterations": (
        "playbook",
        _playbook('  - crm: { note: "{% for i in range(100000) %}.{% endfor %}" }\n'),
    ),
    "the template's loops make 15,500 iterations (range(30) inside range(500)); a template makes at most 10,000 "
    "loop iterations": (
        "playbook",
        _playbook(
            "  - crm:\n      note: |\n"
            "        {% for week in range(500) %}\n        {% for day in range(30) %}[ ]{% endfor %}\n"
            "        {% endfor %}\n"
        ),
    ),
    "the template's output is over 100,000 characters (at least …)": (
        "playbook",
        _playbook('  - crm: { note: "{% for i in range(6000) %}Thank you, again!{% endfor %}" }\n'),
    ),
    "'*' would build 200,000 characters or items; a template builds values of at most 100,000": (
        "playbook",
        _playbook("  - crm: { note: \"{{ '=' * 200000 }}\" }\n"),
    ),
    "access to '__class__' is not allowed: templates cannot reach Python internals": (
        "playbook",
        _playbook('  - crm: { note: "{{ account.__class__ }}" }\n'),
    ),
    "'{% include %}' is not allowed: a template cannot load other templates or files": (
        "playbook",
        _playbook('  - crm: { note: "{% include \'notes.txt\' %}" }\n'),
    ),
    "template syntax error: '{{' is not closed; add '}}'": (
        "playbook",
        _playbook('  - crm: { note: "{{ account.name " }\n'),
    ),
    "expression syntax error: unexpected '='": (
        "playbook",
        _playbook("  - when: account.plan = 'pro'\n    crm: { note: x }\n"),
    ),
    "run_playbook: no playbook 'renewal-nuge' in the library; did you mean 'renewal-nudge'?": (
        "library",
        "parent.yaml=" + _playbook("  - run_playbook: { id: renewal-nuge }\n")
        + "\0renewal-nudge.yaml=id: renewal-nudge\nsteps:\n  - crm: { note: x }\n",
    ),
    "playbook id 'welcome-series' is also used by playbooks/welcome-v2.yaml; ids are unique in a library": (
        "library",
        "welcome.yaml=id: welcome-series\nsteps:\n  - crm: { note: a }\n"
        "\0welcome-v2.yaml=id: welcome-series\nsteps:\n  - crm: { note: b }\n",
    ),
    "YAML syntax error: tab character; YAML does not allow tabs for indentation: use spaces": (
        "playbook",
        "id: tabbed\nsteps:\n\t- crm: { note: x }\n",
    ),
    "YAML syntax error: unexpected ':' here; quote the value if it contains ': ', or fix the indentation": (
        "playbook",
        _playbook("  - email:\n      to: a@example.com\n      subject: Re: your account\n      body: Hi\n"),
    ),
    "YAML syntax error: did not find expected alphabetic or numeric character (while scanning an alias)": (
        "playbook",
        _playbook("  - crm: { note: x }\n", "trigger:\n  schedule:\n    cron: */15 * * * *\n"),
    ),
    "a key must be a plain value, not a list or mapping": (
        "playbook",
        _playbook("  - email:\n      to: {{ contact.email }}\n      subject: Hi\n      body: Hi\n"),
    ),
    "duplicate key 'subject' (first defined at line 9)": (
        "playbook",
        _playbook(
            "  - crm: { note: a }\n" * 4
            + "  - email:\n      to: a@example.com\n      subject: Hi\n      body: Hi\n      subject: Hello\n"
        ),
    ),
    "file is empty; a playbook needs at least 'id' and 'steps'": ("playbook", "# nothing here yet\n"),
    "playbook 'repricer-onboarding' has no step 'onboarding_cal'; did you mean 'onboarding_call'?": (
        "scenario",
        _SCENARIO.format(at="2026-03-02T09:00:00Z", item="{ call_task: onboarding_cal, outcome: done }"),
    ),
    "outcome 'finished' is not one of step 'onboarding_call' outcomes: done, no_answer, declined": (
        "scenario",
        _SCENARIO.format(at="2026-03-02T09:00:00Z", item="{ call_task: onboarding_call, outcome: finished }"),
    ),
    "start.at needs a timezone, e.g. 2026-03-02T09:00:00Z": (
        "scenario",
        _SCENARIO.format(at="2026-03-02T09:00:00", item="{ call_task: onboarding_call, outcome: done }"),
    ),
    "category 'marketting' is not declared in …; did you mean 'marketing'?": (
        "playbook",
        _playbook("  - email: { category: marketting, to: a@example.com, subject: Hi, body: Hi }\n"),
    ),
    "the subject is empty; the email provider refuses an email without a subject (SendGrid answers 400): write one, "
    "or give a provider template_id": (
        "playbook",
        _playbook("  - email: { to: a@example.com, subject: '', body: Hi }\n"),
    ),
    "category is a name from the policy, not a template: consent and caps are decided by it before the email is "
    "written": (
        "playbook",
        _playbook("  - email: { category: '{{ account.plan }}', to: a@example.com, subject: Hi, body: Hi }\n"),
    ),
    "the messaging policy … that applies to this playbook has 1 problem(s); no run can start until it is fixed": (
        "library",
        "policy.yaml=default_category: marketing\ncategories: { news: {} }\n"
        "\0welcome.yaml=id: welcome-series\nsteps:\n  - crm: { note: a }\n",
    ),
    "default_category 'marketting' is not a category of the policy; did you mean 'marketing'?": (
        "policy",
        "default_category: marketting\ncategories: { marketing: {} }\n",
    ),
    "cap category 'onbording' is not a category of the policy; did you mean 'onboarding'?": (
        "policy",
        "default_category: onboarding\ncategories: { onboarding: {} }\ncaps: [ { categories: [onbording], max: 1, "
        "per: 1d } ]\n",
    ),
    "a cap's 'per' must be a fixed duration (m, h, d or w); business days ('3bd') have no fixed length, so they "
    "cannot make a rolling window": (
        "policy",
        "default_category: m\ncategories: { m: {} }\ncaps: [ { max: 1, per: 3bd } ]\n",
    ),
    "'max_delay' only applies with 'when_capped: defer'": (
        "policy",
        "default_category: m\ncategories: { m: {} }\nmax_delay: 1d\n",
    ),
    "category 'transactional' does not allow opting out (unsubscribe: false in …)": (
        "scenario",
        _SCENARIO.format(
            at="2026-03-02T09:00:00Z", item="{ at: 1d, unsubscribe: anna@kraus.example, category: transactional }"
        ),
    ),
}


def table_messages() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("### Common errors and what to do", 1)[1].split("\n## ", 1)[0]
    rows = [re.match(r"\| `(.+?)`(?: \((?:scenario|policy\.yaml)\))? \|", line) for line in section.splitlines()]
    return [m.group(1) for m in rows if m]


def matches(quoted: str, message: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in quoted.split("…"))
    return re.fullmatch(pattern, message, re.DOTALL) is not None


def messages_of(kind: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if kind == "playbook":
        return [p.message for p in validate_playbook_text(text, "playbooks/broken-example.yaml").problems]
    if kind == "scenario":
        result = validate_scenario_text(text, "docs.scenario.yaml", Resolver(), SCENARIO_HOME)
        return [p.message for p in result.problems]
    if kind == "policy":
        return [p.message for p in validate_policy_text(text, "playbooks/policy.yaml").problems]
    folder = tmp_path / "playbooks"
    folder.mkdir()
    for entry in text.split("\0"):
        name, body = entry.split("=", 1)
        (folder / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return [p.message for r in validate_paths([Path("playbooks")]) for p in r.problems]


def test_the_table_of_common_errors_is_long():
    assert len(table_messages()) >= 40


@pytest.mark.parametrize("quoted", table_messages())
def test_common_error_is_printed_as_quoted(quoted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert quoted in TABLE_SNIPPETS, f"add a broken snippet for this row of the table to TABLE_SNIPPETS: {quoted}"
    kind, text = TABLE_SNIPPETS[quoted]
    messages = messages_of(kind, text, tmp_path, monkeypatch)
    assert any(matches(quoted, m) for m in messages), "the validator prints instead:\n" + "\n".join(messages)
