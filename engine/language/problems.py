"""A problem found in a playbook or scenario, and the three ways of printing it.

text:   ``FILE:LINE:COL: message [rule]`` then the source line with a caret under the spot (as actionlint does)
json:   a list of objects, for tools
github: ``::error file=...,line=...,col=...`` workflow commands, so CI marks the line in a pull request
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    rule: str = "schema"  # syntax | schema | meaning | expression | reference | library
    length: int = 1  # how many characters the caret underlines

    def __post_init__(self) -> None:
        # One problem, one line: values quoted in a message may carry line breaks (a `>` block, a fuzzer).
        if "\n" in self.message or "\r" in self.message:
            object.__setattr__(self, "message", self.message.replace("\r", "\\r").replace("\n", "\\n"))

    def header(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message} [{self.rule}]"


def format_text(problems: Sequence[Problem], sources: dict[str, str] | None = None) -> str:
    """Each problem's header, followed by its source line and a caret when the source is known."""
    sources = sources or {}
    lines: list[str] = []
    split_cache: dict[str, list[str]] = {}
    for p in problems:
        lines.append(p.header())
        text = sources.get(p.file)
        if text is None:
            continue
        src_lines = split_cache.setdefault(p.file, text.splitlines())
        if not 1 <= p.line <= len(src_lines):
            continue
        src = src_lines[p.line - 1].replace("\t", " ")
        if len(src) > 200:
            src = src[:200] + "…"
        gutter = str(p.line)
        pad = " " * len(gutter)
        col = max(1, min(p.column, len(src) + 1))
        width = max(1, min(p.length, max(1, len(src) - col + 1)))
        lines.append(f"{pad} |")
        lines.append(f"{gutter} | {src}")
        lines.append(f"{pad} | {' ' * (col - 1)}^{'~' * (width - 1)}")
    return "\n".join(lines)


def format_json(results: Iterable[tuple[str, Sequence[Problem]]]) -> str:
    files = []
    for file, problems in results:
        files.append(
            {
                "file": file,
                "valid": not problems,
                "problems": [{k: v for k, v in asdict(p).items() if k != "length"} for p in problems],
            }
        )
    return json.dumps({"files": files, "valid": all(f["valid"] for f in files)}, indent=2)


def _escape_property(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(":", "%3A").replace(",", "%2C")


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def format_github(problems: Sequence[Problem]) -> str:
    return "\n".join(
        f"::error file={_escape_property(p.file)},line={p.line},col={p.column},"
        f"title={_escape_property('playbook ' + p.rule)}::{_escape_data(p.message)}"
        for p in problems
    )
