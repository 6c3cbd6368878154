"""The ops page (/ops, docs/ops.md) in process: the real app (tests/asgi.serving) on a real SQLite database whose
run_progress rows are written through the ORM, a small library of its own, no Temporal (the run page says its
timeline cannot be read).
test_ops_browser.py covers it in Chromium with real runs. The SVG drawing (api/ops_chart.py) is tested here too.
"""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api import ops_chart
from api.app import create_app
from api.security import create_token
from engine.language.library import Library
from engine.runtime.settings import Settings
from engine.storage import models as t
from engine.storage.db import migrate, session
from engine.storage.funnel import Comparison, Conversion, playbook_funnel
from tests.asgi import serving

PLAYBOOK = "trial-follow-up"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str, *, follow: bool = True) -> httpx.Response:
    form = await client.get("/ops/login")
    return await client.post("/ops/login", data={"token": token, "csrf": _csrf(form)}, follow_redirects=follow)


def add_run(
    db: str,
    key: str,
    version: str,
    status: str,
    *,
    account: str = "acc-1",
    control: bool = False,
    paths: dict | None = None,
    current: list | None = None,
    steps: dict[str, str] | None = None,
    exit_event: str | None = None,
    reason: str = "",
    day: int = 0,
    hours_to_end: float | None = None,
    workflow_id: str | None = None,
    playbook: str = PLAYBOOK,
) -> None:
    started = T0 + timedelta(days=day)
    ended = None if status == "running" else started + timedelta(hours=hours_to_end or 1)
    with session(db) as s:
        s.add(
            t.RunProgress(
                run_key=key,
                workflow_id=workflow_id or f"{playbook}/{account}/{key}",
                playbook_id=playbook,
                version=version,
                account_id=account,
                control=control,
                paths=paths or {},
                status=status,
                reason=reason,
                exit_event=exit_event,
                current=current or [],
                started_at=started,
                ended_at=ended,
                updated_at=ended or started,
                seq=1,
            )
        )
        s.flush()
        for step_id, how in (steps or {}).items():
            s.add(t.RunStepProgress(run_key=key, step_id=step_id, status=how, at=started + timedelta(minutes=5)))


# A library of its own (the bundled one changes with the playbooks): the shape of trial-follow-up, effects in the CRM
TRIAL = """\
id: trial-follow-up
title: Trial follow-up and conversion
trigger:
  event: account.signed_up
exit_when:
  - event: subscription.activated
    goal: true
  - event: account.cancelled
settings:
  control: 10%
steps:
  - id: csm
    assign:
      by: owner
  - name: Wait until three days before the trial ends
    wait: 3d
  - id: usage
    crm:
      lookup: {}
  - id: engagement
    switch:
      - when: account.active_days >= 7
        steps:
          - id: convert_nudge
            crm:
              tag: engaged
      - else:
          - id: setup_help
            crm:
              tag: dormant
  - id: trial_ended
    crm:
      tag: trial-ended
  - id: win_back_offer
    split:
      paths:
        - name: discount
          weight: 50
          steps:
            - id: win_back
              crm:
                tag: discount
        - name: longer_trial
          weight: 50
          steps:
            - id: win_back_trial
              crm:
                tag: longer-trial
"""
RENEWAL = """\
id: renewal
title: Annual renewal
trigger:
  event: account.renewal_due
steps:
  - id: notice
    wait: 30d
"""


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    home: Path = tmp_path_factory.mktemp("ops")
    library = home / "playbooks"
    library.mkdir()
    (library / f"{PLAYBOOK}.yaml").write_text(TRIAL)
    (library / "renewal.yaml").write_text(RENEWAL)
    settings = Settings(environment="dev", home=str(home), library=str(library))
    migrate(settings.db_url)
    db = settings.db_url
    playbooks = Library.load(str(library)).playbooks
    assert set(playbooks) == {PLAYBOOK, "renewal"}
    version, renewal = playbooks[PLAYBOOK].version, playbooks["renewal"].version
    old = "0ld0" + "0" * 12
    done = {"csm": "done", "usage": "done", "engagement": "done"}
    # two live runs (one held out), one at the split; goals, an exit, a failure, a run of an older version
    add_run(db, "r1", version, "running", account="acc-live-1", current=["usage"], steps={"csm": "done"})
    add_run(
        db, "r2", version, "running", account="acc-live-2", control=True, current=["steps.1"], steps={"csm": "skipped"}
    )
    add_run(
        db,
        "r3",
        version,
        "goal",
        account="acc-goal-1",
        exit_event="subscription.activated",
        steps={**done, "convert_nudge": "done"},
        hours_to_end=48,
    )
    add_run(
        db,
        "r4",
        version,
        "goal",
        account="acc-goal-2",
        exit_event="subscription.activated",
        paths={"win_back_offer": "discount"},
        steps={**done, "trial_ended": "done", "win_back": "done"},
        hours_to_end=96,
        day=1,
    )
    add_run(
        db,
        "r5",
        version,
        "exited",
        account="acc-gone",
        exit_event="account.cancelled",
        paths={"win_back_offer": "longer_trial"},
        steps={**done, "trial_ended": "done"},
        day=2,
    )
    add_run(
        db,
        "r6",
        version,
        "failed",
        account=EVIL,
        current=[],
        steps={"csm": "done", "usage": "failed"},
        reason=f"the CRM refused the lookup for anna.berg@example.com {EVIL}",
        day=3,
    )
    add_run(db, "r7", version, "completed", account="acc-control", control=True, steps={"csm": "skipped"}, day=3)
    add_run(db, "r8", old, "completed", account="acc-old", steps={"csm": "done", EVIL: "done"}, day=-30)
    # renewal: one account enrolled twice under the same workflow id (reenroll), the first run ended
    again = {"workflow_id": "renewal/acc-again", "playbook": "renewal", "account": "acc-again"}
    add_run(db, "r9", renewal, "completed", day=-10, **again)
    add_run(db, "r10", renewal, "running", current=["notice"], **again)
    app = create_app(settings, client=object())  # type: ignore[arg-type] - no Temporal: a run's timeline says so
    return app, settings, version, old, library


def call(app, steps):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with serving(app) as client:
            return await steps(client)

    return asyncio.run(go())


def test_sign_in_needs_an_ops_token(ops):
    app, settings, *_ = ops
    ops_token = create_token(settings.db_url, "Olga", "ops")
    csm_token = create_token(settings.db_url, "Jonas", "csm", "csm-de")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        for path in ("/ops", f"/ops/playbooks/{PLAYBOOK}", "/ops/runs/r1"):
            first = await client.get(path)
            assert first.status_code == 303 and first.headers["location"] == "/ops/login", path
        refused = await sign_in(client, csm_token, follow=False)
        assert refused.status_code == 403
        assert "A csm token cannot open the ops page: sign in with an ops token." in html.unescape(refused.text)
        assert "pb_ops_session" not in refused.headers.get("set-cookie", "")
        assert (await client.get("/ops")).status_code == 303
        unknown = await sign_in(client, "pb_ops_not-a-token")
        assert "That API token is unknown or revoked." in unknown.text

        answer = await sign_in(client, ops_token, follow=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/ops"
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("pb_ops_session="))
        assert "HttpOnly" in cookie and "Path=/ops" in cookie and ops_token not in cookie
        page = await client.get("/ops")
        assert page.status_code == 200 and "Signed in as <strong>Olga</strong>" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        out = await client.post("/ops/logout", data={"csrf": _csrf(page)}, follow_redirects=True)
        assert out.url.path == "/ops/login" and "Signed out." in out.text
        assert (await client.get("/ops")).status_code == 303

    call(app, steps)


def _cells(page: str, table_id: str) -> dict[str, list[str]]:
    """A table's rows: the row header's data attribute (data-step, data-end or data-group) -> its number cells."""
    body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = {}
    for attr, row in re.findall(r'<tr data-(?:step|end|group)="([^"]*)">(.*?)</tr>', body, re.S):
        rows[html.unescape(attr)] = [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
    return rows


def test_the_library_and_a_playbooks_funnel_show_the_projections_numbers(ops):
    app, settings, version, old, library_dir = ops
    token = create_token(settings.db_url, "Olga", "ops")
    library = Library.load(str(library_dir)).playbooks[PLAYBOOK]

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        await sign_in(client, token)
        lib = await client.get("/ops")
        row = lib.text.split(f'href="/ops/playbooks/{PLAYBOOK}"', 1)[1].split("</tr>", 1)[0]
        assert f"<code>{version[:8]}</code>" in row and "event account.signed_up" in row
        assert [int(n) for n in re.findall(r'class="num">(?:<span class="bad">)?(\d+)', row)] == [2, 1, 8]
        return (
            await client.get(f"/ops/playbooks/{PLAYBOOK}"),
            await client.get(f"/ops/playbooks/{PLAYBOOK}?version={version[:6]}&since=2026-11-03"),
        )

    page, narrowed = call(app, steps)
    assert page.status_code == 200 and narrowed.status_code == 200
    with session(settings.db_url) as s:
        expected = playbook_funnel(s, PLAYBOOK, library)  # as GET /playbooks/{id}/funnel and playbook stats count
    text = page.text
    for name in ("entered", "live", "goal", "completed", "failed", "cancelled"):
        assert f'data-total="{name}">{getattr(expected, name)}<' in text
    assert (expected.entered, expected.live, expected.goal) == (8, 2, 2)
    table = _cells(text, "funnel-table")
    for step in expected.steps:
        assert table[step.step_id] == [str(step.done), str(step.skipped), str(step.failed), str(step.waiting)]
    assert table["usage"] == ["3", "0", "1", "1"] and table[EVIL] == ["1", "0", "0", "0"]  # an old version's step
    assert table["steps.1"] == ["0", "0", "0", "1"]  # a step without id, by its path, named from the library
    row = text.split('<tr data-step="steps.1">', 1)[1].split("</th>", 1)[0]
    assert '<span class="kind">wait, no id: Wait until three days before the trial ends</span>' in row
    assert 'steps.1 <tspan class="kind" fill="#5b6576">(wait, no id)</tspan>' in text  # and in the chart
    ends = _cells(text, "ends-table")
    assert ends["goal:subscription.activated"] == ["2", "25.0%", "3 d"]  # median of 48 h and 96 h
    assert ends["exit:account.cancelled"][0] == "1" and ends["failed"][0] == "1"

    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # aria-labelledby finds the chart's own title, not a heading's
    # the chart: an accessible SVG whose bars carry the same numbers
    chart = text.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in chart and '<title id="funnel-title">Funnel of trial-follow-up</title>' in chart
    assert "usage: 3 done, 1 failed, 1 waiting there now" in html.unescape(chart)
    usage = chart.split('data-label="usage"', 1)[1].split("</g>", 1)[0]
    assert re.findall(r'seg-(\w+)" data-count="(\d+)"', usage) == [("done", "3"), ("failed", "1"), ("waiting", "1")]

    # control versus treated, and the split's paths, with their intervals
    control = next(c for c in expected.comparisons if c.name == "control")
    groups = _cells(text, "cmp-1")
    for g in control.groups:
        assert groups[g.group][:3] == [str(g.runs), str(g.converted), ops_chart.pct(g.rate)]
        assert groups[g.group][3] == f"{ops_chart.pct(g.low)} – {ops_chart.pct(g.high)}"
    assert groups["treated"][:2] == ["6", "2"] and groups["control"][:2] == ["2", "0"]
    assert ops_chart.difference_words(control).capitalize() in html.unescape(text)
    assert 'id="interval-0"' in text and "Goal conversion: control versus treated" in text
    assert _cells(text, "cmp-2")["discount"][:2] == ["1", "1"] and _cells(text, "cmp-2")["longer_trial"][:2] == [
        "1",
        "0",
    ]

    # live and failed runs, each linking to its run page; no email address, ids escaped
    live = text.split('id="live-runs"', 1)[1].split("</table>", 1)[0]
    assert "acc-live-1" in live and "acc-live-2" in live and live.count('href="/ops/runs/') == 2
    failed = text.split('id="failed-runs"', 1)[1].split("</table>", 1)[0]
    assert "the CRM refused the lookup for [email address]" in failed and 'href="/ops/runs/r6"' in failed
    assert "<script>" not in text and "&lt;script&gt;alert(" in failed and "anna.berg" not in text

    # version and since narrow everything down
    assert 'data-total="entered">4<' in narrowed.text  # r4 to r7 started on Nov 3 or later; r8 is the old version
    assert f'<option value="{version}" selected>' in narrowed.text and f'<option value="{old}">' in narrowed.text


def test_bad_requests_get_a_page_not_a_traceback(ops):
    app, settings, version, *_ = ops
    token = create_token(settings.db_url, "Olga", "ops")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        await sign_in(client, token)
        answers = {}
        for path in (
            "/ops/playbooks/no-such-playbook",
            "/ops/playbooks/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
            "/ops/runs/no-such-run",
            f"/ops/playbooks/{PLAYBOOK}?version=zz",
            f"/ops/playbooks/{PLAYBOOK}?version=ffff",
            f"/ops/playbooks/{PLAYBOOK}?since=yesterday",
            f"/ops/playbooks/{PLAYBOOK}?since=2026-13-45",
            f"/ops/playbooks/{PLAYBOOK}?version={version[:4]}&since=2026-11-03T10:00",
        ):
            answers[path] = await client.get(path)
        return answers

    answers = call(app, steps)
    codes = {path: a.status_code for path, a in answers.items()}
    assert list(codes.values()) == [404, 404, 404, 422, 404, 422, 422, 200], codes
    for a in answers.values():
        assert a.headers["content-type"].startswith("text/html")
        assert "<script>" not in a.text and "<img" not in a.text
    assert (
        "No playbook &#39;no-such-playbook&#39; in the library or in any run."
        in answers["/ops/playbooks/no-such-playbook"].text
    )
    assert (
        "&lt;img src=x onerror=alert(1)&gt;" in answers["/ops/playbooks/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"].text
    )
    assert "has no version &#39;ffff&#39;" in answers[f"/ops/playbooks/{PLAYBOOK}?version=ffff"].text
    assert "is not a date (YYYY-MM-DD)" in answers[f"/ops/playbooks/{PLAYBOOK}?since=yesterday"].text


def test_a_runs_page_without_a_worker_to_answer_says_so(ops):
    app, settings, *_ = ops
    token = create_token(settings.db_url, "Olga", "ops")

    async def steps(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        await sign_in(client, token)
        runs = ("r6", "r4", "r9", "r2")
        return [await client.get(f"/ops/runs/{key}") for key in runs]

    failed, goal, earlier, waiting = call(app, steps)
    assert 'steps.1 <span class="kind">(wait)</span>' in waiting.text  # the current step, a wait without id
    assert "This workflow id was enrolled again later" in earlier.text  # Temporal would answer for r10
    assert failed.status_code == 200 and goal.status_code == 200
    assert "The timeline could not be read from Temporal" in failed.text
    assert "&lt;script&gt;alert(" in failed.text and "<script>" not in failed.text and "anna.berg" not in failed.text
    assert "[email address]" in failed.text and "<td>failed</td>" in failed.text  # the usage step
    assert "goal: subscription.activated" in html.unescape(goal.text) and "path discount" in goal.text


# ------------------------------------------------------------------------------------- the SVG drawing


@dataclass(frozen=True)
class Step:
    step_id: str
    kind: str = "email"
    depth: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class Goal:
    event: str
    reached: int


@dataclass(frozen=True)
class Shape:
    playbook_id: str = "p"
    entered: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    exited: dict[str, int] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)


def _widths(svg: str, label: str) -> dict[str, float]:
    bar = svg.split(f'data-label="{label}"', 1)[1].split("</g>", 1)[0]
    return {
        kind: float(w)
        for kind, w in re.findall(r'seg-(\w+)" data-count="\d+" x="[\d.]+" y="[\d.]+" width="([\d.]+)"', bar)
    }


def test_chart_widths_are_proportional_to_the_runs():
    f = Shape(
        entered=10,
        completed=4,
        exited={"account.cancelled": 1},
        goals=[Goal("paid", 5)],
        steps=[Step("a", done=10), Step("b", done=5, skipped=2, waiting=3), Step("c", kind="wait", depth=1, failed=1)],
    )
    svg = str(ops_chart.funnel_chart(f))
    full = ops_chart.WIDTH
    assert _widths(svg, "entered") == {"entered": full} and _widths(svg, "a") == {"done": full}
    assert _widths(svg, "b") == {"done": full / 2, "skipped": full / 5, "waiting": full * 3 / 10}
    assert _widths(svg, "c") == {"failed": (full - ops_chart.INDENT) / 10}  # nested: indented, same scale
    assert _widths(svg, "goal: paid") == {"goal": full / 2}
    assert "b: 5 done, 2 skipped, 3 waiting there now" in svg  # the numbers as text, not colour alone
    assert "5 done · 2 skipped · 3 waiting" in svg
    assert svg.count("<title") == 1 + 9 and svg.count("<desc") == 1  # the chart's, and one per segment


def test_chart_escapes_every_value_and_draws_zero_runs_sanely():
    evil = '"><script>alert(1)</script>&'
    f = Shape(playbook_id=evil, exited={evil: 0}, goals=[Goal(evil, 0)], steps=[Step(evil, kind=evil)])
    svg = str(ops_chart.funnel_chart(f, cid="c1"))
    assert "<script>" not in svg and '">' + "<script" not in svg and "&lt;script&gt;" in svg
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert "seg-" not in svg  # nothing drawn over the empty tracks
    assert "No runs have entered yet" in svg and svg.count('fill="#eef1f5"') == 1 + 1 + 5  # every track drawn

    empty = Comparison(
        "control",
        [Conversion("treated", 0, 0, 0.0, 0.0, 1.0), Conversion("control", 0, 0, 0.0, 0.0, 1.0)],
        None,
        None,
        None,
    )
    plot = str(ops_chart.interval_chart(empty, "i0"))
    assert "no runs" in plot and "nan" not in plot.lower() and "<circle" not in plot
    split = Comparison(
        evil, [Conversion(evil, 10, 3, 0.3, 0.1, 0.6), Conversion("b", 10, 5, 0.5, 0.24, 0.76)], 0.2, -0.2, 0.55
    )
    plot = str(ops_chart.interval_chart(split, "i1"))
    assert "<script>" not in plot and "&lt;script&gt;" in plot
    assert "3 of 10 reached the goal, 30.0% (95% interval 10.0% to 60.0%)" in plot
    assert "+20.0 pts (95% interval −20.0 pts to +55.0 pts)" in plot
    # the rate's dot sits at its share of the axis
    cx = float(re.search(r'data-label="b".*?<circle cx="([\d.]+)"', plot, re.S).group(1))
    assert cx == pytest.approx(ops_chart.ILABEL + (ops_chart.IWIDTH - ops_chart.IRIGHT - ops_chart.ILABEL) * 0.5)
