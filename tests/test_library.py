"""The bundled library: every playbook and scenario validates, and the model is plain, stable data."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.converter import DataConverter

from engine.language.library import Library, is_playbook_file, validate_paths
from engine.language.model import Playbook, from_data, to_data
from engine.language.validator import validate_playbook_file
from tests.paths import PLAYBOOKS, bundled_scenarios
from tests.paths import bundled_playbooks as bundled_yaml


def bundled_playbooks():
    """playbooks/*.yaml without the library's policy.yaml."""
    return [p for p in bundled_yaml() if is_playbook_file(p)]


def test_library_is_not_empty():
    ids = set(Library.load(PLAYBOOKS).playbooks)
    assert "repricer-onboarding" in ids


def test_every_file_in_the_library_validates():
    results = validate_paths([PLAYBOOKS])
    problems = [p.header() for r in results for p in r.problems]
    assert problems == []
    assert len(results) == len(bundled_playbooks()) + len(bundled_scenarios()) + 1  # and policy.yaml


@pytest.mark.parametrize("path", bundled_playbooks(), ids=lambda p: p.name)
def test_file_name_is_the_playbook_id(path):
    playbook = validate_playbook_file(path).playbook
    assert playbook is not None
    assert path.stem == playbook.id


@pytest.mark.parametrize("path", bundled_scenarios(), ids=lambda p: p.name)
def test_every_scenario_has_a_playbook_with_its_steps(path):
    results = validate_paths([path])
    assert [p.header() for p in results[0].problems] == []
    assert results[0].playbook is not None


@pytest.mark.parametrize("path", bundled_playbooks(), ids=lambda p: p.name)
def test_model_round_trips_through_json(path):
    playbook = validate_playbook_file(path).playbook
    data = json.loads(json.dumps(to_data(playbook)))
    assert from_data(data) == playbook


@pytest.mark.parametrize("path", bundled_playbooks(), ids=lambda p: p.name)
def test_model_round_trips_through_temporal_data_converter(path):
    """The model is the interpreter workflow's input: Temporal's own converter must carry it unchanged."""
    playbook = validate_playbook_file(path).playbook

    async def round_trip() -> Playbook:
        payloads = await DataConverter.default.encode([playbook])
        (back,) = await DataConverter.default.decode(payloads, [Playbook])
        return back

    assert asyncio.run(round_trip()) == playbook


def test_version_is_the_content_hash_of_the_exact_text(tmp_path):
    source = (PLAYBOOKS / "repricer-onboarding.yaml").read_text()
    a = tmp_path / "a.yaml"
    a.write_text(source)
    b = tmp_path / "b.yaml"
    b.write_text(source.replace("Welcome to Repricer", "Welcome aboard Repricer"))
    c = tmp_path / "c.yaml"
    c.write_text(source.replace("\n", "\r\n"))
    va, vb, vc = (validate_playbook_file(p).playbook.version for p in (a, b, c))
    assert va != vb
    assert va == vc  # line endings do not make a new version
    assert va == validate_playbook_file(a).playbook.version  # stable


def test_step_paths_are_unique_positions():
    for path in bundled_playbooks():
        playbook = validate_playbook_file(path).playbook
        paths = [s.path for s in playbook.walk()]
        assert len(paths) == len(set(paths))
        assert all(p.startswith("steps.") for p in paths)
