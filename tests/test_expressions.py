"""Templates and expressions at run time: the sandbox, strictness, limits and the language's filters."""

from __future__ import annotations

import pytest

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
            render("{{ %s }}" % name, CONTEXT)


def test_repetition_and_output_are_capped():
    with pytest.raises(ExpressionError, match="exceed"):
        render("{{ 'x' * 100000000 }}", CONTEXT)
    with pytest.raises(ExpressionError):
        evaluate("2 ** 100000", CONTEXT)
    with pytest.raises(ExpressionError, match="output exceeds"):
        render("{% for i in range(20000) %}0123456789{% endfor %}", CONTEXT)


def test_date_filters_use_the_run_clock():
    assert evaluate("account.renewal_date | days_until", CONTEXT) == 29
    assert evaluate("'2026-05-01' | days_since", CONTEXT) == 31
    assert render("{{ account.renewal_date | format_date('%d.%m.%Y') }}", CONTEXT) == "30.06.2026"


def test_date_filters_reject_non_dates():
    with pytest.raises(ExpressionError, match="not a date"):
        evaluate("'soon' | days_until", CONTEXT)
