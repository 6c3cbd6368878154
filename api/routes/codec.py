"""POST /codec/encode and /codec/decode: the Temporal Web UI's remote codec (docs/encryption.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
