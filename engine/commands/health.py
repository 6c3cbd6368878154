"""`playbook health ACCOUNT` and `playbook health explain ACCOUNT` (docs/health.md).

Both read the engine's database named by the settings (the health_scores and health_history tables, through
engine.runtime.health.health_of), never the CRM: an account the database has no score for is said so.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from engine.language import health as hl
from engine.storage.db import utc

if TYPE_CHECKING:
    from engine.runtime.health import AccountHealth

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$")


class _AccountFirst(TyperGroup):
    """`playbook health ACCOUNT` is `playbook health show ACCOUNT`: a first word that is no subcommand is an account."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "--install-completion",
                                                                     "--show-completion"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


health_app = typer.Typer(
    cls=_AccountFirst,
    help="Health scores: an account's score, band, trend and measures (`playbook health ACCOUNT`), or the arithmetic "
    "(`playbook health explain ACCOUNT`).",
    no_args_is_help=True,
)


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"playbook health: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _number(value: float | None, empty: str = "-") -> str:
    return hl.shown_number(value, empty)


def _signed(value: float | None) -> str:
    return hl.shown_change(value, "-", minus="-")


def _read(account_id: str) -> list[AccountHealth]:
    """The account's scores, first scorecard first; exit 2 for an id that cannot be one, or bad settings."""
    from engine.runtime.health import health_of
    from engine.runtime.settings import SettingsError, load_settings
    from engine.storage.db import migrate, session

    if not ACCOUNT_ID.match(account_id):
        raise _fail(f"{account_id!r} is not an account id (letters, digits and _ . : @ / -, at most 200)")
    try:
        settings = load_settings()
    except SettingsError as err:
        raise _fail(str(err)) from None
    migrate(settings.db_url)  # as `playbook stats`: the tables exist from here on
    with session(settings.db_url) as s:
        return sorted(health_of(s, account_id), key=lambda h: h.scorecard_id)


def reasons(h: AccountHealth) -> list[dict[str, Any]]:
    """What holds the score down: its measures by the points they cost against a perfect 100 (negative), at most 3
    (engine.language.health.reasons of the score alone; the API, the inbox and templates give the same)."""
    from engine.language import health as hl

    return hl.holding_down(h.scorecard_id, h.components)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def as_json(h: AccountHealth) -> dict[str, Any]:
    """One scorecard's score in the shape GET /accounts/{id}/health answers (docs/api.md)."""
    return {
        "scorecard": h.scorecard_id,
        "scorecard_version": h.scorecard_version,
        "score": h.score,
        "band": h.band,
        "computed_at": utc(h.computed_at).isoformat(),
        "trend": {
            "previous": h.previous, "previous_band": h.previous_band, "change": _minus(h.score, h.previous),
            "thirty_days": h.thirty_days, "thirty_days_band": h.thirty_days_band,
            "change_thirty_days": _minus(h.score, h.thirty_days),
        },
        "reasons": reasons(h),
        "last_change": h.reasons,
        "measures": [
            {"measure": c["measure_id"], "title": c.get("title") or c["measure_id"], "value": c.get("value"),
             "score": c.get("score"), "weight": c["weight"], "effective_weight": c["effective_weight"],
             "contribution": c["contribution"], "skipped": bool(c.get("skipped")), "missing": bool(c.get("missing"))}
            for c in h.components
        ],
        "history": h.history,
    }


def show(
    account_id: Annotated[str, typer.Argument(help="The account's id.", show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print the scores as JSON (as the API answers).")] = False,
) -> None:
    """An account's scores: each scorecard's score, band, trend and measures."""
    found = _read(account_id)
    if json_output:
        print(json.dumps([as_json(h) for h in found], indent=2))
        return
    console = Console()
    if not found:
        console.print(f"{account_id}: no health score (no scorecard applies to it, or the engine has not seen it)",
                      markup=False, highlight=False)
        return
    for h in found:
        body = as_json(h)
        t = body["trend"]
        console.print(
            f"[bold]{h.scorecard_id}[/bold] {account_id}: score {_number(h.score, 'none')}"
            f"{f', band {h.band}' if h.band else ''} (computed {body['computed_at'][:16].replace('T', ' ')} UTC)",
            highlight=False,
        )
        console.print(
            f"trend: previous {_number(t['previous'])} ({_signed(t['change'])}), "
            f"30 days ago {_number(t['thirty_days'])} ({_signed(t['change_thirty_days'])})",
            markup=False, highlight=False,
        )
        table = Table(title_justify="left", show_header=True)
        for column, justify in (("measure", "left"), ("value", "right"), ("score", "right"), ("weight", "right"),
                                ("effective weight", "right"), ("contribution", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for m in body["measures"]:
            table.add_row(
                m["title"], _number(m["value"], "missing"), "skipped" if m["skipped"] else _number(m["score"]),
                str(m["weight"]), f"{m['effective_weight']:.1f}", f"{m['contribution']:.1f}",
            )
        console.print(table)
        if body["reasons"]:
            reasons = "; ".join(f"{r['title']} ({_signed(r['points'])} points)" for r in body["reasons"])
            console.print(
                "holding it down: " + reasons,
                markup=False, highlight=False,
            )


def explain(
    account_id: Annotated[str, typer.Argument(help="The account's id.", show_default=False)],
    scorecard: Annotated[str | None, typer.Option("--scorecard", help="Only this scorecard (its id).")] = None,
) -> None:
    """The arithmetic of an account's score, one line per measure and the total."""
    from engine.language import health as arithmetic

    found = _read(account_id)
    if scorecard is not None:
        found = [h for h in found if h.scorecard_id == scorecard]
        if not found:
            raise _fail(f"{account_id} has no score on a scorecard {scorecard!r}")
    if not found:
        raise _fail(f"{account_id} has no health score to explain (no scorecard applies, or the engine has not "
                    "seen it)")
    console = Console()
    for n, h in enumerate(found):
        if n:
            console.print()
        console.print(f"{h.scorecard_id} {account_id}:", markup=False, highlight=False)
        result = arithmetic.HealthResult(
            scorecard_id=h.scorecard_id, score=h.score, band=h.band,
            components=tuple(arithmetic.Component.from_dict(c) for c in h.components),
        )
        for line in arithmetic.explain(result):
            console.print(line, markup=False, highlight=False, soft_wrap=True)


health_app.command("show")(show)
health_app.command("explain")(explain)
