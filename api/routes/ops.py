"""The ops page: server-rendered beside the inbox (docs/ops.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["ops page"], include_in_schema=False)
