"""Validates one playbook: YAML syntax, then schema and meaning together, then builds the model.

Every problem of the file is reported at once, sorted by position. The model is built only when
there is none: a playbook with an error never starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path as FsPath

from .build import build_playbook
from .documents import Loaded, load_document, read_text
from .meaning import check_meaning
from .model import Playbook
from .policy import DEFAULT_POLICY, Policy
from .policy_file import PolicyFinder
from .problems import Problem
from .schema_check import schema_problems


@dataclass
class PlaybookResult(Loaded):
    playbook: Playbook | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.playbook is not None


def validate_playbook_text(
    text: str, file: str = "<playbook>", policy: Policy | None = DEFAULT_POLICY
) -> PlaybookResult:
    """Validates a playbook's text against a messaging policy, which the built model carries.

    ``policy``: the library's (default: the built-in one); None when it is unknown (its file is broken):
    email categories are then not checked and no model is built.
    """
    loaded = load_document(text, file)
    result = PlaybookResult(loaded.file, loaded.text, loaded.doc, loaded.problems)
    if loaded.doc is None:
        return result
    doc = loaded.doc
    if doc.data is None:
        empty = Problem(file, 1, 1, "file is empty; a playbook needs at least 'id' and 'steps'", "schema")
        result.problems.append(empty)
        return result
    categories = tuple(c.name for c in policy.categories) if policy is not None else None
    policy_file = policy.file if policy is not None else None
    meaning, bad_steps = (
        check_meaning(doc, file, categories, policy_file) if isinstance(doc.data, dict) else ([], set())
    )
    # Where the meaning checks said something precise about a value, the schema's general word on it is noise.
    precise = {(p.line, p.column) for p in meaning}
    schema = schema_problems(doc, file, "playbook", skip=bad_steps)
    result.problems.extend(p for p in schema if (p.line, p.column) not in precise)
    result.problems.extend(meaning)
    result.problems = sorted(set(result.problems), key=lambda p: (p.line, p.column, p.message))
    if not result.problems and policy is not None:
        result.playbook = build_playbook(doc.data, text, policy)
    return result


def validate_playbook_file(path: FsPath | str, finder: PolicyFinder | None = None) -> PlaybookResult:
    """Validates a playbook file against the policy that applies to it (see policy_file.find_policy_file).

    ``finder``: shares the policy files read among many playbooks (a library's); default: a lone file's.
    """
    path = FsPath(path)
    text, problem = read_text(path)
    if problem:
        return PlaybookResult(str(path), text, problems=[problem])
    found = (finder or PolicyFinder()).result_for(path)
    if found is None:
        return validate_playbook_text(text, str(path), DEFAULT_POLICY)
    if found.policy is not None:
        return validate_playbook_text(text, str(path), found.policy)
    result = validate_playbook_text(text, str(path), None)
    message = (
        f"the messaging policy {found.file} that applies to this playbook has {len(found.problems)} problem(s); "
        "no run can start until it is fixed"
    )
    result.problems.insert(0, Problem(str(path), 1, 1, message, "reference"))
    result.playbook = None
    return result


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

