"""Fake provider servers for tests: real HTTP on 127.0.0.1, never the internet.

Test modules take the fixtures by importing them (``from tests.fakes import fake_sendgrid_fixture``), so
nothing outside this package has to change to use them. A fixture's function has a name of its own
(``fake_sendgrid_fixture`` for the ``fake_sendgrid`` fixture): a test's parameter then does not shadow the import.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ._server import FakeServer, Recorded, Reply
from .fake_hubspot import FakeHubSpot
from .fake_sendgrid import FakeSendGrid

__all__ = [
    "FakeHubSpot",
    "FakeSendGrid",
    "FakeServer",
    "Recorded",
    "Reply",
    "closed_port_url",
    "fake_hubspot_fixture",
    "fake_sendgrid_fixture",
]


@pytest.fixture(name="fake_sendgrid")
def fake_sendgrid_fixture() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


@pytest.fixture(name="fake_hubspot")
def fake_hubspot_fixture() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as server:
        yield server


def closed_port_url() -> str:
    """A local URL where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
