"""Unsubscribe links for this deployment: the base URL recipients reach the API at, and the key that signs them.

The worker makes the links (one per recipient and category, in every email whose category allows opting out)
and the API reads them back (GET/POST /u/{token}), maybe days later and in another process: both get them from
here, so they agree. The key is the unsubscribe_secret setting (PLAYBOOK_UNSUBSCRIBE_SECRET; required outside
dev), else a random key kept in <PLAYBOOK_HOME>/unsubscribe.key, created once by whichever process comes first.
"""

from __future__ import annotations

import functools
from pathlib import Path

from engine.storage.governance import UnsubscribeLinks, UnsubscribeTokens

from .key_files import secret_or_key_file
from .settings import Settings, reveal

KEY_FILE = "unsubscribe.key"
SECRET_ENV = "PLAYBOOK_UNSUBSCRIBE_SECRET"


def public_url(settings: Settings) -> str:
    """Where recipients reach the API: the public_url setting, else (dev) the local API."""
    return (settings.public_url or f"http://127.0.0.1:{settings.api_port}").rstrip("/")


def unsubscribe_secret(settings: Settings) -> bytes:
    # links made now would not open after a restart; production refuses to start without the setting
    return secret_or_key_file(
        reveal(settings.unsubscribe_secret), SECRET_ENV, Path(settings.home) / KEY_FILE,
        "unsubscribe links made now break when this process restarts",
    )


@functools.lru_cache(maxsize=8)
def unsubscribe_tokens(settings: Settings) -> UnsubscribeTokens:
    previous = reveal(settings.unsubscribe_previous_secret)
    return UnsubscribeTokens(unsubscribe_secret(settings), (previous.encode(),) if previous else ())


@functools.lru_cache(maxsize=8)
def unsubscribe_links(settings: Settings) -> UnsubscribeLinks:
    """The links of this deployment (cached per settings: making the key costs a file read)."""
    return UnsubscribeLinks(public_url(settings), unsubscribe_tokens(settings))
