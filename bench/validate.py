"""Validates 1,000 distinct playbooks and prints the time (goal: under 2 s on a 2-core machine).

The playbooks are the bundled library's, each copied with a new id and every template expression
made textually unique, so no cache hides the work of parsing templates. Side by side, in the same run, the same
files are only read and parsed with PyYAML's safe loader: the ratio says what validation costs on top of parsing,
independent of how busy the machine is.

    .venv/bin/python bench/validate.py [--count 1000]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.language.library import is_playbook_file, validate_paths  # noqa: E402
from engine.language.validator import validate_playbook_file  # noqa: E402


def make_corpus(folder: Path, count: int) -> list[Path]:
    sources = sorted(p for p in (ROOT / "playbooks").glob("*.yaml") if is_playbook_file(p))  # not policy.yaml
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        text = source.read_text(encoding="utf-8")
        original_id = re.search(r"^id:\s*(\S+)", text, re.M).group(1)
        new_id = f"{original_id}-{i}"
        # Change the id, and give every {{ expression }} whitespace no other file has (the file number in
        # binary, as spaces and tabs): the same parsing work, but no cache can hide it. (Bare `when:`
        # expressions stay as they are: about 1 in 6 expressions.)
        text = re.sub(r"^id:\s*\S+", f"id: {new_id}", text, count=1, flags=re.M)
        pad = "".join(" " if bit == "0" else "\t" for bit in f"{i:010b}")
        text = re.sub(r"\{\{(.*?)\}\}", lambda m, pad=pad: "{{" + m.group(1) + pad + "}}", text, flags=re.S)
        path = folder / f"{new_id}.yaml"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_corpus(Path(tmp), args.count)
        start = time.perf_counter()
        for p in paths:
            yaml.load(p.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        parse_only = time.perf_counter() - start

        start = time.perf_counter()
        results = validate_paths(paths)  # what `playbook validate` does: every core for a large library
        elapsed = time.perf_counter() - start
        problems = sum(len(r.problems) for r in results)

        start = time.perf_counter()
        for p in paths:
            validate_playbook_file(p)  # one core, one file after another
        serial = time.perf_counter() - start
    print(f"validated {len(results)} playbooks in {elapsed:.2f} s ({elapsed / len(results) * 1000:.2f} ms each), "
          f"{problems} problem(s)")
    print(f"one core, file after file: {serial:.2f} s ({serial / len(results) * 1000:.2f} ms each)")
    ratio = serial / parse_only
    print(f"PyYAML safe_load alone, same files: {parse_only:.2f} s; one-core validation/parse ratio {ratio:.1f}x")
    print(f"goal: under 2 s -> {'met' if elapsed < 2 else 'NOT met'}")
    if problems:
        sys.exit("the corpus should be valid: the benchmark measured failing files")


if __name__ == "__main__":
    main()
