"""Templates and expressions at run time: the sandbox, strictness, limits and the language's filters."""

from __future__ import annotations

import copy
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.runtime import Undefined

from engine.language import expressions as ex
from engine.language.expressions import ExpressionError, evaluate, render

CONTEXT = {
    "account": {"id": "acc-1", "plan": "pro", "renewal_date": "2026-06-30", "owner": {"name": "Jonas"}},
    "contact": {"first_name": "Anna", "email": "anna@kraus.example"},
    "today": "2026-06-01",
}


def test_template_renders_data():
    assert render("Hi {{ contact.first_name }}, I'm {{ account.owner.name }}", CONTEXT) == "Hi Anna, I'm Jonas"


def test_plain_text_is_returned_as_is():
    assert render("Welcome aboard", CONTEXT) == "Welcome aboard"


def test_undefined_name_is_an_error_not_an_empty_string():
    with pytest.raises(ExpressionError, match="undefined"):
        render("Hi {{ contact.last_name }}", CONTEXT)
    with pytest.raises(ExpressionError):
        evaluate("account.nonexistent == 'x'", CONTEXT)


def test_values_from_data_are_never_rendered_again():
    context = {**CONTEXT, "contact": {"first_name": "{{ account.id }}"}}
    assert render("Hi {{ contact.first_name }}", context) == "Hi {{ account.id }}"


def test_expressions_evaluate_to_values():
    assert evaluate('account.plan == "pro"', CONTEXT) is True
    assert evaluate("[1, 2, 3] | length", CONTEXT) == 3
    assert evaluate(True, CONTEXT) is True


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ account.__class__ }}",
        "{{ range.__init__.__globals__ }}",
        "{{ account.owner.items.__self__ }}",
        "{{ '{0.__class__}'.format(account) }}",
        "{{ account.update({'plan': 'free'}) }}",
    ],
)
def test_sandbox_refuses_internals_and_mutation(source):
    with pytest.raises(ExpressionError):
        render(source, CONTEXT)
    assert CONTEXT["account"]["plan"] == "pro"


def test_globals_are_limited_to_pure_helpers():
    for name in ("cycler", "joiner", "lipsum", "namespace"):
        with pytest.raises(ExpressionError):
            render(f"{{{{ {name} }}}}", CONTEXT)


def test_repetition_and_output_are_capped():
    with pytest.raises(ExpressionError, match="'\\*' would build more than 100,000 characters or items"):
        render("{{ 'x' * 100000000 }}", CONTEXT)
    with pytest.raises(ExpressionError, match="exponent 100000 is larger than 100"):
        evaluate("2 ** 100000", CONTEXT)
    with pytest.raises(ExpressionError, match="the template's output is over 100,000 characters"):
        render("{% for i in range(10000) %}0123456789X{% endfor %}", CONTEXT)


def test_date_filters_use_the_run_clock():
    assert evaluate("account.renewal_date | days_until", CONTEXT) == 29
    assert evaluate("'2026-05-01' | days_since", CONTEXT) == 31
    assert render("{{ account.renewal_date | format_date('%d.%m.%Y') }}", CONTEXT) == "30.06.2026"


def test_date_filters_reject_non_dates():
    with pytest.raises(ExpressionError, match="not a date"):
        evaluate("'soon' | days_until", CONTEXT)


# ---------------------------------------------------------------- deterministic and bounded
#
# Templates run inside a Temporal workflow: a replay must give the same result, and a render must not hold the
# workflow task for long. The bounds are counted (never timed), so the tests assert that a bound is hit, not how
# fast.


@pytest.mark.parametrize(
    "source",
    [
        "{{ [1, 2, 3] | random }}",
        "{{ [1, 2, 3] | shuffle }}",
        "{{ [1, 2] | map('random') | list }}",
        "{{ lipsum() }}",
        "{{ now() }}",
        "{{ cycler('a', 'b').next() }}",
    ],
)
def test_nothing_random_and_no_clock(source):
    with pytest.raises(ExpressionError):
        render(source, CONTEXT)


def test_only_the_allow_listed_filters_tests_and_globals():
    from jinja2.filters import FILTERS

    env = ex.environment()
    assert set(env.filters) == ex.ALLOWED_FILTERS | set(ex.EXTRA_FILTERS)
    assert "random" not in env.filters and set(ex.REFUSED_FILTERS).isdisjoint(env.filters)
    assert set(env.tests) == ex.ALLOWED_TESTS
    assert set(env.globals) == set(ex.ALLOWED_GLOBALS)
    # every Jinja filter is either allowed or refused with a reason: an upgrade of Jinja adds none unseen
    assert set(FILTERS) <= ex.ALLOWED_FILTERS | set(ex.REFUSED_FILTERS)


def test_dates_do_not_reach_the_clock():
    context = {**CONTEXT, "moment": date(2026, 6, 1)}
    for source in ("{{ moment.today() }}", "{{ moment.now() }}", "{{ moment.fromtimestamp(0) }}"):
        with pytest.raises(ExpressionError):
            render(source, context)
    with pytest.raises(ExpressionError, match="'%s' is not allowed"):
        render("{{ account.renewal_date | format_date('%s') }}", CONTEXT)
    assert render("{{ account.renewal_date | format_date('%%s %d') }}", CONTEXT) == "%s 30"


@pytest.mark.parametrize(
    "source",
    [
        "{{ account.items }}",
        "{{ contacts | map(attribute='email') }}",
        "{{ [account.items] }}",
        "{{ 'x' ~ account.get }}",
    ],
)
def test_values_whose_text_would_differ_on_replay_are_refused(source):
    # their text holds a memory address ("<built-in method items of dict object at 0x7f...>")
    context = {**CONTEXT, "contacts": [{"email": "a@example.com"}]}
    with pytest.raises(ExpressionError, match="cannot be turned into text"):
        render(source, context)


def test_same_input_gives_the_same_output():
    source = (
        "{% for c in contacts | sort(attribute='name') %}{{ loop.index }}. {{ c.name | title }} "
        "{{ c.tags | unique | join(',') }} {{ c | dictsort }} {{ c | tojson }} {{ c | pprint }}\n{% endfor %}"
        "{{ contacts | groupby('plan') | list }} {{ (contacts | map(attribute='name') | list) }}"
    )
    context = {
        "contacts": [
            {"name": "zoe", "plan": "pro", "tags": ["b", "a", "b"]},
            {"name": "adam", "plan": "free", "tags": []},
            {"name": "mia", "plan": "pro", "tags": ["c"]},
        ]
    }
    first = render(source, context)
    assert render(source, context) == first
    assert render(source, copy.deepcopy(context)) == first
    assert first.startswith("1. Adam")


def test_nested_loops_stop_at_the_iteration_bound():
    with pytest.raises(ExpressionError, match="more than 100,000 numbers|would give 100,000 numbers"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", CONTEXT)
    with pytest.raises(ExpressionError, match="the template makes more than 10,000 loop iterations"):
        render("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", CONTEXT)
    # over data too (no range at all), and with a loop filter that lets nothing through
    context = {**CONTEXT, "letters": "x" * 5000}
    with pytest.raises(ExpressionError, match="the template makes more than 10,000 loop iterations"):
        render("{% for a in letters %}{% for b in letters %}{% endfor %}{% endfor %}", context)
    with pytest.raises(ExpressionError, match="the template makes more than 10,000 loop iterations"):
        render("{% for a in letters if false %}{% endfor %}" * 3, context)
    assert render("{% for i in range(10000) %}{% endfor %}done", CONTEXT) == "done"


def test_the_iteration_bound_counts_recursive_loops():
    # 5 ** 7 items in all, each level through loop(…), which is not a {% for %} of its own
    source = "{% for x in range(5) recursive %}{% if loop.depth < 7 %}{{ loop(range(5)) }}{% endif %}{% endfor %}"
    with pytest.raises(ExpressionError, match="the template makes more than 10,000 loop iterations"):
        render(source, CONTEXT)
    tree = (
        "{% for x in [[1, [2]], 3] recursive %}{% if x is sequence %}{{ loop(x) }}{% else %}{{ x }}{% endif %}"
        "{% endfor %}"
    )
    assert render(tree, CONTEXT) == "123"


def test_range_gives_at_most_the_iteration_bound():
    assert list(evaluate("range(10000)", CONTEXT)) == list(range(10000))
    with pytest.raises(ExpressionError, match=r"range\(\) would give 10,001 numbers; a template makes at most 10,000"):
        evaluate("range(10001)", CONTEXT)
    with pytest.raises(ExpressionError, match="would give"):
        evaluate("range(10 ** 30)", CONTEXT)


def test_evaluation_work_is_bounded_without_loops_tags():
    # no loop iterations at all: a macro calling itself twice makes 2**20 calls
    source = "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(20) }}"
    with pytest.raises(ExpressionError, match="the template takes more than 250,000 steps to evaluate"):
        render(source, CONTEXT)
    # a long body inside an allowed number of iterations
    body = "{% if account.plan == 'free' and account.id == 'x' %}{% endif %}" * 50
    with pytest.raises(ExpressionError, match="more than 250,000 steps"):
        render("{% for i in range(9000) %}" + body + "{% endfor %}", CONTEXT)


def test_output_is_capped_while_it_streams():
    # each piece is small, and the cap is checked as they come: the loop stops at the cap, long before its end
    with pytest.raises(ExpressionError, match="the template's output is over 100,000 characters"):
        render("{% for i in range(10000) %}{{ 'y' * 11 }}{% endfor %}", CONTEXT)
    budget_seen = []
    original = ex._Budget.iteration

    def spy(self):
        budget_seen.append(self.iterations)
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex._Budget, "iteration", spy)
        with pytest.raises(ExpressionError, match="output is over"):
            render("{% for i in range(10000) %}" + "z" * 20 + "{% endfor %}", CONTEXT)
    assert len(budget_seen) < 10000  # stopped at about 100,000 / 20 iterations, not after rendering all
    assert len(render("{% for i in range(10000) %}0123456789{% endfor %}", CONTEXT)) == 100_000


def test_a_single_value_too_big_to_print_is_refused_before_it_is_made_text():
    # one list of 100,000 references to one 100,000-character string: its text would be 10**10 characters
    with pytest.raises(ExpressionError, match="output is over 100,000 characters"):
        render("{{ ['x' * 100000] * 100000 }}", CONTEXT)
    with pytest.raises(ExpressionError, match="would build more than 100,000"):
        render("{% set a = ['x' * 100000] * 100000 %}{{ a | join }}", CONTEXT)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ('x' * 100000) | replace('x', 'xx') }}",
        "{{ ('x' * 100000).replace('x', 'xx') }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x' | indent(1000000000) }}",
        "{{ '%1000000000s' | format('x') }}",
        "{{ '%1000000000s' % 'x' }}",
        "{{ '{:>1000000000}'.format('x') }}",
        "{{ ('{0}' * 30000).format('x' * 1000) }}",
        "{{ ('x' * 1000).join(['y'] * 1000) }}",
        "{{ [1] | batch(1000000000, 0) | list }}",
        "{{ [1] | slice(1000000000) | list }}",
        "{{ ([[1] * 100000] * 10) | sum(start=[]) }}",
        "{% set a = 'x' * 100000 %}{{ a ~ a }}",
        "{% set a = 'x' * 100000 %}{{ a + a }}",
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('x', 40) }}",
        "{{ ((2 ** 100) ** 100) ** 100 }}",
    ],
)
def test_values_a_template_builds_are_bounded_before_they_are_built(source):
    with pytest.raises(ExpressionError, match="would build more than 100,000|would make a number of more than"):
        render(source, CONTEXT)


# ---------------------------------------------------------------- what the validator refuses before a run


def _note_problems(note: str, when: str | None = None) -> list[str]:
    from engine.language.validator import validate_playbook_text

    step = f"  - when: {when}\n    crm: {{ note: x }}\n" if when else f"  - crm:\n      note: {note}\n"
    result = validate_playbook_text(f"id: bounded\nsteps:\n{step}", "bounded.yaml")
    return [f"{p.line}:{p.column}: {p.message}" for p in result.problems]


@pytest.mark.parametrize(
    ("note", "when", "expected"),
    [
        (None, '"[true, false] | random"', "3:11: filter 'random' is not allowed: " + ex.REPLAYED),
        (None, "contacts | shuffle | first", "3:11: filter 'shuffle' is not allowed: " + ex.REPLAYED),
        (None, "(contacts | map('random') | list) != []", "3:11: filter 'random' is not allowed: " + ex.REPLAYED),
        ('"{{ lipsum(1) }}"', None, "4:13: 'lipsum' is not allowed: it makes random text, and " + ex.REPLAYED),
        ('"{{ now() }}"', None, "4:13: 'now' is not allowed: templates cannot read the clock"),
        ('"{{ cycler(1, 2) }}"', None, "4:13: 'cycler' is not allowed: use loop.cycle(…) inside a {% for %} instead"),
        ('"{{ namespace(n=1) }}"', None, "4:13: 'namespace' is not allowed: a template cannot keep state"),
        ('"{{ contacts | select(\'sorted\') | list }}"', None, "4:13: unknown test 'sorted'"),
        (
            '"{{ range(100000) | length }}"',
            None,
            "4:13: range(100000) would give 100,000 numbers; a template makes at most 10,000 loop iterations",
        ),
        (None, "(range(0, 50000, 2) | list) != []", "3:11: range(0, 50000, 2) would give 25,000 numbers"),
        (
            '"{% for i in range(1000) %}{% for j in range(100) %}.{% endfor %}{% endfor %}"',
            None,
            "4:13: the template's loops make 101,000 iterations (range(100) inside range(1000)); "
            "a template makes at most 10,000 loop iterations",
        ),
        (
            '"{% for i in range(6000) %}{% endfor %}{% for i in range(6000) %}{% endfor %}"',
            None,
            "4:13: the template's loops make 12,000 iterations; a template makes at most 10,000 loop iterations",
        ),
        (
            '"{% for i in range(6000) %}<p>Thank you!</p>{% endfor %}"',
            None,
            "4:13: the template's output is over 100,000 characters (at least 102,000)",
        ),
        (
            "\"{{ 'x' * 200000 }}\"",
            None,
            "4:13: '*' would build 200,000 characters or items; a template builds values of at most 100,000",
        ),
        (None, "2 ** 1000 > 1", "3:11: exponent 1000 is larger than 100, the largest a template may use"),
    ],
)
def test_the_validator_refuses_what_the_sandbox_would(note, when, expected):
    problems = _note_problems(note, when)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    "note",
    [
        # bounded by data, or behind a filter or a macro: the validator cannot know, the bounds at run time can
        '"{% for c in contacts %}{% for d in contacts %}{{ c.email }}{% endfor %}{% endfor %}"',
        '"{% for i in range(10000) if i is odd %}{% for j in range(10000) %}{% endfor %}{% endfor %}"',
        '"{% macro m() %}{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}{% endmacro %}"',
        '"{% for i in range(10000) %}{{ i }}{% endfor %}"',
        '"{{ contacts | map(\'upper\') | join(\', \') }} {{ [1, 2] is sequence }} {{ dict(a=1) | dictsort }}"',
    ],
)
def test_what_literals_do_not_decide_is_left_to_the_run(note):
    assert _note_problems(note) == []


def test_the_budget_counts_the_same_on_a_cold_and_a_warm_cache(monkeypatch):
    # Jinja folds constants while compiling ('abc' | upper), which happens only on a cold cache: compiling is
    # outside the budget, so a replay on a fresh worker counts exactly what the first run counted
    budgets = []
    real = ex._Budget

    def spy(what):
        budgets.append(real(what))
        return budgets[-1]

    monkeypatch.setattr(ex, "_Budget", spy)
    source = "{{ 'abc' | upper }}{% for i in range(3) %}{{ ('x' ~ i) | upper }}{% endfor %}"
    ex._compiled_template.cache_clear()
    assert render(source, CONTEXT) == render(source, CONTEXT) == "ABCX0X1X2"
    assert budgets[0].steps == budgets[1].steps > 0
    assert budgets[0].iterations == budgets[1].iterations == 3


# render() takes a shortcut past Jinja for templates of text and look-ups. It must give what Jinja gives: the same
# text, or the same error.
def _outcome(fn, source, context):
    try:
        return "text", fn(source, context)
    except ExpressionError as err:
        return "error", str(err)


SHORTCUT_CONTEXT = {
    "contact": {
        "first_name": "Anna", "age": 41, "vip": True, "score": 0.5, "nickname": None, "tags": ["a", "b"],
        "items": "a key named like a dict method", "address": {"city": "Köln"}, "big": 10**200, "n": -7,
        "_hidden": "underscore key", "markup": "{{ not rendered again }}",
    },
    "account": {"name": "Acme", "owner": {"name": "Jonas", "email": "jonas@acme.example"}},
    "range": "a context value named like a global",
    "huge": "x" * (ex.MAX_OUTPUT - 5),
}  # fmt: skip


@pytest.mark.parametrize(
    "source",
    [
        "Hi {{ contact.first_name }}, from {{ account.owner.name }}.",
        "{{ contact.age }} {{ contact.vip }} {{ contact.score }} {{ contact.nickname }} {{ contact.n }}",
        "{{ contact['first_name'] }} {{ contact['address'].city }} {{ contact.address['city'] }}",
        "{{ contact.tags }}",  # a list: Jinja prints it
        "{{ contact.items }}",  # the dict method, which Jinja refuses to print
        "{{ contact['items'] }}",  # the key
        "{{ contact.address }}",
        "{{ contact.big }}",
        "{{ contact._hidden }}",
        "{{ contact.markup }}",
        "{{ contact.missing }}",
        "{{ missing }}",
        "{{ missing.key }}",
        "{{ contact.first_name.missing }}",
        "{{ contact.address.city.upper }}",
        "{{ range }}",
        "{{ dict }}",
        "{{ huge }}",
        "{{ huge }}{{ huge }}",
        "  {{- contact.first_name -}}  \r\n and {{ contact.age }}\n",
        "{{ contact.first_name }} {# a comment #} {% if true %}x{% endif %}",
        "{{ contact.first_name | upper }} {{ contact.first_name ~ '!' }}",
        "{{ contact.first_name ",
        "{{ contact[0] }}",
    ],
)
def test_the_shortcut_for_look_ups_renders_as_jinja_does(source):
    assert _outcome(render, source, SHORTCUT_CONTEXT) == _outcome(ex.render_with_jinja, source, SHORTCUT_CONTEXT)


def test_the_shortcut_renders_look_ups_without_jinja():
    assert ex._lookups_only("Hi {{ contact.first_name }}, {{ account['owner'].name }}") is not None
    assert ex._lookups_only("{{ contact.first_name | upper }}") is None
    assert ex._render_lookups(ex._lookups_only("{{ contact.items }}"), SHORTCUT_CONTEXT) is None


_KEYS = st.sampled_from(["a", "b", "items", "get", "first_name", "_x", "0"])
_LEAVES = st.one_of(
    st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.integers(min_value=10**99, max_value=10**120),
)  # fmt: skip
_VALUES = st.recursive(_LEAVES, lambda inner: st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)
_NAMES = st.sampled_from(["a", "b", "items", "range"])
_LOOKUP = st.tuples(_NAMES, st.lists(st.tuples(_KEYS, st.booleans()), max_size=3))


def _written(lookup: tuple[str, list[tuple[str, bool]]]) -> str:
    name, keys = lookup
    return "{{ " + name + "".join(f"['{k}']" if bracket else f".{k}" for k, bracket in keys) + " }}"


@settings(max_examples=300, deadline=None)
@given(
    context=st.dictionaries(_NAMES, _VALUES, max_size=4),
    pieces=st.lists(st.one_of(st.text(alphabet="ab \n{}%#-", max_size=4), _LOOKUP.map(_written)), max_size=4),
)
def test_the_shortcut_matches_jinja_on_any_look_ups(context, pieces):
    source = "".join(pieces) or "{{ a }}"
    assert _outcome(render, source, context) == _outcome(ex.render_with_jinja, source, context)


# ---------------------------------------------------------------- the shortcut for simple conditions


def _same_outcome(outcome_a, outcome_b):
    """Equal values of equal types (True is not 1 here), or errors with the same message. A bare look-up of what is
    missing gives Jinja's undefined value itself (an error only once used), which compares to nothing."""
    def plain(outcome):
        kind, value = outcome
        if isinstance(value, Undefined):
            return "undefined", value._undefined_message, Undefined
        return kind, value, type(value)
    return plain(outcome_a) == plain(outcome_b)


@pytest.mark.parametrize(
    "source",
    [
        'account.plan != "trial"', 'event.data.priority == "urgent"', "account.mrr >= 1000", "account.mrr < 1000.5",
        'account.plan in ["pro", "enterprise"]', 'account.plan not in ("trial",)', "not account.vip",
        'account.vip and account.plan == "pro"', "account.nothing or account.mrr", "account.mrr > 10 or account.gone",
        "account.gone == 1", "account.items == 1", 'account.plan > 3', '"p" in account.plan', "account.tags",
        "account.big == 1", "account.owner.lang == 'de'", "account['plan'] == 'pro'", "range == 1", "none == account.x",
        "true", "account.mrr", "account.x is none", "account.mrr + 1 > 2", "-1 < account.mrr", "nobody.plan == 'x'",
    ],
)
def test_the_shortcut_for_conditions_evaluates_as_jinja_does(source):
    context = {"account": {"plan": "pro", "mrr": 1000, "vip": False, "nothing": 0, "x": None, "items": 1,
                           "tags": ["a"], "big": 10**200, "owner": {"lang": "de"}},
               "event": {"data": {"priority": "urgent"}}}
    assert _same_outcome(_outcome(evaluate, source, context), _outcome(ex.evaluate_with_jinja, source, context))


def test_the_shortcut_takes_the_usual_conditions_and_leaves_the_rest_to_jinja():
    for source in ('account.plan != "trial"', 'event.data.priority == "urgent"', "a.b > 1 and not c.d in [1, 2]"):
        assert ex._simple_expression(source) is not None, source
    for source in ("account.mrr + 1 > 2", "account.name | upper == 'X'", "account.x is none", "x if y else z",
                   "account.plan in [" + ", ".join(["1"] * 2000) + "]", "a == 1 == b"):
        assert ex._simple_expression(source) is None, source


_OPERATORS = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in"])
_LITERALS = st.one_of(
    st.sampled_from(["1", "0", "1.5", "-1", "'a'", "''", "true", "false", "none", "[1, 'a']", "('a',)", "[]"]),
    st.integers(-5, 5).map(str),
)


@st.composite
def _conditions(draw, depth=0):
    joins = ["and", "or", "not"] if depth < 3 else []
    kind = draw(st.sampled_from(["compare", "compare", "lookup", "literal", *joins]))
    if kind == "and" or kind == "or":
        return f"({draw(_conditions(depth + 1))} {kind} {draw(_conditions(depth + 1))})"
    if kind == "not":
        return f"not {draw(_conditions(depth + 1))}"
    operand = st.one_of(_LOOKUP.map(lambda lookup: _written(lookup)[3:-3]), _LITERALS)
    if kind == "lookup":
        return draw(_LOOKUP.map(lambda lookup: _written(lookup)[3:-3]))
    if kind == "literal":
        return draw(_LITERALS)
    return f"{draw(operand)} {draw(_OPERATORS)} {draw(operand)}"


@settings(max_examples=500, deadline=None)
@given(context=st.dictionaries(_NAMES, _VALUES, max_size=4), source=_conditions())
def test_the_shortcut_matches_jinja_on_any_condition(context, source):
    assert _same_outcome(_outcome(evaluate, source, context), _outcome(ex.evaluate_with_jinja, source, context))
