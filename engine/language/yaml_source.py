"""Safe YAML loading that remembers where every key and value stands.

PyYAML's safe constructor forgets positions, silently keeps the last of two duplicate keys and
expands aliases without limit; this walks the composed node graph itself to do better on all three.
The result is plain JSON-like data (dict, list, str, int, float, bool, None) and a table from each
path (a tuple of keys and indexes) to its position. Timestamps stay strings: a playbook is data for
a workflow, and datetimes are not JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

try:  # libyaml is ~10x faster; PyYAML's wheels ship it, but a source build may not.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_BYTES = 1_000_000
MAX_NODES = 100_000

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Pos:
    """1-based line and column of a key and of its value (the same for list items and the root)."""

    key_line: int
    key_col: int
    value_line: int
    value_col: int
    block: bool = False  # the value is a block scalar (| or >): its text starts on the next line
    key_len: int = 1
    value_len: int = 1


class SourceError(Exception):
    """The text is not a loadable YAML document. Carries a 1-based position."""

    def __init__(self, message: str, line: int = 1, column: int = 1, rule: str = "syntax") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Document:
    data: Any
    positions: dict[Path, Pos]
    text: str
    problems: tuple[SourceError, ...] = ()  # non-fatal: duplicate keys (the first one is kept)

    def pos(self, path: Path) -> Pos:
        """The position of path, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, Pos(1, 1, 1, 1))


_SCALAR_CONSTRUCTOR = yaml.SafeLoader("")  # only its construct_* methods are used
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_KNOWN_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    _TIMESTAMP_TAG,
}


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _syntax_error(err: yaml.MarkedYAMLError, text: str) -> SourceError:
    """libyaml's wording, turned into what an author needs, at the spot that needs fixing."""
    problem = err.problem or ""
    context = err.context or ""
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source_line[: max(col, 1)] or (problem.startswith("found character") and "\t" in source_line):
        return SourceError(
            "YAML syntax error: tab character; YAML does not allow tabs for indentation: use spaces",
            line,
            source_line.index("\t") + 1,
        )
    ctx_line, ctx_col = (err.context_mark.line + 1, err.context_mark.column + 1) if err.context_mark else (line, col)
    if "quoted scalar" in context:
        quote = text.splitlines()[ctx_line - 1][ctx_col - 1 : ctx_col] if ctx_line <= len(lines) else '"'
        return SourceError(
            f"YAML syntax error: the quoted text starting here is not closed; add the closing '{quote}'",
            ctx_line,
            ctx_col,
        )
    if "flow sequence" in context:
        return SourceError(
            "YAML syntax error: the list opened with '[' here is not closed; add ']' after its last item",
            ctx_line,
            ctx_col,
        )
    if "flow mapping" in context:
        return SourceError(
            "YAML syntax error: the mapping opened with '{' here is not closed; add '}' after its last entry",
            ctx_line,
            ctx_col,
        )
    if "single document" in context:
        return SourceError(
            "a playbook file holds one YAML document; put the playbook after this '---' in its own file", line, col
        )
    if problem == "did not find expected key" or problem.startswith("did not find expected '-'"):
        return SourceError(
            "YAML syntax error: this line is not lined up with the keys above it; "
            "indent it by the same number of spaces as its sibling keys",
            line,
            col,
        )
    if problem == "mapping values are not allowed here" or problem.startswith("mapping values are not allowed"):
        return SourceError(
            "YAML syntax error: unexpected ':' here; quote the value if it contains ': ', or fix the indentation",
            line,
            col,
        )
    if "undefined alias" in problem:
        return SourceError(f"YAML syntax error: {problem}; define the anchor (&name) before using *name", line, col)
    message = f"{problem} ({context})" if problem and context else (problem or context or "invalid YAML")
    return SourceError(f"YAML syntax error: {' '.join(message.split())}", line, col)


def load(text: str) -> Document:
    """Parses one YAML document. Raises SourceError with a position on any problem; an empty text gives data None."""
    if len(text) > MAX_BYTES:
        raise SourceError(
            f"file is {len(text) / 1_000_000:.1f} MB; "
            f"a playbook or scenario may be at most {MAX_BYTES // 1_000_000} MB",
            rule="syntax",
        )
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(err, text) from None
    except yaml.reader.ReaderError as err:
        line, col = _line_col(text, err.position)
        char = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        message = f"YAML syntax error: control character {char} is not allowed in YAML; remove it"
        raise SourceError(message, line, col) from None
    except yaml.YAMLError as err:
        raise SourceError(f"YAML error: {' '.join(str(err).split())}") from None
    except UnicodeEncodeError as err:  # a lone surrogate: no UTF-8 file holds one, but a Python str can
        line, col = _line_col(text, err.start)
        raise SourceError(
            f"the text is not valid Unicode: lone surrogate U+{ord(text[err.start]):04X}; remove it", line, col
        ) from None
    if node is None:
        return Document(None, {(): Pos(1, 1, 1, 1)}, text)
    positions: dict[Path, Pos] = {}
    counter = [0]
    duplicates: list[SourceError] = []
    root_mark = node.start_mark
    positions[()] = Pos(root_mark.line + 1, root_mark.column + 1, root_mark.line + 1, root_mark.column + 1)
    data = _convert(node, (), positions, counter, frozenset(), duplicates)
    return Document(data, positions, text, tuple(duplicates))


def _scalar_len(node: yaml.Node) -> int:
    if node.start_mark.line == node.end_mark.line:
        return max(1, node.end_mark.column - node.start_mark.column)
    return max(1, len(str(getattr(node, "value", ""))) if "\n" not in str(node.value) else 1)


def _convert(
    node: yaml.Node,
    path: Path,
    positions: dict[Path, Pos],
    counter: list[int],
    active: frozenset[int],
    duplicates: list[SourceError],
) -> Any:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise SourceError(
            f"document has more than {MAX_NODES:,} values (YAML aliases expanding?)",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
        )
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in _KNOWN_SCALAR_TAGS:
            raise SourceError(
                f"unsupported YAML tag {node.tag!r}", node.start_mark.line + 1, node.start_mark.column + 1
            )
        if node.tag == _TIMESTAMP_TAG or node.tag == _STR_TAG:
            return node.value  # most scalars are text: skip the constructor's dispatch
        if node.tag == _BOOL_TAG and not node.style and node.value.lower() not in ("true", "false"):
            # YAML 1.1 reads yes/no/on/off as booleans (`language: no` becomes false); editors read YAML 1.2,
            # where they are text. Refuse the ambiguity instead of guessing.
            duplicates.append(
                SourceError(
                    f"'{node.value}' is read as a boolean: write true or false, or quote it ('{node.value}') for text",
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                )
            )
        try:
            return _SCALAR_CONSTRUCTOR.construct_object(node, deep=True)
        except yaml.YAMLError as err:  # e.g. an int too large for a float
            raise SourceError(f"invalid value: {err}", node.start_mark.line + 1, node.start_mark.column + 1) from None
    if id(node) in active:
        raise SourceError("recursive YAML alias", node.start_mark.line + 1, node.start_mark.column + 1)
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            raise SourceError(
                f"unsupported YAML tag {node.tag!r}", node.start_mark.line + 1, node.start_mark.column + 1
            )
        items = []
        for index, child in enumerate(node.value):
            child_path = path + (index,)
            m = child.start_mark
            positions[child_path] = Pos(
                m.line + 1, m.column + 1, m.line + 1, m.column + 1, key_len=1, value_len=_len_of(child)
            )
            items.append(_convert(child, child_path, positions, counter, active, duplicates))
        return items
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise SourceError(
                f"unsupported YAML tag {node.tag!r}", node.start_mark.line + 1, node.start_mark.column + 1
            )
        try:
            _SCALAR_CONSTRUCTOR.flatten_mapping(node)  # resolves `<<` merge keys
        except yaml.YAMLError as err:
            raise SourceError(
                f"invalid merge key: {err}", node.start_mark.line + 1, node.start_mark.column + 1
            ) from None
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            km = key_node.start_mark
            if not isinstance(key_node, yaml.ScalarNode):
                raise SourceError("a key must be a plain value, not a list or mapping", km.line + 1, km.column + 1)
            key = _convert(key_node, path, {}, counter, active, duplicates)
            if not isinstance(key, str):
                # `yes:`, `1:` or `null:` as keys: keep the text the author wrote.
                key = key_node.value
            if key in result:
                first = positions[path + (key,)]
                message = f"duplicate key '{key}' (first defined at line {first.key_line})"
                duplicates.append(SourceError(message, km.line + 1, km.column + 1))
                continue
            vm = value_node.start_mark
            child_path = path + (key,)
            positions[child_path] = Pos(
                km.line + 1,
                km.column + 1,
                vm.line + 1,
                vm.column + 1,
                block=isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"),
                key_len=max(1, len(key)),
                value_len=_len_of(value_node),
            )
            result[key] = _convert(value_node, child_path, positions, counter, active, duplicates)
        return result
    raise SourceError("unsupported YAML node", node.start_mark.line + 1, node.start_mark.column + 1)  # pragma: no cover


def _len_of(node: yaml.Node) -> int:
    if isinstance(node, yaml.ScalarNode):
        return _scalar_len(node)
    return 1
