"""Templates (``"Hi {{ contact.first_name }}"``) and bare expressions (``account.plan == "pro"``).

Both run in Jinja's ImmutableSandboxedEnvironment with StrictUndefined: no internals, no mutation
of data, and an undefined name is an error, never an empty string. They run inside a Temporal
workflow, so on top of Jinja's sandbox they are deterministic and bounded:

- deterministic: only allow-listed filters, tests and globals (nothing random, nothing that reads
  the clock or the machine); the filters the language adds (days_until, days_since, format_date) are
  pure functions of their arguments and of ``today`` from the render context (the workflow passes
  its deterministic clock); a value whose text would hold a memory address (a function, a
  generator) cannot be turned into text.
- bounded, by counting, never by the clock (a replay must hit a limit at the same place): loop
  iterations per render, evaluation steps per render (see _Budget), output characters (counted as
  the output streams), and the size of any value a template builds (`*`, `+`, `~`, join, replace…).

Static analysis for the validator works on the parsed AST only (parsing is ~20x cheaper than
compiling), and reports names out of scope, unknown or refused filters, any underscore attribute,
and the limits it can decide from literals (range(100000), nested literal loops, fixed output).
"""

from __future__ import annotations

import functools
import operator
import re
import string
import types
from collections.abc import Callable, ItemsView, KeysView, ValuesView
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.filters import make_attrgetter
from jinja2.lexer import TOKEN_EOF
from jinja2.parser import Parser
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)
from jinja2.tests import TESTS as JINJA_TESTS
from jinja2.utils import _PassArg

MAX_OUTPUT = 100_000  # characters a template may render
MAX_VALUE = 100_000  # characters or items of a value a template builds (`*`, `+`, `~`, join, replace, format…)
MAX_EXPONENT = 100
MAX_NUMBER_BITS = 10_000  # about 3,000 digits: a number a template computes with `*` or `**`
MAX_LOOP_ITERATIONS = 10_000  # loop iterations in all, per render; also the most numbers a range() gives
MAX_STEPS = 250_000  # evaluation steps per render (see _Budget): the stand-in for a time limit
CALL_STEPS = 10  # a call, filter or test costs as much as about ten nodes of the template

REPLAYED = "templates must give the same result when a run is replayed"
# Allow-lists. Written out rather than taken from Jinja, so that a Jinja upgrade cannot add a filter
# unseen. Every filter and test here is a pure function of its arguments.
ALLOWED_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
        "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join",
        "last", "length", "list", "lower", "map", "max", "min", "pprint", "reject", "rejectattr", "replace",
        "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title",
        "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
    }
)  # fmt: skip
ALLOWED_TESTS = frozenset(JINJA_TESTS)  # all of Jinja's tests are pure (type checks, comparisons, defined)
ALLOWED_GLOBALS = ("range", "dict")
# What is refused, and why (shown by the validator as "filter 'random' is not allowed: <why>").
REFUSED_FILTERS = {
    "random": REPLAYED,
    "shuffle": REPLAYED,
}
REFUSED_TESTS: dict[str, str] = {}
REFUSED_GLOBALS = {
    "lipsum": f"it makes random text, and {REPLAYED}",
    "now": f"templates cannot read the clock ({REPLAYED}); days_until and days_since use the run's clock",
    "cycler": "use loop.cycle(…) inside a {% for %} instead",
    "joiner": "use loop.first or loop.last inside a {% for %} instead",
    "namespace": "a template cannot keep state from one loop iteration to the next",
}
# Methods of dates that read the clock or the machine's timezone.
_CLOCK_ATTRIBUTES = frozenset(
    {"now", "today", "utcnow", "fromtimestamp", "utcfromtimestamp", "astimezone", "timestamp"}
)

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
    if any(m.group(1) == "s" for m in re.finditer(r"%[-_0^#]*(.)", fmt)):
        # glibc's %s counts seconds in the machine's timezone: a replay on another machine would differ
        raise ExpressionError("format_date: '%s' is not allowed: it depends on the machine's timezone")
    return value.strftime(fmt)


EXTRA_FILTERS = {"days_until": days_until, "days_since": days_since, "format_date": format_date}


# ---------------------------------------------------------------- bounds


@dataclass(slots=True)
class _Budget:
    """What one render (or one evaluation) has used. Counted, never timed: a replay stops at the same place.

    Steps: 1 per node of the template's syntax tree run, charged when its block is entered (the template, each
    loop iteration, each if branch, each macro call); 1 per loop iteration and per `*`, `**`, `+`, `%`;
    CALL_STEPS per call, filter or test; and 1 per 10 characters or items that a call, a filter or a print goes
    through. Measured: 250,000 steps take 0.1 to 0.5 s, the slowest being filters applied by map().
    """

    what: str  # "template" or "expression", for messages
    steps: int = 0
    iterations: int = 0

    def charge(self, n: int) -> None:
        self.steps += n
        if self.steps > MAX_STEPS:
            raise ExpressionError(f"the {self.what} takes more than {MAX_STEPS:,} steps to evaluate; make it simpler")

    def iteration(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise ExpressionError(f"the {self.what} makes more than {MAX_LOOP_ITERATIONS:,} loop iterations")
        self.charge(1)


# The budget of the render under way. render() and evaluate() are synchronous, so a context variable set
# around them is never seen by another workflow (each runs in its own asyncio task or thread).
_BUDGET: ContextVar[_Budget | None] = ContextVar("playbook_template_budget", default=None)
_SIZED = (str, bytes, list, tuple, dict, range)


def _charge(n: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:  # None outside render() and evaluate(): Jinja folding constants while it compiles
        budget.charge(n)


def _length(values: Any) -> int:
    n = 0
    for v in values:
        if isinstance(v, _SIZED):
            n += len(v)
    return n


def _check_built(size: int, what: str) -> None:
    """A value a template builds: what building it costs, and at most MAX_VALUE characters or items."""
    if size > MAX_VALUE:
        raise ExpressionError(f"{what} would build more than {MAX_VALUE:,} characters or items")
    _charge(size // 10)


def _check_bits(bits: int, what: str) -> None:
    if bits > MAX_NUMBER_BITS:
        raise ExpressionError(f"{what} would make a number of more than {MAX_NUMBER_BITS:,} bits (about 3,000 digits)")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SMALL_TEXT = (float, Decimal, date, time, timedelta, range, LoopContext, Undefined, type(None))


def _text_size(value: Any, limit: int) -> int:
    """About how many characters str(value) has, counting no further than just past limit.

    Shared references count each time (``[s] * 1000`` prints s a thousand times). Refuses a value whose text
    holds a memory address (a function, a method, a generator): it would differ when the run is replayed.
    """
    if type(value) is str:
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v) if v is value else len(v) + 4  # quotes and ", " inside a list
        elif isinstance(v, bool):
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() * 3 // 10 + 2
        elif isinstance(v, _SMALL_TEXT):
            total += 32
        elif isinstance(v, (list, tuple, dict, KeysView, ValuesView, ItemsView)):
            total += 2 + 2 * len(v)
            if total <= limit:
                stack.extend(v.items() if isinstance(v, dict) else v)
        else:
            text = repr(v)
            if _ADDRESS.search(text) or _ADDRESS.search(str(v)):
                raise ExpressionError(_no_text(v))
            total += len(text)
    return total


def _no_text(value: Any) -> str:
    if hasattr(value, "__next__") or hasattr(value, "gi_frame"):
        return "a generator cannot be turned into text (its text would differ when the run is replayed); add | list"
    if callable(value):
        return (
            "a function cannot be turned into text (its text would differ when the run is replayed); "
            "call it with (), or use a field"
        )
    return f"a {type(value).__name__} cannot be turned into text (its text would differ when the run is replayed)"


def _check_text(value: Any, what: str, limit: int = MAX_VALUE) -> str:
    size = _text_size(value, limit)
    _charge(size // 10)
    if size > limit:
        raise ExpressionError(f"{what} would build more than {limit:,} characters or items")
    return value if isinstance(value, str) else str(value)


def _print(value: Any) -> Any:
    """Jinja's finalize: every {{ }} of a template goes through here before it is turned into text."""
    size = _text_size(value, MAX_OUTPUT)
    if size > MAX_OUTPUT:
        raise ExpressionError(f"the template's output is over {MAX_OUTPUT:,} characters")
    _charge(size // 10)
    return value


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


def _largest_text(values: Any) -> int:
    return max((_text_size(v, MAX_VALUE) for v in values), default=0)


def _check_percent(fmt: str | bytes, args: Any, what: str) -> None:
    """`fmt % args` builds fmt, plus for each conversion an argument and its width and precision."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
    largest = _largest_text(values)
    size = len(fmt)
    for match in _PERCENT.finditer(fmt):
        width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        if "*" in (width, precision):
            raise ExpressionError(f"{what}: a '*' width or precision is not allowed; write the number")
        size += largest + int(width or 0) + int(precision or 0)
        if size > MAX_VALUE:
            break
    _check_built(size, what)


def _check_format(fmt: str, values: list[Any], what: str) -> None:
    """`fmt.format(...)` builds fmt, plus for each field an argument and the widths in its spec."""
    largest = _largest_text(values)
    size = len(fmt)
    for _, name, spec, _ in string.Formatter().parse(fmt):
        if name is None:
            continue
        if spec and "{" in spec:
            raise ExpressionError(f"{what}: a format spec cannot hold another {{…}}; write the number")
        size += largest + sum(int(n) for n in re.findall(r"\d+", spec or ""))
        if size > MAX_VALUE:
            break
    _check_built(size, what)


def _replace_size(text: Any, old: Any, new: Any, count: Any) -> int:  # text: str or bytes
    if not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return len(text)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _check_method(text: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A call of a method of a string that can make it much longer: its size first. Returns the arguments
    (an iterable given to join is made a list, so that it can be measured and still be joined)."""
    what = f"{name}()"
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        _check_built(max(len(text), width if isinstance(width, int) else 0), what)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tab = "\t" if isinstance(text, str) else b"\t"
        _check_built(len(text) + text.count(tab) * (tabsize if isinstance(tabsize, int) else 0), what)  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        _check_built(_replace_size(text, args[0], args[1], count), what)
    elif name == "join" and args:
        items = list(args[0])
        size = len(text) * max(len(items) - 1, 0)
        for item in items:
            size += len(item) if isinstance(item, (str, bytes)) else 0
            if size > MAX_VALUE:
                break
        _check_built(size, what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        _check_built(len(text) * max(longest, 1), what)
    return args


class _CountedItems:
    """A for loop's iterable: each item taken counts as an iteration. (LoopContext asks its len() for
    loop.length and loop.last; an iterable without one raises TypeError there, which LoopContext expects.)"""

    __slots__ = ("_items", "_budget")

    def __init__(self, items: Any, budget: _Budget | None) -> None:
        self._items = items
        self._budget = budget

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Any:
        budget = self._budget
        for item in self._items:
            if budget is not None:
                budget.iteration()
            yield item


def _range_length(*args: int) -> int | None:
    """How many numbers range(*args) gives (without making it: range(10**30) has no len()); None if invalid."""
    if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
        return None
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if step == 0:
        return None
    if step > 0:
        return max(0, (stop - start + step - 1) // step)
    return max(0, (start - stop - step - 1) // -step)


def _range(*args: int) -> range:
    """The templates' range(): at most MAX_LOOP_ITERATIONS numbers (Jinja's own allows 100,000)."""
    length = _range_length(*args)
    if length is not None and length > MAX_LOOP_ITERATIONS:
        raise ExpressionError(
            f"range() would give {length:,} numbers; a template makes at most {MAX_LOOP_ITERATIONS:,} loop iterations"
        )
    return range(*args)


# Filters that turn their value into text: the value must be data, of a bounded size.
_TEXT_FILTERS = frozenset(
    {
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "pprint", "replace", "safe",
        "string", "striptags", "title", "tojson", "trim", "truncate", "upper", "urlencode", "urlize", "wordcount",
        "wordwrap", "xmlattr",
    }
)  # fmt: skip


def _pre_join(value: Any, d: Any = "", attribute: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    getter = make_attrgetter(environment(), attribute) if attribute is not None else None
    items = [getter(v) for v in value] if getter else list(value)
    size = len(str(d)) * max(len(items) - 1, 0)
    for item in items:
        size += _text_size(item, MAX_VALUE)
        if size > MAX_VALUE:
            break
    _check_built(size, "the join filter")
    return (items, d), {}


def _pre_replace(s: Any, old: Any, new: Any, count: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    text = s if isinstance(s, str) else str(s)
    _check_built(_replace_size(text, str(old), str(new), -1 if count is None else count), "the replace filter")
    return (s, old, new, count), {}


def _pre_center(value: Any, width: Any = 80) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(width, int):
        _check_built(max(len(str(value)), width), "the center filter")
    return (value, width), {}


def _pre_indent(
    s: Any, width: Any = 4, first: Any = False, blank: Any = False
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(width, int):
        _check_built(width, "the indent filter")
    indent = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = str(s)
    _check_built(len(text) + (text.count("\n") + 1) * indent, "the indent filter")
    return (s, width, first, blank), {}


def _pre_wordwrap(
    s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, break_on_hyphens: Any = True
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    text = str(s)
    if isinstance(width, int) and width > 0:
        breaks = len(text) // width + text.count("\n") + 1
        _check_built(len(text) + breaks * len(str(wrapstring or "\n")), "the wordwrap filter")
    return (s, width, break_long_words, wrapstring, break_on_hyphens), {}


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    _check_percent(str(value), kwargs or args, "the format filter")
    return (value, *args), kwargs


def _pre_batch(value: Any, linecount: Any, fill_with: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if fill_with is not None and isinstance(linecount, int):
        _check_built(linecount, "the batch filter")
    return (value, linecount, fill_with), {}


def _pre_slice(value: Any, slices: Any, fill_with: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(slices, int):
        _check_built(slices, "the slice filter")
    return (value, slices, fill_with), {}


def _pre_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> tuple[tuple[Any, ...], dict[str, Any]]:
    getter = make_attrgetter(environment(), attribute) if attribute is not None else None
    items = [getter(v) for v in iterable] if getter else list(iterable)
    if isinstance(start, (list, tuple, str)) or any(isinstance(i, (list, tuple, str)) for i in items):
        _check_built(_length([start, *items]), "the sum filter")
    return (items, None, start), {}


_PRE_CHECKS: dict[str, Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "join": _pre_join,
    "replace": _pre_replace,
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "format": _pre_format,
    "batch": _pre_batch,
    "slice": _pre_slice,
    "sum": _pre_sum,
}


def _bounded(name: str, fn: Any, kind: str = "filter") -> Any:
    """A filter or test that charges the budget (CALL_STEPS, plus 1 per 10 characters or items of its arguments),
    refuses to turn anything but bounded data into text, and checks first what a filter that can grow its value
    builds."""
    skip = 1 if _PassArg.from_obj(fn) is not None else 0  # Jinja passes the context or environment first
    text = kind == "filter" and name in _TEXT_FILTERS
    pre = _PRE_CHECKS.get(name) if kind == "filter" else None

    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        head, rest = args[:skip], args[skip:]
        _charge(CALL_STEPS + _length(rest) // 10)
        if text and rest:
            _check_text(rest[0], f"the {name} filter")
        if pre is not None:
            rest, kwargs = pre(*rest, **kwargs)
        return fn(*head, *rest, **kwargs)

    return bounded


def _is_loop_items(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.EnvironmentAttribute)
        and node.node.name == "loop_items"
    )


def _tree_size(statements: list[nodes.Node]) -> int:
    return sum(1 + sum(1 for _ in node.find_all(nodes.Node)) for node in statements)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with three calls into the budget: each block charges its size when it is entered,
    each for loop counts the items it takes (a recursive loop's loop(…) calls are counted in call()), and each
    `~` checks the size of what it joins before joining."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # `for x in items` becomes `for x in environment.loop_items(items)` (Jinja allows no new node types)
        for loop in list(node.find_all(nodes.For)):
            if not _is_loop_items(loop.iter):
                counted = nodes.EnvironmentAttribute("loop_items", lineno=loop.iter.lineno)
                loop.iter = nodes.Call(counted, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def blockvisit(self, nodes_: Any, frame: Frame) -> None:
        nodes_ = list(nodes_)
        self.writeline(f"environment.charge({_tree_size(nodes_)})")
        super().blockvisit(nodes_, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.concat_text({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _PlaybookSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        _charge(1)
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
                    _check_built(len(seq) * n, "'*'")
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length(), "'*'")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise ExpressionError(f"exponent {right} is larger than {MAX_EXPONENT}, the largest a template may use")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                _check_bits(left.bit_length() * right, "'**'")
            return operator.pow(left, right)
        if operator_ == "+":
            if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
                _check_built(len(left) + len(right), "'+'")
            return operator.add(left, right)
        if operator_ == "%":
            if isinstance(left, (str, bytes)):
                _check_percent(left, right, "'%'")
            return operator.mod(left, right)
        return super().call_binop(context, operator_, left, right)  # pragma: no cover - only these are intercepted

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_") or attr in _UNSAFE_NAMES:
            return False
        if attr in _CLOCK_ATTRIBUTES and (
            isinstance(obj, (date, time)) or (isinstance(obj, type) and issubclass(obj, (date, time)))
        ):
            return False  # date.today(), datetime.now(), naive .timestamp(): the clock or the machine's timezone
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - as Jinja's
        _charge(CALL_STEPS + _length(args) // 10)
        if isinstance(__obj, LoopContext) and args:
            args = (_CountedItems(args[0], _BUDGET.get()), *args[1:])  # loop(children) in a recursive for
        elif isinstance(__obj, (types.BuiltinMethodType, types.MethodType)) and isinstance(
            owner := getattr(__obj, "__self__", None), (str, bytes)
        ):
            args = _check_method(owner, __obj.__name__, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], dict) else {}
            _check_format(fmt, [*args, *kwargs.values(), *mapping.values()], f"{value.__name__}()")
            return wrapped(*args, **kwargs)

        return checked

    # called by the code _BoundedCodeGenerator writes
    def charge(self, n: int) -> None:
        _charge(n)

    def loop_items(self, items: Any) -> _CountedItems:
        return _CountedItems(items, _BUDGET.get())

    def concat_text(self, join: Any, parts: tuple[Any, ...]) -> Any:
        size = 0
        for part in parts:
            size += _text_size(part, MAX_VALUE)
            if size > MAX_VALUE:
                break
        _check_built(size, "'~'")
        return join(parts)


@functools.cache
def environment() -> _PlaybookSandbox:
    env = _PlaybookSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_print)
    # The allow-lists only (see REFUSED_* for what is left out, and why); range is bounded by MAX_LOOP_ITERATIONS.
    env.globals = {"range": _range, "dict": dict}
    filters = {name: JINJA_FILTERS[name] for name in sorted(ALLOWED_FILTERS)} | EXTRA_FILTERS
    env.filters = {name: _bounded(name, fn) for name, fn in filters.items()}
    env.tests = {name: _bounded(name, JINJA_TESTS[name], "test") for name in sorted(ALLOWED_TESTS)}
    return env


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


# ---------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=4096)
def _compiled_template(source: str) -> Any:
    template = environment().from_string(source)
    # Jinja copies a template's globals into every render's context; as a ChainMap (environment + template) that
    # copy walks both in Python, most of a short template's render. A plain dict of the same names renders the same.
    template.globals = dict(template.globals)
    return template


@functools.lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    expression = environment().compile_expression(source, undefined_to_none=False)
    # as _compiled_template does: the template behind the expression gets its globals as a plain dict (each
    # evaluation copies them into its context; 5.4 -> 3.0 us an evaluation of a scorecard's segment)
    template = getattr(expression, "_template", None)
    if template is not None:
        template.globals = dict(template.globals)
    return expression


# Most templates are text and look-ups ("Hi {{ contact.first_name }}"). Those are rendered without Jinja, as
# the sandbox would render them: a look-up reads the keys of plain dicts, and the text of a str, int, float, bool
# or None is str() of it. Whatever could come out otherwise goes through Jinja, which gives the text or the exact
# error: a name or key that is missing, a key that is also a dict method (`contact.items` is the method), a value
# of another type, an int of over 100 digits, output over MAX_OUTPUT. None of these look-ups can reach the loop or
# step bounds, so skipping the budget changes nothing a replay could see.
_Lookup = tuple[str, tuple[str, ...]]
_DICT_ATTRIBUTES = frozenset(dir(dict))
_PLAIN_VALUES = frozenset({str, int, float, bool, type(None)})
_LARGEST_PLAIN_INT = 10**100


@functools.lru_cache(maxsize=4096)
def _lookups_only(source: str) -> tuple[str | _Lookup, ...] | None:
    """The template's parts, text or (name, keys), when it is made of nothing else; None otherwise."""
    try:
        tree = Parser(environment(), source).parse()
    except TemplateSyntaxError:
        return None  # Jinja says why
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts: list[str | _Lookup] = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        chain = _chain(node)
        if chain is None:
            return None
        parts.append(chain)
    return tuple(parts)


_MISSING = object()


def _plain_lookup(context: dict[str, Any], name: str, keys: tuple[str, ...]) -> Any:
    """``name.key.key...`` read through plain dicts to a plain value (str, int, float, bool, None), as the sandbox
    reads it; _MISSING where Jinja has to say (a missing name or key, a key that is also a dict method, a value of
    another type, an int of over 100 digits)."""
    value = context.get(name, _MISSING)
    if value is _MISSING:
        return _MISSING
    for key in keys:
        if type(value) is not dict or key in _DICT_ATTRIBUTES or key not in value:
            return _MISSING
        value = value[key]
    if type(value) not in _PLAIN_VALUES or (type(value) is int and abs(value) > _LARGEST_PLAIN_INT):
        return _MISSING
    return value


def _render_lookups(parts: tuple[str | _Lookup, ...], context: dict[str, Any]) -> str | None:
    """The text, or None where Jinja has to say (see _lookups_only)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = _plain_lookup(context, *part)
        if value is _MISSING:
            return None
        out.append(str(value))
    text = "".join(out)
    return text if len(text) <= MAX_OUTPUT else None


def render(source: str, context: dict[str, Any]) -> str:
    """Renders a template. Values in the context are data: their text is never rendered again."""
    if not is_template(source):
        return source
    parts = _lookups_only(source)
    if parts is not None:
        text = _render_lookups(parts, context)
        if text is not None:
            return text
    return render_with_jinja(source, context)


def render_with_jinja(source: str, context: dict[str, Any]) -> str:
    """render() without its shortcut for look-ups: every template through Jinja's sandbox."""
    try:
        # Compiled outside the budget: compiling happens only on a cold cache (Jinja may call filters to fold
        # constants), and a replay must count the same steps on a warm worker as on a fresh one.
        template = _compiled_template(source)
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None
    budget = _BUDGET.set(_Budget("template"))
    try:
        out: list[str] = []
        size = 0
        for chunk in template.generate(context):  # counted as it streams: stops at the cap, not after
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise ExpressionError(f"the template's output is over {MAX_OUTPUT:,} characters")
            out.append(chunk)
        return "".join(out)
    except ExpressionError:
        raise
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None
    finally:
        _BUDGET.reset(budget)


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
    shortcut = _simple_expression(source)
    if shortcut is not None:
        try:
            return shortcut(context)
        except _AskJinja:
            pass
    return evaluate_with_jinja(source, context)


def evaluate_with_jinja(source: str, context: dict[str, Any]) -> Any:
    """evaluate() without its shortcut for simple comparisons: every expression through Jinja's sandbox."""
    try:
        expression = _compiled_expression(source)  # outside the budget, as in render()
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None
    budget = _BUDGET.set(_Budget("expression"))
    try:
        return expression(**context)
    except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as err:
        raise ExpressionError(_describe(err)) from None
    finally:
        _BUDGET.reset(budget)


# Most conditions are comparisons of look-ups with literals, joined by and/or/not: a scorecard's segment
# (account.plan != "trial"), a measure's where (event.data.priority == "urgent"), a step's when. Those are
# evaluated without Jinja, as the sandbox evaluates them: a look-up reads the keys of plain dicts (as the template
# shortcut above), the operators are Python's (Jinja compiles them to the same), and and/or short-circuit and give
# an operand back. Whatever could come out otherwise is Jinja's to say (_AskJinja): a missing name or key (the
# StrictUndefined error), a key that is also a dict method, a value of another type, a comparison Python refuses.
# None of these can reach the loop or step bounds, so skipping the budget changes nothing a replay could see.
class _AskJinja(Exception):
    """The shortcut cannot tell what Jinja would: evaluate the expression with Jinja."""


_Evaluator = Callable[[dict[str, Any]], Any]
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "lteq": operator.le, "gt": operator.gt,
    "gteq": operator.ge, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}


@functools.lru_cache(maxsize=4096)
def _simple_expression(source: str) -> _Evaluator | None:
    """A function of the context giving the expression's value (or raising _AskJinja), when the expression is made
    of look-ups, literals, comparisons, and, or, not; None otherwise."""
    try:
        parser = Parser(environment(), source, state="variable")
        node = parser.parse_expression()
        if not parser.stream.eos:
            return None
    except TemplateSyntaxError:
        return None  # Jinja says why
    if sum(1 for _ in node.find_all(nodes.Node)) >= _SIMPLE_NODES:
        return None  # Jinja charges the budget a step per node: a literal list of 250,000 items is over it
    return _simple(node)


_SIMPLE_NODES = 1000


def _simple(node: nodes.Node) -> _Evaluator | None:
    if isinstance(node, nodes.Const):
        if type(node.value) not in _PLAIN_VALUES:
            return None
        value = node.value
        return lambda context: value
    if isinstance(node, (nodes.List, nodes.Tuple)):
        items = [item.value for item in node.items if isinstance(item, nodes.Const)]
        if len(items) != len(node.items) or any(type(v) not in _PLAIN_VALUES for v in items):
            return None
        literal: Any = tuple(items) if isinstance(node, nodes.Tuple) else items
        return lambda context: literal
    if isinstance(node, nodes.Not):
        inner = _simple(node.node)
        return None if inner is None else (lambda context: not inner(context))
    if isinstance(node, (nodes.And, nodes.Or)):
        left, right = _simple(node.left), _simple(node.right)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.And):
            return lambda context: left(context) and right(context)
        return lambda context: left(context) or right(context)
    if isinstance(node, nodes.Compare):
        if len(node.ops) != 1 or node.ops[0].op not in _COMPARISONS:
            return None
        first, second = _simple(node.expr), _simple(node.ops[0].expr)
        if first is None or second is None:
            return None
        compare = _COMPARISONS[node.ops[0].op]

        def comparison(context: dict[str, Any]) -> Any:
            a, b = first(context), second(context)
            try:
                return compare(a, b)
            except TypeError:
                raise _AskJinja from None  # Jinja words the error
        return comparison
    chain = _chain(node)
    if chain is None:
        return None
    name, keys = chain

    def lookup(context: dict[str, Any]) -> Any:
        value = _plain_lookup(context, name, keys)
        if value is _MISSING:
            raise _AskJinja
        return value
    return lookup


# ---------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Reference:
    """A use of ``root.attr`` (e.g. steps.welcome.status: root steps, attrs ('welcome', 'status'))."""

    root: str
    attrs: tuple[str, ...]


@dataclass(slots=True)
class Analysis:
    names: set[str] = field(default_factory=set)  # free names used
    whole: set[str] = field(default_factory=set)  # free names used other than as the root of a `root.attr` chain
    references: list[Reference] = field(default_factory=list)
    unknown_filters: set[str] = field(default_factory=set)
    unknown_tests: set[str] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)  # tags that would load other templates
    limits: list[tuple[int, str]] = field(default_factory=list)  # (line in the template, a bound it is over)


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


def _analyse(tree: nodes.Template, template: bool = False) -> Analysis:
    """One pass over the AST (parents before children, so the longest attribute chain is seen first).

    For a template (not a bare expression), also the static bounds of its loops and output (_static_limits)."""
    env = environment()
    result = Analysis()
    loads: set[str] = set()
    stores: set[str] = set()
    inner_chain_nodes: set[int] = set()
    chain_roots: set[int] = set()
    whole_loads: set[str] = set()
    stack: list[nodes.Node] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Name):
            (loads if node.ctx == "load" else stores).add(node.name)
            if node.ctx == "load" and id(node) not in chain_roots:
                whole_loads.add(node.name)
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
                    chain_roots.add(id(inner))
                    result.references.append(Reference(*chain))
        elif isinstance(node, nodes.Filter):
            if node.name not in env.filters:
                result.unknown_filters.add(node.name)
            applies = _APPLIES_BY_NAME.get(node.name)  # map('upper'), select('odd'), selectattr('plan', 'eq', …)
            named = node.args[applies[0]] if applies and len(node.args) > applies[0] else None
            if applies and isinstance(named, nodes.Const):
                applied = named.value
                if applies[1] == "filter":
                    known, unknown = env.filters, result.unknown_filters
                else:
                    known, unknown = env.tests, result.unknown_tests
                if isinstance(applied, str) and applied not in known:
                    unknown.add(applied)
            if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
                name = node.args[0].value
                if isinstance(name, str) and (name.startswith("_") or name in _UNSAFE_NAMES):
                    result.unsafe.append(name)
        elif isinstance(node, nodes.Call):
            target = node.node
            if isinstance(target, nodes.Name) and target.name == "range":
                literal = _literal_range(node)
                if literal and literal[0] > MAX_LOOP_ITERATIONS:
                    too_long = (
                        f"{literal[1]} would give {literal[0]:,} numbers; a template makes at most "
                        f"{MAX_LOOP_ITERATIONS:,} loop iterations"
                    )
                    result.limits.append((node.lineno, too_long))
            if (
                isinstance(target, nodes.Getattr)
                and target.attr in ("format", "format_map")
                and isinstance(target.node, nodes.Const)
                and isinstance(target.node.value, str)
            ):
                result.unsafe.extend(_format_string_attributes(target.node.value))
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            tag = {
                nodes.Include: "include",
                nodes.Import: "import",
                nodes.FromImport: "from",
                nodes.Extends: "extends",
            }[type(node)]
            result.forbidden.append(tag)
        elif isinstance(node, (nodes.Mul, nodes.Pow)):
            refused = _literal_operator_limit(node)
            if refused:
                result.limits.append((node.lineno, refused))
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            result.unknown_tests.add(node.name)
        stack.extend(node.iter_child_nodes())
    # Names bound by {% for %}/{% set %}/macros are not free. (Jinja's own meta module gets scoping exactly
    # right but runs its code generator, which costs as much as compiling.)
    result.names = loads - stores
    result.whole = whole_loads - stores
    if template and not result.limits:  # a range(…) over the limit says it already
        result.limits.extend(_static_limits(tree))
    return result


# Filters that apply another filter or test, named by a string argument: (the argument's position, which).
_APPLIES_BY_NAME = {
    "map": (0, "filter"),
    "select": (0, "test"),
    "reject": (0, "test"),
    "selectattr": (1, "test"),
    "rejectattr": (1, "test"),
}


def _literal_range(call: nodes.Call) -> tuple[int, str] | None:
    """For range(…) with literal integer arguments: how many numbers it gives, and the call as written."""
    if call.kwargs or call.dyn_args is not None or call.dyn_kwargs is not None:
        return None
    if not all(isinstance(a, nodes.Const) and type(a.value) is int for a in call.args):
        return None
    values = [a.value for a in call.args if isinstance(a, nodes.Const)]
    length = _range_length(*values)
    return None if length is None else (length, f"range({', '.join(map(str, values))})")


def _literal_length(node: nodes.Node) -> tuple[int, str] | None:
    """How many items a loop over this literal takes, and how to name it; None when it is not a literal."""
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range":
        return _literal_range(node)
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return len(node.items), f"a list of {len(node.items)}"
    if isinstance(node, nodes.Const) and isinstance(node.value, (str, list, tuple)):
        return len(node.value), f"a text of {len(node.value)} characters"
    return None


def _literal_operator_limit(node: nodes.Mul | nodes.Pow) -> str | None:
    """`'x' * 200000` or `2 ** 1000` with literals: what the sandbox would refuse."""
    left = node.left.value if isinstance(node.left, nodes.Const) else None
    right = node.right.value if isinstance(node.right, nodes.Const) else None
    if isinstance(node, nodes.Pow):
        if isinstance(right, (int, float)) and not isinstance(right, bool) and abs(right) > MAX_EXPONENT:
            return f"exponent {right} is larger than {MAX_EXPONENT}, the largest a template may use"
        return None
    for seq_node, n in ((node.left, right), (node.right, left)):
        size = len(seq_node.value) if isinstance(seq_node, nodes.Const) and isinstance(seq_node.value, str) else None
        if isinstance(seq_node, (nodes.List, nodes.Tuple)):
            size = len(seq_node.items)
        if size is not None and isinstance(n, int) and not isinstance(n, bool) and size * n > MAX_VALUE:
            return (
                f"'*' would build {size * n:,} characters or items; a template builds values of at most {MAX_VALUE:,}"
            )
    return None


@dataclass
class _Worst:
    count: int = 0  # the most iterations one loop makes
    chain: tuple[str, ...] = ()  # that loop and the loops around it, outermost first
    line: int = 1  # that loop's line in the template
    output: int = 0  # the most output one loop makes
    output_line: int = 1  # that loop's line


def _paths(body: list[nodes.Node], times: int, chain: tuple[str, ...], worst: _Worst) -> tuple[int, int]:
    """Loop iterations and output characters, each on the costliest path through body, run `times` times.

    Only what literals decide is counted: loops over range(…) with literal arguments or over literal lists, and
    literal text. A loop over data, a loop's body behind an `if` filter, and macros (which run when called) count
    nothing here: the bounds at run time take care of them. An if takes its costliest branch.
    """
    iterations = output = 0
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    output += times * len(child.data)
                elif isinstance(child, nodes.Const):
                    output += times * len(str(child.value))
        elif isinstance(node, nodes.For):
            known = _literal_length(node.iter)
            if known is None:
                continue
            count = times * known[0]
            iterations += count
            if count > worst.count:
                worst.count, worst.chain, worst.line = count, (*chain, known[1]), node.lineno
            if node.test is None:
                inner = _paths(node.body, count, (*chain, known[1]), worst)
                iterations += inner[0]
                output += inner[1]
                if inner[1] > worst.output:
                    worst.output, worst.output_line = inner[1], node.lineno
        elif isinstance(node, nodes.If):
            branches = [node.body, *(branch.body for branch in node.elif_), node.else_]
            costs = [_paths(branch, times, chain, worst) for branch in branches]
            iterations += max(c[0] for c in costs)
            output += max(c[1] for c in costs)
        elif isinstance(node, (nodes.With, nodes.Scope, nodes.ScopedEvalContextModifier)):
            inner = _paths(node.body, times, chain, worst)
            iterations += inner[0]
            output += inner[1]
        elif isinstance(node, (nodes.AssignBlock, nodes.FilterBlock)):
            # its loops run; its text is kept in a variable, or goes through a filter that may change its length
            iterations += _paths(node.body, times, chain, worst)[0]
    return iterations, output


def _static_limits(tree: nodes.Template) -> list[tuple[int, str]]:
    """The loop and output bounds a template is over whenever the code in question runs, known from literals."""
    worst = _Worst()
    iterations, output = _paths(tree.body, 1, (), worst)
    if iterations > MAX_LOOP_ITERATIONS:
        nested = f" ({' inside '.join(reversed(worst.chain))})" if len(worst.chain) > 1 else ""
        message = (
            f"the template's loops make {iterations:,} iterations{nested}; a template makes at most "
            f"{MAX_LOOP_ITERATIONS:,} loop iterations"
        )
        return [(worst.line, message)]
    if output > MAX_OUTPUT:
        line = worst.output_line if worst.output * 2 > output else 1  # the loop that makes most of it, if any
        return [(line, f"the template's output is over {MAX_OUTPUT:,} characters (at least {output:,})")]
    return []


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
                merged = _merge([analyse_expression(p.strip("-").strip() or "''") for p in parts])
            except AnalysisError:
                pass
            else:
                if not merged.limits and len(_PRINT.sub("", source)) <= MAX_OUTPUT:
                    return merged
                # over a limit: the full parser gives the line in the template it is about
    return _analyse(_parse_template(source), template=True)


def _merge(analyses: list[Analysis]) -> Analysis:
    merged = Analysis()
    for a in analyses:
        merged.names |= a.names
        merged.whole |= a.whole
        merged.references.extend(a.references)
        merged.unknown_filters |= a.unknown_filters
        merged.unknown_tests |= a.unknown_tests
        merged.unsafe.extend(a.unsafe)
        merged.forbidden.extend(a.forbidden)
        merged.limits.extend(a.limits)
    return merged


@functools.lru_cache(maxsize=8192)
def analyse_expression(source: str) -> Analysis:
    """Parses a bare expression and reports what it uses. Raises AnalysisError on a syntax error."""
    return _analyse(_parse_expression(source))
