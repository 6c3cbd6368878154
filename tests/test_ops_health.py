"""Health on the ops page (docs/ops.md, "Health"): /ops/health and /ops/accounts/{id} through the real app
(tests/asgi.py) on a real SQLite database whose scores the engine itself made (engine.runtime.health.recompute and
update_for_event with the bundled scorecard over built-in CRM accounts), runs written to run_progress through the
ORM, no Temporal."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from activities.crm import read_account
from activities.crm import seed as seed_crm
from api.app import create_app
from api.security import create_token
from engine.interpreter.messages import Event
from engine.runtime import health as rh
from engine.runtime.settings import Settings
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.asgi import call
from tests.paths import PLAYBOOKS
from tests.test_ops_page import EVIL, sign_in

SCORECARDS = PLAYBOOKS.parent / "scorecards"
CARD = "repricer-health"
NOW = datetime.now(UTC).replace(microsecond=0)
BEFORE = NOW - timedelta(days=40)
TEAM = [{"id": "csm-de", "name": "Jonas", "email": "jonas@success.example", "languages": ["de"]}]
PRO = {"plan": "pro", "owner": "csm-de", "mrr": 400, "renews_on": (NOW + timedelta(days=200)).date().isoformat(),
       "last_login_at": (NOW - timedelta(days=2)).isoformat()}
# account -> its fields and when its urgent tickets came (each a change of score); all first scored 40 days ago
ACCOUNTS: dict[str, tuple[dict[str, Any], list[datetime]]] = {
    # green -> yellow -> red in the last hours: 96.7, 78.9, 65.6, 45.6
    "acc-red": (PRO, [NOW - timedelta(hours=3), NOW - timedelta(hours=2), NOW - timedelta(hours=1)]),
    # red 20 days ago: not a change of the last 7 days
    "acc-old": ({**PRO, "mrr": 50}, [NOW - timedelta(days=20, hours=h) for h in (3, 2, 1)]),
    # no renewal date (50), no login (skipped), MRR 50: four tickets two days ago, the lowest score
    "acc-low": ({"plan": "pro", "mrr": 50}, [NOW - timedelta(days=2, hours=h) for h in (4, 3, 2, 1)]),
    # yellow 10 days ago
    "acc-yellow": (PRO, [NOW - timedelta(days=10, hours=h) for h in (2, 1)]),
    "acc-green": ({**PRO, "mrr": 5000}, []),
    EVIL: (PRO, [NOW - timedelta(days=1, hours=h) for h in (3, 2, 1)]),
    "acc-trial": ({"plan": "trial"}, []),  # outside the segment: no score
}


def _ticket(account_id: str, n: int, at: datetime) -> Event:
    return Event(type="support.ticket_opened", data={"priority": "urgent"}, id=f"tkt-{account_id}-{n}",
                 occurred_at=at.isoformat(), account_id=account_id)


def _run(s: Any, key: str, account: str, status: str, day: int) -> None:
    started = NOW - timedelta(days=day)
    s.add(t.RunProgress(run_key=key, workflow_id=f"risk-intervention/{account}", playbook_id="risk-intervention",
                        version="a1b2c3d4e5f6", account_id=account, status=status, current=[],
                        started_at=started, ended_at=None if status == "running" else started + timedelta(hours=1),
                        updated_at=started, seq=1))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Settings]:
    root: Path = tmp_path_factory.mktemp("ops-health")
    library = root / "playbooks"
    library.mkdir()
    settings = Settings(environment="dev", home=str(root), library=str(library), scorecards=str(SCORECARDS))
    db = settings.db_url
    migrate(db)
    for account_id, (fields, _) in ACCOUNTS.items():
        seed_crm(db, {"id": account_id, "name": f"Firma {account_id}", "language": "de", **fields},
                 [{"email": "anna.berg@customer.example", "first_name": "Anna"}], TEAM)
    cards = list(rh.scorecards_in(SCORECARDS))
    with session(db) as s:
        for account_id, (_, tickets) in ACCOUNTS.items():
            account = read_account(s, account_id)
            assert account is not None
            rh.recompute(s, account.account, cards, BEFORE, cause="test/before")
            for n, at in enumerate(tickets):
                rh.update_for_event(s, account.account, _ticket(account_id, n, at), cards, at, fields_changed=False)
        _run(s, "r-red-1", "acc-red", "running", 0)
        _run(s, "r-red-0", "acc-red", "completed", 5)
        _run(s, "r-runs-only", "acc-runs-only", "failed", 1)
    app = create_app(settings, client=object())  # type: ignore[arg-type] - no Temporal
    off = Settings(environment="dev", home=str(root), library=str(library), scorecards=str(root / "no-scorecards"))
    return app, create_app(off, client=object()), settings  # type: ignore[arg-type]


def _rows(page: str, table_id: str, attr: str) -> list[tuple[str, list[str]]]:
    """A table's rows in order: (the row's data attribute, the texts of its header and cells)."""
    body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return [
        (html.unescape(key), [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                              for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)])
        for key, row in re.findall(rf'<tr data-{attr}="([^"]*)">(.*?)</tr>', body, re.S)
    ]


def _stored(db: str) -> dict[str, t.HealthScore]:
    with session(db) as s:
        rows = {r.account_id: r for r in s.scalars(select(t.HealthScore).where(t.HealthScore.scorecard_id == CARD))}
        s.expunge_all()
    return rows


def test_the_health_page_counts_bands_lists_changes_and_the_lowest_scores(home: tuple[Any, Any, Settings]) -> None:
    app, _, settings = home
    token = create_token(settings.db_url, "Olga", "ops")

    async def steps(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        library = await sign_in(client, token)
        return library, await client.get("/ops/health")

    library, page = call(app, steps)
    assert '<a href="/ops/health">Health</a>' in library.text  # the header's link, with scorecards
    assert page.status_code == 200, page.text
    text = page.text
    stored = _stored(settings.db_url)
    assert set(stored) == set(ACCOUNTS) - {"acc-trial"}
    bands = {b: sum(1 for r in stored.values() if r.band == b) for b in ("red", "yellow", "green")}
    assert bands == {"red": 4, "yellow": 1, "green": 1}
    # counts per band, in the scorecard's order, as a table and as the chart's bars
    assert _rows(text, "bands-1", "band") == [(b, [b, str(n), f"{100 * n / 6:.1f}%"]) for b, n in bands.items()]
    assert 'data-total="scored">6<' in text
    chart = text.split('<svg', 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in chart and "Accounts per band of Repricer account health" in chart
    assert "6 accounts: red: 4 accounts (66.7%); yellow: 1 account (16.7%); green: 1 account (16.7%)." in chart
    assert re.findall(r'data-label="(\w+)".*?data-count="(\d+)"', chart) == [("red", "4"), ("yellow", "1"),
                                                                               ("green", "1")]

    # band changes of the last 7 days, newest first, with what moved each most; older ones left out
    changes = _rows(text, "changes-1", "account")
    assert [(a, cells[1], cells[2]) for a, cells in changes] == [
        ("acc-red", "yellow", "red"), ("acc-red", "green", "yellow"),
        (EVIL, "yellow", "red"), (EVIL, "green", "yellow"),
        ("acc-low", "yellow", "red"), ("acc-low", "green", "yellow"),
    ]
    account, cells = changes[0]
    assert cells[3] == f"{stored['acc-red'].score:g} from 65.6" and cells[3].startswith("45.6")
    assert cells[5].startswith("Urgent tickets, 30 days (−") and cells[5].endswith(" points)")
    assert "acc-old" not in dict(changes) and "acc-yellow" not in dict(changes)
    assert "Changed band in the last 7 days <span class=\"count\">6</span>" in text

    # the lowest scores of the worst band (red), lowest first, with what holds each down most
    lowest = _rows(text, "lowest-1", "account")
    red = sorted((r for r in stored.values() if r.band == "red"), key=lambda r: (r.score, r.account_id))
    assert [a for a, _ in lowest] == [r.account_id for r in red] and lowest[0][0] == "acc-low"
    assert [cells[1] for _, cells in lowest] == [f"{r.score:g}" for r in red]
    assert lowest[0][1][4] == "Urgent tickets, 30 days (−53.3 points)"  # scores 0 at 40 of 75: 53.3 of 100 lost
    # every account is a link to its page; the <script> id escaped, in text and in the link
    assert 'href="/ops/accounts/acc-low"' in text
    assert EVIL not in text and "&lt;script&gt;" in text
    assert 'href="/ops/accounts/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E"' in text
    assert "customer.example" not in text and "Firma" not in text  # no contacts, no names


def test_an_accounts_page_shows_its_scores_history_and_runs(home: tuple[Any, Any, Settings]) -> None:
    app, _, settings = home
    token = create_token(settings.db_url, "Olga", "ops")

    async def steps(client: httpx.AsyncClient) -> list[httpx.Response]:
        await sign_in(client, token)
        return [await client.get(p) for p in (
            "/ops/accounts/acc-red", "/ops/accounts/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E",
            "/ops/accounts/acc-runs-only", "/ops/accounts/acc-nobody", "/ops/accounts/acc-trial",
        )]

    red, evil, runs_only, nobody, trial = call(app, steps)
    assert red.status_code == 200, red.text
    text = red.text
    row = _stored(settings.db_url)["acc-red"]
    facts = dict(re.findall(r'data-fact="(\w+)">(.*?)</dd>', text, re.S))
    assert facts["score"] == "45.6" and facts["band"] == "red"
    assert facts["previous"].startswith("65.6 (yellow)") and "−20" in facts["previous"]
    assert facts["thirty_days"].startswith("96.7 (green)")  # the first score, 40 days ago
    assert html.unescape(facts["holding_down"]).startswith("Urgent tickets, 30 days (−44.4 points)")
    measures = _rows(text, "measures-1", "measure")
    assert [m for m, _ in measures] == [c["measure_id"] for c in row.components]
    for (_, cells), c in zip(measures, row.components, strict=True):
        value = "missing" if c["value"] is None else f"{c['value']:g}"
        score = "skipped" if c["skipped"] else f"{c['score']:g}"
        assert cells[1:] == [value, score, str(c["weight"]), f"{c['effective_weight']:.1f}%",
                             f"{c['contribution']:.2f}"], cells
    assert dict(measures)["nps"][1:3] == ["missing", "skipped"]
    # the history: newest first, each change with its cause (the ticket's event id, the first score's cause)
    history = _rows(text, "history-1", "change")
    assert [cells[1].split(" ")[0] for _, cells in history] == ["45.6", "65.6", "78.9", "96.7"]
    assert [cells[4] for _, cells in history] == ["tkt-acc-red-2", "tkt-acc-red-1", "tkt-acc-red-0", "test/before"]
    assert history[0][1][2] == "red from yellow" and history[0][1][3].startswith("Urgent tickets, 30 days (−")
    # its runs, newest first, linked to their pages
    assert [r for r, _ in _rows(text, "account-runs", "run")] == ["r-red-1", "r-red-0"]
    assert 'href="/ops/runs/r-red-1"' in text and 'href="/ops/playbooks/risk-intervention"' in text
    assert "customer.example" not in text and "Firma" not in text and "Jonas" not in text

    assert evil.status_code == 200 and EVIL not in evil.text and "Account &lt;script&gt;" in evil.text
    assert runs_only.status_code == 200 and "No health score is recorded for this account." in runs_only.text
    assert _rows(runs_only.text, "account-runs", "run")[0][1][2] == "failed"
    for unknown in (nobody, trial):  # no score, no run: unknown to the engine
        assert unknown.status_code == 404
        assert "No health score and no run is recorded for account" in html.unescape(unknown.text)


def test_without_scorecards_the_health_page_says_so(home: tuple[Any, Any, Settings]) -> None:
    _, off, settings = home
    token = create_token(settings.db_url, "Olga", "ops")

    async def steps(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        library = await sign_in(client, token)
        return library, await client.get("/ops/health")

    library, page = call(off, steps)
    assert library.status_code == 200 and 'href="/ops/health"' not in library.text
    assert page.status_code == 200
    assert "There are no scorecards, so no account has a health score." in page.text and "docs/health.md" in page.text


def test_the_health_pages_need_an_ops_session(home: tuple[Any, Any, Settings]) -> None:
    app, _, settings = home
    csm = create_token(settings.db_url, "Jonas", "csm", "csm-de")

    async def steps(client: httpx.AsyncClient) -> None:
        for path in ("/ops/health", "/ops/accounts/acc-red"):
            first = await client.get(path)
            assert first.status_code == 303 and first.headers["location"] == "/ops/login", path
        refused = await sign_in(client, csm, follow=False)
        assert refused.status_code == 403 and "cannot open the ops page" in refused.text
        for path in ("/ops/health", "/ops/accounts/acc-red"):
            assert (await client.get(path)).status_code == 303, path

    call(app, steps)


def test_the_bands_chart_escapes_and_draws_empty_bars() -> None:
    from api import ops_chart

    rows = [ops_chart.BandRow(EVIL, 0, 0), ops_chart.BandRow("green", 0, 1)]
    chart = str(ops_chart.bands_chart(f"Accounts per band of {EVIL}", rows, 2, "bands-x"))
    assert EVIL not in chart and "&lt;script&gt;" in chart
    assert "No account has a score yet: every bar is empty." in chart and "data-count" not in chart
    drawn = str(ops_chart.bands_chart("t", [ops_chart.BandRow("red", 1, 0), ops_chart.BandRow("green", 3, 1)], 2, "b"))
    widths = re.findall(r'class="seg seg-band" data-count="(\d)" x="0" y="[\d.]+" width="([\d.]+)"', drawn)
    assert widths == [("1", "140"), ("3", "420")]  # proportional to the 4 accounts, of 560
    assert 'fill="url(#b-cross)"' in drawn and "url(#b-dots)" not in drawn  # the worst band crossed, the best plain
