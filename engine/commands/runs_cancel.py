"""`playbook runs cancel --playbook ID --version V [--reenroll]`: a version's live runs, cancelled."""

from __future__ import annotations

from typing import Annotated

import typer


def runs_cancel(
    playbook: Annotated[str, typer.Option(help="The playbook's id.")],
    version: Annotated[str, typer.Option(help="The version whose live runs are cancelled.")],
) -> None:
    """Cancel every live run of a playbook's version."""
    raise typer.Exit(2)  # being written (issue 13)
