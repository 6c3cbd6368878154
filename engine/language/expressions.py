"""Templates (``"Hi {{ contact.first_name }}"``) and bare expressions (``account.plan == "pro"``).

Both run in Jinja's ImmutableSandboxedEnvironment with StrictUndefined: no internals, no mutation
of data, and an undefined name is an error, never an empty string. On top of Jinja's sandbox:
string/list repetition and powers are capped, rendered output is capped, and the filters the
language adds (days_until, days_since, format_date) are pure functions of their arguments and of
``today`` from the render context (the workflow passes its deterministic clock).

Static analysis for the validator works on the parsed AST only (parsing is ~20x cheaper than
compiling), and reports names out of scope, unknown filters and any underscore attribute.
"""

from __future__ import annotations

import functools
import operator
import re
import string
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.lexer import TOKEN_EOF
from jinja2.parser import Parser
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)

MAX_OUTPUT = 100_000  # characters a template may render
MAX_REPEAT = 100_000  # length a `*` may build
MAX_EXPONENT = 100

_UNSAFE_NAMES = (
    UNSAFE_FUNCTION_ATTRIBUTES
    | UNSAFE_METHOD_ATTRIBUTES
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
    | {"mro"}
)


class ExpressionError(Exception):
    """A template or expression that cannot be compiled or evaluated."""


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            return datetime.fromisoformat(text).date()
        except ValueError:
            pass
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            raise ExpressionError(f"'{value}' is not a date (expected ISO 8601, e.g. 2026-03-31)") from None
    raise ExpressionError(f"expected a date, got {type(value).__name__}")


def _today(ctx: Any) -> date:
    today = ctx.get("today") if hasattr(ctx, "get") else None
    if today is None:
        raise ExpressionError("days_until/days_since need the run's clock")
    return _to_date(today)


def _with_context(fn: Any) -> Any:
    from jinja2 import pass_context

    return pass_context(fn)


@_with_context
def days_until(ctx: Any, value: Any) -> int:
    return (_to_date(value) - _today(ctx)).days


@_with_context
def days_since(ctx: Any, value: Any) -> int:
    return (_today(ctx) - _to_date(value)).days


def format_date(value: Any, fmt: str = "%Y-%m-%d") -> str:
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            value = _to_date(text)
    if not isinstance(value, (date, datetime)):
        raise ExpressionError(f"format_date expects a date, got {type(value).__name__}")
    if len(fmt) > 100:
        raise ExpressionError("format_date: format too long")
    return value.strftime(fmt)


EXTRA_FILTERS = {"days_until": days_until, "days_since": days_since, "format_date": format_date}


class _PlaybookSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"result of '*' would exceed {MAX_REPEAT:,} items")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent larger than {MAX_EXPONENT}")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)  # pragma: no cover - only * and ** are intercepted

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_") or attr in _UNSAFE_NAMES:
            return False
        return super().is_safe_attribute(obj, attr, value)


@functools.cache
def environment() -> _PlaybookSandbox:
    env = _PlaybookSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    # Only pure helpers: no cycler/joiner/lipsum/namespace (stateful or pointless here).
    env.globals = {"range": env.globals["range"], "dict": dict}
    env.filters.update(EXTRA_FILTERS)
    return env


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


# ---------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    return environment().from_string(source)


@functools.lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    return environment().compile_expression(source, undefined_to_none=False)


def render(source: str, context: dict[str, Any]) -> str:
    """Renders a template. Values in the context are data: their text is never rendered again."""
    if not is_template(source):
        return source
    try:
        template = _compiled_template(source)
        out: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise ExpressionError(f"template output exceeds {MAX_OUTPUT:,} characters")
            out.append(chunk)
        return "".join(out)
    except ExpressionError:
        raise
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None


def _describe(err: Exception) -> str:
    if isinstance(err, UndefinedError):
        return f"undefined value: {err}"
    if isinstance(err, SecurityError):
        return f"refused by the sandbox: {err}"
    return f"{type(err).__name__}: {err}"


def evaluate(source: str | bool, context: dict[str, Any]) -> Any:
    """Evaluates a bare expression (when, match, items)."""
    if isinstance(source, bool):
        return source
    try:
        return _compiled_expression(source)(**context)
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None


# ---------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Reference:
    """A use of ``root.attr`` (e.g. steps.welcome.status: root steps, attrs ('welcome', 'status'))."""

    root: str
    attrs: tuple[str, ...]


@dataclass(slots=True)
class Analysis:
    names: set[str] = field(default_factory=set)  # free names used
    references: list[Reference] = field(default_factory=list)
    unknown_filters: set[str] = field(default_factory=set)
    unknown_tests: set[str] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)  # tags that would load other templates


class AnalysisError(Exception):
    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line  # 1-based line inside the template


def _parse_template(source: str) -> nodes.Template:
    try:
        # The parser alone: Environment.parse also walks the tree to attach the environment, which
        # analysis does not need (it is ~15% of validating a playbook).
        return Parser(environment(), source).parse()
    except TemplateSyntaxError as err:
        raise AnalysisError(f"template syntax error: {err.message}", err.lineno or 1) from None


def _parse_expression(source: str) -> nodes.Template:
    env = environment()
    try:
        parser = Parser(env, source, state="variable")
        expr = parser.parse_expression()
        if parser.stream.current.type != TOKEN_EOF:
            token = parser.stream.current
            raise AnalysisError(f"expression syntax error: unexpected '{token.value}'", token.lineno)
    except TemplateSyntaxError as err:
        raise AnalysisError(f"expression syntax error: {err.message}", err.lineno or 1) from None
    return nodes.Template([nodes.Output([expr])], lineno=1)


def _chain(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    """For Getattr/Getitem chains rooted at a Name: (name, attrs); None otherwise."""
    attrs: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            attrs.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attrs.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            return node.name, tuple(reversed(attrs))
        else:
            return None


def _format_string_attributes(fmt: str) -> list[str]:
    """Unsafe attribute names reached by a format string's fields, e.g. '{0.__class__}' -> ['__class__']."""
    found: list[str] = []
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f]
    except ValueError:
        return found
    for field_name in fields:
        for part in re.split(r"[.\[\]]", field_name)[1:]:
            if part and (part.startswith("_") or part in _UNSAFE_NAMES):
                found.append(part)
    return found


def _analyse(tree: nodes.Template) -> Analysis:
    """One pass over the AST (parents before children, so the longest attribute chain is seen first)."""
    env = environment()
    result = Analysis()
    loads: set[str] = set()
    stores: set[str] = set()
    inner_chain_nodes: set[int] = set()
    stack: list[nodes.Node] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Name):
            (loads if node.ctx == "load" else stores).add(node.name)
            if node.name.startswith("_"):
                result.unsafe.append(node.name)
        elif isinstance(node, (nodes.Getattr, nodes.Getitem)):
            attr: Any = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(attr, str) and (attr.startswith("_") or attr in _UNSAFE_NAMES):
                result.unsafe.append(attr)
            if id(node) not in inner_chain_nodes:
                chain = _chain(node)
                if chain:
                    inner = node.node
                    while isinstance(inner, (nodes.Getattr, nodes.Getitem)):
                        inner_chain_nodes.add(id(inner))
                        inner = inner.node
                    result.references.append(Reference(*chain))
        elif isinstance(node, nodes.Filter):
            if node.name not in env.filters:
                result.unknown_filters.add(node.name)
            if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
                name = node.args[0].value
                if isinstance(name, str) and (name.startswith("_") or name in _UNSAFE_NAMES):
                    result.unsafe.append(name)
        elif isinstance(node, nodes.Call):
            target = node.node
            if (
                isinstance(target, nodes.Getattr)
                and target.attr in ("format", "format_map")
                and isinstance(target.node, nodes.Const)
                and isinstance(target.node.value, str)
            ):
                result.unsafe.extend(_format_string_attributes(target.node.value))
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            tag = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from", nodes.Extends: "extends"}[type(node)]
            result.forbidden.append(tag)
        elif isinstance(node, nodes.Test):
            if node.name not in env.tests:
                result.unknown_tests.add(node.name)
        stack.extend(node.iter_child_nodes())
    # Names bound by {% for %}/{% set %}/macros are not free. (Jinja's own meta module gets scoping exactly
    # right but runs its code generator, which costs as much as compiling.)
    result.names = loads - stores
    return result


_PRINT = re.compile(r"\{\{(.*?)\}\}", re.S)


@functools.lru_cache(maxsize=8192)
def analyse_template(source: str) -> Analysis:
    """Parses a template and reports what it uses. Raises AnalysisError on a syntax error.

    Most templates are text with `{{ expression }}`s only: those expressions are parsed on their own,
    which skips lexing the text around them (about twice as fast). Anything else, and any error (for
    its exact line), goes through the full template parser.
    """
    if "{%" not in source and "{#" not in source:
        parts = _PRINT.findall(source)
        if parts and source.count("{{") == len(parts) == source.count("}}"):
            try:
                return _merge([analyse_expression(p.strip("-").strip() or "''") for p in parts])
            except AnalysisError:
                pass
    return _analyse(_parse_template(source))


def _merge(analyses: list[Analysis]) -> Analysis:
    merged = Analysis()
    for a in analyses:
        merged.names |= a.names
        merged.references.extend(a.references)
        merged.unknown_filters |= a.unknown_filters
        merged.unknown_tests |= a.unknown_tests
        merged.unsafe.extend(a.unsafe)
        merged.forbidden.extend(a.forbidden)
    return merged


@functools.lru_cache(maxsize=8192)
def analyse_expression(source: str) -> Analysis:
    """Parses a bare expression and reports what it uses. Raises AnalysisError on a syntax error."""
    return _analyse(_parse_expression(source))

