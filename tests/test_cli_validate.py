"""`playbook validate` as an author or a CI job runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import PLAYBOOKS, ROOT

BROKEN = """\
id: broken-demo
steps:
  - id: welcome
    email:
      to: "{{ contact.email }}"
      subjet: Hello
      body: Hi
  - wait: 3 days
"""


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_valid_library_exits_zero():
    result = run("validate", str(PLAYBOOKS))
    assert result.returncode == 0, result.stderr
    assert "all valid" in result.stderr


def test_default_path_is_the_library():
    result = run("validate")
    assert result.returncode == 0, result.stderr


def test_text_format_names_file_line_column_and_shows_the_source(tmp_path):
    path = tmp_path / "broken-demo.yaml"
    path.write_text(BROKEN)
    result = run("validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    # the typo is one mistake: no second "missing required key 'subject'" for it
    assert not any("missing required key 'subject'" in line for line in lines)
    assert f"{path}:6:7: unknown key 'subjet' in email step; did you mean 'subject'? [schema]" in lines
    i = lines.index(f"{path}:6:7: unknown key 'subjet' in email step; did you mean 'subject'? [schema]")
    assert lines[i + 2] == "6 |       subjet: Hello"
    assert lines[i + 3] == "  |       ^~~~~~"
    assert any(line.startswith(f"{path}:8:11: invalid 'wait' '3 days'") for line in lines)
    assert "2 problem(s) in 1 file(s)" in result.stderr


def test_json_format(tmp_path):
    path = tmp_path / "broken-demo.yaml"
    path.write_text(BROKEN)
    good = PLAYBOOKS / "repricer-onboarding.yaml"
    result = run("validate", "--format", "json", str(path), str(good))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    broken, ok = report["files"]
    assert ok == {"file": str(good), "valid": True, "problems": []}
    assert broken["valid"] is False
    assert broken["problems"][0] == {
        "file": str(path),
        "line": 6,
        "column": 7,
        "message": "unknown key 'subjet' in email step; did you mean 'subject'?",
        "rule": "schema",
    }


def test_github_format_annotates_the_line(tmp_path):
    path = tmp_path / "broken-demo.yaml"
    path.write_text(BROKEN)
    result = run("validate", "--format", "github", str(path))
    assert result.returncode == 1
    assert (
        f"::error file={path},line=6,col=7,title=playbook schema::"
        "unknown key 'subjet' in email step; did you mean 'subject'?"
        in result.stdout.splitlines()
    )


def test_missing_path_is_a_usage_error(tmp_path):
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr


def test_list_shows_the_library():
    result = run("list")
    assert result.returncode == 0, result.stderr
    assert "repricer-onboarding" in result.stdout
    assert "event account.signed_up" in result.stdout
