"""Fake provider servers for tests: real HTTP on 127.0.0.1, never the internet.

Test modules take the fixtures by importing them (``from tests.fakes import fake_sendgrid``), so
nothing outside this package has to change to use them.
"""

from __future__ import annotations

import socket
from typing import Iterator

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
    "fake_hubspot",
    "fake_sendgrid",
]


@pytest.fixture
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


@pytest.fixture
def fake_hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as server:
        yield server


def closed_port_url() -> str:
    """A local URL where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
