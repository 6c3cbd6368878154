"""The arithmetic of health scores: pure functions of a Scorecard, values and a clock (no I/O, no storage).

- event_value: what one event contributes to an events/last measure (or NO_MATCH);
- field_value: an account field's number, or whole days until/since a date field;
- compute: each measure's value -> its score by its rules -> the weighted mean over the measures not
  skipped (missing values are skipped and the others re-weighted, or get a fixed score), rounded to one
  decimal, and its band;
- reasons: which measures moved a score most since the previous one; explain: the arithmetic in words.

docs/health.md is the reference; engine/runtime/health.py stores and updates scores with these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from . import expressions as ex
from .scorecard import Measure, Scorecard


class NoMatch:
    """The event does not feed the measure (another type, or its `where` is false or fails)."""

    _instance: NoMatch | None = None

    def __new__(cls) -> NoMatch:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_MATCH"

    def __bool__(self) -> bool:
        return False


NO_MATCH = NoMatch()

_isfinite = math.isfinite
_floor = math.floor
_copysign = math.copysign


def round1(x: float) -> float:
    """round(x, 1), the same float (and the same sign of zero), about twice as fast when 10 * x is not close to a
    half, which is almost always: round(x, 1) goes through decimal text, and compute and reasons round every
    component.

    round(x, 1) is the double nearest to D / 10, D the integer nearest to 10 * x (exactly). y = 10 * x is within
    |y| * 2**-53 (< 0.00012 below 10**12) of 10 * x, so when y's fraction is more than 0.001 away from a half, D is
    round(y), and D / 10 (a correctly rounded division of an exact integer) is that nearest double. Otherwise, and
    for NaN, infinities, huge values and anything but a float (round keeps an int an int): round(x, 1) itself.
    tests/test_health_arithmetic.py checks it against round.
    """
    y = x * 10.0
    if type(x) is float and -1e12 < y < 1e12:
        whole = _floor(y)
        fraction = y - whole
        if fraction < 0.499 or fraction > 0.501:
            if fraction > 0.5:
                whole += 1
            return whole / 10.0 if whole else _copysign(0.0, x)
    return round(x, 1)


def number(value: Any) -> float | None:
    """A finite number from a value: int, float, or text holding one (CRMs such as HubSpot keep numbers as text).

    Booleans, NaN, infinities, empty text and anything else are not numbers (None).
    """
    kind = type(value)
    if kind is float:  # the usual value (a count, a sum, a field): no conversion
        return value if _isfinite(value) else None
    if kind is int:
        try:
            return float(value)  # finite whenever it converts
        except OverflowError:
            return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            return None
        try:
            result = float(text)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def _date_of(value: Any) -> date | None:
    """A date from a date, a datetime (its UTC date when it has a timezone) or ISO text; None otherwise."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def lookup(path: str, account: dict[str, Any]) -> Any:
    """The value at a dotted path below account ("account.crm.mrr"); None when any part is absent."""
    parts = path.split(".")
    return _walk(parts[1:] if parts and parts[0] == "account" else parts, account)


def _walk(keys: Iterable[str], value: Any) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


_last_today: tuple[datetime | None, date | None] = (None, None)


def _today(now: datetime) -> date | None:
    """_date_of(now), kept for the last ``now`` seen: the nightly asks it for every account at the same time."""
    global _last_today
    seen, today = _last_today  # one tuple read and one tuple write: threads see a whole pair or the other
    if seen is not now:
        today = _date_of(now)
        _last_today = (now, today)
    return today


def in_segment(card: Scorecard, account: dict[str, Any]) -> bool:
    """Whether the scorecard scores this account; an account the expression cannot judge is not in it."""
    if card.segment is None:
        return True
    try:
        return bool(ex.evaluate(card.segment, {"account": account}))
    except ex.ExpressionError:
        return False


def event_value(measure: Measure, event: dict[str, Any]) -> float | None | NoMatch:
    """What one event contributes to an events/last measure.

    NO_MATCH when the measure reads no events, the type differs, or `where` is false or fails; else a count
    contributes 1.0, a sum or last the `value` expression as a number (None when it is not one).
    ``event``: as expressions see it ({type, data, id, occurred_at, account_id}).
    """
    if not measure.reads_events or event.get("type") != measure.source:
        return NO_MATCH
    context = {"event": event}
    if measure.where is not None:
        try:
            if not ex.evaluate(measure.where, context):
                return NO_MATCH
        except ex.ExpressionError:
            return NO_MATCH
    if measure.kind == "events" and measure.aggregate != "sum":
        return 1.0
    if measure.value is None:  # pragma: no cover - validation requires it
        return None
    try:
        return number(ex.evaluate(measure.value, context))
    except ex.ExpressionError:
        return None


def field_value(measure: Measure, account: dict[str, Any], now: datetime) -> float | None:
    """A field measure's number; days_until/days_since: whole calendar days (UTC) between now and the date.

    None when the field is absent, null, not a number or not a date. Events measures have no field value (None).
    """
    kind = measure.kind
    if kind == "field":
        return number(_walk(measure.field_path, account))
    if kind != "days_until" and kind != "days_since":
        return None
    when = _date_of(_walk(measure.field_path, account))
    if when is None:
        return None
    today = _today(now)
    assert today is not None
    days = (when - today).days if kind == "days_until" else (today - when).days
    return float(days)


@dataclass(frozen=True)
class Component:
    measure_id: str
    title: str
    weight: int
    value: float | None
    score: float | None
    skipped: bool
    effective_weight: float  # share of the total (in points of 100) after re-weighting; 0 when skipped
    contribution: float  # points of the final score it gives (effective_weight * score / 100)
    missing: bool = False  # the value was missing (or no rule matched it): skipped, or its fixed missing score

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Component:
        return _component(
            str(data["measure_id"]),
            str(data.get("title") or data["measure_id"]),
            int(data.get("weight", 0)),
            data.get("value"),
            data.get("score"),
            bool(data.get("skipped", False)),
            float(data.get("effective_weight", 0.0)),
            float(data.get("contribution", 0.0)),
            bool(data.get("missing", False)),
        )


_T = TypeVar("_T")
_new = object.__new__
_set = object.__setattr__


def _frozen(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of a frozen dataclass (no slots, no __post_init__) from its fields' values, in the order of its
    fields: what its __init__ makes, without __init__'s object.__setattr__ per field (most of compute's time)."""
    instance: _T = _new(cls)
    _set(instance, "__dict__", fields)
    return instance


def _component(measure_id: str, title: str, weight: int, value: float | None, score: float | None, skipped: bool,
               effective_weight: float, contribution: float, missing: bool) -> Component:
    """Component(...), faster (see _frozen); tests/test_health_arithmetic.py checks both give the same."""
    return _frozen(Component, {
        "measure_id": measure_id, "title": title, "weight": weight, "value": value, "score": score,
        "skipped": skipped, "effective_weight": effective_weight, "contribution": contribution, "missing": missing,
    })


@dataclass(frozen=True)
class HealthResult:
    scorecard_id: str
    score: float | None
    band: str | None
    components: tuple[Component, ...]

    def component(self, measure_id: str) -> Component | None:
        return next((c for c in self.components if c.measure_id == measure_id), None)


def _result(scorecard_id: str, score: float | None, band: str | None,
            components: tuple[Component, ...]) -> HealthResult:
    """HealthResult(...), faster (see _frozen)."""
    return _frozen(HealthResult, {"scorecard_id": scorecard_id, "score": score, "band": band,
                                  "components": components})


def compute(card: Scorecard, values: dict[str, float | None]) -> HealthResult:
    """The score of a scorecard from each measure's value (events: the count or sum; last: the value or None).

    A measure whose value is missing (absent, None, not finite) or matches no rule is skipped, and the others
    are re-weighted, unless it declares a fixed missing score. Score = sum(weight * score) / sum(weight) over
    the measures not skipped, rounded to one decimal; None when every measure is skipped.
    """
    # One pass for the scores (the rules as Measure.rule_bounds), one for the components; the same operations in
    # the same order as the formula in docs/health.md, so the same floats (tests/test_health_arithmetic.py holds the
    # straightforward version as its reference).
    get = values.get
    scored: list[tuple[Measure, float | None, float | None, bool]] = []  # measure, value, score, missing
    total_weight = 0
    for measure in card.measures:
        value = get(measure.id)
        if type(value) is not float or not _isfinite(value):
            value = number(value)
        score = None
        if value is not None:
            for below, at_least, points in measure.rule_bounds:
                if below is not None:
                    if value < below:
                        score = points
                        break
                elif at_least is not None:
                    if value >= at_least:
                        score = points
                        break
                else:
                    score = points
                    break
        if score is None:
            score = measure.missing_score
            scored.append((measure, value, score, True))
        else:
            scored.append((measure, value, score, False))
        if score is not None:
            total_weight += measure.weight
    components: list[Component] = []
    weighted = 0.0
    for measure, value, score, missing in scored:
        # Component(...) as _component makes it, written out here: the arithmetic's hottest line
        component = _new(Component)
        if score is None or total_weight == 0:
            _set(component, "__dict__", {
                "measure_id": measure.id, "title": measure.title, "weight": measure.weight, "value": value,
                "score": None, "skipped": True, "effective_weight": 0.0, "contribution": 0.0, "missing": True,
            })
        else:
            share = 100.0 * measure.weight / total_weight
            weighted += measure.weight * score
            _set(component, "__dict__", {
                "measure_id": measure.id, "title": measure.title, "weight": measure.weight, "value": value,
                "score": score, "skipped": False, "effective_weight": share, "contribution": share * score / 100.0,
                "missing": missing,
            })
        components.append(component)
    if total_weight == 0:
        return _result(card.id, None, None, tuple(components))
    total = min(100.0, max(0.0, round1(weighted / total_weight)))
    band = None
    bands = card.band_bounds
    if bands:  # Scorecard.band_of
        band = bands[-1][1]
        for below, name in bands:
            if below is not None and total < below:
                band = name
                break
    return _result(card.id, total, band, tuple(components))


def reasons(new: HealthResult, previous: HealthResult | None, top: int = 3) -> list[dict[str, Any]]:
    """The measures that moved the score most, largest |points| first: [{measure, title, value, previous_value,
    points, score, previous_score}].

    points: the change of the measure's contribution (the points of the score it gives); their sum is the change
    of the score (before rounding); a measure the previous score had and the new one has not (the scorecard
    changed) is listed with the points it gave. Without a previous score (or when it was no score), the points each
    measure costs against a perfect 100 (contribution - its share), so the first score's reasons are what holds it
    down. Measures that did not move are left out.
    """
    if previous is not None and previous.score is None:
        previous = None
    # (-|points|, position, points, the component, the previous one); the rows' dicts only for the top ones
    rows: list[tuple[float, int, float, Component | None, Component | None]] = []
    if previous is None:
        for index, comp in enumerate(new.components):
            points = round1(comp.contribution - comp.effective_weight)
            if points != 0:
                rows.append((-abs(points), index, points, comp, None))
    else:
        earlier: dict[str, Component] = {}
        for comp in previous.components:
            earlier.setdefault(comp.measure_id, comp)  # the first of an id, as HealthResult.component
        for index, comp in enumerate(new.components):
            before = earlier.get(comp.measure_id)
            points = round1(comp.contribution - (before.contribution if before is not None else 0.0))
            if points != 0:
                rows.append((-abs(points), index, points, comp, before))
        known = {c.measure_id for c in new.components}
        for index, gone in enumerate(previous.components, len(new.components)):
            points = round1(-gone.contribution)
            if gone.measure_id in known or points == 0:
                continue
            rows.append((-abs(points), index, points, None, gone))
    rows.sort()  # by (-|points|, position): positions differ, so the components are never compared
    found = []
    for _, _, points, now, then in rows[: max(0, top)]:
        if now is None:
            assert then is not None
            found.append({"measure": then.measure_id, "title": then.title, "value": None,
                          "previous_value": then.value, "points": points, "score": None,
                          "previous_score": then.score})
        else:
            found.append({"measure": now.measure_id, "title": now.title, "value": now.value,
                          "previous_value": then.value if then is not None else None, "points": points,
                          "score": now.score, "previous_score": then.score if then is not None else None})
    return found


def holding_down(scorecard_id: str, components: Iterable[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """What holds a stored score down: ``reasons`` of the score alone (no previous one), from its stored components
    (Component.as_dict): the measures by the points they cost against a perfect 100, at most ``top``. The API, the
    CLI, the inbox and templates all give these."""
    result = _result(scorecard_id, None, None, tuple(Component.from_dict(c) for c in components))
    return reasons(result, None, top)


def _fmt(value: float | None) -> str:
    if value is None:
        return "none"
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def explain(result: HealthResult) -> list[str]:
    """The arithmetic, one line per measure, then the total and the band."""
    lines = []
    for c in result.components:
        head = f"{c.measure_id} ({c.title})" if c.title and c.title != c.measure_id else c.measure_id
        value = "no value" if c.value is None else f"value {_fmt(c.value)}"
        if c.skipped:
            why = "missing" if c.value is None else "no rule matches it"
            lines.append(f"{head}: {value}, {why}: skipped; its weight {c.weight} is shared among the others")
            continue
        source = "missing: fixed score" if c.missing else "score"
        lines.append(
            f"{head}: {value} -> {source} {_fmt(c.score)} x weight {c.weight} "
            f"({_fmt(round(c.effective_weight, 2))}% after re-weighting) = {_fmt(round(c.contribution, 2))} points"
            if round(c.effective_weight, 6) != c.weight
            else f"{head}: {value} -> {source} {_fmt(c.score)} x weight {c.weight}% = "
            f"{_fmt(round(c.contribution, 2))} points"
        )
    if result.score is None:
        lines.append("total: no score (every measure is missing)")
    else:
        lines.append(f"total: {_fmt(result.score)} -> band {result.band}")
    return lines


def shown_number(value: float | None, empty: str = "–") -> str:
    """A score, points or a measure's value as people read them (the ops pages, the inbox, the CLI): one decimal
    at most, none when it rounds whole (58.8, 60, 0 for -0.04); ``empty`` when there is none."""
    if value is None:
        return empty
    return f"{round(float(value), 1) + 0.0:.1f}".removesuffix(".0")  # + 0.0: -0.0 is shown 0


def shown_change(value: float | None, empty: str = "–", minus: str = "−") -> str:
    """A change in points, or what a measure costs: +4.2, −18.8 (a real minus sign; the CLI passes "-"), ±0."""
    if value is None:
        return empty
    rounded = round(float(value), 1)
    sign = "+" if rounded > 0 else minus if rounded < 0 else "±"
    return sign + shown_number(abs(rounded))
