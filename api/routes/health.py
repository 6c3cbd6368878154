"""GET /accounts/{id}/health: an account's health scores (docs/health.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])
