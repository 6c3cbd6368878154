"""Validates one playbook: YAML syntax, then schema and meaning together, then builds the model.

Every problem of the file is reported at once, sorted by position. The model is built only when
there is none: a playbook with an error never starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath

from .build import build_playbook
from .meaning import check_meaning
from .model import Playbook
from .problems import Problem
from .schema_check import schema_problems
from .yaml_source import MAX_BYTES, Document, SourceError, load


@dataclass
class Loaded:
    """The outcome of loading one file: its text, its document (if it parsed) and its problems."""

    file: str
    text: str
    doc: Document | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class PlaybookResult(Loaded):
    playbook: Playbook | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.playbook is not None


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


def validate_playbook_text(text: str, file: str = "<playbook>") -> PlaybookResult:
    loaded = load_document(text, file)
    result = PlaybookResult(loaded.file, loaded.text, loaded.doc, loaded.problems)
    if loaded.doc is None:
        return result
    doc = loaded.doc
    if doc.data is None:
        empty = Problem(file, 1, 1, "file is empty; a playbook needs at least 'id' and 'steps'", "schema")
        result.problems.append(empty)
        return result
    meaning, bad_steps = check_meaning(doc, file) if isinstance(doc.data, dict) else ([], set())
    # Where the meaning checks said something precise about a value, the schema's general word on it is noise.
    precise = {(p.line, p.column) for p in meaning}
    schema = schema_problems(doc, file, "playbook", skip=bad_steps)
    result.problems.extend(p for p in schema if (p.line, p.column) not in precise)
    result.problems.extend(meaning)
    result.problems = sorted(set(result.problems), key=lambda p: (p.line, p.column, p.message))
    if not result.problems:
        result.playbook = build_playbook(doc.data, text)
    return result


def validate_playbook_file(path: FsPath | str) -> PlaybookResult:
    path = FsPath(path)
    text, problem = read_text(path)
    if problem:
        return PlaybookResult(str(path), text, problems=[problem])
    return validate_playbook_text(text, str(path))


def load_playbook(path: FsPath | str) -> Playbook:
    """Loads a playbook that must be valid; raises InvalidPlaybook listing the problems otherwise."""
    result = validate_playbook_file(path)
    if not result.ok:
        raise InvalidPlaybook(result.problems)
    assert result.playbook is not None
    return result.playbook


class InvalidPlaybook(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.header() for p in problems))

