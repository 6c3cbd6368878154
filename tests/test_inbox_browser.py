"""The CSM inbox in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The stack is `playbook dev` in a subprocess (real Temporal dev server, worker, API), as in test_api_e2e.py.
account.admin_changed events start risk-intervention for two accounts owned by csm-de. Jonas (csm-de)
signs in with his API token, records the Fjord AS call by clicking its outcome button, edits the subject
of the intro email the run then drafts, and approves it: the outbox has the edited email, sent. Mia
(csm-en), signed in in another browser profile, sees none of it and is refused when she tries to
decide it anyway; a decision posted twice is refused as well (messages, never tracebacks).

A screenshot of the inbox with the draft is saved in the test's tmp dir, and copied to docs/inbox.png when
PLAYBOOK_UPDATE_DOCS=1 (`make docs-screenshot`), so that a test run leaves the working tree as it was.
No browser is downloaded: when /usr/bin/chromium or Playwright is missing the test is skipped with the
reason (`make test` installs chromium first when it can: scripts/ensure-chromium), and fails under CI=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.dev_stack import Stack, daytime_zone
from tests.paths import ROOT

DOCS_SCREENSHOT = ROOT / "docs" / "inbox.png"

require_browser()

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - after the check

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


@contextmanager
def browser(playwright, profile: Path, base_url: str) -> Iterator[Page]:
    """A fresh Chromium profile (its own cookies): one per person signing in."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        base_url=base_url, viewport={"width": 1100, "height": 900}, locale="en-US",
    )
    context.set_default_timeout(15_000)
    try:
        yield context.pages[0] if context.pages else context.new_page()
    finally:
        context.close()


def sign_in(page: Page, token: str) -> None:
    page.goto("/inbox")
    expect(page).to_have_url(re.compile(r"/inbox/login$"))
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status")).to_contain_text("Signed in as")


def flash(page: Page) -> str:
    return page.locator(".flash").inner_text()


def post_form(page: Page, action: str, fields: dict[str, str]) -> None:
    """Submits a form the page does not show (as a tampering user would), with the page's own CSRF token."""
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    with page.expect_navigation():
        page.evaluate(
            """([action, fields]) => {
                const form = document.createElement("form");
                form.method = "post";
                form.action = action;
                for (const [name, value] of Object.entries(fields)) {
                    const input = document.createElement("input");
                    input.type = "hidden"; input.name = name; input.value = value;
                    form.appendChild(input);
                }
                document.body.appendChild(form);
                form.submit();
            }""",
            [action, {**fields, "csrf": csrf}],
        )


def admin_changed(account_id: str, name: str, admin: str, previous: str, tz: str) -> dict:
    return {
        "id": f"evt-{uuid.uuid4().hex[:10]}",
        "type": "account.admin_changed",
        "account_id": account_id,
        "data": {"new_admin_email": f"{admin.lower()}@{account_id}.example", "new_admin_first_name": admin,
                 "previous_admin_name": previous},
        "account": {"name": name, "language": "de", "timezone": tz, "owner": "csm-de"},
        "contacts": [{"email": f"{previous.lower()}@{account_id}.example", "first_name": previous}],
    }


def test_csm_records_the_call_and_approves_the_edited_draft_in_the_browser(stack: Stack, playwright, tmp_path: Path):
    jonas, mia = stack.token("csm", "csm-de", name="Jonas"), stack.token("csm", "csm-en", name="Mia")
    tz = daytime_zone()
    for event in (admin_changed("acc-inbox-1", "Fjord AS", "Lars", "Ida", tz),
                  admin_changed("acc-inbox-2", "Nordlicht GmbH", "Eva", "Tom", tz)):
        assert stack.post_event(event).status_code == 200
    stack.wait_for(lambda: len(stack.db("select 1 from call_tasks where account_id like 'acc-inbox-%'")) == 2)
    base_url = f"http://127.0.0.1:{stack.api_port}"

    with browser(playwright, tmp_path / "profile-jonas", base_url) as page:
        sign_in(page, jonas)
        fjord_call = page.get_by_role("article").filter(has_text="the new admin at Fjord AS")
        expect(fjord_call).to_be_visible()
        expect(page.get_by_role("article").filter(has_text="the new admin at Nordlicht GmbH")).to_be_visible()
        outcomes = fjord_call.get_by_role("group", name="Record the outcome")
        expect(outcomes.get_by_role("button")).to_have_text(["Connected", "Left voicemail", "Wrong person"])
        outcomes.get_by_role("button", name="Connected").click()
        expect(page.get_by_role("status")).to_contain_text("Recorded “Connected” for the call")
        expect(fjord_call).to_have_count(0)

        # the run drafts the intro email next; the inbox waits a moment for it, a reload covers a slow worker
        draft = page.get_by_role("article").filter(has_text="Fjord AS: a quick hello")
        deadline = time.monotonic() + 20
        while draft.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.3)
            page.reload()
        expect(draft).to_be_visible()
        expect(draft).to_contain_text("lars@acc-inbox-1.example")
        subject = draft.get_by_label("Subject")
        expect(subject).to_have_value("Your Repricer account at Fjord AS: a quick hello")
        expect(draft.get_by_label("Body")).to_have_value(_draft(stack)["body"])
        approval_id = stack.db("select approval_id from approvals where account_id = 'acc-inbox-1'")[0][0]

        # Mia, in her own browser, sees none of Jonas' work and may not decide it
        with browser(playwright, tmp_path / "profile-mia", base_url) as other:
            sign_in(other, mia)
            expect(other.locator("main")).not_to_contain_text("Fjord AS")
            expect(other.locator("main")).not_to_contain_text("Nordlicht GmbH")
            expect(other.get_by_text("Nothing waits for your approval.")).to_be_visible()
            post_form(other, f"/inbox/approvals/{approval_id}", {"decision": "approve", "subject": "Hijacked"})
            expect(other.get_by_role("alert")).to_have_text(
                f"Not done (403 Forbidden): approval {approval_id} is for csm-de, not csm-en"
            )

        edited = "Lars, your Repricer account at Fjord AS"
        subject.fill(edited)
        draft.get_by_label("Comment").fill("after our call")
        draft.get_by_label("Comment").blur()
        screenshot = tmp_path / "inbox.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
        if os.environ.get("PLAYBOOK_UPDATE_DOCS") == "1":
            shutil.copyfile(screenshot, DOCS_SCREENSHOT)

        draft.get_by_role("button", name="Approve and send").click()
        expect(page.get_by_role("status")).to_have_text("Approved — the edited email goes out")
        expect(draft).to_have_count(0)
        expect(page.get_by_role("article").filter(has_text="the new admin at Nordlicht GmbH")).to_be_visible()

        # deciding again (a stale form) is refused with the reason
        post_form(page, f"/inbox/approvals/{approval_id}", {"decision": "reject"})
        expect(page.get_by_role("alert")).to_have_text(
            f"Not done (409 Conflict): approval {approval_id} is approved already"
        )

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("status")).to_have_text("Signed out.")
        page.goto("/inbox")
        expect(page.get_by_label("API token")).to_be_visible()

    sent = stack.wait_for(
        lambda: stack.db(
            "select subject, body, status from outbox where account_id = 'acc-inbox-1' and step_id = 'outreach'"
        ),
    )
    [(subject, body, status)] = sent
    assert (subject, status) == (edited, "sent")
    assert body.startswith(_draft(stack)["body"] + "\n\n--\n") and "/u/" in body  # and the unsubscribe footer
    [(status, by, comment, edits)] = stack.db(
        "select status, decided_by, comment, edits from approvals where approval_id = ?", approval_id
    )
    assert (status, by, comment, json.loads(edits)) == ("approved", "csm-de", "after our call", {"subject": edited})


def _draft(stack: Stack) -> dict:
    return json.loads(stack.db("select draft from approvals where account_id = 'acc-inbox-1'")[0][0])
