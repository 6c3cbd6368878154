"""A library of playbooks (a folder) and validation of many files at once.

Cross-file rules live here: playbook ids are unique in a library, ``run_playbook`` names a playbook
of the library, a scenario's ``playbook`` resolves to a valid playbook, and each playbook is checked
against (and carries) the messaging policy that applies to it: the library's policy.yaml, else the
built-in default. A policy file is validated as a policy, never as a playbook; a health scorecard (a
YAML file under a folder named ``scorecards``, or one declaring a top-level ``measures:`` and no
``steps:``) as a scorecard, with scorecard ids unique among the files validated together.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .documents import load_document, read_text
from .model import Playbook, RunPlaybookStep
from .policy import DEFAULT_POLICY, Policy
from .policy_file import PolicyFinder, PolicyResult, is_policy_file, validate_policy_file
from .problems import Problem
from .scenario import ScenarioResult, validate_scenario_file
from .schema_check import fast_schema_check, suggest
from .scorecard import (
    ScorecardResult,
    check_unique_ids,
    is_scorecard_path,
    looks_like_scorecard,
    validate_scorecard_file,
)
from .validator import PlaybookResult, validate_playbook_file
from .yaml_source import Document

SCENARIO_SUFFIXES = (".scenario.yaml", ".scenario.yml")
YAML_SUFFIXES = (".yaml", ".yml")

FileResult = PlaybookResult | ScenarioResult | PolicyResult | ScorecardResult


def is_scenario(path: Path) -> bool:
    return path.name.endswith(SCENARIO_SUFFIXES)


def is_playbook_file(path: Path) -> bool:
    return (
        path.name.endswith(YAML_SUFFIXES)
        and not is_scenario(path)
        and not is_policy_file(path)
        and not is_scorecard_path(path)
    )


def is_scorecard_file(path: Path) -> bool:
    """A scorecard: a YAML file under a folder named `scorecards`, or one whose text declares a top-level
    `measures:` and no `steps:` (read here; an unreadable file is not one)."""
    if is_scorecard_path(path):
        return True
    if not path.name.endswith(YAML_SUFFIXES) or is_scenario(path) or is_policy_file(path):
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(1_000_001)
    except OSError:
        return False
    return b"measures" in head and looks_like_scorecard(head.decode("utf-8", "replace"))


def discover(paths: Iterable[Path | str]) -> list[Path]:
    """Files named, and YAML files under folders named (sorted), without duplicates."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(YAML_SUFFIXES)))
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


@dataclass
class Library:
    """The valid playbooks of one folder (not its scenarios or policy), by id, and its messaging policy."""

    root: Path
    playbooks: dict[str, Playbook] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    results: list[PlaybookResult] = field(default_factory=list)
    policy: Policy | None = DEFAULT_POLICY  # the root's; None when its policy.yaml is broken
    policy_results: list[PolicyResult] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path | str) -> Library:
        root = Path(root)
        lib = cls(root)
        finder = PolicyFinder(stop_at=root)
        own = finder.result_for(root / "_")
        lib.policy = DEFAULT_POLICY if own is None else own.policy
        for path in discover([root]):
            if not is_playbook_file(path) or is_scorecard_file(path):
                continue
            result = validate_playbook_file(path, finder)
            lib.results.append(result)
            if result.playbook is not None and result.playbook.id not in lib.playbooks:
                lib.playbooks[result.playbook.id] = result.playbook
                lib.files[result.playbook.id] = path
        lib.policy_results = list(finder.results())
        return lib


def find_library_root(scenario: Path) -> Path:
    """The nearest folder above a scenario that holds playbooks (playbooks/tests/x.scenario.yaml -> playbooks/)."""
    for folder in [scenario.parent, *scenario.parent.parents]:
        if any(is_playbook_file(p) for p in folder.glob("*.y*ml")):
            return folder
    return scenario.parent


class Resolver:
    """Resolves a scenario's `playbook:` by id in its library, or by path relative to the scenario."""

    def __init__(self, extra: dict[str, Playbook] | None = None) -> None:
        self._libraries: dict[Path, Library] = {}
        self.extra = extra or {}

    def library_for(self, scenario: Path) -> Library:
        root = find_library_root(scenario).resolve()
        if root not in self._libraries:
            self._libraries[root] = Library.load(root)
        return self._libraries[root]

    def __call__(self, reference: str, scenario: Path) -> Playbook | str:
        if reference.endswith(YAML_SUFFIXES) or "/" in reference:
            target = (scenario.parent / reference).resolve()
            if not target.exists():
                return f"playbook file '{reference}' does not exist (relative to {scenario.parent})"
            result = validate_playbook_file(target)
            if result.playbook is None:
                return f"playbook '{reference}' has {len(result.problems)} problem(s); run playbook validate on it"
            return result.playbook
        if reference in self.extra:
            return self.extra[reference]
        library = self.library_for(scenario)
        if reference in library.playbooks:
            return library.playbooks[reference]
        broken = [
            r for r in library.results if r.doc and isinstance(r.doc.data, dict) and r.doc.data.get("id") == reference
        ]
        if broken:
            return f"playbook '{reference}' ({broken[0].file}) has problems; fix them first"
        close = suggest(reference, library.playbooks)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"no playbook '{reference}' in {library.root}{hint}"


def validate_paths(paths: Iterable[Path | str]) -> list[FileResult]:
    """Validates every playbook, scenario, policy and scorecard named (folders: every YAML file under them)."""
    files = discover(paths)
    results: list[FileResult] = []
    finder = PolicyFinder()
    scorecards = {p: validate_scorecard_file(p) for p in files if is_scorecard_file(p)}
    check_unique_ids(list(scorecards.values()))
    playbook_results = _validate_many([p for p in files if is_playbook_file(p) and p not in scorecards], finder)
    valid = {r.playbook.id: r.playbook for r in playbook_results if r.playbook is not None}
    _check_library(playbook_results)
    resolver = Resolver(extra=valid)
    by_file = {r.file: r for r in playbook_results}
    for path in files:
        if path in scorecards:
            results.append(scorecards[path])
        elif is_scenario(path):
            results.append(validate_scenario_file(path, resolver))
        elif is_policy_file(path):
            results.append(_policy_result(path, finder))
        elif str(path) in by_file:
            results.append(by_file[str(path)])
        else:  # named explicitly but not YAML: reported as a playbook, which it was given as
            results.append(validate_playbook_file(path, finder))
    return results


def _policy_result(path: Path, finder: PolicyFinder) -> PolicyResult:
    """The policy file's result, as its playbooks saw it when it was read for them (once), else read now."""
    known = {Path(r.file).resolve(): r for r in finder.results()}
    found = known.get(path.resolve())
    if found is None:
        return validate_policy_file(path)
    return PolicyResult(str(path), found.text, found.doc, list(found.problems), found.policy)


PARALLEL_FROM = 64  # below this many files, starting processes costs more than it saves


_FINDER = PolicyFinder()  # the policies of the files a pool validates, read before it forks


def _validate_many(paths: list[Path], finder: PolicyFinder) -> list[PlaybookResult]:
    """Validates files, on every core when there are many (a large library in CI)."""
    global _FINDER
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_FROM or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [validate_playbook_file(p, finder) for p in paths]
    fast_schema_check("playbook")  # compiled once here, inherited by the forked workers
    for path in paths:
        finder.result_for(path)  # each policy file read once here, not once per worker
    _FINDER = finder
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_validate_slim, paths, chunksize=max(1, len(paths) // (workers * 4)))


def _validate_slim(path: Path) -> PlaybookResult:
    """A valid file's result without its text and positions: sending those back costs more than finding them."""
    result = validate_playbook_file(path, _FINDER)
    if not result.problems:
        result.doc = None
        result.text = ""
    return result


def _document_of(result: PlaybookResult) -> Document | None:
    if result.doc is None:
        text, problem = read_text(Path(result.file))
        result.text = text
        result.doc = None if problem else load_document(text, result.file).doc
    return result.doc


def _check_library(results: list[PlaybookResult]) -> None:
    """Duplicate ids and run_playbook targets across the files validated together (and their folders)."""
    first_by_id: dict[str, PlaybookResult] = {}
    for result in results:
        if result.playbook is not None:
            pid: object = result.playbook.id
        elif result.doc is not None and isinstance(result.doc.data, dict):
            pid = result.doc.data.get("id")
        else:
            continue
        if not isinstance(pid, str):
            continue
        if pid in first_by_id:
            doc = _document_of(result)
            if doc is None:
                continue
            pos = doc.pos(("id",))
            result.problems.append(
                Problem(
                    result.file,
                    pos.value_line,
                    pos.value_col,
                    f"playbook id '{pid}' is also used by {first_by_id[pid].file}; ids are unique in a library",
                    "library",
                    pos.value_len,
                )
            )
            result.playbook = None
        else:
            first_by_id[pid] = result
    folder_ids: dict[Path, set[str]] = {}  # loaded only when a target is not among the files given
    for result in results:
        if result.playbook is None:
            continue
        folder = Path(result.file).parent.resolve()
        for step in result.playbook.walk():
            if not isinstance(step, RunPlaybookStep) or step.playbook_id in first_by_id:
                continue
            if folder not in folder_ids:
                folder_ids[folder] = set(Library.load(folder).playbooks)
            known = folder_ids[folder] | set(first_by_id)
            if step.playbook_id not in known:
                path = tuple(int(p) if p.isdigit() else p for p in step.path.split(".")) + ("run_playbook", "id")
                doc = _document_of(result)
                if doc is None:
                    continue
                pos = doc.pos(path)
                close = suggest(step.playbook_id, known)
                hint = f"; did you mean '{close}'?" if close else ""
                result.problems.append(
                    Problem(
                        result.file,
                        pos.value_line,
                        pos.value_col,
                        f"run_playbook: no playbook '{step.playbook_id}' in the library{hint}",
                        "library",
                        pos.value_len,
                    )
                )
                result.playbook = None
