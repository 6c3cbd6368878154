"""The playbook library as seen by running workflows (run_playbook starts another playbook by id)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.language.library import Library
from engine.language.model import Playbook

from .types import PlaybookRequest


class LibraryActivities:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @activity.defn(name="load_playbook")
    def load_playbook(self, req: PlaybookRequest) -> Playbook:
        # Read at the moment of the call: a child run starts the library's current version.
        library = Library.load(self.root)
        playbook = library.playbooks.get(req.playbook_id)
        if playbook is None:
            raise ApplicationError(
                f"no valid playbook '{req.playbook_id}' in {self.root}", type="NotFound", non_retryable=True
            )
        return playbook
