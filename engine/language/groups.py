"""Which group an account falls in: the control group of `settings.control`, and the path of a `split` step.

Both are pure functions of text: a SHA-256 of a salted string, read as a number. The same key always lands in
the same group, on every worker, in every replay and in every Python process (never ``hash()``, which is salted
per process). The control group and the splits use different salts, so being held out says nothing about the
path a treated account takes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_SPACE = 2**64  # the first 8 bytes of the digest, as an integer in [0, 2**64)


def _draw(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def control_draw(playbook_id: str, key: str) -> float:
    """Where an enrollment key falls in [0, 100): held out when below the control percentage."""
    return _draw(f"control/{playbook_id}/{key}") * 100.0 / _SPACE


def held_out(playbook_id: str, key: str, percent: float) -> bool:
    """Whether the account enrolled under ``key`` is in the playbook's control group of ``percent`` %."""
    return percent > 0 and control_draw(playbook_id, key) < percent


def split_index(playbook_id: str, step_id: str, key: str, weights: Sequence[int]) -> int:
    """The path (its index) a split step sends ``key`` down: path i with probability weights[i] / sum(weights)."""
    total = sum(weights)
    if total <= 0 or any(w <= 0 for w in weights):
        raise ValueError(f"split weights must be positive integers; got {list(weights)}")
    point = _draw(f"split/{playbook_id}/{step_id}/{key}") % total  # 2**64 / total: the bias is below 1e-15
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    raise AssertionError("unreachable: point < total")  # pragma: no cover


def parse_percent(value: object) -> float:
    """`settings.control` as a number: "10%", "2.5%", 10 or 2.5 (validated to 0-50 before a run sees it)."""
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip().removesuffix("%").strip())
    raise ValueError(f"not a percentage: {value!r}")
