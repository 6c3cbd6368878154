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
from typing import Any

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


def number(value: Any) -> float | None:
    """A finite number from a value: int, float, or text holding one (CRMs such as HubSpot keep numbers as text).

    Booleans, NaN, infinities, empty text and anything else are not numbers (None).
    """
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
        return _date_of(datetime.fromisoformat(text))
    except ValueError:
        pass
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def lookup(path: str, account: dict[str, Any]) -> Any:
    """The value at a dotted path below account ("account.crm.mrr"); None when any part is absent."""
    parts = path.split(".")
    value: Any = account
    for part in parts[1:] if parts and parts[0] == "account" else parts:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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
    if measure.kind == "field":
        return number(lookup(measure.source, account))
    if measure.kind not in ("days_until", "days_since"):
        return None
    when = _date_of(lookup(measure.source, account))
    if when is None:
        return None
    today = _date_of(now)
    assert today is not None
    days = (when - today).days if measure.kind == "days_until" else (today - when).days
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
        return cls(
            measure_id=str(data["measure_id"]),
            title=str(data.get("title") or data["measure_id"]),
            weight=int(data.get("weight", 0)),
            value=data.get("value"),
            score=data.get("score"),
            skipped=bool(data.get("skipped", False)),
            effective_weight=float(data.get("effective_weight", 0.0)),
            contribution=float(data.get("contribution", 0.0)),
            missing=bool(data.get("missing", False)),
        )


@dataclass(frozen=True)
class HealthResult:
    scorecard_id: str
    score: float | None
    band: str | None
    components: tuple[Component, ...]

    def component(self, measure_id: str) -> Component | None:
        return next((c for c in self.components if c.measure_id == measure_id), None)


def compute(card: Scorecard, values: dict[str, float | None]) -> HealthResult:
    """The score of a scorecard from each measure's value (events: the count or sum; last: the value or None).

    A measure whose value is missing (absent, None, not finite) or matches no rule is skipped, and the others
    are re-weighted, unless it declares a fixed missing score. Score = sum(weight * score) / sum(weight) over
    the measures not skipped, rounded to one decimal; None when every measure is skipped.
    """
    scored: list[tuple[Measure, float | None, float | None, bool]] = []  # measure, value, score, missing
    for measure in card.measures:
        value = number(values.get(measure.id))
        score = measure.score_of(value) if value is not None else None
        if score is None:
            scored.append((measure, value, measure.missing_score, True))
        else:
            scored.append((measure, value, score, False))
    total_weight = sum(m.weight for m, _, s, _ in scored if s is not None)
    components = []
    weighted = 0.0
    for measure, value, score, missing in scored:
        if score is None or total_weight == 0:
            components.append(Component(measure.id, measure.title, measure.weight, value, None, True, 0.0, 0.0, True))
            continue
        share = 100.0 * measure.weight / total_weight
        weighted += measure.weight * score
        components.append(
            Component(measure.id, measure.title, measure.weight, value, score, False, share, share * score / 100.0,
                      missing)
        )
    if total_weight == 0:
        return HealthResult(card.id, None, None, tuple(components))
    total = min(100.0, max(0.0, round(weighted / total_weight, 1)))
    return HealthResult(card.id, total, card.band_of(total), tuple(components))


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
    rows: list[tuple[float, int, dict[str, Any]]] = []
    for index, comp in enumerate(new.components):
        before = previous.component(comp.measure_id) if previous is not None else None
        if previous is None:
            points = comp.contribution - comp.effective_weight
        else:
            points = comp.contribution - (before.contribution if before is not None else 0.0)
        points = round(points, 1)
        if points == 0:
            continue
        rows.append(
            (
                -abs(points),
                index,
                {
                    "measure": comp.measure_id,
                    "title": comp.title,
                    "value": comp.value,
                    "previous_value": before.value if before is not None else None,
                    "points": points,
                    "score": comp.score,
                    "previous_score": before.score if before is not None else None,
                },
            )
        )
    known = {c.measure_id for c in new.components}
    for index, gone in enumerate(previous.components if previous is not None else ()):
        points = round(-gone.contribution, 1)
        if gone.measure_id in known or points == 0:
            continue
        row = {"measure": gone.measure_id, "title": gone.title, "value": None, "previous_value": gone.value,
               "points": points, "score": None, "previous_score": gone.score}
        rows.append((-abs(points), len(new.components) + index, row))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [row for _, _, row in rows[: max(0, top)]]


def holding_down(scorecard_id: str, components: Iterable[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """What holds a stored score down: ``reasons`` of the score alone (no previous one), from its stored components
    (Component.as_dict): the measures by the points they cost against a perfect 100, at most ``top``. The API, the
    CLI, the inbox and templates all give these."""
    result = HealthResult(scorecard_id, None, None, tuple(Component.from_dict(c) for c in components))
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
