"""policy.yaml: validated like a playbook (problems with file:line:column), built into a Policy, and found.

Which policy applies to a playbook file: the nearest policy.yaml in its folder or a folder above,
searching no higher than the library's root (or, for a lone file, than a repository's root);
none found, the built-in DEFAULT_POLICY.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from .documents import Loaded, load_document, read_text
from .durations import DurationError, parse_duration
from .policy import Cap, Category, Policy
from .problems import Problem
from .schema_check import schema_problems, suggest
from .yaml_source import Document, Path

POLICY_FILE_NAMES = ("policy.yaml", "policy.yml")
DEFAULT_MAX_DELAY = "3d"



@dataclass
class PolicyResult(Loaded):
    policy: Policy | None = None
    playbook: None = None  # a policy file is not a playbook: lets tables of results treat it alike

    @property
    def ok(self) -> bool:
        return not self.problems and self.policy is not None


def is_policy_file(path: FsPath) -> bool:
    return path.name in POLICY_FILE_NAMES


def _seconds(text: str) -> int | None:
    try:
        duration = parse_duration(text)
    except DurationError:
        return None
    return None if duration.business_days else duration.seconds


def check_policy_meaning(doc: Document, file: str, data: Any, prefix: Path = ()) -> list[Problem]:
    """What the schema cannot say: names that must exist, windows that must be fixed and not empty."""
    problems: list[Problem] = []

    def at_value(path: Path, message: str) -> None:
        pos = doc.pos(prefix + path)
        problems.append(Problem(file, pos.value_line, pos.value_col, message, "meaning", pos.value_len))

    def at_key(path: Path, message: str) -> None:
        pos = doc.pos(prefix + path)
        problems.append(Problem(file, pos.key_line, pos.key_col, message, "meaning", pos.key_len))

    if not isinstance(data, dict):
        return problems
    categories = data.get("categories")
    names = [k for k in categories if isinstance(k, str)] if isinstance(categories, dict) else []

    def need_category(path: Path, name: Any, what: str) -> None:
        if not isinstance(name, str) or not isinstance(categories, dict) or name in names:
            return
        close = suggest(name, names)
        hint = f"; did you mean '{close}'?" if close else f"; declared: {', '.join(names) or 'none'}"
        at_value(path, f"{what} '{name}' is not a category of the policy{hint}")

    def window(path: Path, value: Any, what: str) -> None:
        if not isinstance(value, str):
            return
        try:
            duration = parse_duration(value)
        except DurationError as err:
            if "longer" in str(err) or "negative" in str(err):
                at_value(path, str(err))
            return  # a malformed duration: the schema's pattern says so
        if duration.business_days:
            at_value(
                path,
                f"{what} must be a fixed duration (m, h, d or w); business days ('{value}') have no fixed length, "
                "so they cannot make a rolling window",
            )
        elif duration.seconds <= 0:
            at_value(path, f"{what} must be longer than 0; got '{value}'")

    need_category(("default_category",), data.get("default_category"), "default_category")
    for i, cap in enumerate(data.get("caps") or []):
        if not isinstance(cap, dict):
            continue
        window(("caps", i, "per"), cap.get("per"), "a cap's 'per'")
        for j, name in enumerate(cap.get("categories") or []):
            need_category(("caps", i, "categories", j), name, "cap category")
    if "max_delay" in data:
        window(("max_delay",), data.get("max_delay"), "max_delay")
        if data.get("when_capped", "skip") != "defer":
            at_key(("max_delay",), "'max_delay' only applies with 'when_capped: defer'")
    return problems


def build_policy(data: dict[str, Any], file: str | None = None) -> Policy:
    """The model of policy data that passed validation (defaults applied here, once)."""
    categories = tuple(
        Category(
            name=name,
            unsubscribe=bool((spec or {}).get("unsubscribe", True)),
            capped=bool((spec or {}).get("capped", True)),
            sendgrid_group=(spec or {}).get("sendgrid_group"),
        )
        for name, spec in data["categories"].items()
    )
    caps = tuple(
        Cap(
            channel=cap.get("channel", "email"),
            max=int(cap["max"]),
            per=cap["per"],
            per_seconds=_seconds(cap["per"]) or 0,
            categories=tuple(cap.get("categories") or ()),
        )
        for cap in data.get("caps") or []
    )
    when_capped = data.get("when_capped", "skip")
    max_delay = data.get("max_delay", DEFAULT_MAX_DELAY) if when_capped == "defer" else None
    return Policy(
        default_category=data["default_category"],
        categories=categories,
        caps=caps,
        when_capped=when_capped,
        max_delay=max_delay,
        max_delay_seconds=_seconds(max_delay) if max_delay else None,
        file=file,
    )


def policy_problems(doc: Document, file: str) -> list[Problem]:
    meaning = check_policy_meaning(doc, file, doc.data)
    # Where the meaning check said something precise about a value, the schema's pattern error on it is noise.
    precise = {(p.line, p.column) for p in meaning}
    schema = [p for p in schema_problems(doc, file, "policy") if (p.line, p.column) not in precise]
    return sorted(set(schema + meaning), key=lambda p: (p.line, p.column, p.message))


def validate_policy_text(text: str, file: str = "<policy>") -> PolicyResult:
    loaded = load_document(text, file)
    result = PolicyResult(loaded.file, loaded.text, loaded.doc, loaded.problems)
    if loaded.doc is None:
        return result
    if loaded.doc.data is None:
        result.problems.append(
            Problem(file, 1, 1, "file is empty; a policy needs at least 'default_category' and 'categories'")
        )
        return result
    result.problems.extend(policy_problems(loaded.doc, file))
    result.problems = sorted(set(result.problems), key=lambda p: (p.line, p.column, p.message))
    if not result.problems:
        result.policy = build_policy(loaded.doc.data, file)
    return result


def validate_policy_file(path: FsPath | str) -> PolicyResult:
    path = FsPath(path)
    text, problem = read_text(path)
    if problem:
        return PolicyResult(str(path), text, problems=[problem])
    return validate_policy_text(text, str(path))


# ------------------------------------------------------------------------ which policy applies


def find_policy_file(folder: FsPath, stop_at: FsPath | None = None) -> FsPath | None:
    """The nearest policy.yaml in ``folder`` or a folder above it.

    The search stops after ``stop_at`` (a library's root), or after a folder that is a repository's
    root (holds .git): a policy never comes from outside the library or the repository.
    """
    folder = folder.resolve()
    stop = stop_at.resolve() if stop_at is not None else None
    for candidate in [folder, *folder.parents]:
        for name in POLICY_FILE_NAMES:
            path = candidate / name
            if path.is_file():
                return _relative(path)
        if candidate == stop or (candidate / ".git").exists():
            return None
    return None


def _relative(path: FsPath) -> FsPath:
    """Relative to the working folder when under it: messages and a run's input then name it as the author does."""
    try:
        return path.relative_to(FsPath.cwd())
    except ValueError:
        return path


class PolicyFinder:
    """Finds and validates the policy of playbook files, each policy file read once per finder."""

    def __init__(self, stop_at: FsPath | None = None) -> None:
        self.stop_at = stop_at
        self._by_folder: dict[FsPath, FsPath | None] = {}
        self._results: dict[FsPath, PolicyResult] = {}

    def result_for(self, playbook_file: FsPath) -> PolicyResult | None:
        """The validated policy file that applies to a playbook file; None: no file, the default applies."""
        folder = playbook_file.parent.resolve()
        if folder not in self._by_folder:
            self._by_folder[folder] = find_policy_file(folder, self.stop_at)
        policy_file = self._by_folder[folder]
        if policy_file is None:
            return None
        if policy_file not in self._results:
            self._results[policy_file] = validate_policy_file(policy_file)
        return self._results[policy_file]

    def results(self) -> Iterable[PolicyResult]:
        return self._results.values()
