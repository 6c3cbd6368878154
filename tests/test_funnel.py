"""The funnel (docs/funnel.md): engine/storage/funnel.py on seeded run_progress rows in real SQLite, the intervals
against published values, GET /playbooks/{id}/funnel through the real app, and `playbook stats` through the CLI."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from api.app import create_app
from api.security import create_token
from engine import cli
from engine.language.library import Library
from engine.runtime.settings import Settings
from engine.storage import models as t
from engine.storage.db import migrate, session
from engine.storage.funnel import (
    FunnelError,
    StepInfo,
    funnel,
    newcombe,
    playbook_funnel,
    steps_of,
    wilson,
)
from tests.asgi import call
from tests.paths import PLAYBOOKS

LIBRARY = Library.load(PLAYBOOKS).playbooks
PLAYBOOK = LIBRARY["trial-follow-up"]  # a 10% control group and a split (win_back_offer: discount, longer_trial)
CURRENT = PLAYBOOK.version
OLD_B, OLD_C = "aaaa1111bbbb2222", "aaaa1111cccc3333"  # two older versions sharing the prefix aaaa1111
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
GOAL, CANCELLED = "subscription.activated", "account.cancelled"


# ------------------------------------------------------------------------------------------------ seeded rows


def run(
    key: str,
    status: str,
    *,
    hour: int,
    version: str = CURRENT,
    control: bool = False,
    event: str | None = None,
    paths: dict[str, str] | None = None,
    current: list[str] | None = None,
    steps: dict[str, str] | None = None,
    days: float = 1.0,
    playbook_id: str = "trial-follow-up",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    started = T0 + timedelta(hours=hour)
    row = {
        "run_key": key, "workflow_id": f"{playbook_id}/{key}", "playbook_id": playbook_id, "version": version,
        "account_id": f"acc-{key}", "control": control, "paths": paths or {}, "status": status,
        "reason": "boom" if status == "failed" else "", "exit_event": event, "current": current or [],
        "started_at": started, "ended_at": None if status == "running" else started + timedelta(days=days),
        "updated_at": started, "seq": 1,
    }  # fmt: skip
    step_rows = [{"run_key": key, "step_id": s, "status": st, "at": started} for s, st in (steps or {}).items()]
    return row, step_rows


DONE2 = {"csm": "done", "usage": "done"}
DISCOUNT = {**DONE2, "trial_ended": "done", "win_back_offer": "done", "win_back": "done", "win_back_trial": "not_run"}
LONGER = {**DONE2, "trial_ended": "done", "win_back_offer": "done", "win_back": "not_run", "win_back_trial": "done"}
RUNS = [
    # the library's version: 12 runs
    run("live-1", "running", hour=0, current=["engagement", "rescue_call"], steps=DONE2),
    run("live-2", "running", hour=1, control=True, current=["trial_ended"], steps={"csm": "skipped", "usage": "done"}),
    run("live-3", "running", hour=2, paths={"win_back_offer": "discount"}, current=["win_back_offer", "win_back"],
        steps={**DONE2, "trial_ended": "done"}),
    run("done-1", "completed", hour=3, paths={"win_back_offer": "discount"}, steps=DISCOUNT),
    run("done-2", "completed", hour=4, paths={"win_back_offer": "longer_trial"}, steps=LONGER),
    run("goal-1", "goal", hour=5, event=GOAL, paths={"win_back_offer": "discount"}, days=2, steps=DONE2),
    run("goal-2", "goal", hour=6, event=GOAL, paths={"win_back_offer": "longer_trial"}, days=4, steps=DONE2),
    run("goal-3", "goal", hour=7, event=GOAL, control=True, days=6, steps={"csm": "skipped", "usage": "done"}),
    run("goal-4", "goal", hour=8, event=GOAL, paths={"win_back_offer": "discount"}, days=10, steps=DONE2),
    run("exit-1", "exited", hour=9, event=CANCELLED, steps=DONE2),
    run("exit-2", "exited", hour=10, event=CANCELLED, control=True, steps={"csm": "skipped"}),
    run("fail-1", "failed", hour=11, steps={"csm": "done", "usage": "failed"}),
    # an older version with a step the library no longer has, and another exit event
    run("old-1", "goal", hour=12, version=OLD_B, event=GOAL, days=1, steps={"old_step": "done"}),
    run("old-2", "exited", hour=13, version=OLD_B, event="account.merged", steps={"old_step": "skipped"}),
    run("old-3", "cancelled", hour=14, version=OLD_C, steps={"old_step": "done"}),
    run("old-4", "running", hour=15, version=OLD_C, current=["old_step"]),
    run("stop-1", "exited", hour=16, version=OLD_C),  # a `stop: exited` step: no event
    # a playbook no longer in the library
    run("retired-1", "completed", hour=0, version="cccc0000dddd1111", playbook_id="retired-play", steps={"a": "done"}),
]


def seed(db_url: str, runs: list[tuple[dict[str, Any], list[dict[str, Any]]]] = RUNS) -> None:
    migrate(db_url)
    with session(db_url) as s:
        s.execute(insert(t.RunProgress), [r for r, _ in runs])
        steps = [x for _, rows in runs for x in rows]
        if steps:
            s.execute(insert(t.RunStepProgress), steps)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    seed(url)
    return url


def test_the_library_version_counted_run_by_run(db: str) -> None:
    with session(db) as s:
        f = playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=CURRENT)
    assert f.version == CURRENT and f.conversion == "entered"
    assert set(f.versions) == {CURRENT, OLD_B, OLD_C} and f.versions[0] == OLD_C  # newest first run first
    assert (f.entered, f.live, f.completed, f.goal, f.failed, f.cancelled) == (12, 3, 2, 4, 1, 0)
    assert f.exited == {CANCELLED: 2}
    # every step of the playbook in its order and depth, zeros included; live runs where they are now
    assert [(x.step_id, x.kind, x.depth) for x in f.steps] == [(x.step_id, x.kind, x.depth) for x in steps_of(PLAYBOOK)]
    by_id = {x.step_id: (x.done, x.skipped, x.failed, x.not_run, x.waiting) for x in f.steps}
    assert by_id["csm"] == (9, 3, 0, 0, 0)
    assert by_id["usage"] == (10, 0, 1, 0, 0)
    assert by_id["engagement"] == (0, 0, 0, 0, 1) and by_id["rescue_call"] == (0, 0, 0, 0, 1)
    assert by_id["trial_ended"] == (3, 0, 0, 0, 1)
    assert by_id["win_back_offer"] == (2, 0, 0, 0, 1)
    assert by_id["win_back"] == (1, 0, 0, 1, 1) and by_id["win_back_trial"] == (1, 0, 0, 1, 0)
    assert by_id["setup_help"] == (0, 0, 0, 0, 0)
    [goal] = f.goals
    assert (goal.event, goal.reached, goal.rate) == (GOAL, 4, 4 / 12)
    assert goal.median_seconds == timedelta(days=5).total_seconds()  # 2, 4, 6, 10 days
    control, split = f.comparisons
    assert control.name == "control"
    treated, held_out = control.groups
    assert (treated.group, treated.runs, treated.converted) == ("treated", 9, 3)
    assert (held_out.group, held_out.runs, held_out.converted) == ("control", 3, 1)
    assert (treated.low, treated.high) == wilson(3, 9) and treated.rate == 3 / 9
    assert (control.difference, control.low, control.high) == newcombe(3, 9, 1, 3)
    # the split: treated runs by path, in the playbook's order; path 2 - path 1
    assert split.name == "win_back_offer"
    assert [(g.group, g.runs, g.converted) for g in split.groups] == [("discount", 4, 2), ("longer_trial", 2, 1)]
    assert (split.difference, split.low, split.high) == newcombe(1, 2, 2, 4)


def test_every_version_since_and_prefixes(db: str) -> None:
    with session(db) as s:
        f = playbook_funnel(s, "trial-follow-up", PLAYBOOK)
        assert f.version is None
        assert (f.entered, f.live, f.completed, f.goal, f.failed, f.cancelled) == (17, 4, 2, 5, 1, 1)
        assert f.exited == {"(stop)": 1, CANCELLED: 2, "account.merged": 1}
        # the library's steps first, then a step only an older version has (kind unknown), by id
        assert f.steps[-1].step_id == "old_step" and (f.steps[-1].kind, f.steps[-1].done) == ("", 2)
        assert (f.steps[-1].skipped, f.steps[-1].waiting) == (1, 1)
        assert f.goals[0].reached == 5 and f.goals[0].median_seconds == timedelta(days=4).total_seconds()

        since = playbook_funnel(s, "trial-follow-up", PLAYBOOK, since=T0 + timedelta(hours=10))
        assert (since.entered, since.live, since.failed, since.cancelled) == (7, 1, 1, 1)
        assert since.since == T0 + timedelta(hours=10)
        naive = funnel(s, "trial-follow-up", since=(T0 + timedelta(hours=10)).replace(tzinfo=None))
        berlin = funnel(s, "trial-follow-up", since=datetime(2026, 11, 2, 20, 0, tzinfo=timezone_plus(1)))
        assert naive.entered == berlin.entered == 7

        # an older version: a unique prefix; its own steps only (the library's order is not its order)
        old = playbook_funnel(s, "trial-follow-up", PLAYBOOK, version="aaaa1111b")
        assert old.version == OLD_B and (old.entered, old.goal, old.exited) == (2, 1, {"account.merged": 1})
        assert [x.step_id for x in old.steps] == ["old_step"] and old.comparisons == []
        assert playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=CURRENT[:6]).version == CURRENT
        for bad, words in [("aaaa1111", "ambiguous"), ("ffff0000", "no version"), ("aaa", "too short")]:
            with pytest.raises(FunnelError, match=words):
                playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=bad)
        with pytest.raises(FunnelError, match="no playbook"):
            playbook_funnel(s, "no-such-playbook", None)


def timezone_plus(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_a_playbook_without_runs_lists_its_steps_with_zeros(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate(url)
    with session(url) as s:
        f = playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=CURRENT[:8])
    assert f.version == CURRENT and f.versions == [CURRENT] and f.entered == 0
    assert all((x.done, x.waiting) == (0, 0) for x in f.steps) and len(f.steps) == len(steps_of(PLAYBOOK))
    assert [(g.event, g.reached, g.rate, g.median_seconds) for g in f.goals] == [(GOAL, 0, 0.0, None)]
    control, split = f.comparisons  # settings.control: 10% -> the comparison is there before a held-out run
    assert [(g.group, g.runs, g.low, g.high) for g in control.groups] == [("treated", 0, 0, 1), ("control", 0, 0, 1)]
    assert control.difference is None and split.difference is None
    assert [g.group for g in split.groups] == ["discount", "longer_trial"]


NO_IDS = """\
id: no-ids
title: Waits without an id
trigger: { manual: true }
steps:
  - id: hello
    crm: { tag: hello }
  - wait: 1d
  - id: again
    crm: { tag: again }
  - wait: 2d
"""


def test_live_runs_in_steps_without_id_are_counted_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the waits of no-ids have no id (steps.1, steps.3): a run waiting there says so by the path
    for name in list(os.environ):
        if name.upper().startswith("PLAYBOOK_"):
            monkeypatch.delenv(name)
    library = tmp_path / "library"
    library.mkdir()
    (library / "no-ids.yaml").write_text(NO_IDS)
    playbook = Library.load(library).playbooks["no-ids"]
    waits = [
        run(f"w{i}", "running", hour=i, current=[at], version=playbook.version, playbook_id="no-ids")
        for i, at in enumerate(["steps.3", "steps.1", "steps.3"])
    ]
    home = tmp_path / "home"
    url = Settings(environment="dev", home=str(home)).db_url
    seed(url, waits)
    with session(url) as s:
        f = playbook_funnel(s, "no-ids", playbook)
    assert [x.step_id for x in f.steps[: len(steps_of(playbook))]] == ["hello", "again"]
    tail = [(x.step_id, x.kind, x.waiting) for x in f.steps[len(steps_of(playbook)) :]]
    assert tail == [("steps.1", "", 1), ("steps.3", "", 2)]  # in reading order, after the steps with ids
    env = {"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": str(home), "PLAYBOOK_LIBRARY": str(library),
           "COLUMNS": "200"}
    shown = CliRunner().invoke(cli.app, ["stats", "no-ids"], env=env)
    assert shown.exit_code == 0 and "wait, no id" in shown.output, shown.output


def test_steps_of_nests_and_skips_steps_without_id() -> None:
    steps = steps_of(PLAYBOOK)
    assert steps[:4] == [
        StepInfo("csm", "assign", 0),
        StepInfo("before_trial_end", "wait", 0),
        StepInfo("usage", "crm", 0),
        StepInfo("engagement", "switch", 0),
    ]
    assert StepInfo("win_back_offer", "split", 0, ("discount", "longer_trial")) in steps
    assert {s.step_id for s in steps} == {s.id for s in PLAYBOOK.walk() if s.id}
    assert len(steps) < len(list(PLAYBOOK.walk()))  # the library's steps without an id are left out


# Newcombe, R. G. (1998), Two-sided confidence intervals for the single proportion: comparison of seven methods,
# Statistics in Medicine 17, 857-872, Table I, method 3 (Wilson score, no continuity correction).
WILSON_PUBLISHED = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
                    ((1, 29), (0.0061, 0.1718))]
# Newcombe, R. G. (1998), Interval estimation for the difference between independent proportions: comparison of
# eleven methods, Statistics in Medicine 17, 873-890, Table II, method 10 (hybrid score).
NEWCOMBE_PUBLISHED = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), WILSON_PUBLISHED)
def test_wilson_matches_newcombe_1998(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = wilson(*counts)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_PUBLISHED)
def test_difference_interval_matches_newcombe_1998(counts: tuple[int, int, int, int], expected: Any) -> None:
    found = newcombe(*counts)
    assert found is not None
    difference, low, high = found
    x1, n1, x2, n2 = counts
    assert difference == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(low, 4), round(high, 4)) == expected


def test_empty_groups_have_no_difference() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert newcombe(1, 2, 0, 0) is None and newcombe(0, 0, 1, 2) is None


def test_a_hundred_thousand_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    migrate(url)
    n = 100_000
    statuses = ["running", "completed", "goal", "exited", "failed"]
    rows, steps = [], []
    for i in range(n):
        status = statuses[i % 5]
        event = GOAL if status == "goal" else CANCELLED if status == "exited" else None
        path = ("discount", "longer_trial")[i % 2]
        started = T0 + timedelta(seconds=i)
        rows.append({
            "run_key": f"r{i}", "workflow_id": f"w{i}", "playbook_id": "trial-follow-up", "version": CURRENT,
            "account_id": f"a{i}", "control": i % 10 == 0, "paths": {"win_back_offer": path},
            "status": status, "reason": "", "exit_event": event,
            "current": ["trial_ended"] if status == "running" else [], "started_at": started,
            "ended_at": None if status == "running" else started + timedelta(hours=i % 48), "updated_at": started,
            "seq": 1,
        })  # fmt: skip
        csm = "skipped" if i % 10 == 0 else "done"
        steps.append({"run_key": f"r{i}", "step_id": "csm", "status": csm, "at": started})
        steps.append({"run_key": f"r{i}", "step_id": "usage", "status": "done", "at": started})
    with session(url) as s:  # Core inserts (the ORM's bulk path is slower)
        s.execute(t.RunProgress.__table__.insert(), rows)
        s.execute(t.RunStepProgress.__table__.insert(), steps)
    with session(url) as s:
        began = time.perf_counter()
        f = playbook_funnel(s, "trial-follow-up", PLAYBOOK)
        seconds = time.perf_counter() - began
    print(f"\nfunnel of {n} runs ({len(steps)} step rows) on SQLite: {seconds * 1000:.0f} ms")
    assert (f.entered, f.live, f.goal, f.exited) == (n, n // 5, n // 5, {CANCELLED: n // 5})
    by_id = {x.step_id: x for x in f.steps}
    assert (by_id["csm"].done, by_id["csm"].skipped, by_id["trial_ended"].waiting) == (90_000, 10_000, n // 5)
    treated, held_out = f.comparisons[0].groups
    assert (treated.runs, held_out.runs) == (90_000, 10_000)
    assert sum(g.runs for g in f.comparisons[1].groups) == 90_000
    assert seconds < 30  # a generous bound: the figure printed above is the measure


# ------------------------------------------------------------------------------------------------ the API


@pytest.fixture
def api(tmp_path: Path) -> tuple[Any, dict[str, dict[str, str]]]:
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS))
    seed(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    tokens = {
        "ops": create_token(settings.db_url, "ops", "ops"),
        "csm": create_token(settings.db_url, "J", "csm", "csm-de"),
    }
    return app, {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}


def test_api_funnel(api: tuple[Any, dict[str, dict[str, str]]]) -> None:
    app, as_ = api
    ops = as_["ops"]

    async def steps(http: httpx.AsyncClient) -> None:
        answer = await http.get(f"/playbooks/trial-follow-up/funnel?version={CURRENT[:8]}", headers=ops)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["version"] == CURRENT and body["conversion"] == "entered"
        assert (body["entered"], body["live"], body["goal"], body["exited"]) == (12, 3, 4, {CANCELLED: 2})
        assert [x["step_id"] for x in body["steps"]] == [x.step_id for x in steps_of(PLAYBOOK)]
        control = body["comparisons"][0]
        assert control["name"] == "control" and [g["runs"] for g in control["groups"]] == [9, 3]
        assert control["low"] == pytest.approx(newcombe(3, 9, 1, 3)[1])  # type: ignore[index]
        since = await http.get("/playbooks/trial-follow-up/funnel?since=2026-11-02T19:00:00%2B00:00", headers=ops)
        assert since.status_code == 200 and since.json()["entered"] == 7
        assert since.json()["since"] == "2026-11-02T19:00:00Z"
        day = await http.get("/playbooks/trial-follow-up/funnel?since=2026-11-03", headers=ops)
        assert day.status_code == 200 and day.json()["entered"] == 2  # from midnight UTC: hours 15 and 16
        # a library playbook without runs, and one only its runs know (no longer in the library)
        fresh = await http.get("/playbooks/renewal/funnel", headers=ops)
        assert fresh.status_code == 200 and fresh.json()["entered"] == 0 and fresh.json()["steps"]
        retired = await http.get("/playbooks/retired-play/funnel?version=cccc", headers=ops)
        assert retired.status_code == 200, retired.text
        assert retired.json()["completed"] == 1 and [x["step_id"] for x in retired.json()["steps"]] == ["a"]

        assert (await http.get("/playbooks/trial-follow-up/funnel")).status_code == 401
        assert (await http.get("/playbooks/trial-follow-up/funnel", headers=as_["csm"])).status_code == 403
        for url, status, words in [
            ("/playbooks/no-such-playbook/funnel", 404, "no playbook"),
            ("/playbooks/trial-follow-up/funnel?version=ffff0000", 404, "no version"),
            ("/playbooks/trial-follow-up/funnel?version=aaaa1111", 422, "ambiguous"),
            ("/playbooks/trial-follow-up/funnel?version=abc", 422, "query.version"),
            ("/playbooks/trial-follow-up/funnel?version=XYZW", 422, "query.version"),
            ("/playbooks/trial-follow-up/funnel?since=yesterday", 422, "query.since"),
            ("/playbooks/trial-follow-up/funnel?since=1700000000", 422, "query.since"),
            ("/playbooks/trial-follow-up/funnel?since=2026-13-01", 422, "query.since"),
        ]:
            refused = await http.get(url, headers=ops)
            assert refused.status_code == status, (url, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert words in refused.json()["detail"], (url, refused.json())
        # an offset that takes the time past the calendar's end is after every run, not a 500
        edge = await http.get("/playbooks/trial-follow-up/funnel?since=9999-12-31T23:59:59-23:59", headers=ops)
        assert edge.status_code == 200 and edge.json()["entered"] == 0

    call(app, steps)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("PLAYBOOK_"):
            monkeypatch.delenv(name)
    seed(Settings(environment="dev", home=str(tmp_path)).db_url)
    return tmp_path


def stats(home: Path, *args: str) -> Any:
    env = {"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_HOME": str(home), "PLAYBOOK_LIBRARY": str(PLAYBOOKS),
           "COLUMNS": "200"}
    return CliRunner().invoke(cli.app, ["stats", *args], env=env)


def test_cli_stats_tables_and_json(home: Path) -> None:
    shown = stats(home, "trial-follow-up", "--version", CURRENT[:8])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "intention to treat" in out and f"version {CURRENT}" in out
    for words in ("entered", "exited: account.cancelled", "win_back_trial", GOAL, "5.0 d", "Treated versus control",
                  "Split win_back_offer", "difference (treated - control)"):
        assert words in out, words
    rows = [line.split() for line in out.splitlines() if line.startswith("│")]
    lines = {row[1]: row for row in rows if len(row) > 3}
    assert lines["entered"][3] == "12" and lines["live"][3] == "3"
    as_json = stats(home, "trial-follow-up", "--json", "--since", "2026-11-02T19:00Z")
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.output)
    assert body["entered"] == 7 and body["since"] == "2026-11-02T19:00:00+00:00" and body["version"] is None
    assert body["steps"][-1]["step_id"] == "old_step"


def test_cli_stats_bad_input_exits_2(home: Path) -> None:
    for args, words in [
        (["no-such-playbook"], "no playbook"),
        (["trial-follow-up", "--version", "zz"], "not a version"),
        (["trial-follow-up", "--version", "ffff0000"], "no version"),
        (["trial-follow-up", "--version", "aaaa1111"], "ambiguous"),
        (["trial-follow-up", "--since", "last week"], "not a date"),
    ]:
        refused = stats(home, *args)
        assert refused.exit_code == 2, (args, refused.output)
        assert words in refused.output, (args, refused.output)


# ------------------------------------------------------------------------------------------------ PostgreSQL


def test_the_same_funnel_on_postgresql(postgres: str, db: str) -> None:
    """The counting SQL differs by database (json_each on SQLite, json_each_text/json_array_elements_text on
    PostgreSQL): the same rows give the same funnel on both."""
    from tests.postgres import empty

    seed(empty(postgres))
    for version, since in [(None, None), (CURRENT, None), ("aaaa1111c", None), (None, T0 + timedelta(hours=5))]:
        with session(db) as s:
            expected = playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=version, since=since)
        with session(postgres) as s:
            found = playbook_funnel(s, "trial-follow-up", PLAYBOOK, version=version, since=since)
        assert found == expected


# ------------------------------------------------------------------------------------------------ end to end

E2E_PLAYBOOK = """\
id: funnel-e2e
title: The funnel end to end
trigger: { manual: true }
exit_when:
  - event: account.cancelled
  - event: subscription.activated
    goal: true
settings:
  control: 30%
steps:
  - id: tag
    crm: { tag: funnel }
  - id: route
    switch:
      - when: account.plan == "broken"
        steps:
          - id: break
            crm: { update: { segment: "{{ account.segment_code }}" } }
      - when: account.plan == "free"
        steps:
          - id: finish_early
            stop: { outcome: completed }
  - id: offer
    split:
      paths:
        - { name: first, weight: 1, steps: [ { id: offer_first, crm: { tag: offer-first } } ] }
        - { name: second, weight: 1, steps: [ { id: offer_second, crm: { tag: offer-second } } ] }
  - id: hold
    wait_for:
      event: nothing.happens
      timeout: 300d
"""
# what happens to each account's run after it starts: nothing (it ends by itself or waits), an event, a cancel
E2E_ACCOUNTS = {
    **{f"acc-free-{i}": ("free", None) for i in range(2)},
    **{f"acc-broken-{i}": ("broken", None) for i in range(4)},  # 0-2 are held out (no effect, no failure), 3 fails
    **{f"acc-goal-{i}": ("pro", "subscription.activated") for i in range(4)},
    **{f"acc-exit-{i}": ("pro", "account.cancelled") for i in range(2)},
    **{f"acc-wait-{i}": ("pro", None) for i in range(4)},
    "acc-cancel-0": ("pro", "cancel"),
}


async def _e2e(tmp_path: Path) -> None:  # noqa: C901 - one story, told in order
    import asyncio
    import uuid

    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
    from temporalio.testing import WorkflowEnvironment

    from activities.crm import BuiltinCrm
    from activities.crm import seed as seed_crm
    from activities.email import OutboxProvider
    from activities.playbook_activities import PlaybookActivities
    from engine.interpreter.messages import (
        EVENT_SIGNAL,
        STATE_QUERY,
        WORKFLOW_NAME,
        Event,
        RunInput,
        RunResult,
        RunState,
    )
    from engine.runtime.connect import quiet_runtime
    from engine.runtime.workers import build_worker
    from engine.testing.scenarios import test_server_path
    from tests.asgi import serving

    library = tmp_path / "library"
    library.mkdir()
    (library / "funnel-e2e.yaml").write_text(E2E_PLAYBOOK)
    playbook = Library.load(library).playbooks["funnel-e2e"]
    settings = Settings(environment="dev", home=str(tmp_path / "home"), library=str(library))
    migrate(settings.db_url)
    team = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]
    for account_id, (plan, _) in E2E_ACCOUNTS.items():
        account = {"id": account_id, "name": account_id, "language": "en", "timezone": "UTC", "plan": plan,
                   "owner": "csm-1"}
        seed_crm(settings.db_url, account, [{"email": f"{account_id}@funnel.example", "first_name": "A"}], team)

    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), runtime=quiet_runtime()
    ) as env:
        activities = PlaybookActivities(settings.db_url, BuiltinCrm(settings.db_url), OutboxProvider())
        queue = f"funnel-{uuid.uuid4().hex[:8]}"
        with env.auto_time_skipping_disabled():  # the waiting runs stay waiting: no timer is skipped to
            async with build_worker(env.client, queue, activities.all()):
                handles = {
                    account_id: await env.client.start_workflow(
                        WORKFLOW_NAME, RunInput(playbook=playbook, account_id=account_id),
                        id=f"funnel-e2e/{account_id}", task_queue=queue, result_type=RunResult,
                    )
                    for account_id in E2E_ACCOUNTS
                }

                async def state(account_id: str) -> RunState:
                    return await handles[account_id].query(STATE_QUERY, result_type=RunState)

                async def settled(account_id: str) -> RunState:
                    for _ in range(300):
                        found = await state(account_id)
                        if found.status != "running" or "hold" in found.current:
                            return found
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"{account_id}: neither ended nor waiting: {found}")

                for account_id in E2E_ACCOUNTS:
                    await settled(account_id)
                for account_id, (_, then) in E2E_ACCOUNTS.items():
                    if then == "cancel":
                        await handles[account_id].cancel()
                    elif then is not None:
                        event = Event(type=then, id=f"evt-{account_id}", account_id=account_id)
                        await handles[account_id].signal(EVENT_SIGNAL, event)
                # each run's own word: its result (or how it failed), else its state
                truth: dict[str, dict[str, Any]] = {}
                for account_id, (_, then) in E2E_ACCOUNTS.items():
                    handle = handles[account_id]
                    run_state = await state(account_id)
                    if then is None and run_state.status == "running":
                        status = "running"
                    else:
                        try:
                            status = (await asyncio.wait_for(handle.result(), 30)).outcome
                        except WorkflowFailureError:
                            described = await handle.describe()
                            status = "cancelled" if described.status == WorkflowExecutionStatus.CANCELED else "failed"
                        run_state = await state(account_id)
                    steps = run_state.steps
                    paths = {k: v["result"]["path"] for k, v in steps.items() if "path" in v.get("result", {})}
                    truth[account_id] = {
                        "status": status, "control": run_state.control, "current": run_state.current,
                        "steps": {k: v["status"] for k, v in run_state.steps.items()}, "paths": paths,
                    }
                # the projection catches up (the last reports are local activities as the runs end or block)
                def rows() -> dict[str, Any]:
                    with session(settings.db_url) as s:
                        return {r.account_id: r for r in s.query(t.RunProgress).all()}

                for _ in range(200):
                    found = rows()
                    if len(found) == len(truth) and all(
                        (found[a].status, sorted(found[a].current)) == (truth[a]["status"], sorted(truth[a]["current"]))
                        for a in truth
                    ):
                        break
                    await asyncio.sleep(0.05)
                found = rows()
                for account_id, run_truth in truth.items():  # run by run
                    row = found[account_id]
                    assert (row.status, row.control, row.paths) == (
                        run_truth["status"], run_truth["control"], run_truth["paths"]
                    ), account_id
                    assert sorted(row.current) == sorted(run_truth["current"]), account_id
                    if run_truth["status"] in ("goal", "exited"):
                        assert row.exit_event == E2E_ACCOUNTS[account_id][1]

                # the funnel through the API
                app = create_app(settings, client=env.client)
                ops = {"Authorization": f"Bearer {create_token(settings.db_url, 'ops', 'ops')}"}
                async with serving(app) as http:
                    answer = await http.get("/playbooks/funnel-e2e/funnel", headers=ops)
                assert answer.status_code == 200, answer.text
                body = answer.json()

    statuses = [r["status"] for r in truth.values()]
    assert {"running", "completed", "failed", "goal", "exited", "cancelled"} <= set(statuses), statuses
    assert {r["control"] for r in truth.values()} == {True, False}
    assert {r["paths"].get("offer") for r in truth.values() if not r["control"]} >= {"first", "second"}
    assert body["entered"] == len(truth) and body["version"] is None and body["versions"] == [playbook.version]
    assert (body["live"], body["completed"], body["goal"], body["failed"], body["cancelled"]) == tuple(
        statuses.count(s) for s in ("running", "completed", "goal", "failed", "cancelled")
    )
    assert body["exited"] == ({"account.cancelled": statuses.count("exited")} if "exited" in statuses else {})
    for step in body["steps"]:
        expected = {
            kind: sum(r["steps"].get(step["step_id"]) == kind for r in truth.values())
            for kind in ("done", "skipped", "failed", "not_run")
        }
        expected["waiting"] = sum(r["status"] == "running" and step["step_id"] in r["current"] for r in truth.values())
        assert {k: step[k] for k in expected} == expected, step
    [goal] = body["goals"]
    assert goal["reached"] == statuses.count("goal")
    control = body["comparisons"][0]
    for group, held in (("treated", False), ("control", True)):
        runs = [r for r in truth.values() if r["control"] is held]
        [out] = [g for g in control["groups"] if g["group"] == group]
        assert (out["runs"], out["converted"]) == (len(runs), sum(r["status"] == "goal" for r in runs))
    split = body["comparisons"][1]
    for path in ("first", "second"):
        runs = [r for r in truth.values() if not r["control"] and r["paths"].get("offer") == path]
        [out] = [g for g in split["groups"] if g["group"] == path]
        assert (out["runs"], out["converted"]) == (len(runs), sum(r["status"] == "goal" for r in runs))


@pytest.mark.timeout(120)
def test_real_runs_counted_one_by_one(tmp_path: Path) -> None:
    """A mix of real runs on the time-skipping server with the real activities and SQLite (finished, waiting,
    exited, goal, failed, cancelled; treated and held out; both split paths): the funnel the API answers matches
    what each run says of itself (its result, or its state query), and each run's row matches it too."""
    import asyncio

    asyncio.run(_e2e(tmp_path))
