"""The built-in CRM's health fields (activities/crm.py write_health_fields): the primary score and band set into the
account's fields beside the others, which stay as they are; on SQLite by json_set in the database, elsewhere by
the merged fields written back. Either way the account reads the same afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from activities.crm import read_account, read_account_and_fields, seed, write_health_fields
from activities.types import HealthWrite
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.postgres import empty

FIELDS = {"plan": "pro", "mrr": 400.5, "regions": ["eu", "us"], "owner_note": {"lang": "de", "vip": True},
          "renews_on": "2027-03-01"}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_health_fields_are_set_beside_the_others(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
        migrate(db_url)
    else:
        db_url = empty(request.getfixturevalue("postgres"))
    seed(db_url, {"id": "acc-1", "name": "Brightside", **FIELDS}, [], [])
    seed(db_url, {"id": "acc-2", "name": "Quietly"}, [], [])
    seed(db_url, {"id": "acc-3", "name": "Nulled"}, [], [])
    with session(db_url) as s:  # fields stored as JSON null (not an object): they become an object with the two
        s.execute(update(t.Account).where(t.Account.id == "acc-3").values(fields=None))

    with session(db_url) as s:  # an event's write: the fields known from its read
        _, fields = read_account_and_fields(s, "acc-1")
        assert fields is not None
        write_health_fields(s, [HealthWrite("acc-1", 37.2, "red")], {"acc-1": fields})
    with session(db_url) as s:  # a night's: read here; the last write of an account wins
        write_health_fields(s, [HealthWrite("acc-2", 80.0, "green"), HealthWrite("acc-3", 55.5, "yellow"),
                                HealthWrite("acc-2", 100.0, "green"), HealthWrite("acc-9", 1.0, "red")])

    with session(db_url) as s:
        accounts = {a: read_account(s, a) for a in ("acc-1", "acc-2", "acc-3", "acc-9")}
    assert accounts["acc-9"] is None  # an account the CRM does not have is left out
    one, two, three = (accounts[a] for a in ("acc-1", "acc-2", "acc-3"))
    assert one is not None and two is not None and three is not None
    assert {k: one.account[k] for k in FIELDS} == FIELDS
    assert (one.account["health_score"], one.account["health_band"]) == (37.2, "red")
    assert (two.account["health_score"], two.account["health_band"]) == (100.0, "green")
    assert (three.account["health_score"], three.account["health_band"]) == (55.5, "yellow")

    with session(db_url) as s:  # a score that goes away empties them (null), the other fields still there
        write_health_fields(s, [HealthWrite("acc-1", None, None)])
        snapshot = read_account(s, "acc-1")
    assert snapshot is not None
    assert (snapshot.account["health_score"], snapshot.account["health_band"]) == (None, None)
    assert {k: snapshot.account[k] for k in FIELDS} == FIELDS
