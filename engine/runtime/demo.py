"""A demo team and accounts for the dev stack, so the engine is useful before any CRM is connected."""

from __future__ import annotations

from sqlalchemy import func, select

from activities.crm import seed
from engine.storage import models as t
from engine.storage.db import session

TEAM = [
    {"id": "csm-de", "name": "Jonas Weber", "email": "jonas@success.example", "languages": ["de", "en"]},
    {"id": "csm-en", "name": "Mia Clarke", "email": "mia@success.example", "languages": ["en"]},
    {"id": "csm-fr", "name": "Léa Martin", "email": "lea@success.example", "languages": ["fr", "en"]},
    {"id": "lead-1", "name": "Sam Lee", "email": "sam@success.example", "languages": ["en"], "role": "lead"},
]
ACCOUNTS = [
    (
        {"id": "acc-kraus", "name": "Kraus GmbH", "language": "de", "timezone": "Europe/Berlin",
         "seller_type": "private_label", "sku_count": 40, "plan": "trial", "status": "active", "health_score": 72,
         "mrr": 290},
        [{"email": "anna@kraus.example", "first_name": "Anna"}],
    ),
    (
        {"id": "acc-brightside", "name": "Brightside Brands", "language": "en", "timezone": "America/New_York",
         "seller_type": "brand", "sku_count": 1200, "plan": "pro", "status": "active", "health_score": 45, "mrr": 2400},
        [
            {"email": "dana@brightside.example", "first_name": "Dana"},
            {"email": "lee@brightside.example", "first_name": "Lee"},
        ],
    ),
]


def seed_demo(db_url: str) -> bool:
    """Seeds the demo data into an empty CRM; returns whether it did."""
    with session(db_url) as s:
        if s.scalar(select(func.count()).select_from(t.Csm)):
            return False
    for i, (account, contacts) in enumerate(ACCOUNTS):
        seed(db_url, account, contacts, TEAM if i == 0 else [])
    return True
