"""Broken playbooks and the exact problems the validator must report for each.

Every file in tests/corpus/broken/ is a small, realistic playbook with one deliberate mistake (a few
have two, to show that all problems are reported at once). tests/corpus/broken/expected.yaml maps
each file name to its problems as ``"LINE:COL: message"``, in the validator's order. The expectation
is what an author who made the mistake needs to read, so where the validator falls short, the file
holds what it should print (marked DEFECT, with what it prints today).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from engine.language.validator import validate_playbook_file

CORPUS = Path(__file__).resolve().parent / "corpus" / "broken"
EXPECTED_FILE = CORPUS / "expected.yaml"
_LINE = re.compile(r"^(\d+):(\d+): (.+)$", re.DOTALL)


def _expected() -> dict[str, list[str]]:
    data = yaml.safe_load(EXPECTED_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{EXPECTED_FILE} must map file names to lists of 'LINE:COL: message'"
    return data


def _corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.yaml") if p != EXPECTED_FILE)


EXPECTED = _expected()
FILES = _corpus_files()


def _parse(entry: str) -> tuple[int, int, str]:
    match = _LINE.match(entry)
    assert match, f"expectation {entry!r} is not 'LINE:COL: message'"
    return int(match[1]), int(match[2]), match[3]


def _problems_of(path: Path) -> list[tuple[int, int, str]]:
    result = validate_playbook_file(path)
    problems = [(p.line, p.column, p.message) for p in result.problems]
    assert (result.playbook is None) == bool(problems), "a model is built exactly when there is no problem"
    return problems


def test_every_corpus_file_has_an_expectation_and_every_expectation_a_file():
    assert len(FILES) >= 45
    without_expectation = sorted(set(FILES) - set(EXPECTED))
    without_file = sorted(set(EXPECTED) - set(FILES))
    assert not without_expectation, f"corpus files with no entry in expected.yaml: {without_expectation}"
    assert not without_file, f"entries in expected.yaml with no corpus file: {without_file}"


def test_expectations_are_well_formed():
    for name, entries in EXPECTED.items():
        assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", name), f"corpus file names are NN-short-name.yaml: {name}"
        assert isinstance(entries, list) and entries, f"{name}: a broken playbook has at least one problem"
        for entry in entries:
            assert isinstance(entry, str), f"{name}: {entry!r} is not a string"
            _parse(entry)


@pytest.mark.parametrize("name", FILES)
def test_broken_playbook_reports_exactly_the_expected_problems(name: str):
    if name not in EXPECTED:
        pytest.fail(f"{name} has no entry in expected.yaml")
    expected = [_parse(entry) for entry in EXPECTED[name]]
    actual = _problems_of(CORPUS / name)
    # compared as text so that a failure shows the two lists line by line
    assert [f"{ln}:{c}: {m}" for ln, c, m in actual] == [f"{ln}:{c}: {m}" for ln, c, m in expected]


def test_alias_bomb_is_refused_fast():
    # CPU time of this process, not wall time: the bound is about the loader's work, and on a shared machine
    # (CI runs the suite beside servers and workers) other processes' load made the wall time flaky
    started = time.process_time()
    problems = _problems_of(CORPUS / "54-alias-bomb.yaml")
    elapsed = time.process_time() - started
    assert elapsed < 2.0, f"the billion-laughs file took {elapsed:.1f}s"
    assert len(problems) == 1
    assert "more than 100,000 values" in problems[0][2]


def test_five_megabyte_playbook_is_refused_by_size(tmp_path: Path):
    # Generated rather than committed: a realistic playbook whose email body was pasted far too long.
    head = (
        "id: welcome-series\n"
        "title: Welcome series\n"
        "trigger:\n"
        "  event: account.signed_up\n"
        "steps:\n"
        "  - id: welcome\n"
        "    email:\n"
        '      to: "{{ contact.email }}"\n'
        "      subject: Welcome aboard\n"
        "      body: |\n"
    )
    filler = "        Glad to have you with us. Here is everything you need to know to get started.\n"
    size = 5_000_000
    text = head + filler * ((size - len(head)) // len(filler) + 1)
    path = tmp_path / "huge.yaml"
    path.write_bytes(text.encode("utf-8")[:size])
    assert path.stat().st_size == size
    started = time.perf_counter()
    problems = _problems_of(path)
    assert time.perf_counter() - started < 1.0
    assert problems == [(1, 1, "file is 5.0 MB; a playbook or scenario may be at most 1 MB")]
