"""POST /webhooks/hubspot: HubSpot's webhooks (v3 signatures) as engine events (docs/hubspot.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
