"""engine/language/uses.py: what a for_each's steps refer to, which is all a slice of its items is given."""

from __future__ import annotations

import yaml

from engine.language.build import build_playbook
from engine.language.library import Library
from engine.language.model import ForEachStep
from engine.language.uses import uses_of
from tests.paths import PLAYBOOKS


def for_each_of(text: str) -> ForEachStep:
    playbook = build_playbook(yaml.safe_load(text), text)
    step = playbook.steps[0]
    assert isinstance(step, ForEachStep)
    return step


def test_the_webinar_items_use_its_vars_by_name_and_not_the_contacts():
    step = Library.load(PLAYBOOKS).playbooks["webinar-invitations"].steps[0]
    assert isinstance(step, ForEachStep)
    uses = uses_of(step.steps)
    assert {"person", "vars", "steps"} <= uses.names
    assert "contacts" not in uses.names and "contact" not in uses.names
    assert uses.entries_of("vars") == {
        "webinar_at", "webinar_id", "webinar_title", "join_url", "recording_url", "strategy_review_url"
    }


BASE = """
id: t
title: t
trigger: { manual: true }
steps:
  - for_each:
      items: range(3) | list
      steps:
        - crm:
            tag: "{tag}"
"""


def test_a_name_used_whole_means_all_of_it():
    assert uses_of(for_each_of(BASE.replace("{tag}", "{{ vars | length }}")).steps).entries_of("vars") is None
    assert uses_of(for_each_of(BASE.replace("{tag}", "{{ steps[item].x }}")).steps).entries_of("steps") is None
    assert uses_of(for_each_of(BASE.replace("{tag}", "{{ steps.a.x }}")).steps).entries_of("steps") == {"a"}


def test_contacts_are_used_only_when_named():
    assert "contacts" not in uses_of(for_each_of(BASE.replace("{tag}", "x-{{ item }}")).steps).names
    assert "contacts" in uses_of(for_each_of(BASE.replace("{tag}", "{{ contacts | length }}")).steps).names
    assert "contact" in uses_of(for_each_of(BASE.replace("{tag}", "{{ contact.email }}")).steps).names
