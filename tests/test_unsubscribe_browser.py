"""The unsubscribe link of a real email, in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright, against `playbook dev` in a subprocess (real Temporal dev server, worker, API), as test_inbox_browser.py.

A signup starts repricer-onboarding; its welcome email (category onboarding) lands in the outbox with the
List-Unsubscribe headers. Eva opens the link: the page names the category and her (masked) address and
changes nothing, however often it is opened; she confirms, sees the confirmation, and her consent is recorded
(source link); she then changes her preferences on the same page. The URL of the email, as the worker made it,
is the one the API reads: both take the key from the stack's home.

No browser is downloaded: when /usr/bin/chromium or Playwright is missing the test is skipped with the reason,
and fails under CI=1.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.dev_stack import Stack, daytime_zone

require_browser()

from playwright.sync_api import expect, sync_playwright  # noqa: E402 - after the check

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def consent(stack: Stack, email: str) -> dict[str, tuple[str, str]]:
    rows = stack.db("select category, status, source from consents where email = ?", email)
    return {category: (status, source) for category, status, source in rows}


def test_the_unsubscribe_link_of_a_real_email_in_chromium(stack: Stack, tmp_path: Path) -> None:
    account = f"acc-unsub-{uuid.uuid4().hex[:6]}"
    email = f"eva@{account}.example"
    event = {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "account.signed_up",
        "account_id": account,
        "data": {"product": "repricer", "plan": "pro"},
        "account": {"name": "Nordlicht GmbH", "language": "de", "timezone": daytime_zone(),
                    "seller_type": "private_label", "sku_count": 30},
        "contacts": [{"email": email, "first_name": "Eva"}],
    }
    assert stack.post_event(event).status_code == 200
    query = "select headers, body, category from outbox where account_id = ? and step_id = 'welcome'"
    [(headers_json, body, category)] = stack.wait_for(lambda: stack.db(query, account), timeout=60)
    headers = json.loads(headers_json)
    assert category == "onboarding"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"].strip("<>")
    assert url.startswith(f"http://127.0.0.1:{stack.api_port}/u/")
    assert url in body  # the visible link in the email itself

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="en-US")
            page.set_default_timeout(15_000)
            for _ in range(2):  # opened twice (a scanner, then Eva): nothing changes
                answer = page.goto(url)
                assert answer is not None and answer.status == 200
            expect(page.get_by_role("heading")).to_have_text("Unsubscribe from Onboarding emails?")
            expect(page.get_by_text("e***@a***.example")).to_be_visible()
            assert email not in page.content()
            assert consent(stack, email) == {}
            assert page.context.cookies() == []

            page.get_by_role("button", name="Unsubscribe from Onboarding emails").click()
            expect(page.get_by_role("status")).to_have_text("Done: you will get no more Onboarding emails.")
            expect(page.get_by_role("heading")).to_have_text("You are unsubscribed from Onboarding emails")
            assert consent(stack, email) == {"onboarding": ("unsubscribed", "link")}
            page.screenshot(path=str(tmp_path / "unsubscribed.png"), full_page=True)

            # preferences: back into onboarding, out of marketing
            onboarding = page.get_by_role("checkbox", name="Onboarding")
            expect(onboarding).not_to_be_checked()
            onboarding.check()
            page.get_by_role("checkbox", name="Marketing").uncheck()
            page.get_by_role("button", name="Save preferences").click()
            expect(page.get_by_role("status")).to_have_text("Your preferences are saved.")
            expect(page.get_by_role("checkbox", name="Marketing")).not_to_be_checked()
            recorded = consent(stack, email)
            assert recorded["onboarding"] == ("subscribed", "preferences")
            assert recorded["marketing"] == ("unsubscribed", "preferences")
            assert page.context.cookies() == []

            # the link, cut short: a page that says so, not an error
            broken = page.goto(url[:-6])
            assert broken is not None and broken.status == 404
            expect(page.get_by_role("heading")).to_have_text("This link is not valid")
        finally:
            browser.close()
