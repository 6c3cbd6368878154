"""The health arithmetic (engine/language/health.py): every measure kind, missing data, bands, reasons, and
properties: a score stays within 0..100, and a missing measure's weight is shared among the others exactly."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.language.health import (
    NO_MATCH,
    Component,
    HealthResult,
    compute,
    event_value,
    explain,
    field_value,
    holding_down,
    in_segment,
    number,
    reasons,
    round1,
    shown_change,
    shown_number,
)
from engine.language.scorecard import Band, Measure, Scorecard, ScoreRule, validate_scorecard_text

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)

CARD_TEXT = """\
id: demo-health
segment: account.plan != "trial"
bands:
  - { name: red, below: 50 }
  - { name: yellow, below: 75 }
  - { name: green }
measures:
  - id: tickets
    title: Tickets, 30 days
    weight: 10
    events: { type: support.ticket_opened, window: 30d }
    score: [ { below: 3, score: 100 }, { below: 6, score: 50 }, { otherwise: 0 } ]
  - id: urgent_tickets
    weight: 20
    events: { type: support.ticket_opened, window: 30d, where: 'event.data.priority == "urgent"' }
    score: [ { below: 1, score: 100 }, { below: 3, score: 40 }, { otherwise: 0 } ]
  - id: refunds
    weight: 10
    events: { type: billing.refunded, window: 90d, aggregate: sum, value: event.data.amount }
    score: [ { below: 100, score: 100 }, { otherwise: 20 } ]
  - id: nps
    weight: 20
    last: { type: survey.answered, value: event.data.score }
    score: [ { below: 7, score: 0 }, { below: 9, score: 60 }, { otherwise: 100 } ]
  - id: mrr
    weight: 10
    field: account.mrr
    score: [ { below: 100, score: 30 }, { at_least: 1000, score: 100 }, { at_least: 100, score: 70 } ]
  - id: renewal
    weight: 20
    days_until: account.renews_on
    score: [ { below: 30, score: 20 }, { below: 90, score: 60 }, { otherwise: 100 } ]
    missing: { score: 50 }
  - id: last_login
    weight: 10
    days_since: account.last_login_at
    score: [ { below: 7, score: 100 }, { below: 30, score: 50 } ]
"""


@pytest.fixture(scope="module")
def card() -> Scorecard:
    result = validate_scorecard_text(CARD_TEXT, "demo-health.yaml")
    assert result.problems == []
    assert result.scorecard is not None
    return result.scorecard


def measure(card: Scorecard, measure_id: str) -> Measure:
    found = card.measure(measure_id)
    assert found is not None
    return found


def event(type_: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "data": data, "id": "e1", "occurred_at": NOW.isoformat(), "account_id": "acc-1"}


# ------------------------------------------------------------------------------------------ values of events


def test_events_count_one_per_matching_event(card):
    tickets, urgent = measure(card, "tickets"), measure(card, "urgent_tickets")
    assert event_value(tickets, event("support.ticket_opened", priority="low")) == 1.0
    assert event_value(tickets, event("support.ticket_closed")) is NO_MATCH
    assert event_value(urgent, event("support.ticket_opened", priority="urgent")) == 1.0
    assert event_value(urgent, event("support.ticket_opened", priority="low")) is NO_MATCH
    # `where` reads a field the event does not have: the expression fails, the event does not count
    assert event_value(urgent, event("support.ticket_opened")) is NO_MATCH


def test_events_sum_their_value_and_last_reads_it(card):
    refunds, nps = measure(card, "refunds"), measure(card, "nps")
    assert event_value(refunds, event("billing.refunded", amount=120.5)) == 120.5
    assert event_value(refunds, event("billing.refunded", amount="80")) == 80.0  # a number as text
    assert event_value(refunds, event("billing.refunded", amount="a lot")) is None
    assert event_value(refunds, event("billing.refunded")) is None  # no amount: it adds nothing
    assert event_value(nps, event("survey.answered", score=9)) == 9.0
    assert event_value(nps, event("survey.answered", score=True)) is None
    assert event_value(nps, event("billing.refunded", score=9)) is NO_MATCH
    assert event_value(measure(card, "mrr"), event("survey.answered", score=9)) is NO_MATCH  # a field measure


# ------------------------------------------------------------------------------------------ values of fields


@pytest.mark.parametrize(
    ("mrr", "expected"),
    [(1200, 1200.0), (99.5, 99.5), ("1500", 1500.0), (" 12.5 ", 12.5), (0, 0.0), (None, None), ("", None),
     ("n/a", None), (True, None), (float("nan"), None), ("inf", None), ([1], None)],
)
def test_a_field_is_a_number_or_missing(card, mrr, expected):
    assert field_value(measure(card, "mrr"), {"id": "acc-1", "mrr": mrr}, NOW) == expected


def test_a_field_path_below_account(card):
    nested = Measure("open_bugs", "Open bugs", 100, "field", "account.crm.open_bugs", None, None, None, "", None,
                     (ScoreRule(None, None, 100),), None)
    assert field_value(nested, {"crm": {"open_bugs": 4}}, NOW) == 4.0
    assert field_value(nested, {"crm": None}, NOW) is None
    assert field_value(nested, {}, NOW) is None
    assert field_value(measure(card, "mrr"), {}, NOW) is None


@pytest.mark.parametrize(
    ("renews_on", "expected"),
    [
        ("2026-03-02", 0.0),
        ("2026-03-31", 29.0),
        ("2026-02-28", -2.0),
        (date(2026, 4, 1), 30.0),
        ("2026-03-03T23:59:00Z", 1.0),
        ("2026-03-03T01:00:00+05:00", 0.0),  # 2026-03-02 20:00 UTC: the same day as now, in UTC
        (datetime(2026, 3, 12, tzinfo=UTC), 10.0),
        ("soon", None),
        ("", None),
        (None, None),
        (20260331, None),
    ],
)
def test_days_until_a_date(card, renews_on, expected):
    assert field_value(measure(card, "renewal"), {"renews_on": renews_on}, NOW) == expected


def test_days_since_a_datetime(card):
    last_login = measure(card, "last_login")
    assert field_value(last_login, {"last_login_at": "2026-02-23T08:00:00Z"}, NOW) == 7.0
    assert field_value(last_login, {"last_login_at": NOW.isoformat()}, NOW) == 0.0
    assert field_value(last_login, {"last_login_at": (NOW - timedelta(days=40)).isoformat()}, NOW) == 40.0
    assert field_value(last_login, {}, NOW) is None


def test_the_segment(card):
    assert in_segment(card, {"plan": "pro"})
    assert not in_segment(card, {"plan": "trial"})
    assert not in_segment(card, {})  # an account the expression cannot judge is not in the segment
    everyone = Scorecard("all", "All", None, card.bands, True, None, card.measures, "v", "all.yaml")
    assert in_segment(everyone, {})


# ------------------------------------------------------------------------------------------ the score


def test_every_measure_scored_and_weighted(card):
    values = {"tickets": 4, "urgent_tickets": 0, "refunds": 150.0, "nps": 8, "mrr": 1200, "renewal": 45,
              "last_login": 3}
    result = compute(card, values)
    scores = {c.measure_id: c.score for c in result.components}
    assert scores == {"tickets": 50, "urgent_tickets": 100, "refunds": 20, "nps": 60, "mrr": 100, "renewal": 60,
                      "last_login": 100}
    # 10*50 + 20*100 + 10*20 + 20*60 + 10*100 + 20*60 + 10*100 = 7100 over 100
    assert (result.score, result.band) == (71.0, "yellow")
    assert all(not c.skipped and c.effective_weight == c.weight for c in result.components)
    assert sum(c.contribution for c in result.components) == pytest.approx(71.0)
    assert result.component("nps") == Component("nps", "nps", 20, 8.0, 60.0, False, 20.0, 12.0, False)


def test_the_first_rule_that_matches_wins(card):
    mrr = measure(card, "mrr")
    assert [mrr.score_of(v) for v in (0, 99.99, 100, 999, 1000, 5000)] == [30, 30, 70, 70, 100, 100]


def test_missing_values_are_skipped_and_the_others_reweighted(card):
    values = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": None, "mrr": None, "renewal": 120,
              "last_login": None}
    result = compute(card, values)
    skipped = [c.measure_id for c in result.components if c.skipped]
    assert skipped == ["nps", "mrr", "last_login"]
    # tickets 10, urgent 20, refunds 10, renewal 20 = 60 of weight left, every score 100
    assert result.score == 100.0 and result.band == "green"
    shares = {c.measure_id: c.effective_weight for c in result.components}
    assert shares == pytest.approx(
        {"tickets": 100 / 6, "urgent_tickets": 200 / 6, "refunds": 100 / 6, "nps": 0, "mrr": 0, "renewal": 200 / 6,
         "last_login": 0}
    )
    assert all(c.contribution == 0 and c.score is None and c.missing for c in result.components if c.skipped)


def test_a_value_no_rule_matches_is_missing(card):
    # last_login has no `otherwise`: 45 days since the last login matches no rule, and it is skipped
    values = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": 10, "mrr": 2000, "renewal": 100,
              "last_login": 45}
    component = compute(card, values).component("last_login")
    assert component is not None and component.skipped and component.value == 45.0 and component.missing


def test_a_missing_value_with_a_fixed_score(card):
    values = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": 10, "mrr": 2000, "renewal": None,
              "last_login": 1}
    result = compute(card, values)
    renewal = result.component("renewal")
    assert renewal is not None and (renewal.skipped, renewal.score, renewal.missing) == (False, 50, True)
    assert result.score == 90.0  # 80 * 100 + 20 * 50 over 100


def test_events_with_none_in_the_window_count_zero_but_a_last_value_is_missing(card):
    # what the caller gives: a count or sum of no events is 0; the last value of no event is None
    result = compute(card, {"tickets": 0, "urgent_tickets": 0, "refunds": 0.0, "nps": None})
    assert [c.measure_id for c in result.components if not c.skipped] == ["tickets", "urgent_tickets", "refunds",
                                                                          "renewal"]
    assert result.score == pytest.approx(round((10 * 100 + 20 * 100 + 10 * 100 + 20 * 50) / 60, 1))


def test_every_measure_missing_is_no_score(card):
    only_skips = Scorecard("c", "C", None, card.bands, True, None,
                           tuple(m for m in card.measures if m.missing_score is None), "v", "c.yaml")
    result = compute(only_skips, {})
    assert (result.score, result.band) == (None, None)
    assert all(c.skipped for c in result.components)
    assert explain(result)[-1] == "total: no score (every measure is missing)"


def single(score: float) -> HealthResult:
    card = Scorecard(
        "one", "One", None, (Band("red", 50), Band("yellow", 75), Band("green", None)), True, None,
        (Measure("m", "M", 100, "field", "account.m", None, None, None, "", None, (ScoreRule(None, None, score),),
                 None),),
        "v", "one.yaml",
    )
    return compute(card, {"m": 1})


@pytest.mark.parametrize(
    ("score", "band"),
    [(0, "red"), (49.9, "red"), (49.95, "yellow"), (50, "yellow"), (74.9, "yellow"), (75, "green"), (100, "green")],
)
def test_bands_at_their_edges(score, band):
    result = single(score)
    assert result.band == band
    assert result.score == round(score, 1)


def test_the_score_is_rounded_to_one_decimal():
    card = Scorecard(
        "r", "R", None, (Band("all", None),), True, None,
        tuple(Measure(f"m{i}", f"M{i}", w, "field", f"account.m{i}", None, None, None, "", None,
                      (ScoreRule(None, None, s),), None) for i, (w, s) in enumerate([(33, 100), (33, 0), (34, 50)])),
        "v", "r.yaml",
    )
    assert compute(card, {"m0": 1, "m1": 1, "m2": 1}).score == 50.0  # 3300 + 0 + 1700 = 5000 / 100
    assert compute(card, {"m0": 1, "m1": 1}).score == 50.0  # 3300 / 66
    assert compute(card, {"m0": 1, "m2": 1}).score == 74.6  # (3300 + 1700) / 67 = 74.626...


# ------------------------------------------------------------------------------------------ reasons and explain


def test_reasons_name_the_measures_that_moved_the_score_most(card):
    before = {"tickets": 1, "urgent_tickets": 0, "refunds": 0, "nps": 10, "mrr": 2000, "renewal": 200,
              "last_login": 1}
    after = dict(before, tickets=7, urgent_tickets=4, nps=8)
    previous, new = compute(card, before), compute(card, after)
    assert (previous.score, new.score) == (100.0, 62.0)
    moved = reasons(new, previous)
    assert [(r["measure"], r["points"]) for r in moved] == [("urgent_tickets", -20.0), ("tickets", -10.0),
                                                             ("nps", -8.0)]
    assert moved[0] == {"measure": "urgent_tickets", "title": "urgent_tickets", "value": 4.0, "previous_value": 0.0,
                        "points": -20.0, "score": 0.0, "previous_score": 100.0}
    assert sum(r["points"] for r in reasons(new, previous, top=10)) == pytest.approx(new.score - previous.score)
    assert [r["measure"] for r in reasons(new, previous, top=1)] == ["urgent_tickets"]
    assert reasons(new, new) == []  # nothing moved


def test_first_reasons_are_what_holds_the_score_down(card):
    values = {"tickets": 1, "urgent_tickets": 4, "refunds": 0, "nps": 10, "mrr": 50, "renewal": 200, "last_login": 1}
    result = compute(card, values)
    assert [(r["measure"], r["points"], r["previous_value"]) for r in reasons(result, None)] == [
        ("urgent_tickets", -20.0, None),
        ("mrr", -7.0, None),
    ]


def test_reasons_when_a_measure_becomes_missing(card):
    before = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": 0, "mrr": 2000, "renewal": 200, "last_login": 1}
    previous = compute(card, before)
    new = compute(card, dict(before, nps=None))  # the low NPS is gone: the others share its weight
    assert (previous.score, new.score) == (80.0, 100.0)
    top = reasons(new, previous, top=10)
    assert sum(r["points"] for r in top) == pytest.approx(20.0, abs=0.5)
    assert not any(r["measure"] == "nps" for r in top)  # its contribution was 0 and is 0


def test_explain_shows_the_arithmetic(card):
    values = {"tickets": 4, "urgent_tickets": 0, "refunds": 0, "nps": None, "mrr": 50, "renewal": None,
              "last_login": 45}
    assert explain(compute(card, values)) == [
        "tickets (Tickets, 30 days): value 4 -> score 50 x weight 10 (14.29% after re-weighting) = 7.14 points",
        "urgent_tickets: value 0 -> score 100 x weight 20 (28.57% after re-weighting) = 28.57 points",
        "refunds: value 0 -> score 100 x weight 10 (14.29% after re-weighting) = 14.29 points",
        "nps: no value, missing: skipped; its weight 20 is shared among the others",
        "mrr: value 50 -> score 30 x weight 10 (14.29% after re-weighting) = 4.29 points",
        "renewal: no value -> missing: fixed score 50 x weight 20 (28.57% after re-weighting) = 14.29 points",
        "last_login: value 45, no rule matches it: skipped; its weight 10 is shared among the others",
        "total: 68.6 -> band yellow",
    ]
    full = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": 10, "mrr": 2000, "renewal": 200, "last_login": 1}
    first = explain(compute(card, full))[0]
    assert first == "tickets (Tickets, 30 days): value 0 -> score 100 x weight 10% = 10 points"


def test_components_round_trip_as_dicts(card):
    result = compute(card, {"tickets": 2, "nps": 9})
    assert tuple(Component.from_dict(c.as_dict()) for c in result.components) == result.components


# ------------------------------------------------------------------------------------------ properties

scores = st.floats(min_value=0, max_value=100, allow_nan=False)
values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))


@st.composite
def rules(draw: st.DrawFn) -> tuple[ScoreRule, ...]:
    items = []
    for _ in range(draw(st.integers(0, 4))):
        bound = draw(st.floats(-1000, 1000, allow_nan=False))
        if draw(st.booleans()):
            items.append(ScoreRule(bound, None, draw(scores)))
        else:
            items.append(ScoreRule(None, bound, draw(scores)))
    if draw(st.booleans()):
        items.append(ScoreRule(None, None, draw(scores)))
    return tuple(items)


@st.composite
def cards(draw: st.DrawFn) -> Scorecard:
    count = draw(st.integers(1, 8))
    measures = tuple(
        Measure(f"m{i}", f"M{i}", draw(st.integers(1, 100)), "field", f"account.m{i}", None, None, None, "", None,
                draw(rules()), draw(st.one_of(st.none(), scores)))
        for i in range(count)
    )
    bands = (Band("red", 50), Band("yellow", 75), Band("green", None))
    return Scorecard("p", "P", None, bands, True, None, measures, "v", "p.yaml")


def matches(rule: ScoreRule, value: float) -> bool:
    """The rules' meaning, written again here: below X is value < X, at_least X is value >= X, otherwise all."""
    if rule.below is not None:
        return value < rule.below
    return value >= rule.at_least if rule.at_least is not None else True


@settings(max_examples=300, deadline=None)
@given(card=cards(), data=st.data())
def test_a_score_is_within_0_and_100_and_is_the_weighted_mean(card, data):
    given_values = {m.id: data.draw(values, label=m.id) for m in card.measures}
    result = compute(card, given_values)
    # the independent formula, in exact fractions
    weight = Fraction(0)
    points = Fraction(0)
    for m in card.measures:
        v = given_values[m.id]
        s = None
        if v is not None and v == v and abs(v) != float("inf"):
            s = next((r.score for r in m.rules if matches(r, float(v))), None)
        if s is None:
            s = m.missing_score
        if s is not None:
            weight += m.weight
            points += m.weight * Fraction(s)
    if weight == 0:
        assert result.score is None and result.band is None
        return
    assert result.score is not None and 0 <= result.score <= 100
    assert abs(Fraction(result.score) - points / weight) <= Fraction(1, 20) + Fraction(1, 10**9)
    assert result.band == card.band_of(result.score)
    assert sum(c.effective_weight for c in result.components) == pytest.approx(100)
    assert sum(c.contribution for c in result.components) == pytest.approx(float(points / weight), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(card=cards(), data=st.data())
def test_a_missing_measure_is_the_weighted_mean_of_the_others(card, data):
    """Leaving a measure out (missing, skip) scores as the same card without it: its weight re-shared."""
    skip = [m for m in card.measures if m.missing_score is None]
    if not skip or len(card.measures) < 2:
        return
    gone = data.draw(st.sampled_from(skip))
    numbers = {m.id: data.draw(st.floats(-1000, 1000, allow_nan=False), label=m.id) for m in card.measures}
    with_missing = compute(card, dict(numbers, **{gone.id: None}))
    others = Scorecard(card.id, card.title, None, card.bands, True, None,
                       tuple(m for m in card.measures if m is not gone), "v", "p.yaml")
    without = compute(others, numbers)
    assert with_missing.score == without.score
    assert with_missing.band == without.band
    kept = {c.measure_id: c.effective_weight for c in without.components}
    assert {c.measure_id: c.effective_weight for c in with_missing.components if c.measure_id != gone.id} == kept


# ------------------------------------------------------------------------------------------ docs/health.md


def test_the_worked_example_of_the_docs(root):
    """docs/health.md's scorecard is valid, and its worked example, explain output and error are what the code says."""
    doc = (root / "docs" / "health.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc, re.S)
    text = next(body for lang, body in blocks if lang == "yaml" and "id: repricer-health" in body)
    result = validate_scorecard_text(text, "scorecards/repricer-health.yaml")
    assert result.problems == [] and result.scorecard is not None
    card = result.scorecard
    example = compute(card, {"urgent_tickets": 2, "nps": None, "mrr": 400, "renewal": 45})
    shown = next(body for lang, body in blocks if lang == "text" and body.startswith("urgent_tickets"))
    assert explain(example) == shown.strip().splitlines()
    third = compute(card, {"urgent_tickets": 3, "nps": None, "mrr": 400, "renewal": 45})
    assert (third.score, third.band) == (40.0, "red")
    assert "**40: red**" in doc
    moved = reasons(third, example)
    assert [(r["measure"], r["value"], r["previous_value"], r["points"]) for r in moved] == [
        ("urgent_tickets", 3.0, 2.0, -18.8)
    ]
    assert [(r["measure"], r["points"]) for r in reasons(example, None)] == [
        ("urgent_tickets", -18.8), ("renewal", -15.0), ("mrr", -7.5)
    ]
    broken = text.replace("weight: 30\n    events", "weight: 35\n    events")
    problem = validate_scorecard_text(broken, "scorecards/repricer-health.yaml").problems[0]
    validate_output = next(body for lang, body in blocks if lang == "text" and body.startswith("$ playbook validate"))
    assert problem.header() == validate_output.splitlines()[1]


def test_reasons_when_the_scorecard_changed_or_there_was_no_score(card):
    full = {"tickets": 0, "urgent_tickets": 0, "refunds": 0, "nps": 0, "mrr": 2000, "renewal": 200, "last_login": 1}
    previous = compute(card, full)
    fewer = Scorecard(card.id, card.title, None, card.bands, True, None,
                      tuple(m for m in card.measures if m.id != "nps"), "v2", "demo-health.yaml")
    new = compute(fewer, full)  # nps (score 0) is gone from the scorecard
    moved = reasons(new, previous, top=10)
    assert sum(r["points"] for r in moved) == pytest.approx(new.score - previous.score, abs=0.3)
    nobody = HealthResult(card.id, None, None, ())
    assert reasons(new, nobody) == reasons(new, None)


# ------------------------------------------------------------------------------------------ fast = plain
# compute, reasons and holding_down are written for speed (the nightly scores every account: docs/health.md); these
# are the same functions written plainly (as they were before), and every output field must agree with them.


def plain_compute(card: Scorecard, values: dict[str, Any]) -> HealthResult:
    scored = []
    for m in card.measures:
        value = number(values.get(m.id))
        score = m.score_of(value) if value is not None else None
        scored.append((m, value, m.missing_score, True) if score is None else (m, value, score, False))
    total_weight = sum(m.weight for m, _, s, _ in scored if s is not None)
    components = []
    weighted = 0.0
    for m, value, score, missing in scored:
        if score is None or total_weight == 0:
            components.append(Component(m.id, m.title, m.weight, value, None, True, 0.0, 0.0, True))
            continue
        share = 100.0 * m.weight / total_weight
        weighted += m.weight * score
        components.append(Component(m.id, m.title, m.weight, value, score, False, share, share * score / 100.0,
                                    missing))
    if total_weight == 0:
        return HealthResult(card.id, None, None, tuple(components))
    total = min(100.0, max(0.0, round(weighted / total_weight, 1)))
    return HealthResult(card.id, total, card.band_of(total), tuple(components))


def plain_reasons(new: HealthResult, previous: HealthResult | None, top: int = 3) -> list[dict[str, Any]]:
    if previous is not None and previous.score is None:
        previous = None
    rows = []
    for index, comp in enumerate(new.components):
        before = previous.component(comp.measure_id) if previous is not None else None
        if previous is None:
            points = comp.contribution - comp.effective_weight
        else:
            points = comp.contribution - (before.contribution if before is not None else 0.0)
        points = round(points, 1)
        if points == 0:
            continue
        rows.append((-abs(points), index, {
            "measure": comp.measure_id, "title": comp.title, "value": comp.value,
            "previous_value": before.value if before is not None else None, "points": points, "score": comp.score,
            "previous_score": before.score if before is not None else None,
        }))
    known = {c.measure_id for c in new.components}
    for index, gone in enumerate(previous.components if previous is not None else ()):
        points = round(-gone.contribution, 1)
        if gone.measure_id in known or points == 0:
            continue
        rows.append((-abs(points), len(new.components) + index, {
            "measure": gone.measure_id, "title": gone.title, "value": None, "previous_value": gone.value,
            "points": points, "score": None, "previous_score": gone.score,
        }))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [row for _, _, row in rows[: max(0, top)]]


def exactly(value: Any) -> Any:
    """A value as a comparison that tells 0.0 from -0.0, 1 from 1.0 and NaN from NaN, key order included."""
    if isinstance(value, (Component, HealthResult)):
        return (type(value).__name__, exactly(list(vars(value).items())))
    if isinstance(value, dict):
        return ("dict", exactly(list(value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [exactly(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


any_values = st.one_of(
    st.none(), st.booleans(), st.floats(), st.integers(-10**6, 10**6), st.integers(10**400, 10**401),
    st.floats(-1000, 1000).map(str), st.sampled_from(["", " 12.5 ", "n/a", "inf", "nan", "1e999"]),
    # values next to the rules' bounds and to a half of a tenth
    st.integers(-2000, 2000).map(lambda n: n / 20), st.integers(-2000, 2000).map(lambda n: n / 20 + 1e-13),
)


@st.composite
def any_cards(draw: st.DrawFn) -> Scorecard:
    """Cards compute() can be given, validated or not: weights of 0, no rules, no bands, ids repeated."""
    count = draw(st.integers(0, 7))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]), min_size=count, max_size=count))
    measures = tuple(
        Measure(i, draw(st.sampled_from([i, f"Title {i}"])), draw(st.integers(0, 100)), "field", f"account.{i}",
                None, None, None, "", None, draw(rules()), draw(st.one_of(st.none(), scores, st.just(0.0))))
        for i in ids
    )
    bands = draw(st.sampled_from([
        (Band("red", 50), Band("yellow", 75), Band("green", None)), (), (Band("only", None),),
        (Band("low", 33.3), Band("high", None)),
    ]))
    return Scorecard(draw(st.sampled_from(["p", "q"])), "P", None, bands, True, None, measures, "v", "p.yaml")


@settings(max_examples=200, deadline=None)
@given(card=any_cards(), data=st.data())
def test_compute_reasons_and_holding_down_equal_the_plain_arithmetic(card, data):
    values = {m.id: data.draw(any_values, label=f"value {m.id}") for m in card.measures}
    result = compute(card, values)
    assert exactly(result) == exactly(plain_compute(card, values))
    assert result == plain_compute(card, values)
    # the previous score: another card's (measures gone, added, repeated), none, or one without a score
    other = data.draw(any_cards(), label="previous card")
    previous_values = {m.id: data.draw(any_values, label=f"previous {m.id}") for m in other.measures}
    previous = data.draw(st.sampled_from([None, compute(other, previous_values), compute(card, previous_values),
                                          HealthResult(card.id, None, None, ())]), label="previous")
    top = data.draw(st.integers(-1, 9), label="top")
    assert exactly(reasons(result, previous, top)) == exactly(plain_reasons(result, previous, top))
    stored = [dict(vars(c)) for c in result.components]
    assert exactly(holding_down(card.id, stored, top)) == exactly(
        plain_reasons(HealthResult(card.id, None, None, tuple(Component.from_dict(c) for c in stored)), None, top)
    )


def test_components_made_fast_are_components():
    """compute builds Component and HealthResult without their __init__: the same objects (fields, order, equality,
    hash), as long as the dataclasses stay plain (no slots, no __post_init__, no defaults computed)."""
    card = Scorecard("p", "P", None, (Band("red", 50), Band("green", None)), True, None, (
        Measure("a", "A", 60, "field", "account.a", None, None, None, "", None, (ScoreRule(10, None, 100),), None),
        Measure("b", "B", 40, "field", "account.b", None, None, None, "", None, (ScoreRule(None, None, 50),), 20.0),
    ), "v", "p.yaml")
    result = compute(card, {"a": 3, "b": None})
    expected = HealthResult("p", 68.0, "green", (
        Component("a", "A", 60, 3.0, 100.0, False, 60.0, 60.0, False),
        Component("b", "B", 40, None, 20.0, False, 40.0, 8.0, True),
    ))
    assert result == expected and hash(result) == hash(expected)
    assert [list(vars(c).items()) for c in result.components] == [list(vars(c).items()) for c in expected.components]
    assert list(vars(result)) == list(vars(expected))
    assert Component.from_dict(result.components[0].as_dict()) == expected.components[0]
    for cls in (Component, HealthResult):
        assert not hasattr(cls, "__slots__") and not hasattr(cls, "__post_init__")


near_halves = st.builds(lambda n, ulps: math.nextafter(n / 20, math.inf) if ulps > 0 else (
    math.nextafter(n / 20, -math.inf) if ulps < 0 else n / 20), st.integers(-10**7, 10**7), st.integers(-1, 1))


@settings(max_examples=500, deadline=None)
@given(x=st.one_of(st.floats(), near_halves, st.floats(-1e13, 1e13), st.floats(-1, 1), st.integers(-10**6, 10**6)))
def test_round1_is_round_to_one_decimal(x):
    assert exactly(round1(x)) == exactly(round(x, 1))


@pytest.mark.parametrize("x", [0.05, -0.05, 0.15, 0.25, 18.75, -18.75, 2.675, -0.04, -0.0, 0.0, 1e-300, -1e-300,
                               0.04999999999999999, 99.95, 1e12 - 0.05, 1e15 + 0.5, float("inf"), float("nan"), 7])
def test_round1_at_its_edges(x):
    assert exactly(round1(x)) == exactly(round(x, 1))


@pytest.mark.parametrize(("value", "number", "change"), [
    (None, "–", "–"), (60.0, "60", "+60"), (59.96, "60", "+60"), (58.84, "58.8", "+58.8"), (-18.8, "-18.8", "−18.8"),
    (-0.04, "0", "±0"), (0.0, "0", "±0"), (0.05, "0.1", "+0.1"), (-53.333, "-53.3", "−53.3"),
])
def test_scores_and_points_are_shown_with_one_decimal_at_most(value, number, change) -> None:
    """The ops pages, the inbox and the CLI show a score or points alike: 59.96 is 60 everywhere (not 60.0), a
    change that rounds to nothing is ±0, never −0."""
    assert (shown_number(value), shown_change(value)) == (number, change)
    assert shown_change(value, "-", minus="-") == change.replace("−", "-").replace("–", "-")
