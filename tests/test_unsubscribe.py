"""Unsubscribe links (/u/{token}) over plain HTTP: the real app served by uvicorn on 127.0.0.1, a real SQLite database.

RFC 8058's one-click POST unsubscribes at once, with no cookie and no login; a GET shows a page and changes nothing
(link scanners follow links); a forged, cut or altered token gets a 404 page, never a 500. The links themselves
come from engine/runtime/messaging.py: the base URL of the settings, and a key shared by every process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from engine.runtime.messaging import public_url, unsubscribe_links, unsubscribe_tokens
from engine.runtime.settings import Settings
from engine.storage import governance as gov
from engine.storage.db import migrate, session
from tests.dev_stack import free_port
from tests.paths import PLAYBOOKS

ANNA = "anna@kraus.example"


@dataclass
class Served:
    settings: Settings
    base_url: str

    def link(self, email: str, category: str) -> str:
        return unsubscribe_links(self.settings).url(email, category)

    def consent(self, email: str) -> dict[str, tuple[str, str]]:
        with session(self.settings.db_url) as s:
            return {c.category: (c.status, c.source) for c in gov.consents(s, email)}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The API app on a real port. No Temporal: nothing under /u reaches a run (the client is never used)."""
    port = free_port()
    settings = Settings(environment="dev", home=str(tmp_path), library=str(PLAYBOOKS), api_port=port)
    migrate(settings.db_url)
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(settings, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ----------------------------------------------------------------------------------------- the links


def test_links_point_at_the_settings_public_url_and_carry_an_opaque_token(tmp_path: Path) -> None:
    dev = Settings(environment="dev", home=str(tmp_path), api_port=8123)
    assert public_url(dev) == "http://127.0.0.1:8123"
    url = unsubscribe_links(dev).url("Anna <ANNA@Kraus.example>", "marketing")
    assert url.startswith("http://127.0.0.1:8123/u/")
    token = url.rsplit("/", 1)[1]
    assert "anna" not in token.lower() and "marketing" not in token  # nothing readable in it
    assert unsubscribe_tokens(dev).read(token) == (ANNA, "marketing")
    public = dev.replace(public_url="https://cs.example.com/engine/")
    assert unsubscribe_links(public).url(ANNA, "marketing").startswith("https://cs.example.com/engine/u/")


def test_without_a_secret_every_process_shares_one_key_in_the_home(tmp_path: Path) -> None:
    key_file = tmp_path / "unsubscribe.key"
    first = Settings(environment="dev", home=str(tmp_path))
    token = unsubscribe_tokens(first).make(ANNA, "marketing")
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600
    # another process (another Settings object, no cache shared) reads the same key, so the link still works
    again = Settings(environment="dev", home=str(tmp_path), api_port=9999)
    assert unsubscribe_tokens(again).read(token) == (ANNA, "marketing")
    elsewhere = Settings(environment="dev", home=str(tmp_path / "other"))
    assert unsubscribe_tokens(elsewhere).read(token) is None


def test_a_configured_secret_is_used_on_every_process(tmp_path: Path) -> None:
    secret = "unsubscribe-secret-0123456789abcdef0123"
    one = Settings(environment="dev", home=str(tmp_path / "a"), unsubscribe_secret=secret)
    two = Settings(environment="dev", home=str(tmp_path / "b"), unsubscribe_secret=secret)
    assert unsubscribe_tokens(two).read(unsubscribe_tokens(one).make(ANNA, "onboarding")) == (ANNA, "onboarding")
    assert not (tmp_path / "a" / "unsubscribe.key").exists()  # no key file when the setting is there


# ----------------------------------------------------------------------------------- one-click, over HTTP


def test_one_click_post_unsubscribes_at_once_without_cookie_or_login(served: Served) -> None:
    url = served.link(ANNA, "marketing")
    with httpx.Client() as http:  # a fresh client: no cookie, no Authorization
        answer = http.post(url, content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    assert "set-cookie" not in answer.headers
    assert "You are unsubscribed from Marketing emails" in answer.text
    assert served.consent(ANNA) == {"marketing": ("unsubscribed", "one_click")}
    # the same again (mail clients retry): still unsubscribed, the first record stays
    again = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and served.consent(ANNA) == {"marketing": ("unsubscribed", "one_click")}


def test_one_click_as_multipart_form_data_too(served: Served) -> None:
    # RFC 8058 lets the mail client send the same field as multipart/form-data
    answer = httpx.post(served.link(ANNA, "onboarding"), files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200, answer.text
    assert served.consent(ANNA) == {"onboarding": ("unsubscribed", "one_click")}


def test_a_get_shows_the_page_and_changes_nothing(served: Served) -> None:
    url = served.link(ANNA, "marketing")
    for _ in range(3):  # a scanner, a preview, the reader: none of them unsubscribes
        page = httpx.get(url)
        assert page.status_code == 200
    assert served.consent(ANNA) == {}
    assert "Unsubscribe from Marketing emails?" in page.text
    assert "a***@k***.example" in page.text and ANNA not in page.text  # the address, partly masked
    assert 'name="action" value="unsubscribe"' in page.text
    assert page.headers["referrer-policy"] == "no-referrer"  # the URL is the credential
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "set-cookie" not in page.headers
    # the preferences list the categories the policy lets people leave, not transactional
    assert 'value="marketing"' in page.text and 'value="onboarding"' in page.text
    assert 'value="transactional"' not in page.text


def test_the_page_forms_unsubscribe_and_save_preferences(served: Served) -> None:
    url = served.link(ANNA, "marketing")
    done = httpx.post(url, data={"action": "unsubscribe"})
    assert done.status_code == 200
    assert "Done: you will get no more Marketing emails." in done.text
    assert "You are unsubscribed from Marketing emails" in done.text
    assert served.consent(ANNA)["marketing"] == ("unsubscribed", "link")
    # back in for marketing, out of onboarding
    saved = httpx.post(url, data={"action": "preferences", "subscribed": ["marketing"]})
    assert saved.status_code == 200 and "Your preferences are saved." in saved.text
    consent = served.consent(ANNA)
    assert consent["marketing"] == ("subscribed", "preferences")
    assert consent["onboarding"] == ("unsubscribed", "preferences")


@pytest.mark.parametrize("mangle", [
    lambda token: token[:-5],  # cut
    lambda token: token[:20] + ("A" if token[20] != "A" else "B") + token[21:],  # one character changed
    lambda token: "gAAAAA" + "x" * 100,  # made up
    lambda token: "not-a-token",
    lambda token: "%00%ff",
    lambda token: "a" * 5000,
])
def test_a_forged_or_broken_token_gets_a_404_page(served: Served, mangle) -> None:  # type: ignore[no-untyped-def]
    token = served.link(ANNA, "marketing").rsplit("/", 1)[1]
    url = f"{served.base_url}/u/{mangle(token)}"
    for answer in (httpx.get(url), httpx.post(url, data={"List-Unsubscribe": "One-Click"})):
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "This link is not valid" in answer.text
    assert served.consent(ANNA) == {}


def test_a_token_from_another_deployment_is_not_valid(served: Served, tmp_path: Path) -> None:
    other = Settings(environment="dev", home=str(tmp_path / "other"), unsubscribe_secret="another-secret-" + "0" * 20)
    url = f"{served.base_url}/u/{unsubscribe_tokens(other).make(ANNA, 'marketing')}"
    assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 404


def test_a_post_with_nothing_to_do_changes_nothing(served: Served) -> None:
    url = served.link(ANNA, "marketing")
    for data in ({}, {"List-Unsubscribe": "Yes"}, {"action": "explode"}):
        answer = httpx.post(url, data=data)
        assert answer.status_code == 400 and "Nothing to do" in answer.text
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    bad_multipart = httpx.post(url, content=b"--x\r\nbroken", headers=multipart)
    assert bad_multipart.status_code == 400 and "Traceback" not in bad_multipart.text
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    huge = httpx.post(url, content=b"List-Unsubscribe=One-Click&a=" + b"x" * 20_000, headers=form)
    assert huge.status_code == 400
    assert served.consent(ANNA) == {}


def test_one_hundred_one_click_posts_at_once_leave_one_record(served: Served) -> None:
    url = served.link(ANNA, "marketing")

    async def many() -> list[int]:
        async with httpx.AsyncClient() as http:
            one_click = {"List-Unsubscribe": "One-Click"}
            answers = await asyncio.gather(*(http.post(url, data=one_click) for _ in range(100)))
        return [a.status_code for a in answers]

    assert set(asyncio.run(many())) == {200}
    assert served.consent(ANNA) == {"marketing": ("unsubscribed", "one_click")}


def test_after_a_rotation_the_deployment_reads_links_signed_with_the_previous_secret(tmp_path: Path) -> None:
    old = Settings(environment="dev", home=str(tmp_path), unsubscribe_secret="o" * 40)
    sent_before = unsubscribe_links(old).url("anna@x.example", "marketing").rsplit("/", 1)[1]
    rotated = old.replace(unsubscribe_secret="n" * 40, unsubscribe_previous_secret="o" * 40)
    assert unsubscribe_tokens(rotated).read(sent_before) == ("anna@x.example", "marketing")
    made_now = unsubscribe_links(rotated).url("ben@x.example", "marketing").rsplit("/", 1)[1]
    assert unsubscribe_tokens(old.replace(unsubscribe_secret="n" * 40)).read(made_now) == ("ben@x.example", "marketing")
    assert unsubscribe_tokens(old).read(made_now) is None  # signed with the new secret, not the previous one
