"""GET /playbooks/{id}/funnel: a playbook's funnel from the run_progress projection (docs/funnel.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["runs and playbooks"])
