"""The messaging policy (policy.yaml): its format, its errors at their line and column, the default, and how
playbooks and scenarios are checked against it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.converter import DataConverter

from engine.language.library import Library, Resolver, discover, validate_paths
from engine.language.model import EmailStep, Playbook, from_data, to_data
from engine.language.policy import DEFAULT_POLICY, Cap, Category, Policy
from engine.language.policy_file import PolicyResult, find_policy_file, validate_policy_text
from engine.language.scenario import validate_scenario_text
from engine.language.validator import validate_playbook_file, validate_playbook_text
from tests.paths import PLAYBOOKS, ROOT

ISSUE_EXAMPLE = """\
default_category: marketing
categories:
  transactional: { unsubscribe: false, capped: false }   # receipts, password resets: never capped, no opt-out
  onboarding: {}
  marketing: { sendgrid_group: 4242 }
caps:
  - { channel: email, categories: [marketing, onboarding], max: 1, per: 1d }
  - { channel: email, max: 3, per: 7d }
when_capped: defer
max_delay: 2d
"""

PLAYBOOK = """\
id: welcome-series
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      category: onboarding
      subject: Welcome
      body: Hi
"""


def problems_of(text: str) -> list[tuple[int, int, str]]:
    result = validate_policy_text(text, "policy.yaml")
    return [(p.line, p.column, p.message) for p in result.problems]


def only_problem(text: str) -> tuple[int, int, str]:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------------ the format


def test_the_issue_example_is_a_valid_policy():
    result = validate_policy_text(ISSUE_EXAMPLE, "policy.yaml")
    assert result.problems == []
    policy = result.policy
    assert policy is not None
    assert policy.default_category == "marketing"
    assert policy.categories == (
        Category(name="transactional", unsubscribe=False, capped=False),
        Category(name="onboarding"),
        Category(name="marketing", sendgrid_group=4242),
    )
    assert policy.caps == (
        Cap(channel="email", max=1, per="1d", per_seconds=86400, categories=("marketing", "onboarding")),
        Cap(channel="email", max=3, per="7d", per_seconds=7 * 86400),
    )
    assert (policy.when_capped, policy.max_delay, policy.max_delay_seconds) == ("defer", "2d", 2 * 86400)


def test_rules_of_an_email_name_the_caps_that_count_it():
    policy = validate_policy_text(ISSUE_EXAMPLE, "policy.yaml").policy
    assert policy is not None
    marketing = policy.for_email("marketing")
    assert marketing.unsubscribe and marketing.capped and marketing.sendgrid_group == 4242
    # the all-categories cap is spelt out as the capped categories: transactional email never counts
    assert [(c.max, c.per_seconds, c.categories) for c in marketing.caps] == [
        (1, 86400, ("marketing", "onboarding")),
        (3, 7 * 86400, ("onboarding", "marketing")),
    ]
    assert (marketing.when_capped, marketing.max_delay_seconds) == ("defer", 2 * 86400)
    transactional = policy.for_email("transactional")
    assert (transactional.unsubscribe, transactional.capped, transactional.caps) == (False, False, ())
    assert policy.for_email(None).category == "marketing"  # a step without category: the default


def test_an_unknown_category_at_run_time_gets_the_strictest_rules():
    rules = DEFAULT_POLICY.for_email("newsletter")
    assert (rules.category, rules.unsubscribe, rules.capped) == ("newsletter", True, True)


def test_max_delay_defaults_to_three_days_with_defer():
    text = "default_category: m\ncategories: { m: {} }\nwhen_capped: defer\n"
    policy = validate_policy_text(text).policy
    assert policy is not None
    assert (policy.max_delay, policy.max_delay_seconds) == ("3d", 3 * 86400)
    assert policy.for_email("m").max_delay_seconds == 3 * 86400


def test_channel_defaults_to_email_and_skip_is_the_default():
    policy = validate_policy_text("default_category: m\ncategories: { m: {} }\ncaps: [ { max: 2, per: 12h } ]\n").policy
    assert policy is not None
    assert policy.caps == (Cap(channel="email", max=2, per="12h", per_seconds=43200),)
    assert (policy.when_capped, policy.max_delay_seconds) == ("skip", None)


# ------------------------------------------------------------------------------------ errors, positioned


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "default_category: marketing\ncategoris:\n  marketing: {}\n",
            (2, 1, "unknown key 'categoris' in the policy; did you mean 'categories'?"),
        ),
        (
            "default_category: marketing\ncategories:\n  marketing: { unsubscribes: false }\n",
            (3, 16, "unknown key 'unsubscribes' in 'marketing'; did you mean 'unsubscribe'?"),
        ),
        (
            "default_category: marketting\ncategories:\n  marketing: {}\n",
            (1, 19, "default_category 'marketting' is not a category of the policy; did you mean 'marketing'?"),
        ),
        (
            "default_category: m\ncategories: { m: {}, onboarding: {} }\ncaps:\n"
            "  - { categories: [onbording], max: 1, per: 1d }\n",
            (4, 20, "cap category 'onbording' is not a category of the policy; did you mean 'onboarding'?"),
        ),
        (
            "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 1, per: 3bd }\n",
            (
                4,
                20,
                "a cap's 'per' must be a fixed duration (m, h, d or w); business days ('3bd') have no fixed length, "
                "so they cannot make a rolling window",
            ),
        ),
        (
            "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 1, per: 0d }\n",
            (4, 20, "a cap's 'per' must be longer than 0; got '0d'"),
        ),
        (
            "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 1, per: 1 day }\n",
            (
                4,
                20,
                "invalid 'per' '1 day': a window is a fixed duration in minutes, hours, days or weeks, "
                "like 30m, 12h, 1d or 2w",
            ),
        ),
        (
            "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 0, per: 1d }\n",
            (4, 12, "'max' must be at least 1; got 0"),
        ),
        (
            "default_category: m\ncategories: { m: {} }\ncaps:\n  - { max: 1 }\n",
            (4, 5, "missing required key 'per' in an item of 'caps'"),
        ),
        (
            "default_category: m\ncategories: { m: {} }\nmax_delay: 2d\n",
            (3, 1, "'max_delay' only applies with 'when_capped: defer'"),
        ),
        (
            "default_category: m\ncategories: { m: {} }\nwhen_capped: queue\n",
            (3, 14, "'when_capped' must be one of skip, defer; got 'queue'"),
        ),
        (
            "default_category: m\ncategories: { m: { sendgrid_group: 0 } }\n",
            (2, 36, "'sendgrid_group' must be at least 1; got 0"),
        ),
        (
            "default_category: m\ncategories: { m: {}, Marketing: {} }\n",
            (
                2,
                22,
                "invalid name 'Marketing' in 'categories': a category is a lowercase name: letters, digits, _ or -, "
                "starting with a letter",
            ),
        ),
        ("categories: { m: {} }\n", (1, 1, "missing required key 'default_category' in the policy")),
        ("- marketing\n", (1, 1, "a policy must be a mapping (default_category, categories, caps); got a list")),
        ("", (1, 1, "file is empty; a policy needs at least 'default_category' and 'categories'")),
    ],
    ids=[
        "unknown-key",
        "unknown-category-key",
        "unknown-default",
        "unknown-cap-category",
        "business-days",
        "zero-window",
        "malformed-window",
        "zero-max",
        "cap-without-per",
        "max-delay-without-defer",
        "bad-when-capped",
        "bad-sendgrid-group",
        "bad-category-name",
        "no-default",
        "not-a-mapping",
        "empty",
    ],
)
def test_each_error_names_its_line_and_column(text, expected):
    assert only_problem(text) == expected


def test_a_policy_with_problems_builds_no_policy():
    result = validate_policy_text("default_category: x\ncategories: { m: {} }\n")
    assert result.policy is None and not result.ok


# ------------------------------------------------------------------------------------ which policy applies


def test_a_library_without_policy_gets_the_default(tmp_path):
    (tmp_path / "welcome-series.yaml").write_text(PLAYBOOK)
    library = Library.load(tmp_path)
    assert library.policy == DEFAULT_POLICY
    assert library.playbooks["welcome-series"].policy == DEFAULT_POLICY
    assert [c.name for c in DEFAULT_POLICY.categories] == ["transactional", "onboarding", "marketing"]
    assert DEFAULT_POLICY.caps == () and DEFAULT_POLICY.when_capped == "skip"
    assert DEFAULT_POLICY.for_email("transactional").unsubscribe is False


def test_the_bundled_library_carries_its_policy():
    library = Library.load(PLAYBOOKS)
    assert library.policy is not None and library.policy.file is not None
    assert Path(library.policy.file).resolve() == (PLAYBOOKS / "policy.yaml").resolve()
    assert "policy" not in library.playbooks  # policy.yaml is not taken for a playbook
    assert all(p.policy == library.policy for p in library.playbooks.values())
    webinar = library.playbooks["webinar-invitations"]
    categories = {s.id: s.category for s in webinar.walk() if isinstance(s, EmailStep)}
    assert set(categories.values()) == {"marketing"}
    # every bundled email step names its category
    assert all(s.category for p in library.playbooks.values() for s in p.walk() if isinstance(s, EmailStep))


def test_a_lone_file_takes_the_nearest_policy_above_it(tmp_path):
    (tmp_path / ".git").mkdir()  # the repository's root: the search stops here
    (tmp_path / "policy.yaml").write_text("default_category: news\ncategories: { news: {}, onboarding: {} }\n")
    nested = tmp_path / "team" / "emea"
    nested.mkdir(parents=True)
    (nested / "welcome-series.yaml").write_text(PLAYBOOK)
    assert find_policy_file(nested) is not None
    result = validate_playbook_file(nested / "welcome-series.yaml")
    assert result.problems == []
    assert result.playbook is not None and result.playbook.policy is not None
    assert result.playbook.policy.default_category == "news"


def test_the_search_stops_at_a_repository_root(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: news\ncategories: { news: {} }\n")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    assert find_policy_file(repo) is None


def test_a_library_does_not_look_above_its_root(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: news\ncategories: { news: {} }\n")
    library_root = tmp_path / "library"
    library_root.mkdir()
    (library_root / "welcome-series.yaml").write_text(PLAYBOOK)
    assert Library.load(library_root).playbooks["welcome-series"].policy == DEFAULT_POLICY


def test_a_broken_policy_stops_its_playbooks(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: marketing\ncategories: { onboarding: {} }\n")
    (tmp_path / "welcome-series.yaml").write_text(PLAYBOOK)
    library = Library.load(tmp_path)
    assert library.policy is None and library.playbooks == {}
    (result,) = library.results
    assert result.problems[0].header() == (
        f"{tmp_path / 'welcome-series.yaml'}:1:1: the messaging policy {tmp_path / 'policy.yaml'} that applies to "
        "this playbook has 1 problem(s); no run can start until it is fixed [reference]"
    )


def test_validate_paths_reports_policy_yaml_as_a_policy(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: marketing\ncategories:\n  marketing: {}\ncaps: []\n"
                                         "when_capped: later\n")
    (tmp_path / "welcome-series.yaml").write_text(PLAYBOOK.replace("onboarding", "marketing"))
    assert [p.name for p in discover([tmp_path])] == ["policy.yaml", "welcome-series.yaml"]
    results = validate_paths([tmp_path])
    policy_result, playbook_result = results
    assert isinstance(policy_result, PolicyResult)
    assert [p.header() for p in policy_result.problems] == [
        f"{tmp_path / 'policy.yaml'}:5:14: 'when_capped' must be one of skip, defer; got 'later' [schema]"
    ]
    assert playbook_result.playbook is None  # under a broken policy


# ------------------------------------------------------------------------------------ email steps


def test_an_email_category_must_be_declared_in_the_policy():
    text = PLAYBOOK.replace("category: onboarding", "category: onbording")
    result = validate_playbook_text(text, "welcome-series.yaml")
    assert [p.header() for p in result.problems] == [
        "welcome-series.yaml:6:17: category 'onbording' is not declared in the built-in default policy; "
        "did you mean 'onboarding'? [meaning]"
    ]


def test_a_category_of_the_library_policy_is_accepted_and_others_name_the_policy_file(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: news\ncategories: { news: {}, billing: {} }\n")
    (tmp_path / "ok.yaml").write_text(PLAYBOOK.replace("welcome-series", "ok").replace("onboarding", "billing"))
    (tmp_path / "bad.yaml").write_text(PLAYBOOK.replace("welcome-series", "bad"))
    library = Library.load(tmp_path)
    assert library.playbooks["ok"].steps[0].category == "billing"
    (bad,) = [r for r in library.results if r.file.endswith("bad.yaml")]
    assert [p.message for p in bad.problems] == [
        f"category 'onboarding' is not declared in the policy {tmp_path / 'policy.yaml'}; declared: news, billing"
    ]


def test_a_category_is_a_plain_name_not_a_template():
    text = PLAYBOOK.replace("category: onboarding", 'category: "{{ vars.kind }}"')
    (problem,) = validate_playbook_text(text, "t.yaml").problems
    assert problem.header() == (
        "t.yaml:6:17: category is a name from the policy, not a template: consent and caps are decided by it "
        "before the email is written [meaning]"
    )


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            ("subject: Welcome", 'subject: "  "'),
            "t.yaml:7:16: the subject is empty; the email provider refuses an email without a subject (SendGrid "
            "answers 400): write one, or give a provider template_id [meaning]",
        ),
        (
            ("body: Hi", 'body: ""'),
            "t.yaml:8:13: the body is empty; the email provider refuses an email without content (SendGrid "
            "answers 400): write one, or give a provider template_id [meaning]",
        ),
    ],
    ids=["subject", "body"],
)
def test_an_empty_subject_or_body_is_refused(replace, expected):
    result = validate_playbook_text(PLAYBOOK.replace(*replace), "t.yaml")
    assert [p.header() for p in result.problems] == [expected]


def test_a_template_may_go_without_subject_and_body():
    text = PLAYBOOK.replace("subject: Welcome", "template_id: d-0123456789abcdef").replace(
        '      body: Hi\n', '      body: ""\n'
    )
    assert validate_playbook_text(text, "t.yaml").problems == []


# ------------------------------------------------------------------------------------ the run's input


def test_a_playbook_with_its_policy_round_trips_through_json_and_temporal():
    playbook = Library.load(PLAYBOOKS).playbooks["webinar-invitations"]
    assert from_data(json.loads(json.dumps(to_data(playbook)))) == playbook

    async def round_trip() -> Playbook:
        payloads = await DataConverter.default.encode([playbook])
        (back,) = await DataConverter.default.decode(payloads, [Playbook])
        return back

    back = asyncio.run(round_trip())
    assert back == playbook and back.policy == playbook.policy


def test_a_run_input_recorded_before_policies_still_decodes():
    playbook = validate_playbook_text(PLAYBOOK, "t.yaml").playbook
    assert playbook is not None
    data = to_data(playbook)
    del data["policy"]
    for step in data["steps"]:
        del step["category"]
    old = from_data(data)
    assert old.policy is None and old.steps[0].category is None


# ------------------------------------------------------------------------------------ scenarios


def scenario(body: str, playbook: Playbook | None = None) -> list[str]:
    found = playbook or validate_playbook_text(PLAYBOOK, "welcome-series.yaml").playbook
    text = "playbook: welcome-series\naccount: { id: acc-1 }\n" + body
    result = validate_scenario_text(text, "s.scenario.yaml", lambda ref, where: found)
    return [p.header() for p in result.problems]


def test_scenario_script_and_expectations_of_governance_are_valid():
    assert scenario(
        "script:\n"
        "  - { at: 1h, unsubscribe: anna@kraus.example, category: onboarding }\n"
        "  - { at: 2h, unsubscribe: ben@kraus.example }\n"
        "  - { at: 3h, bounce: carl@kraus.example }\n"
        "expect:\n"
        "  - { email: welcome, to: anna@kraus.example, status: suppressed }\n"
        "  - { email: welcome, status: capped }\n"
        "  - { step: welcome, status: done }\n"
    ) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "script:\n  - { at: 1h, unsubscribe: a@x.example, category: onbording }\n",
            "s.scenario.yaml:4:51: no category 'onbording' in the policy of playbook 'welcome-series'; "
            "did you mean 'onboarding'? [reference]",
        ),
        (
            "script:\n  - { at: 1h, unsubscribe: a@x.example, category: transactional }\n",
            "s.scenario.yaml:4:51: category 'transactional' does not allow opting out (unsubscribe: false in the "
            "policy of playbook 'welcome-series') [reference]",
        ),
        (
            "script:\n  - { unsubscribe: a@x.example }\n",
            "s.scenario.yaml:4:5: missing required key 'at' in an item of 'script'",
        ),
        (
            "script:\n  - { at: 1h, bounce: a@x.example, category: marketing }\n",
            "s.scenario.yaml:4:36: unknown key 'category' in an item of 'script'; expected one of: at, bounce",
        ),
        (
            "expect:\n  - { email: welcome, status: done }\n",
            "s.scenario.yaml:4:31: 'status' must be one of sent, capped, suppressed, rejected; got 'done'",
        ),
        (
            "expect:\n  - { step: welcome, status: capped }\n",
            "s.scenario.yaml:4:30: 'status' must be one of done, skipped, not_run, failed; got 'capped'",
        ),
    ],
    ids=["unknown-category", "no-opt-out", "no-at", "bounce-category", "email-status", "step-status"],
)
def test_scenario_governance_errors(body, expected):
    found = scenario(body)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_scenario_policy_replaces_the_library_policy():
    text = (
        "playbook: welcome-series\naccount: { id: acc-1 }\n"
        "policy:\n"
        "  default_category: onboarding\n"
        "  categories: { onboarding: {} }\n"
        "  caps: [ { max: 1, per: 1d } ]\n"
    )
    playbook = validate_playbook_text(PLAYBOOK, "welcome-series.yaml").playbook
    result = validate_scenario_text(text, "s.scenario.yaml", lambda ref, where: playbook)
    assert result.problems == []
    assert result.policy is not None and result.playbook is not None
    assert result.playbook.policy == result.policy
    assert [(c.max, c.per_seconds) for c in result.playbook.policy.for_email("onboarding").caps] == [(1, 86400)]


def test_a_scenario_policy_is_checked_like_a_policy_file():
    text = (
        "playbook: welcome-series\naccount: { id: acc-1 }\n"
        "policy:\n"
        "  default_category: marketing\n"
        "  categories: { marketing: {} }\n"
        "  caps: [ { max: 1, per: 2bd } ]\n"
    )
    playbook = validate_playbook_text(PLAYBOOK, "welcome-series.yaml").playbook
    result = validate_scenario_text(text, "s.scenario.yaml", lambda ref, where: playbook)
    (header,) = [p.header() for p in result.problems]
    assert header.startswith("s.scenario.yaml:6:26: a cap's 'per' must be a fixed duration")
    assert result.policy is None


def test_a_scenario_policy_must_declare_the_playbook_categories():
    text = (
        "playbook: welcome-series\naccount: { id: acc-1 }\n"
        "policy:\n"
        "  default_category: marketing\n"
        "  categories: { marketing: {} }\n"
    )
    playbook = validate_playbook_text(PLAYBOOK, "welcome-series.yaml").playbook
    result = validate_scenario_text(text, "s.scenario.yaml", lambda ref, where: playbook)
    assert [p.header() for p in result.problems] == [
        "s.scenario.yaml:5:15: email step 'welcome' of playbook 'welcome-series' has category 'onboarding', "
        "which this policy does not declare [reference]"
    ]


def test_bundled_scenarios_resolve_with_the_library_policy():
    resolver = Resolver()
    found = resolver("webinar-invitations", PLAYBOOKS / "tests" / "webinar-invitations.scenario.yaml")
    assert isinstance(found, Playbook) and found.policy is not None and found.policy.file is not None


# ------------------------------------------------------------------------------------ the command


def test_playbook_validate_checks_policy_yaml_and_points_at_the_line(tmp_path):
    (tmp_path / "policy.yaml").write_text("default_category: marketing\ncategories:\n  marketing: {}\ncaps:\n"
                                         "  - { max: 1, per: 3bd }\n")
    (tmp_path / "welcome-series.yaml").write_text(PLAYBOOK.replace("onboarding", "marketing"))
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'policy.yaml'}:5:20: a cap's 'per' must be a fixed duration" in result.stderr
    assert "5 |   - { max: 1, per: 3bd }" in result.stderr  # the source line, with a caret under it
    assert "2 file(s) checked, 2 problem(s) in 2 file(s)" in result.stderr


def test_playbook_validate_on_the_bundled_library_and_scenarios_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", "playbooks", "tests/scenarios"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "all valid" in result.stderr


def test_the_default_policy_is_plain_data():
    assert isinstance(DEFAULT_POLICY, Policy)
    assert from_data({"id": "x", "version": "v", "title": "x", "policy": to_data(DEFAULT_POLICY)}).policy == (
        DEFAULT_POLICY
    )
