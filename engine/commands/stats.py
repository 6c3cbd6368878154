"""`playbook stats ID`: a playbook's funnel (docs/funnel.md)."""

from __future__ import annotations

from typing import Annotated

import typer


def stats(playbook_id: Annotated[str, typer.Argument(help="The playbook's id.")]) -> None:
    """A playbook's funnel: runs entered, each step, exits, goals, control versus treated."""
    raise typer.Exit(2)  # being written (issue 13)
