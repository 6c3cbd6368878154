"""Reading a YAML file of the language (playbook, scenario, policy) into a positioned Document, or problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath

from .problems import Problem
from .yaml_source import MAX_BYTES, Document, SourceError, load


@dataclass
class Loaded:
    """The outcome of loading one file: its text, its document (if it parsed) and its problems."""

    file: str
    text: str
    doc: Document | None = None
    problems: list[Problem] = field(default_factory=list)


def read_text(path: FsPath) -> tuple[str, Problem | None]:
    """Reads a file as UTF-8; a problem instead of an exception for anything unreadable."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return "", Problem(
                name, 1, 1, f"file is {size / 1_000_000:.1f} MB; a playbook or scenario may be at most 1 MB", "syntax"
            )
        raw = path.read_bytes()
    except OSError as err:
        return "", Problem(name, 1, 1, f"cannot read file: {err.strerror or err}", "syntax")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        return "", Problem(name, line, col, "file is not UTF-8 text", "syntax")
    return text, None


def load_document(text: str, file: str) -> Loaded:
    loaded = Loaded(file, text)
    try:
        loaded.doc = load(text)
    except SourceError as err:
        loaded.problems.append(Problem(file, err.line, err.column, err.message, err.rule))
        return loaded
    for dup in loaded.doc.problems:
        loaded.problems.append(Problem(file, dup.line, dup.column, dup.message, dup.rule))
    return loaded
