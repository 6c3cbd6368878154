"""`playbook health ACCOUNT` and `playbook health explain ACCOUNT` (docs/health.md)."""

from __future__ import annotations

import typer

health_app = typer.Typer(help="Health scores: an account's score, band, trend and measures.", no_args_is_help=True)
