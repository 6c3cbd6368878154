"""Where steps live in the raw (not yet validated) playbook data, and what kind each one is.

Shared by the schema translator, the meaning checks and the model builder, so the three agree on
the shape: steps under ``steps``, ``switch[i].steps``, ``switch[i].else``, ``parallel[i].steps`` and
``for_each.steps`` and ``split.paths[i].steps``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .schema_source import STEP_KINDS

Path = tuple[str | int, ...]


def kinds_of(step: Any) -> list[str]:
    if not isinstance(step, dict):
        return []
    return [k for k in STEP_KINDS if k in step]


def kind_of(step: Any) -> str | None:
    kinds = kinds_of(step)
    return kinds[0] if len(kinds) == 1 else None


@dataclass(frozen=True, slots=True)
class ChildList:
    """A list of steps nested in a container step."""

    path: Path
    steps: list[Any]
    role: str  # "case", "else", "branch", "for_each", "split"
    index: int = 0  # case, branch or split path index


def child_lists(step: dict[str, Any], path: Path) -> Iterator[ChildList]:
    kind = kind_of(step)
    spec = step.get(kind) if kind else None
    if kind == "switch" and isinstance(spec, list):
        for i, case in enumerate(spec):
            if not isinstance(case, dict):
                continue
            if isinstance(case.get("steps"), list):
                yield ChildList(path + (kind, i, "steps"), case["steps"], "case", i)
            if isinstance(case.get("else"), list):
                yield ChildList(path + (kind, i, "else"), case["else"], "else", i)
    elif kind == "parallel" and isinstance(spec, list):
        for i, branch in enumerate(spec):
            if isinstance(branch, dict) and isinstance(branch.get("steps"), list):
                yield ChildList(path + (kind, i, "steps"), branch["steps"], "branch", i)
    elif kind == "split" and isinstance(spec, dict) and isinstance(spec.get("paths"), list):
        for i, split_path in enumerate(spec["paths"]):
            if isinstance(split_path, dict) and isinstance(split_path.get("steps"), list):
                yield ChildList(path + (kind, "paths", i, "steps"), split_path["steps"], "split", i)
    elif kind == "for_each" and isinstance(spec, dict) and isinstance(spec.get("steps"), list):
        yield ChildList(path + (kind, "steps"), spec["steps"], "for_each")


def iter_step_paths(steps: Any, path: Path = ("steps",)) -> Iterator[tuple[Path, Any]]:
    """Every step (nested included) in document order, with its path."""
    if not isinstance(steps, list):
        return
    for i, step in enumerate(steps):
        step_path = path + (i,)
        yield step_path, step
        if isinstance(step, dict):
            for child in child_lists(step, step_path):
                yield from iter_step_paths(child.steps, child.path)


def path_text(path: Path) -> str:
    return ".".join(str(p) for p in path)
