"""GET /metrics: the engine's metrics in Prometheus' text format (docs/metrics.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
