"""What a group of steps refers to: the context names (and the ``vars`` / ``steps`` entries) its templates and
expressions use.

A large ``for_each`` runs its items in child workflows; each gets only what its steps refer to, not every
contact of the account and every result of the run (engine/interpreter/flow.py). Conservative by design: a
string that parses as an expression counts even when it is plain text, and a name used other than as
``name.attr`` (``steps | length``, ``vars[key]``) means all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from . import expressions as ex
from .model import Step


@dataclass
class Uses:
    names: set[str] = field(default_factory=set)  # context names used at all
    # for `vars` and `steps`: the entries used; a name missing here (but in names) is used whole
    entries: dict[str, set[str]] = field(default_factory=dict)

    def entries_of(self, name: str) -> set[str] | None:
        """The entries of ``name`` used (``vars`` or ``steps``); None when it is used whole."""
        return self.entries.get(name) if name in self.names else set()


PARTIAL = ("vars", "steps")
# Fields of a step that are its shape, never rendered (``path`` reads as the expression ``steps.0...``).
STRUCTURE = frozenset({"path", "kind", "id", "name", "on_error", "action"})


def uses_of(steps: tuple[Step, ...]) -> Uses:
    found = Uses()
    whole: set[str] = set()
    partial: dict[str, set[str]] = {name: set() for name in PARTIAL}
    for text in _strings(steps):
        for analysis in _analyses(text):
            found.names |= analysis.names
            whole |= analysis.whole
            for ref in analysis.references:
                if ref.root in partial:
                    if ref.attrs:
                        partial[ref.root].add(ref.attrs[0])
                    else:
                        whole.add(ref.root)
    found.entries = {name: used for name, used in partial.items() if name not in whole}
    return found


def _analyses(text: str) -> list[ex.Analysis]:
    parsers = (ex.analyse_template, ex.analyse_expression) if ex.is_template(text) else (ex.analyse_expression,)
    found = []
    for parse in parsers:
        try:
            found.append(parse(text))
        except ex.AnalysisError:
            continue
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if f.name not in STRUCTURE:
                yield from _strings(getattr(value, f.name))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _strings(getattr(value, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
