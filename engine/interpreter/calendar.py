"""Time arithmetic for runs: durations, business days, `until` moments and quiet hours.

Pure functions of their arguments: the workflow passes its own clock (``workflow.now()``), so they
are deterministic and replay-safe.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.language.durations import Duration, parse_duration


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def add_business_days(start: datetime, days: int, tz: ZoneInfo) -> datetime:
    """start + days business days (Monday to Friday) in tz, at the same local time.

    Friday 09:00 + 1bd is Monday 09:00. A start on a weekend counts from Monday at the same time, so
    Saturday 10:00 + 1bd is Tuesday 10:00: one whole business day has passed.
    """
    local = start.astimezone(tz)
    step = 1 if days >= 0 else -1  # a negative count (an offset of -3bd) goes back in business days
    while local.weekday() >= 5:
        local = datetime.combine(local.date() + timedelta(days=step), local.timetz())
    remaining = abs(days)
    while remaining > 0:
        local = datetime.combine(local.date() + timedelta(days=step), local.time(), tz)
        if local.weekday() < 5:
            remaining -= 1
    return datetime.combine(local.date(), local.time(), tz)


def after(start: datetime, duration: Duration, tz: ZoneInfo) -> datetime:
    if duration.business_days:
        return add_business_days(start, duration.business_days, tz)
    return start + timedelta(seconds=duration.seconds)


def deadline(start: datetime, text: str, tz: ZoneInfo) -> datetime:
    return after(start, parse_duration(text), tz)


def parse_moment(text: str, tz: ZoneInfo) -> datetime:
    """An ISO date or datetime; a date alone, or a datetime without offset, is read in tz."""
    text = text.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = datetime.combine(date.fromisoformat(text[:10]), time(0, 0))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment


def quiet_until(now: datetime, window: str | None, tz: ZoneInfo) -> datetime | None:
    """If now falls inside the quiet window ("20:00-08:00" local), the moment it ends; else None."""
    if not window:
        return None
    start_text, end_text = window.split("-")
    start = time.fromisoformat(start_text)
    end = time.fromisoformat(end_text)
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    if start == end:
        return None
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:  # the window spans midnight
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tz)
