"""The three reads of an account's measure values agree (engine/storage/health.py), on SQLite and PostgreSQL:
account_state (an event's update: on SQLite one statement of its own), account_event_values (an event's update on
PostgreSQL: one UNION ALL) and event_values (the nightly pass: grouped sums per page), the database summing in
each. Values in and out of their windows, on the window's edge, in the future, several per instant, `last`
measures with and without a window, and scorecards the account's events do not feed: an event's score and the
night's are computed from the same numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.runtime import health
from engine.runtime.health import read_scorecards
from engine.storage import health as hs
from engine.storage.db import migrate, session

HIGH = "[ { below: 3, score: 100 }, { otherwise: 0 } ]"
NPS = "[ { below: 7, score: 0 }, { otherwise: 100 } ]"
CARDS = {
    "alpha.yaml": f"""\
id: alpha
bands: [ {{ name: low, below: 50 }}, {{ name: high }} ]
measures:
  - {{ id: tickets_7d, weight: 25, events: {{ type: support.ticket, window: 7d }}, score: {HIGH} }}
  - {{ id: tickets_30d, weight: 25, events: {{ type: support.ticket, window: 30d }}, score: {HIGH} }}
  - id: hours
    weight: 25
    events: {{ type: support.resolved, window: 30d, aggregate: sum, value: event.data.hours }}
    score: {HIGH}
  - {{ id: nps, weight: 25, last: {{ type: survey.answered, value: event.data.score }}, score: {NPS} }}
""",
    "beta.yaml": f"""\
id: beta
bands: [ {{ name: low, below: 50 }}, {{ name: high }} ]
measures:
  - {{ id: csat, weight: 50, last: {{ type: survey.answered, value: event.data.score, window: 14d }}, score: {NPS} }}
  - {{ id: logins, weight: 50, events: {{ type: product.login, window: 7d }}, score: {NPS} }}
""",
}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MEASURES = [("alpha", "tickets_7d"), ("alpha", "tickets_30d"), ("alpha", "hours"), ("alpha", "nps"),
            ("beta", "csat"), ("beta", "logins")]

# (measure, minutes before NOW (negative: after it), value); 7, 14 and 30 days on the minute: the windows' edges
_minutes = st.one_of(st.sampled_from([7 * 1440, 14 * 1440, 30 * 1440, 0, -5]), st.integers(-60, 45 * 1440))
_value = st.one_of(st.sampled_from([0.0, 1.0, 2.5]), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)))
_rows = st.lists(st.tuples(st.sampled_from(MEASURES), _minutes, _value), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows, other=_rows)
@example(  # two answers at one instant: the one recorded last is the newest; one on the 14-day edge does not count
    rows=[(("alpha", "nps"), 60, 3.0), (("alpha", "nps"), 60, 9.0), (("beta", "csat"), 60, 8.0),
          (("beta", "csat"), 60, 2.0), (("beta", "csat"), 14 * 1440, 10.0)],
    other=[(("alpha", "nps"), 0, 5.0)],
)
def test_an_events_read_and_the_nights_read_agree(tmp_path: Path, rows: list, other: list) -> None:
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    agree(tmp_path, db_url, rows, other)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows, other=_rows)
@example(
    rows=[(("alpha", "nps"), 60, 3.0), (("alpha", "nps"), 60, 9.0), (("beta", "csat"), 14 * 1440, 10.0),
          (("alpha", "tickets_7d"), 7 * 1440, 1.0), (("alpha", "tickets_7d"), 7 * 1440 - 1, 1.0)],
    other=[(("alpha", "nps"), 0, 5.0)],
)
def test_the_reads_agree_on_postgresql(tmp_path: Path, postgres: str, rows: list, other: list) -> None:
    agree(tmp_path, postgres, rows, other)


def agree(tmp_path: Path, db_url: str, rows: list, other: list) -> None:
    folder = tmp_path / "cards"
    folder.mkdir(exist_ok=True)
    for name, text in CARDS.items():
        (folder / name).write_text(text, encoding="utf-8")
    cards = read_scorecards(folder)
    assert [c.id for c in cards] == ["alpha", "beta"]
    with session(db_url) as s:
        s.execute(hs._VALUES.delete())
        for account, values in (("acc-1", rows), ("acc-2", other)):  # acc-2: rows that must not leak into acc-1's
            for n, ((card, measure), minutes, value) in enumerate(values):
                hs.add_event_values(s, f"{account}-ev-{n}", [{
                    "account_id": account, "scorecard_id": card, "measure_id": measure,
                    "at": NOW - timedelta(minutes=minutes), "value": value,
                }])
    queries = [q for card in cards for q in health._queries(card, NOW)]
    assert len(queries) == len(MEASURES)
    for subset in (queries, [q for q in queries if q.scorecard_id == "alpha"], [q for q in queries if q.last]):
        with session(db_url) as s:
            nightly = {(c, m): v for (a, c, m), v in hs.event_values(s, ["acc-1"], subset).items()}
            _, state = hs.account_state(s, "acc-1", subset)
            python = hs.account_event_values(s, "acc-1", subset)
        assert state.keys() == nightly.keys() == python.keys()
        for key, value in nightly.items():
            assert abs(state[key] - value) <= 1e-9 * max(1.0, abs(value)), key
            assert abs(python[key] - value) <= 1e-9 * max(1.0, abs(value)), key
            if key[1] in ("nps", "csat"):  # the newest value itself, not a sum
                assert state[key] == value == python[key]
