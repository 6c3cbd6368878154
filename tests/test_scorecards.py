"""Health scorecards (scorecards/*.yaml) are validated like playbooks: every problem at FILE:LINE:COL."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.cli import app
from engine.language.library import Library, is_playbook_file, is_scorecard_file, validate_paths
from engine.language.scorecard import (
    ScorecardResult,
    load_scorecards,
    validate_scorecard_file,
    validate_scorecard_text,
)

FILE = "scorecards/demo-health.yaml"

BASE = """\
# yaml-language-server: $schema=../schemas/scorecard.schema.json
id: demo-health
title: Demo health
segment: account.plan != "trial"
bands:
  - { name: red, below: 50 }
  - { name: yellow, below: 75 }
  - { name: green }
changes: { band: true, drop: 15 }
measures:
  - id: urgent_tickets
    weight: 30
    events: { type: support.ticket_opened, window: 30d, where: 'event.data.priority == "urgent"' }
    score:
      - { below: 1, score: 100 }
      - { below: 3, score: 50 }
      - { otherwise: 0 }
  - id: nps
    weight: 20
    last: { type: survey.answered, value: event.data.score }
    score: [ { below: 7, score: 0 }, { below: 9, score: 60 }, { otherwise: 100 } ]
  - id: mrr
    weight: 20
    field: account.mrr
    score: [ { below: 100, score: 30 }, { at_least: 100, score: 100 } ]
  - id: renewal
    weight: 30
    days_until: account.renews_on
    score: [ { below: 30, score: 20 }, { below: 90, score: 60 }, { otherwise: 100 } ]
    missing: { score: 50 }
"""


def problems(text: str, file: str = FILE) -> list[str]:
    return [f"{p.line}:{p.column}: {p.message}" for p in validate_scorecard_text(text, file).problems]


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_the_example_is_valid_and_built():
    result = validate_scorecard_text(BASE, FILE)
    assert result.problems == [] and result.ok
    card = result.scorecard
    assert card is not None
    assert (card.id, card.title, card.segment) == ("demo-health", "Demo health", 'account.plan != "trial"')
    assert [(b.name, b.below) for b in card.bands] == [("red", 50), ("yellow", 75), ("green", None)]
    assert (card.on_band_change, card.on_drop) == (True, 15)
    urgent, nps, mrr, renewal = card.measures
    assert (urgent.kind, urgent.source, urgent.window, urgent.window_seconds, urgent.aggregate) == (
        "events", "support.ticket_opened", "30d", 30 * 86400, "count"
    )
    assert urgent.where == 'event.data.priority == "urgent"' and urgent.missing_score is None
    assert (nps.kind, nps.value, nps.window, nps.aggregate, nps.title) == ("last", "event.data.score", None, "", "nps")
    assert (mrr.kind, mrr.source) == ("field", "account.mrr")
    assert [(r.below, r.at_least, r.score) for r in mrr.rules] == [(100, None, 30), (None, 100, 100)]
    assert (renewal.kind, renewal.source, renewal.missing_score) == ("days_until", "account.renews_on", 50)
    assert card.event_types() == frozenset({"support.ticket_opened", "survey.answered"})
    assert len(card.version) == 16 and card.file == FILE
    assert validate_scorecard_text(BASE + "\n", FILE).scorecard.version != card.version


def test_the_bundled_scorecards_are_valid(root):
    library = load_scorecards(root / "scorecards")
    assert library.problems == []
    assert "repricer-health" in library.scorecards
    card = library.scorecards["repricer-health"]
    assert sum(m.weight for m in card.measures) == 100
    assert {m.kind for m in card.measures} == {"field", "events", "last", "days_until", "days_since"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "weight: 20\n    field",
            "weight: 25\n    field",
            "10:1: the measures' weights must sum to 100; they sum to 105 (urgent_tickets 30 + nps 20 + mrr 25 + "
            "renewal 30)",
        ),
        ("weight: 20\n    field", "weight: 0\n    field", "23:13: 'weight' must be at least 1; got 0"),
        (
            "weight: 20\n    field",
            "weight: 2.5\n    field",
            "23:13: 'weight' must be a whole number; got the number 2.5",
        ),
        (
            "below: 75 }",
            "below: 40 }",
            "7:28: bands go in ascending order: 'below: 40' must be above the band before it (below: 50)",
        ),
        (
            "{ name: green }",
            "{ name: green, below: 100 }",
            "8:20: the last band takes every score from the band before it up to 100: remove its 'below'",
        ),
        (
            "{ name: yellow, below: 75 }",
            "{ name: yellow }",
            "7:5: band 'yellow' needs 'below' (every band but the last has one, in ascending order)",
        ),
        (
            "name: yellow",
            "name: red",
            "7:13: band 'red' is declared twice (first at line 6); band names are unique",
        ),
        ("name: yellow", "name: Yellow", "7:13: invalid 'name' 'Yellow': a band name is snake_case: lowercase "
         "letters, digits and _, starting with a letter"),
        ("below: 50 }", "below: 0 }", "6:25: 'below' must be above 0; got 0"),
        (
            "      - { below: 3, score: 50 }\n      - { otherwise: 0 }",
            "      - { otherwise: 0 }\n      - { below: 3, score: 50 }",
            "16:11: 'otherwise' matches every value: it can only be the last rule",
        ),
        ("{ below: 3, score: 50 }", "{ below: 3, score: 120 }", "16:28: 'score' must be at most 100; got 120"),
        ("{ below: 3, score: 50 }", "{ below: 3 }", "16:9: the rule 'below' needs a 'score' (0 to 100)"),
        (
            "{ below: 3, score: 50 }",
            "{ below: 3, at_least: 1, score: 50 }",
            "16:9: a rule has one of below, at_least or otherwise; this one has below and at_least",
        ),
        (
            "{ below: 3, score: 50 }",
            "{ below: 1, score: 50 }",
            "16:11: this rule never matches: every value below 1 is matched by a rule before it",
        ),
        (
            "type: survey.answered",
            "type: Survey",
            "20:19: invalid 'type' 'Survey': an event type is a dotted lowercase name like account.signed_up",
        ),
        (
            "'event.data.priority == \"urgent\"'",
            "'evnt.data.priority == \"urgent\"'",
            "13:64: unknown name 'evnt'; did you mean 'event'? names in scope here: event",
        ),
        (
            "'event.data.priority == \"urgent\"'",
            "'event.data.priority == '",
            "13:64: expression syntax error: unexpected 'end of template'",
        ),
        (
            "value: event.data.score",
            "value: event.data.score |",
            "20:43: expression syntax error: unexpected end of template, expected 'name'.",
        ),
        (
            'segment: account.plan != "trial"',
            'segment: acount.plan != "trial"',
            "4:10: unknown name 'acount'; did you mean 'account'? names in scope here: account",
        ),
        (
            'segment: account.plan != "trial"',
            'segment: "{{ account.plan }}"',
            "4:10: 'segment' is an expression: write it without {{ }}, e.g. segment: account.plan. "
            "With braces it is text, which is always true",
        ),
        (
            "window: 30d",
            "window: 30x",
            "13:52: invalid 'window' '30x': a window is a fixed duration like 12h, 30d, 2w or P30D (not business days)",
        ),
        (
            "window: 30d",
            "window: 3bd",
            "13:52: a window must be a fixed duration (s, m, h, d or w); business days ('3bd') have no fixed length, "
            "so they cannot make a rolling window",
        ),
        ("window: 30d", "window: 0d", "13:52: a window must be longer than 0; got '0d'"),
        ("window: 30d, where", "where", "13:5: missing required key 'window' in 'events'"),
        (
            "window: 30d,",
            "window: 30d, aggregate: sum,",
            "13:57: aggregate: sum needs 'value', e.g. value: event.data.amount",
        ),
        (
            "window: 30d,",
            "window: 30d, value: event.data.amount,",
            "13:57: 'value' is only read with aggregate: sum; a count counts events",
        ),
        ("id: mrr", "id: nps", "22:9: measure id 'nps' is also used at line 18; ids are unique"),
        ("id: mrr", "id: MRR", "22:9: invalid 'id' 'MRR': a measure id is snake_case: lowercase letters, digits "
         "and _, starting with a letter"),
        (
            "field: account.mrr",
            "field: account.mrr\n    days_since: account.last_login_at",
            "25:5: a measure has exactly one of field, events, last, days_until, days_since; this one has 'field' "
            "and 'days_since'",
        ),
        (
            "    field: account.mrr\n",
            "",
            "22:5: a measure needs one of: field, events, last, days_until, days_since",
        ),
        (
            "field: account.mrr",
            "field: mrr",
            "24:12: invalid 'field' 'mrr': a field is a dotted path below account, like account.mrr or "
            "account.crm.open_bugs",
        ),
        (
            "missing: { score: 50 }",
            "missing: zero",
            "30:14: 'missing' is skip (leave the measure out, re-weight the others) or {score: N} (a fixed score); "
            "got 'zero'",
        ),
        ("missing: { score: 50 }", "missing: { score: -1 }", "30:23: 'score' must be at least 0; got -1"),
        ("drop: 15", "drop: 0", "9:30: 'drop' must be above 0; got 0"),
        ("weight: 20\n    field", "wieght: 20\n    field", "23:5: unknown key 'wieght' in an item of 'measures'; did "
         "you mean 'weight'?"),
        (
            "id: demo-health",
            "id: other-health",
            "2:5: the scorecard id 'other-health' differs from its file name 'demo-health.yaml'; name the file "
            "other-health.yaml or change the id to 'demo-health'",
        ),
        ("id: demo-health", "id: Demo_Health", "2:5: invalid 'id' 'Demo_Health': a scorecard id is kebab-case: "
         "lowercase letters and digits joined by single dashes"),
    ],
)
def test_each_problem_is_reported_at_its_line_and_column(old, new, expected):
    assert BASE.count(old) == 1, old
    assert one(BASE.replace(old, new)) == expected


def test_documents_that_are_not_scorecards():
    assert problems("") == ["1:1: file is empty; a scorecard needs at least 'id', 'bands' and 'measures'"]
    assert problems("- a\n") == [
        "1:1: a scorecard must be a mapping (id, title, segment, bands, measures...); got a list"
    ]
    assert problems("id: demo-health\n") == ["1:1: missing required keys 'bands' and 'measures' in the scorecard"]
    assert problems("bands: [ { name: red }\n") == [
        "1:8: YAML syntax error: the list opened with '[' here is not closed; add ']' after its last item"
    ]
    assert problems(BASE + "title: again\n") == ["31:1: duplicate key 'title' (first defined at line 3)"]


def test_all_problems_of_a_file_are_reported_together_in_order():
    text = BASE.replace("below: 75 }", "below: 40 }").replace("weight: 20\n    field", "weight: 25\n    field")
    assert [p.split(": ")[0] for p in problems(text)] == ["7:28", "10:1"]


def test_a_missing_folder_is_no_scorecards(tmp_path):
    library = load_scorecards(tmp_path / "scorecards")
    assert library.scorecards == {} and library.results == []


def test_scorecard_ids_are_unique_in_a_folder(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "demo-health.yaml").write_text(BASE)
    library = load_scorecards(tmp_path)
    assert list(library.scorecards) == ["demo-health"]
    second = library.results[1]
    assert [p.header() for p in second.problems] == [
        f"{second.file}:2:5: scorecard id 'demo-health' is also used by {library.results[0].file}; ids are unique "
        "[library]"
    ]


def test_which_files_are_scorecards(tmp_path):
    folder = tmp_path / "scorecards"
    folder.mkdir()
    (folder / "demo-health.yaml").write_text(BASE)
    elsewhere = tmp_path / "other-health.yaml"
    elsewhere.write_text(BASE.replace("id: demo-health", "id: other-health"))
    playbook = tmp_path / "welcome.yaml"
    playbook.write_text("id: welcome\nmeasures: 1\nsteps: []\n")
    assert is_scorecard_file(folder / "demo-health.yaml") and not is_playbook_file(folder / "demo-health.yaml")
    assert is_scorecard_file(elsewhere)  # a top-level measures: without steps:
    assert not is_scorecard_file(playbook) and is_playbook_file(playbook)
    assert [Path(r.file).name for r in Library.load(tmp_path).results] == ["welcome.yaml"]
    results = validate_paths([tmp_path])
    kinds = {Path(r.file).relative_to(tmp_path).as_posix(): type(r).__name__ for r in results}
    assert kinds == {
        "other-health.yaml": "ScorecardResult",
        "scorecards/demo-health.yaml": "ScorecardResult",
        "welcome.yaml": "PlaybookResult",
    }
    assert all(r.ok for r in results if isinstance(r, ScorecardResult))


def test_playbook_validate_covers_scorecards(tmp_path, root):
    folder = tmp_path / "scorecards"
    folder.mkdir()
    (folder / "demo-health.yaml").write_text(BASE.replace("weight: 20\n    field", "weight: 25\n    field"))
    (folder / "fine-health.yaml").write_text(BASE.replace("id: demo-health", "id: fine-health"))
    result = CliRunner().invoke(app, ["validate", str(folder)])
    assert result.exit_code == 1
    where = f"{folder / 'demo-health.yaml'}:10:1"
    assert f"{where}: the measures' weights must sum to 100; they sum to 105" in result.stderr
    assert "2 file(s) checked, 1 problem(s) in 1 file(s)" in result.stderr
    ok = CliRunner().invoke(app, ["validate", str(root / "playbooks"), str(root / "scorecards")])
    assert ok.exit_code == 0, ok.stderr
    assert "all valid" in ok.stderr


def test_an_unreadable_file_is_a_problem(tmp_path):
    path = tmp_path / "scorecards" / "bad.yaml"
    path.parent.mkdir()
    path.write_bytes(b"id: \xff\n")
    result = validate_scorecard_file(path)
    assert isinstance(result, ScorecardResult) and not result.ok
    assert [p.header() for p in result.problems] == [f"{path}:1:5: file is not UTF-8 text [syntax]"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("{ below: 3, score: 50 }", "{ below: 3, score: .nan }", "16:28: 'score' must be a finite number; got NaN"),
        (
            "{ below: 3, score: 50 }",
            "{ below: .inf, score: 50 }",
            "16:18: 'below' must be a finite number; got an infinite number; a rule for every value is "
            "{otherwise: N}",
        ),
        ("below: 50 }", "below: .nan }", "6:25: 'below' must be a finite number; got NaN"),
        ("drop: 15", "drop: -.inf", "9:30: 'drop' must be a finite number; got an infinite number"),
        ("missing: { score: 50 }", "missing: { score: .NaN }", "30:23: 'score' must be a finite number; got NaN"),
    ],
)
def test_nan_and_infinities_are_refused(old, new, expected):
    """The schema's minimum and maximum let NaN through (it compares false with everything): refused by meaning."""
    assert one(BASE.replace(old, new)) == expected


def test_the_nearest_scorecards_or_playbooks_folder_decides(tmp_path, monkeypatch):
    assert is_scorecard_file(Path("scorecards/repricer-health.yaml"))
    assert is_scorecard_file(Path("/srv/engine/scorecards/teams/emea-health.yml"))
    assert not is_scorecard_file(Path("/home/x/scorecards/playbooks/welcome.yaml"))
    assert not is_scorecard_file(Path("scorecards/tests/demo.scenario.yaml"))
    folder = tmp_path / "scorecards"
    folder.mkdir()
    (folder / "demo-health.yaml").write_text(BASE)
    monkeypatch.chdir(folder)
    assert is_scorecard_file(Path("demo-health.yaml"))  # named from inside the folder


_KEYS = ["id", "weight", "score", "below", "at_least", "otherwise", "missing", "field", "events", "last", "type",
         "window", "where", "value", "aggregate", "name", "days_until", "days_since", "title", "band", "drop"]
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-200, 200), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["skip", "count", "sum", "account.x", "a.b", "30d", "3bd", "event.data.x", "{{ x }}", "x ==", ""]),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=8,
)


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, path + (index,))


_BASE_DATA = yaml.safe_load(BASE)
_BASE_PATHS = list(_paths(_BASE_DATA))[1:]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_BASE_PATHS), _VALUES), min_size=1, max_size=3))
def test_any_edit_gives_problems_or_a_scorecard_never_an_exception(edits):
    data = copy.deepcopy(_BASE_DATA)
    for path, value in edits:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    result = validate_scorecard_text(yaml.safe_dump(data), FILE)
    assert (result.scorecard is None) == bool(result.problems)
    assert all(p.line >= 1 and p.column >= 1 for p in result.problems)
    if result.scorecard is not None:
        assert sum(m.weight for m in result.scorecard.measures) == 100
