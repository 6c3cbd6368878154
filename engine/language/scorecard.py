"""Health scorecards (scorecards/*.yaml): validated like playbooks, built into an immutable Scorecard.

A scorecard names the accounts it applies to (a segment expression over `account`), its bands, and
weighted measures (an account field, a count or sum of events over a rolling window, the last value of
an event, or days until/since a date), each mapped to 0..100 by rules. Every problem is reported with
FILE:LINE:COL, schema and meaning together, sorted by position; a scorecard with a problem is not built.
The arithmetic is in engine/language/health.py; docs/health.md is the reference.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path as FsPath
from typing import Any

import jsonschema
import jsonschema.validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from .documents import Loaded, load_document, read_text
from .durations import DurationError, parse_duration
from .meaning import Checker
from .model import content_version
from .problems import Problem
from .schema_check import Translator, subject, suggest
from .schema_source import PLAYBOOK_ID_PATTERN
from .scorecard_schema import MEASURE_KINDS, scorecard_schema
from .yaml_source import Document, Path

YAML_SUFFIXES = (".yaml", ".yml")
SCORECARDS_FOLDER = "scorecards"
SEGMENT_NAMES = ("account",)
EVENT_NAMES = ("event",)
_MEASURES_KEY = re.compile(r"^measures\s*:", re.M)
_STEPS_KEY = re.compile(r"^steps\s*:", re.M)


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ScoreRule:
    """{below: X, score: S} (value < X), {at_least: X, score: S} (value >= X), or otherwise (both None)."""

    below: float | None
    at_least: float | None
    score: float

    @property
    def otherwise(self) -> bool:
        return self.below is None and self.at_least is None

    def matches(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        if self.at_least is not None:
            return value >= self.at_least
        return True

    def text(self) -> str:
        if self.below is not None:
            return f"below {_num(self.below)}"
        if self.at_least is not None:
            return f"at least {_num(self.at_least)}"
        return "otherwise"


@dataclass(frozen=True)
class Measure:
    id: str
    title: str
    weight: int
    kind: str  # "field" | "events" | "last" | "days_until" | "days_since"
    source: str  # field path ("account.mrr") or event type
    window: str | None  # duration text ("30d") for events/last; None otherwise
    window_seconds: float | None
    where: str | None  # expression over `event` (events / last)
    aggregate: str  # "count" | "sum" (events), "" otherwise
    value: str | None  # expression over `event` (sum, last)
    rules: tuple[ScoreRule, ...]
    missing_score: float | None  # None = skip and re-weight

    @property
    def reads_events(self) -> bool:
        return self.kind in ("events", "last")

    def score_of(self, value: float) -> float | None:
        """The score of the first rule that matches; None when none does (the value then counts as missing)."""
        for rule in self.rules:
            if rule.matches(value):
                return rule.score
        return None

    # Derived once per measure for the arithmetic's inner loop (engine/language/health.py): a scorecard is read
    # once per process and scores every account each night. Cached in the instance (not fields: not compared,
    # hashed or shown).

    @functools.cached_property
    def rule_bounds(self) -> tuple[tuple[float | None, float | None, float], ...]:
        """The rules as (below, at_least, score) tuples, in order (score_of without a method call per rule)."""
        return tuple((r.below, r.at_least, r.score) for r in self.rules)

    @functools.cached_property
    def field_path(self) -> tuple[str, ...]:
        """The keys below the account of a field/days_until/days_since measure's `source` ("account.crm.mrr":
        ("crm", "mrr")), as engine.language.health.lookup walks them."""
        parts = self.source.split(".")
        return tuple(parts[1:] if parts and parts[0] == "account" else parts)


@dataclass(frozen=True)
class Band:
    name: str
    below: float | None


@dataclass(frozen=True)
class Scorecard:
    id: str
    title: str
    segment: str | None
    bands: tuple[Band, ...]
    on_band_change: bool
    on_drop: float | None
    measures: tuple[Measure, ...]
    version: str  # content hash of the exact text
    file: str

    def event_types(self) -> frozenset[str]:
        """The event types any measure reads."""
        return self._event_types

    @functools.cached_property
    def _event_types(self) -> frozenset[str]:  # asked for each scorecard of every event taken: derived once
        return frozenset(m.source for m in self.measures if m.reads_events)

    @functools.cached_property
    def event_reads(self) -> tuple[tuple[str, bool, timedelta | None], ...]:
        """(measure id, last, window) of each measure that reads events, in order: what an event's update and a
        night's page ask the recorded values for (engine.runtime.health._queries), derived once."""
        return tuple((m.id, m.kind == "last", timedelta(seconds=m.window_seconds) if m.window_seconds else None)
                     for m in self.measures if m.reads_events)

    def band_of(self, score: float | None) -> str | None:
        """The first band whose `below` is above the score, else the last; None for no score."""
        if score is None or not self.bands:
            return None
        for band in self.bands:
            if band.below is not None and score < band.below:
                return band.name
        return self.bands[-1].name

    def measure(self, measure_id: str) -> Measure | None:
        return next((m for m in self.measures if m.id == measure_id), None)

    @functools.cached_property
    def band_bounds(self) -> tuple[tuple[float | None, str], ...]:
        """The bands as (below, name) tuples, in order (band_of without attribute look-ups); derived once, as
        Measure.rule_bounds."""
        return tuple((b.below, b.name) for b in self.bands)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class ScorecardResult(Loaded):
    scorecard: Scorecard | None = None
    playbook: None = None  # a scorecard is not a playbook: lets tables of results treat it alike

    @property
    def ok(self) -> bool:
        return not self.problems and self.scorecard is not None


@dataclass
class ScorecardLibrary:
    """The valid scorecards of a folder, by id, and every file's result."""

    root: FsPath
    scorecards: dict[str, Scorecard] = field(default_factory=dict)
    results: list[ScorecardResult] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.results for p in r.problems]


def is_scorecard_path(path: FsPath) -> bool:
    """A YAML file (not a scenario) under a folder named `scorecards`, in the path as given.

    The nearest folder named `scorecards` or `playbooks` decides, so a library kept under some folder that happens
    to be named `scorecards` (/home/x/scorecards/playbooks/welcome.yaml) stays playbooks. A bare file name also
    looks at the folder it is in (`cd scorecards && playbook validate repricer-health.yaml`).
    """
    if not path.name.endswith(YAML_SUFFIXES) or ".scenario." in path.name:
        return False
    for folder in path.parent.parts[::-1]:
        if folder == SCORECARDS_FOLDER:
            return True
        if folder == "playbooks":
            return False
    if path.is_absolute():
        return False
    try:
        return path.resolve().parent.name == SCORECARDS_FOLDER
    except OSError:  # pragma: no cover - a path that cannot be resolved
        return False


def looks_like_scorecard(text: str) -> bool:
    """A document with a top-level `measures:` key and no `steps:` (a scorecard outside a scorecards folder)."""
    return bool(_MEASURES_KEY.search(text)) and not _STEPS_KEY.search(text)


# ---------------------------------------------------------------------------------------------- schema


def _strict_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """`pattern` as editors (JavaScript) read it: `$` is the end of the text (see schema_check)."""
    if not validator.is_type(instance, "string"):
        return
    regex = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if re.search(regex, instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def scorecard_validator() -> Validator:
    schema = scorecard_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    cls: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft7Validator, {"pattern": _strict_pattern}
    )
    return cls(schema)


def _schema_problems(doc: Document, file: str) -> list[Problem]:
    translator = Translator(doc, file, "scorecard")
    problems: list[Problem] = []
    errors = list(scorecard_validator().iter_errors(doc.data))
    suggested: set[tuple[Path, str]] = set()  # (mapping path, key an unknown key was taken for)
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            schema = error.schema if isinstance(error.schema, dict) else {}
            allowed = list((schema.get("properties") or {}).keys())
            for key in error.instance:
                close = suggest(str(key), allowed) if key not in allowed else None
                if close:
                    suggested.add((tuple(error.absolute_path), close))
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            required = error.validator_value if isinstance(error.validator_value, list) else []
            missing = [k for k in required if k not in error.instance]
            if missing and all((path, k) in suggested for k in missing):
                continue  # the typo is reported as an unknown key with this very suggestion
        if error.validator in ("exclusiveMinimum", "exclusiveMaximum"):
            pos = doc.pos(path)
            word = "above" if error.validator == "exclusiveMinimum" else "below"
            message = f"'{path[-1]}' must be {word} {error.validator_value}; got {error.instance}"
            problems.append(Problem(file, pos.value_line, pos.value_col, message, "schema", pos.value_len))
            continue
        problems.extend(translator.translate(error))
    return problems


# ---------------------------------------------------------------------------------------------- meaning


class _Meaning:
    def __init__(self, doc: Document, file: str) -> None:
        self.doc = doc
        self.file = file
        self.problems: list[Problem] = []
        self.expressions = Checker(doc, file)

    def at_key(self, path: Path, message: str, rule: str = "meaning") -> None:
        pos = self.doc.pos(path)
        self.problems.append(Problem(self.file, pos.key_line, pos.key_col, message, rule, pos.key_len))

    def at_value(self, path: Path, message: str, rule: str = "meaning") -> None:
        pos = self.doc.pos(path)
        self.problems.append(Problem(self.file, pos.value_line, pos.value_col, message, rule, pos.value_len))

    def run(self) -> list[Problem]:
        data = self.doc.data
        if not isinstance(data, dict):
            return self.problems
        self.check_numbers(data, ())
        self.check_id(data.get("id"))
        if "segment" in data:
            self.check_expression(("segment",), data.get("segment"), SEGMENT_NAMES)
        self.check_bands(data.get("bands"))
        measures = data.get("measures")
        if isinstance(measures, list):
            self.check_measures(measures)
        self.problems.extend(self.expressions.problems)
        return self.problems

    def check_numbers(self, value: Any, path: Path) -> None:
        """NaN and infinities compare false with every bound, so the schema lets them through: refused here."""
        if isinstance(value, float) and not math.isfinite(value):
            word = "NaN" if math.isnan(value) else "an infinite number"
            in_rule = len(path) >= 3 and path[-3] == "score" and path[-1] in ("below", "at_least")
            hint = "; a rule for every value is {otherwise: N}" if in_rule else ""
            self.at_value(path, f"{subject(path)} must be a finite number; got {word}{hint}")
        elif isinstance(value, dict):
            for key, item in value.items():
                self.check_numbers(item, path + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_numbers(item, path + (index,))

    def check_id(self, card_id: Any) -> None:
        if not isinstance(card_id, str) or not self.file.endswith(YAML_SUFFIXES):
            return
        if not re.fullmatch(PLAYBOOK_ID_PATTERN.strip("^$"), card_id):
            return  # the schema says what an id looks like
        name = FsPath(self.file).name
        stem = name.rsplit(".", 1)[0]
        if stem != card_id:
            self.at_value(
                ("id",), f"the scorecard id '{card_id}' differs from its file name '{name}'; name the file "
                f"{card_id}.yaml or change the id to '{stem}'"
            )

    def check_expression(self, path: Path, value: Any, names: tuple[str, ...]) -> None:
        self.expressions.check_expression(path, value, names, None)

    def check_bands(self, bands: Any) -> None:
        if not isinstance(bands, list):
            return
        seen: dict[str, int] = {}
        previous: float | None = None
        for i, band in enumerate(bands):
            if not isinstance(band, dict):
                continue
            name = band.get("name")
            if isinstance(name, str):
                if name in seen:
                    first = self.doc.pos(("bands", seen[name])).key_line
                    self.at_value(
                        ("bands", i, "name"),
                        f"band '{name}' is declared twice (first at line {first}); band names are unique",
                    )
                else:
                    seen[name] = i
            below = band.get("below")
            last = i == len(bands) - 1
            if last and "below" in band:
                self.at_key(
                    ("bands", i, "below"),
                    "the last band takes every score from the band before it up to 100: remove its 'below'",
                )
            elif not last and "below" not in band:
                self.at_key(
                    ("bands", i),
                    f"band {describe(name)} needs 'below' (every band but the last has one, in ascending order)",
                )
            if isinstance(below, (int, float)) and not isinstance(below, bool):
                if previous is not None and below <= previous:
                    self.at_value(
                        ("bands", i, "below"),
                        f"bands go in ascending order: 'below: {_num(below)}' must be above the band before it "
                        f"(below: {_num(previous)})",
                    )
                previous = below if previous is None else max(previous, below)

    def check_measures(self, measures: list[Any]) -> None:
        ids: dict[str, int] = {}
        weights: list[tuple[str, int]] = []
        for i, measure in enumerate(measures):
            if not isinstance(measure, dict):
                continue
            path: Path = ("measures", i)
            measure_id = measure.get("id")
            if isinstance(measure_id, str):
                if measure_id in ids:
                    first = self.doc.pos(("measures", ids[measure_id], "id")).value_line
                    self.at_value(
                        path + ("id",), f"measure id '{measure_id}' is also used at line {first}; ids are unique"
                    )
                else:
                    ids[measure_id] = i
            weight = measure.get("weight")
            if isinstance(weight, int) and not isinstance(weight, bool) and 1 <= weight <= 100:
                weights.append((measure_id if isinstance(measure_id, str) else f"measure {i + 1}", weight))
            self.check_kind(measure, path)
            missing = measure.get("missing")
            if isinstance(missing, str) and missing != "skip":
                self.at_value(
                    path + ("missing",),
                    f"'missing' is skip (leave the measure out, re-weight the others) or {{score: N}} (a fixed "
                    f"score); got '{missing}'",
                )
            self.check_rules(measure.get("score"), path + ("score",))
        if weights and len(weights) == len(measures):
            total = sum(w for _, w in weights)
            if total != 100:
                listed = " + ".join(f"{name} {w}" for name, w in weights)
                self.at_key(
                    ("measures",),
                    f"the measures' weights must sum to 100; they sum to {total} ({listed})",
                )

    def check_kind(self, measure: dict[str, Any], path: Path) -> None:
        kinds = [k for k in MEASURE_KINDS if k in measure]
        if not kinds:
            self.at_key(path, f"a measure needs one of: {', '.join(MEASURE_KINDS)}")
            return
        if len(kinds) > 1:
            self.at_key(
                path + (kinds[1],),
                f"a measure has exactly one of {', '.join(MEASURE_KINDS)}; this one has "
                f"{' and '.join(repr(k) for k in kinds)}",
            )
            return
        kind = kinds[0]
        spec = measure.get(kind)
        if kind not in ("events", "last") or not isinstance(spec, dict):
            return
        kpath = path + (kind,)
        if "window" in spec:
            self.check_window(kpath + ("window",), spec.get("window"))
        if "where" in spec:
            self.check_expression(kpath + ("where",), spec.get("where"), EVENT_NAMES)
        if kind == "events":
            aggregate = spec.get("aggregate", "count")
            if aggregate == "sum" and "value" not in spec:
                self.at_key(kpath + ("aggregate",), "aggregate: sum needs 'value', e.g. value: event.data.amount")
            elif aggregate == "count" and "value" in spec:
                self.at_key(kpath + ("value",), "'value' is only read with aggregate: sum; a count counts events")
        if "value" in spec:
            self.check_expression(kpath + ("value",), spec.get("value"), EVENT_NAMES)

    def check_window(self, path: Path, value: Any) -> None:
        if not isinstance(value, str):
            return
        try:
            duration = parse_duration(value)
        except DurationError as err:
            if "longer" in str(err) or "negative" in str(err):
                self.at_value(path, str(err))
            return  # a malformed duration: the schema's pattern says so
        if duration.business_days:
            self.at_value(
                path,
                f"a window must be a fixed duration (s, m, h, d or w); business days ('{value}') have no fixed "
                "length, so they cannot make a rolling window",
            )
        elif duration.seconds <= 0:
            self.at_value(path, f"a window must be longer than 0; got '{value}'")

    def check_rules(self, rules: Any, path: Path) -> None:
        if not isinstance(rules, list):
            return
        lowest_below: float | None = None  # values below this are matched already
        highest_at_least: float | None = None  # values at or above this are matched already
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            rpath = path + (i,)
            forms = [k for k in ("below", "at_least", "otherwise") if k in rule]
            if len(forms) != 1:
                if forms:
                    message = f"a rule has one of below, at_least or otherwise; this one has {' and '.join(forms)}"
                else:
                    message = "a rule needs below (with score), at_least (with score) or otherwise"
                self.at_key(rpath, message)
                continue
            form = forms[0]
            if form == "otherwise":
                if "score" in rule:
                    self.at_key(rpath + ("score",), "otherwise gives the score itself: write {otherwise: N}")
                if i != len(rules) - 1:
                    self.at_key(rpath + ("otherwise",), "'otherwise' matches every value: it can only be the last rule")
                continue
            if "score" not in rule:
                self.at_key(rpath, f"the rule '{form}' needs a 'score' (0 to 100)")
                continue
            bound = rule.get(form)
            if not isinstance(bound, (int, float)) or isinstance(bound, bool):
                continue
            if (lowest_below is not None and highest_at_least is not None and highest_at_least <= lowest_below) or (
                form == "below" and lowest_below is not None and bound <= lowest_below
            ) or (form == "at_least" and highest_at_least is not None and bound >= highest_at_least):
                self.at_key(
                    rpath + (form,),
                    f"this rule never matches: every value {form.replace('_', ' ')} {_num(bound)} is matched by a "
                    "rule before it",
                )
                continue
            if form == "below":
                lowest_below = bound if lowest_below is None else max(lowest_below, bound)
            else:
                highest_at_least = bound if highest_at_least is None else min(highest_at_least, bound)


def describe(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else "without a name"


# ---------------------------------------------------------------------------------------------- building


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _rules(items: list[dict[str, Any]]) -> tuple[ScoreRule, ...]:
    rules = []
    for item in items:
        if "otherwise" in item:
            rules.append(ScoreRule(None, None, float(item["otherwise"])))
        else:
            rules.append(ScoreRule(_float(item.get("below")), _float(item.get("at_least")), float(item["score"])))
    return tuple(rules)


def _window_seconds(text: str | None) -> float | None:
    return None if text is None else float(parse_duration(text).seconds)


def build_measure(data: dict[str, Any]) -> Measure:
    kind = next(k for k in MEASURE_KINDS if k in data)
    spec = data[kind]
    missing = data.get("missing", "skip")
    common = {
        "id": data["id"],
        "title": data.get("title") or data["id"],
        "weight": int(data["weight"]),
        "kind": kind,
        "rules": _rules(data["score"]),
        "missing_score": float(missing["score"]) if isinstance(missing, dict) else None,
    }
    if kind in ("events", "last"):
        window = spec.get("window")
        return Measure(
            source=spec["type"],
            window=window,
            window_seconds=_window_seconds(window),
            where=spec.get("where"),
            aggregate=spec.get("aggregate", "count") if kind == "events" else "",
            value=spec.get("value"),
            **common,
        )
    return Measure(
        source=spec, window=None, window_seconds=None, where=None, aggregate="", value=None, **common
    )


def _segment(value: Any) -> str | None:
    """The segment expression; None (every account) when absent or `true`; `false` scores no account."""
    if value is None or value is True:
        return None
    return "false" if value is False else str(value)


def build_scorecard(data: dict[str, Any], text: str, file: str) -> Scorecard:
    """The model of scorecard data that passed validation (defaults applied here, once)."""
    changes = data.get("changes") or {}
    segment = data.get("segment")
    return Scorecard(
        id=data["id"],
        title=data.get("title") or data["id"],
        segment=_segment(segment),
        bands=tuple(Band(b["name"], _float(b.get("below"))) for b in data["bands"]),
        on_band_change=bool(changes.get("band", True)),
        on_drop=_float(changes.get("drop")),
        measures=tuple(build_measure(m) for m in data["measures"]),
        version=content_version(text),
        file=file,
    )


# ---------------------------------------------------------------------------------------------- entry points


def validate_scorecard_text(text: str, file: str = "<scorecard>") -> ScorecardResult:
    loaded = load_document(text, file)
    result = ScorecardResult(loaded.file, loaded.text, loaded.doc, loaded.problems)
    if loaded.doc is None:
        return result
    doc = loaded.doc
    if doc.data is None:
        result.problems.append(
            Problem(file, 1, 1, "file is empty; a scorecard needs at least 'id', 'bands' and 'measures'")
        )
        return result
    if not isinstance(doc.data, dict):
        pos = doc.pos(())
        result.problems.append(
            Problem(
                file, pos.value_line, pos.value_col,
                "a scorecard must be a mapping (id, title, segment, bands, measures...); "
                f"got {'a list' if isinstance(doc.data, list) else repr(doc.data)}",
            )
        )
        return result
    meaning = _Meaning(doc, file).run()
    # Where the meaning checks said something precise about a value, the schema's general word on it is noise.
    precise = {(p.line, p.column) for p in meaning}
    schema = [p for p in _schema_problems(doc, file) if (p.line, p.column) not in precise]
    result.problems.extend(schema)
    result.problems.extend(meaning)
    result.problems = sorted(set(result.problems), key=lambda p: (p.line, p.column, p.message))
    if not result.problems:
        result.scorecard = build_scorecard(doc.data, text, file)
    return result


def validate_scorecard_file(path: FsPath | str) -> ScorecardResult:
    path = FsPath(path)
    text, problem = read_text(path)
    if problem:
        return ScorecardResult(str(path), text, problems=[problem])
    return validate_scorecard_text(text, str(path))


def check_unique_ids(results: list[ScorecardResult]) -> None:
    """Two files with the same scorecard id (in different folders): the later one is a problem."""
    first: dict[str, ScorecardResult] = {}
    for result in results:
        doc = result.doc
        card_id = result.scorecard.id if result.scorecard else (
            doc.data.get("id") if doc is not None and isinstance(doc.data, dict) else None
        )
        if not isinstance(card_id, str):
            continue
        if card_id not in first:
            first[card_id] = result
            continue
        if doc is None:
            continue
        pos = doc.pos(("id",))
        result.problems.append(
            Problem(
                result.file, pos.value_line, pos.value_col,
                f"scorecard id '{card_id}' is also used by {first[card_id].file}; ids are unique",
                "library", pos.value_len,
            )
        )
        result.scorecard = None


def load_scorecards(folder: FsPath | str) -> ScorecardLibrary:
    """Every scorecard file under a folder, validated; a missing folder is an empty library (health off)."""
    root = FsPath(folder)
    library = ScorecardLibrary(root)
    if not root.is_dir():
        return library
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(YAML_SUFFIXES)
                   and ".scenario." not in p.name)
    library.results = [validate_scorecard_file(p) for p in files]
    check_unique_ids(library.results)
    for result in library.results:
        if result.scorecard is not None:
            library.scorecards[result.scorecard.id] = result.scorecard
    return library


__all__ = [
    "Band",
    "Measure",
    "ScoreRule",
    "Scorecard",
    "ScorecardLibrary",
    "ScorecardResult",
    "is_scorecard_path",
    "load_scorecards",
    "looks_like_scorecard",
    "validate_scorecard_file",
    "validate_scorecard_text",
]
