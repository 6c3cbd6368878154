"""Durations as authors write them: 30s, 15m, 2h, 14d, 2w, 3bd (business days), or ISO 8601 (P14D, PT2H)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

_SHORT = re.compile(r"^\s*(-?)([0-9]+)\s*(s|m|h|d|w|bd)\s*$")
_ISO = re.compile(
    r"^(-?)P(?=[0-9T])(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)W)?(?:([0-9]+)D)?"
    r"(?:T(?=[0-9])(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?$"
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Years and months in ISO durations are taken as 365 and 30 days: a playbook waits calendar time.
_MAX_SECONDS = 10 * 365 * 86400

EXPECTED = "a duration like 30s, 15m, 2h, 14d, 2w, 3bd (business days) or P14D"


class DurationError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Duration:
    """Either a calendar span (seconds) or a count of business days (Monday to Friday)."""

    seconds: int = 0
    business_days: int = 0

    @property
    def timedelta(self) -> timedelta:
        if self.business_days:
            raise DurationError("business days depend on the calendar; use engine.runtime calendar helpers")
        return timedelta(seconds=self.seconds)


def parse_duration(text: str, *, allow_negative: bool = False) -> Duration:
    if not isinstance(text, str):
        raise DurationError(f"expected {EXPECTED}, got {type(text).__name__}")
    short = _SHORT.match(text)
    if short:
        sign, amount, unit = short.groups()
        if sign and not allow_negative:
            raise DurationError(f"a duration cannot be negative here: '{text}'")
        value = int(amount) * (-1 if sign else 1)
        result = Duration(business_days=value) if unit == "bd" else Duration(seconds=value * _UNIT_SECONDS[unit])
    else:
        iso = _ISO.match(text.strip())
        if not iso:
            raise DurationError(f"'{text}' is not {EXPECTED}")
        sign, years, months, weeks, days, hours, minutes, seconds = iso.groups()
        if sign and not allow_negative:
            raise DurationError(f"a duration cannot be negative here: '{text}'")
        total = (
            int(years or 0) * 365 * 86400
            + int(months or 0) * 30 * 86400
            + int(weeks or 0) * 7 * 86400
            + int(days or 0) * 86400
            + int(hours or 0) * 3600
            + int(minutes or 0) * 60
            + int(seconds or 0)
        )
        result = Duration(seconds=-total if sign else total)
    if abs(result.seconds) > _MAX_SECONDS or abs(result.business_days) > 2600:
        raise DurationError(f"'{text}' is longer than ten years")
    return result
