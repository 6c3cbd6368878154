"""Choosing a CSM for an account: pure functions over the team and their loads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    id: str
    languages: tuple[str, ...] = ()
    role: str | None = None
    capacity: int | None = None
    load: int = 0  # accounts owned now


def _has_room(c: Candidate) -> bool:
    return c.capacity is None or c.load < c.capacity


def _least_loaded(candidates: list[Candidate]) -> Candidate | None:
    roomy = [c for c in candidates if _has_room(c)] or candidates
    return min(roomy, key=lambda c: (c.load, c.id)) if roomy else None


def choose(
    by: str,
    team: list[Candidate],
    *,
    language: str | None,
    current_owner: str | None,
    last_assigned: str | None,
    team_filter: str | None = None,
) -> str | None:
    """The CSM id to own the account, or None when nobody fits (the caller then uses the fallback)."""
    pool = [c for c in team if team_filter is None or c.role == team_filter]
    if by == "owner":
        if current_owner and any(c.id == current_owner for c in team):
            return current_owner
        by = "least_loaded"
    if by == "language":
        lang = (language or "").lower().split("-")[0]
        speakers = [c for c in pool if lang and lang in {x.lower() for x in c.languages}]
        chosen = _least_loaded(speakers)
        return chosen.id if chosen else None
    if by == "round_robin":
        ordered = sorted(pool, key=lambda c: c.id)
        roomy = [c for c in ordered if _has_room(c)] or ordered
        if not roomy:
            return None
        if last_assigned is None:
            return roomy[0].id
        after = [c for c in roomy if c.id > last_assigned]
        return (after or roomy)[0].id
    if by == "least_loaded":
        chosen = _least_loaded(pool)
        return chosen.id if chosen else None
    raise ValueError(f"unknown assignment rule {by!r}")
