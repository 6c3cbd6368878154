"""The ops page's charts (docs/ops.md): inline SVG drawn on the server, pure functions, no JavaScript.

- funnel_chart: one horizontal bar per step, split into done / skipped / failed / waiting, then one bar per way
  runs ended (goals, exits by event, completed, failed, cancelled). Widths are proportional to the number of runs
  entered (or the largest bar, when that is larger).
- interval_chart: a comparison's groups (control and treated, or a split's paths) as goal-conversion rates with
  their 95% intervals on a 0-100% axis, and the difference with its interval on an axis around zero.
- bands_chart: a scorecard's accounts per band (the health page), one horizontal bar per band in the scorecard's
  order, widths proportional to the accounts counted.

Accessible: each chart is role="img" with a <title> and a <desc> that says every number; every bar carries its
numbers as text (not colour alone) and its segments use patterns as well as colours. Only presentation
attributes, no style attributes: the page's Content-Security-Policy allows no inline styles. Every text is
escaped; the values are ids and counts (no personal data reaches a chart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from markupsafe import Markup, escape

WIDTH = 560
ROW = 40  # a bar's row: its label line, then the bar
BAR = 14
INDENT = 14  # per nesting depth
LABEL_CHARS = 44

# segment kind -> (fill, pattern drawn over it or None, what the legend calls it)
SEGMENTS: dict[str, tuple[str, str | None, str]] = {
    "done": ("#1f5fbf", None, "done"),
    "skipped": ("#9aa5b5", "hatch", "skipped"),
    "failed": ("#b42318", "cross", "failed"),
    "waiting": ("#f0b429", "dots", "waiting there now"),
    "goal": ("#17603a", None, "goal reached"),
    "exit": ("#5b6576", "hatch", "exited"),
    "completed": ("#1f5fbf", None, "completed"),
    "cancelled": ("#9aa5b5", "cross", "cancelled"),
    "entered": ("#1d2430", None, "entered"),
}


class StepLike(Protocol):
    @property
    def step_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def waiting(self) -> int: ...


class GoalLike(Protocol):
    @property
    def event(self) -> str: ...
    @property
    def reached(self) -> int: ...


class FunnelLike(Protocol):
    @property
    def playbook_id(self) -> str: ...
    @property
    def entered(self) -> int: ...
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def cancelled(self) -> int: ...
    @property
    def exited(self) -> dict[str, int]: ...
    @property
    def steps(self) -> Sequence[StepLike]: ...
    @property
    def goals(self) -> Sequence[GoalLike]: ...


class ConversionLike(Protocol):
    @property
    def group(self) -> str: ...
    @property
    def runs(self) -> int: ...
    @property
    def converted(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def low(self) -> float: ...
    @property
    def high(self) -> float: ...


class ComparisonLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def groups(self) -> Sequence[ConversionLike]: ...
    @property
    def difference(self) -> float | None: ...
    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...


@dataclass(frozen=True)
class Row:
    """One bar: its label, nesting depth and segments (kind, count) in drawing order."""

    label: str
    segments: tuple[tuple[str, int], ...]
    depth: int = 0
    kind: str = ""  # the step's kind, shown after the label


# ------------------------------------------------------------------------------------------------ text


def pct(value: float | None, digits: int = 1) -> str:
    """0.2314 -> '23.1%'; None or NaN -> '–'."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


def signed_pct(value: float | None, digits: int = 1) -> str:
    """A difference: '+4.2 pts', '−3.0 pts'; None -> '–'."""
    if value is None or math.isnan(value):
        return "–"
    points = value * 100
    return f"{'+' if points > 0 else '−' if points < 0 else '±'}{abs(points):.{digits}f} pts"


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def describe(row: Row) -> str:
    """A bar's numbers in words: 'welcome: 9 done, 1 skipped, 3 waiting there now' (zeros left out)."""
    parts = [f"{n} {SEGMENTS[kind][2]}" for kind, n in row.segments if n]
    return f"{row.label}: {', '.join(parts) if parts else 'none'}"


def _numbers(row: Row) -> str:
    parts = [f"{n} {SEGMENTS[kind][2].split(' ')[0]}" for kind, n in row.segments if n]
    return " · ".join(parts) if parts else "0"


# ------------------------------------------------------------------------------------------ the funnel


def funnel_rows(f: FunnelLike, kinds: Mapping[str, str] | None = None) -> tuple[list[Row], list[Row]]:
    """The funnel's bars: one per step (in the playbook's order), then one per way runs ended. ``kinds``: the kind
    to show for a step the funnel knows only by its id or path (a step without id is counted by its path)."""
    steps = [
        Row(s.step_id, (("done", s.done), ("skipped", s.skipped), ("failed", s.failed), ("waiting", s.waiting)),
            s.depth, s.kind or (kinds or {}).get(s.step_id, ""))
        for s in f.steps
    ]
    ended = [Row(f"goal: {g.event}", (("goal", g.reached),)) for g in f.goals]
    ended += [Row(f"exit: {event}", (("exit", n),)) for event, n in sorted(f.exited.items())]
    ended += [
        Row("completed (ran to the end)", (("completed", f.completed),)),
        Row("failed", (("failed", f.failed),)),
        Row("cancelled", (("cancelled", f.cancelled),)),
    ]
    return steps, ended


def _defs(cid: str) -> str:
    """The segments' patterns (ids prefixed by the chart's, so two charts on one page do not share them)."""
    return (
        "<defs>"
        f'<pattern id="{cid}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2" stroke-opacity="0.7"/></pattern>'
        f'<pattern id="{cid}-cross" width="6" height="6" patternUnits="userSpaceOnUse">'
        '<path d="M0 0L6 6M6 0L0 6" stroke="#ffffff" stroke-width="1.2" stroke-opacity="0.8"/></pattern>'
        f'<pattern id="{cid}-dots" width="5" height="5" patternUnits="userSpaceOnUse">'
        '<circle cx="2.5" cy="2.5" r="1.1" fill="#1d2430" fill-opacity="0.55"/></pattern>'
        "</defs>"
    )


def _bar(cid: str, row: Row, y: float, scale: int) -> str:
    x0 = row.depth * INDENT
    span = WIDTH - x0
    out = [f'<g class="bar" data-label="{escape(row.label)}">']
    label = escape(_short(row.label, LABEL_CHARS - 2 * row.depth))
    kind = f' <tspan class="kind" fill="#5b6576">({escape(row.kind)})</tspan>' if row.kind else ""
    out.append(f'<text x="{_num(x0)}" y="{_num(y + 12)}" font-size="12" fill="#1d2430">{label}{kind}</text>')
    out.append(
        f'<text x="{WIDTH}" y="{_num(y + 12)}" font-size="12" text-anchor="end" fill="#1d2430" class="numbers">'
        f"{escape(_numbers(row))}</text>"
    )
    top = y + 17
    out.append(f'<rect x="{_num(x0)}" y="{_num(top)}" width="{_num(span)}" height="{BAR}" fill="#eef1f5" rx="2"/>')
    x = float(x0)
    for kind, n in row.segments:
        if n <= 0:
            continue
        width = span * n / scale
        fill, pattern, words = SEGMENTS[kind]
        tip = f"<title>{escape(row.label)}: {n} {escape(words)}</title>"
        out.append(
            f'<rect class="seg seg-{kind}" data-count="{n}" x="{_num(x)}" y="{_num(top)}" width="{_num(width)}" '
            f'height="{BAR}" fill="{fill}">{tip}</rect>'
        )
        if pattern:
            out.append(
                f'<rect x="{_num(x)}" y="{_num(top)}" width="{_num(width)}" height="{BAR}" '
                f'fill="url(#{cid}-{pattern})" aria-hidden="true"/>'
            )
        x += width
    out.append("</g>")
    return "".join(out)


def _legend(cid: str, kinds: Sequence[str], y: float) -> str:
    out = [f'<g class="legend" transform="translate(0 {_num(y)})">']
    x = 0
    for kind in kinds:
        fill, pattern, words = SEGMENTS[kind]
        out.append(f'<rect x="{x}" y="0" width="12" height="12" fill="{fill}"/>')
        if pattern:
            out.append(f'<rect x="{x}" y="0" width="12" height="12" fill="url(#{cid}-{pattern})"/>')
        out.append(f'<text x="{x + 16}" y="10.5" font-size="11.5" fill="#1d2430">{escape(words)}</text>')
        x += 16 + 7 * len(words) + 18
    out.append("</g>")
    return "".join(out)


def funnel_chart(f: FunnelLike, cid: str = "funnel", kinds: Mapping[str, str] | None = None) -> Markup:
    """The funnel as an accessible inline SVG: bars per step, a gap, bars per way runs ended, a legend."""
    steps, ended = funnel_rows(f, kinds)
    rows = [Row("entered", (("entered", f.entered),)), *steps]
    scale = max([f.entered, 1, *(sum(n for _, n in r.segments) for r in (*rows, *ended))])
    gap = 22
    height = 24 + ROW * len(rows) + gap + ROW * len(ended) + 8
    title = f"Funnel of {f.playbook_id}"
    if f.entered:
        desc = f"{f.entered} runs entered. Steps: " + "; ".join(describe(r) for r in steps)
        desc += ". Ended: " + "; ".join(describe(r) for r in ended) + "."
    else:
        desc = "No runs have entered yet: every bar is empty."
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart funnel-chart" id="{cid}" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" aria-labelledby="{cid}-title {cid}-desc" '
        f'font-family="system-ui, sans-serif">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape(desc)}</desc>',
        _defs(cid),
        _legend(cid, ("done", "skipped", "failed", "waiting"), 0),
    ]
    y = 24.0
    for row in rows:
        out.append(_bar(cid, row, y, scale))
        y += ROW
    out.append(f'<line x1="0" x2="{WIDTH}" y1="{_num(y + gap / 2 - 2)}" y2="{_num(y + gap / 2 - 2)}" '
               'stroke="#d9dee7"/>')
    y += gap
    for row in ended:
        out.append(_bar(cid, row, y, scale))
        y += ROW
    out.append("</svg>")
    return Markup("".join(out))


# ------------------------------------------------------------------------------------ interval plots


IWIDTH = 560
ILABEL = 150  # the label column
IROW = 28
IRIGHT = 30  # room for the last tick's label


def _axis(x0: float, x1: float, y: float, ticks: Sequence[tuple[float, str]]) -> str:
    out = [f'<line x1="{_num(x0)}" x2="{_num(x1)}" y1="{_num(y)}" y2="{_num(y)}" stroke="#b8c0cc"/>']
    for x, text in ticks:
        out.append(f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(y)}" y2="{_num(y + 4)}" stroke="#b8c0cc"/>')
        out.append(f'<text x="{_num(x)}" y="{_num(y + 15)}" font-size="10.5" text-anchor="middle" '
                   f'fill="#5b6576">{escape(text)}</text>')
    return "".join(out)


def _interval(label: str, words: str, y: float, x_low: float, x_mid: float, x_high: float, fill: str) -> str:
    return (
        f'<g class="interval" data-label="{escape(label)}">'
        f'<text x="0" y="{_num(y + 4)}" font-size="12" fill="#1d2430">{escape(_short(label, 22))}</text>'
        f'<line x1="{_num(x_low)}" x2="{_num(x_high)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{fill}" stroke-width="2"/>'
        f'<line x1="{_num(x_low)}" x2="{_num(x_low)}" y1="{_num(y - 5)}" y2="{_num(y + 5)}" stroke="{fill}" '
        'stroke-width="2"/>'
        f'<line x1="{_num(x_high)}" x2="{_num(x_high)}" y1="{_num(y - 5)}" y2="{_num(y + 5)}" stroke="{fill}" '
        'stroke-width="2"/>'
        f'<circle cx="{_num(x_mid)}" cy="{_num(y)}" r="4.5" fill="{fill}"><title>{escape(words)}</title></circle>'
        "</g>"
    )


def group_words(g: ConversionLike) -> str:
    if g.runs == 0:
        return f"{g.group}: no runs"
    return f"{g.group}: {g.converted} of {g.runs} reached the goal, {pct(g.rate)} (95% interval {pct(g.low)} to " \
           f"{pct(g.high)})"


def difference_words(c: ComparisonLike) -> str:
    if c.difference is None:
        return "difference: not known while a group has no runs"
    first, second = _difference_names(c)
    return f"difference ({second} − {first}): {signed_pct(c.difference)} (95% interval {signed_pct(c.low)} to " \
           f"{signed_pct(c.high)})"


def _difference_names(c: ComparisonLike) -> tuple[str, str]:
    """Which group is subtracted from which: control's groups are [treated, control], a split's [path 1, path 2]."""
    names = [g.group for g in c.groups]
    if c.name == "control" and len(names) >= 2:
        return names[1], names[0]
    return (names[0], names[1]) if len(names) >= 2 else ("?", "?")


def interval_chart(c: ComparisonLike, cid: str) -> Markup:
    """A comparison's rates with their intervals (0-100%), and the difference's interval around zero."""
    x0, x1 = float(ILABEL), float(IWIDTH - IRIGHT)
    span = x1 - x0
    groups = list(c.groups)
    has_diff = c.difference is not None and c.low is not None and c.high is not None
    height = 10 + IROW * len(groups) + 24 + (IROW + 30 if has_diff else 0)
    words = [group_words(g) for g in groups] + [difference_words(c)]
    title = "Goal conversion: control versus treated" if c.name == "control" else f"Goal conversion by path of {c.name}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart interval-chart" id="{cid}" role="img" '
        f'viewBox="0 0 {IWIDTH} {height}" width="100%" aria-labelledby="{cid}-title {cid}-desc" '
        f'font-family="system-ui, sans-serif">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape("; ".join(words) + ".")}</desc>',
    ]

    def at(rate: float) -> float:
        return x0 + span * min(max(rate, 0.0), 1.0)

    y = 16.0
    colours = ("#1f5fbf", "#5b6576", "#17603a", "#9b1c1c")
    for i, g in enumerate(groups):
        fill = colours[i % len(colours)]
        if g.runs == 0:
            out.append(f'<g class="interval" data-label="{escape(g.group)}"><text x="0" y="{_num(y + 4)}" '
                       f'font-size="12" fill="#1d2430">{escape(_short(g.group, 22))}</text>'
                       f'<text x="{_num(x0)}" y="{_num(y + 4)}" font-size="11.5" fill="#5b6576">no runs</text></g>')
        else:
            out.append(_interval(g.group, group_words(g), y, at(g.low), at(g.rate), at(g.high), fill))
        y += IROW
    out.append(_axis(x0, x1, y - 8, [(at(v / 4), f"{v * 25}%") for v in range(5)]))
    y += 24
    if has_diff:
        assert c.difference is not None and c.low is not None and c.high is not None
        reach = max(abs(c.low), abs(c.high), abs(c.difference), 0.05)
        limit = min(1.0, math.ceil(reach * 10) / 10)  # a symmetric axis in steps of 10 points

        def dat(value: float) -> float:
            return x0 + span * (min(max(value, -limit), limit) + limit) / (2 * limit)

        y += 6
        out.append(f'<line x1="{_num(dat(0))}" x2="{_num(dat(0))}" y1="{_num(y - 12)}" y2="{_num(y + 12)}" '
                   'stroke="#1d2430" stroke-dasharray="3 3"/>')
        first, second = _difference_names(c)
        out.append(_interval(f"{second} − {first}", difference_words(c), y, dat(c.low), dat(c.difference),
                             dat(c.high), "#1d2430"))
        y += IROW - 8
        ticks = [(dat(-limit), f"−{limit * 100:.0f} pts"), (dat(0), "0"), (dat(limit), f"+{limit * 100:.0f} pts")]
        out.append(_axis(x0, x1, y, ticks))
    out.append("</svg>")
    return Markup("".join(out))


# ------------------------------------------------------------------------------------------ health bands

# a band's fill and pattern by its rank among the scorecard's bands (the first, worst, crossed; the last plain), so
# the bars differ by more than colour whatever the bands are called; accounts without a score: grey, hatched
BAND_WORST = ("#b42318", "cross")
BAND_MIDDLE = ("#f0b429", "dots")
BAND_BEST = ("#17603a", None)
BAND_NONE = ("#9aa5b5", "hatch")


def band_style(rank: int, count: int) -> tuple[str, str | None]:
    """The fill and pattern of the band at ``rank`` (0: the worst) of ``count`` bands; rank -1: no score."""
    if rank < 0:
        return BAND_NONE
    if rank == 0 and count > 1:
        return BAND_WORST
    if rank == count - 1:
        return BAND_BEST
    return BAND_MIDDLE


@dataclass(frozen=True)
class BandRow:
    """One bar of a scorecard's chart: a band (or "no score"), its accounts, its rank among the bands (-1: none)."""

    label: str
    accounts: int
    rank: int


def band_words(row: BandRow, total: int) -> str:
    share = f" ({pct(row.accounts / total)})" if total else ""
    return f"{row.accounts} account{'' if row.accounts == 1 else 's'}{share}"


def bands_chart(title: str, rows: Sequence[BandRow], bands: int, cid: str) -> Markup:
    """A scorecard's accounts per band as an accessible inline SVG: one horizontal bar per band in the scorecard's
    order, widths proportional to the accounts counted, each bar's number and share as text."""
    total = sum(r.accounts for r in rows)
    scale = max([total, 1])
    height = 8 + ROW * len(rows)
    if total:
        desc = f"{total} accounts: " + "; ".join(f"{r.label}: {band_words(r, total)}" for r in rows) + "."
    else:
        desc = "No account has a score yet: every bar is empty."
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bands-chart" id="{escape(cid)}" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" aria-labelledby="{escape(cid)}-title {escape(cid)}-desc" '
        f'font-family="system-ui, sans-serif">',
        f'<title id="{escape(cid)}-title">{escape(title)}</title>',
        f'<desc id="{escape(cid)}-desc">{escape(desc)}</desc>',
        _defs(str(escape(cid))),
    ]
    y = 4.0
    for row in rows:
        fill, pattern = band_style(row.rank, bands)
        out.append(f'<g class="bar" data-label="{escape(row.label)}">')
        out.append(f'<text x="0" y="{_num(y + 12)}" font-size="12" fill="#1d2430">{escape(_short(row.label))}</text>')
        out.append(f'<text x="{WIDTH}" y="{_num(y + 12)}" font-size="12" text-anchor="end" fill="#1d2430" '
                   f'class="numbers">{escape(band_words(row, total))}</text>')
        top = y + 17
        out.append(f'<rect x="0" y="{_num(top)}" width="{WIDTH}" height="{BAR}" fill="#eef1f5" rx="2"/>')
        if row.accounts > 0:
            width = WIDTH * row.accounts / scale
            out.append(f'<rect class="seg seg-band" data-count="{row.accounts}" x="0" y="{_num(top)}" '
                       f'width="{_num(width)}" height="{BAR}" fill="{fill}"><title>{escape(row.label)}: '
                       f'{escape(band_words(row, total))}</title></rect>')
            if pattern:
                out.append(f'<rect x="0" y="{_num(top)}" width="{_num(width)}" height="{BAR}" '
                           f'fill="url(#{escape(cid)}-{pattern})" aria-hidden="true"/>')
        out.append("</g>")
        y += ROW
    out.append("</svg>")
    return Markup("".join(out))
