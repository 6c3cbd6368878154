"""The playbook library as seen by running workflows (run_playbook starts another playbook by id)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.language.library import Library
from engine.language.model import Playbook

from .types import PlaybookRequest


class LibraryActivities:
    def __init__(self, root: Path | str, *more_roots: Path | str) -> None:
        self.roots = [Path(root), *(Path(r) for r in more_roots)]

    @activity.defn(name="load_playbook")
    def load_playbook(self, req: PlaybookRequest) -> Playbook:
        # Read at the moment of the call: a child run starts the library's current version.
        for root in self.roots:
            playbook = Library.load(root).playbooks.get(req.playbook_id)
            if playbook is not None:
                return playbook
        where = ", ".join(str(r) for r in self.roots)
        raise ApplicationError(f"no valid playbook '{req.playbook_id}' in {where}", type="NotFound", non_retryable=True)
