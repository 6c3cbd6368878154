"""The ops page in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The stack is `playbook dev` in a subprocess (real Temporal dev server, worker, API), as in test_inbox_browser.py:
account.signed_up events start trial-follow-up for five trial accounts, which wait until three days before their
trial ends; one then subscribes (the goal) and one cancels (an exit). The funnel is the one the runs kept
themselves (run_progress). Olga signs in with an ops token, sees the library, opens trial-follow-up: the SVG
chart and the tables say the same numbers as GET /playbooks/trial-follow-up/funnel; she opens a live run's
timeline, which the worker answers. Three urgent tickets turn a paying customer red: the health page's chart, band
table and band changes, and the account's page, show it. A CSM token is refused with a 403 page.

A screenshot of the playbook's page is saved in the test's tmp dir, and copied to docs/ops.png when
PLAYBOOK_UPDATE_DOCS=1, so that a test run leaves the working tree as it was. No browser is downloaded: when
/usr/bin/chromium or Playwright is missing the test is skipped with the reason, and fails under CI=1.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.dev_stack import Stack, daytime_zone
from tests.paths import ROOT

DOCS_SCREENSHOT = ROOT / "docs" / "ops.png"
PLAYBOOK = "trial-follow-up"
ACCOUNTS = [f"acc-ops-{n}" for n in range(1, 6)]
HEALTHY = "acc-ops-pro"  # a paying customer whose urgent tickets the health page shows

require_browser()

from playwright.sync_api import expect, sync_playwright  # noqa: E402 - after the check

pytestmark = pytest.mark.timeout(120)


def event(kind: str, account_id: str, data: dict | None = None, account: dict | None = None) -> dict:
    body = {"id": f"evt-{uuid.uuid4().hex[:10]}", "type": kind, "account_id": account_id, "data": data or {}}
    if account:
        body["account"] = account
    return body


def signed_up(account_id: str, n: int) -> dict:
    trial_ends = (datetime.now(UTC) + timedelta(days=20 + n)).strftime("%Y-%m-%dT09:00:00Z")
    account = {"name": f"Trial shop {n}", "language": "en", "timezone": daytime_zone(), "owner": "csm-en",
               "trial_ends_at": trial_ends, "active_days": n, "repriced_skus": 10 * n, "sku_count": 200}
    contacts = [{"email": f"owner@{account_id}.example", "first_name": "Sam"}]
    return {**event("account.signed_up", account_id, {"plan": "trial"}, account), "contacts": contacts}


def test_ops_see_the_library_a_funnel_and_a_runs_timeline_in_the_browser(tmp_path: Path):
    (tmp_path / "stack").mkdir()
    with Stack(tmp_path / "stack") as stack, sync_playwright() as playwright:
        ops, csm = stack.token("ops", name="Olga"), stack.token("csm", "csm-en", name="Mia")
        for n, account_id in enumerate(ACCOUNTS, 1):
            assert stack.post_event(signed_up(account_id, n)).status_code == 200
        # every run reported itself (waiting at the trial's wait), then one converts and one cancels
        stack.wait_for(lambda: len(stack.db("select 1 from run_progress where current != '[]'")) == len(ACCOUNTS))
        assert stack.post_event(event("subscription.activated", ACCOUNTS[0], {"plan": "starter"})).status_code == 200
        assert stack.post_event(event("account.cancelled", ACCOUNTS[1])).status_code == 200
        stack.wait_for(lambda: len(stack.db("select 1 from run_progress where status != 'running'")) == 2)
        headers = {"Authorization": f"Bearer {ops}"}
        funnel = stack.http.get(f"/playbooks/{PLAYBOOK}/funnel", headers=headers).json()
        assert (funnel["entered"], funnel["live"], funnel["goal"]) == (5, 3, 1), funnel

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=f"http://127.0.0.1:{stack.api_port}",
                                          viewport={"width": 1280, "height": 900}, locale="en-US")
            context.set_default_timeout(15_000)
            page = context.new_page()

            # a CSM token is refused with a page that says why
            page.goto("/ops")
            expect(page).to_have_url(re.compile(r"/ops/login$"))
            page.get_by_label("API token").fill(csm)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("403 Forbidden")
            expect(page.get_by_role("alert")).to_contain_text("A csm token cannot open the ops page")

            # the library
            page.goto("/ops/login")
            page.get_by_label("API token").fill(ops)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("status")).to_have_text("Signed in as Olga.")
            row = page.get_by_role("row").filter(has_text="Trial follow-up and conversion")
            expect(row.get_by_role("cell")).to_have_text([re.compile(r"^[0-9a-f]{8}$"), "event account.signed_up",
                                                          "3", "0", "5"])
            expect(page.get_by_role("row").filter(has_text="Repricer onboarding")).to_be_visible()

            # the playbook: the SVG chart and the tables say the API's numbers
            row.get_by_role("link").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Trial follow-up and conversion")
            chart = page.get_by_role("img", name=f"Funnel of {PLAYBOOK}")
            expect(chart).to_be_visible()
            for name in ("entered", "live", "goal", "completed", "failed", "cancelled"):
                expect(page.locator(f'[data-total="{name}"]')).to_have_text(str(funnel[name]))
            entered_bar = chart.locator('[data-label="entered"] .seg-entered')
            expect(entered_bar).to_have_attribute("data-count", "5")
            goal = chart.locator('[data-label="goal: subscription.activated"] .seg-goal')
            expect(goal).to_have_attribute("data-count", "1")
            cancelled = chart.locator('[data-label="exit: account.cancelled"] .seg-exit')
            expect(cancelled).to_have_attribute("data-count", "1")
            csm_step = next(s for s in funnel["steps"] if s["step_id"] == "csm")
            expect(page.locator('#funnel-table tr[data-step="csm"] td')).to_have_text(
                [str(csm_step["done"]), str(csm_step["skipped"]), str(csm_step["failed"]), str(csm_step["waiting"])]
            )
            desc = chart.locator("desc").text_content() or ""
            assert desc.startswith("5 runs entered.") and "goal: subscription.activated: 1 goal reached" in desc
            expect(page.get_by_role("img", name="Goal conversion: control versus treated")).to_be_visible()
            expect(page.locator("#cmp-1 tr[data-group=treated] td").first).to_have_text(
                str(next(g for g in funnel["comparisons"][0]["groups"] if g["group"] == "treated")["runs"])
            )
            live = page.locator("#live-runs tbody tr")
            expect(live).to_have_count(3)
            expect(page.locator("#live-runs")).not_to_contain_text(ACCOUNTS[0])
            expect(page.locator("main")).not_to_contain_text("@")  # ids, never email addresses

            screenshot = tmp_path / "ops.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
            if os.environ.get("PLAYBOOK_UPDATE_DOCS") == "1":
                shutil.copyfile(screenshot, DOCS_SCREENSHOT)

            # a live run's timeline, answered by the worker
            live.filter(has_text=ACCOUNTS[4]).get_by_role("link", name="Timeline").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(f"{PLAYBOOK} for {ACCOUNTS[4]}")
            timeline = page.locator("#timeline li")
            expect(timeline.first).to_be_visible()
            expect(page.locator("#timeline")).to_contain_text("csm")
            expect(page.locator("#timeline .entry-waiting").last).to_contain_text("until")
            expect(page.locator("main")).not_to_contain_text("@")

            # the filters: the library's version has every run; none started after tomorrow (empty bars, no error)
            page.get_by_role("link", name=PLAYBOOK).click()
            library_version = page.locator("#version option", has_text="(library)").get_attribute("value") or ""
            page.get_by_label("Version", exact=True).select_option(value=library_version)
            page.get_by_role("button", name="Show").click()
            expect(page).to_have_url(re.compile(rf"\?version={library_version}&since=$"))
            expect(page.locator('[data-total="entered"]')).to_have_text("5")
            tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
            page.get_by_label("Started since (UTC)", exact=True).fill(tomorrow)
            page.get_by_role("button", name="Show").click()
            expect(page.locator('[data-total="entered"]')).to_have_text("0")
            expect(page.get_by_role("img", name=f"Funnel of {PLAYBOOK}")).to_contain_text("No runs have entered yet")
            expect(page.get_by_text("No live runs.")).to_be_visible()

            # health: three urgent tickets turn a customer red (scorecards/repricer-health.yaml); the header's
            # Health link, the bands chart and table, the band change and the account's own page say so
            pro = {"name": "Pro shop", "language": "en", "timezone": daytime_zone(), "owner": "csm-en", "plan": "pro",
                   "mrr": 400}
            for n in range(3):
                ticket = event("support.ticket_opened", HEALTHY, {"priority": "urgent"}, pro if n == 0 else None)
                assert stack.post_event(ticket).status_code == 200
            query = "select band from health_scores where account_id = ? and scorecard_id = 'repricer-health'"
            stack.wait_for(lambda: stack.db(query, HEALTHY) == [("red",)])
            page.get_by_role("banner").get_by_role("link", name="Health").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Health")
            card = page.locator('section[data-scorecard="repricer-health"]')
            expect(card.get_by_role("img", name=re.compile("^Accounts per band of"))).to_be_visible()
            expect(card.locator('tr[data-band="red"] td').first).to_have_text("1")
            change = card.locator(f'table[id^="changes-"] tr[data-account="{HEALTHY}"]')
            expect(change.locator("td").nth(1)).to_have_text("red")
            expect(change).to_contain_text("Urgent tickets, 30 days")
            expect(page.locator("main")).not_to_contain_text("@")
            change.get_by_role("link", name=HEALTHY).click()
            expect(page.get_by_role("heading", level=1)).to_have_text(f"Account {HEALTHY}")
            score = page.locator('article[data-scorecard="repricer-health"]')
            expect(score.locator('[data-fact="band"]')).to_have_text("red")
            expect(score.locator('tr[data-measure="urgent_tickets"] td').first).to_have_text("3")
            expect(page.locator("main")).not_to_contain_text("@")

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("status")).to_have_text("Signed out.")
        finally:
            browser.close()
