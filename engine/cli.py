"""The `playbook` command."""

from __future__ import annotations

import enum
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .language.library import FileResult, discover, is_scenario, validate_paths
from .language.model import Playbook
from .language.problems import format_github, format_json, format_text
from .language.scenario import ScenarioResult

app = typer.Typer(
    name="playbook",
    help="Customer-success playbooks: validate, test and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_LIBRARY = Path("playbooks")


class Format(str, enum.Enum):
    text = "text"
    json = "json"
    github = "github"


def _console() -> Console:
    # rich assumes 80 columns when not on a terminal, which folds every cell of the table
    return Console() if sys.stdout.isatty() else Console(width=140)


def _problems(results: list[FileResult]) -> list:
    return [p for r in results for p in r.problems]


def _print_problems(results: list[FileResult], fmt: Format, err: Console) -> None:
    problems = _problems(results)
    if fmt is Format.json:
        print(format_json((r.file, r.problems) for r in results))
    elif fmt is Format.github:
        if problems:
            print(format_github(problems))
    elif problems:
        err.print(format_text(problems, {r.file: r.text for r in results}), markup=False, highlight=False, soft_wrap=True)


@app.command()
def validate(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Playbook or scenario files, or folders (default: playbooks/).")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="text, json, or github (annotations for CI).")] = Format.text,
) -> None:
    """Check playbooks and scenarios: YAML, schema and meaning. Exits 1 on any problem."""
    targets = paths or [DEFAULT_LIBRARY]
    missing = [p for p in targets if not p.exists()]
    err = Console(stderr=True)
    if missing:
        err.print(f"no such file or folder: {', '.join(map(str, missing))}", markup=False)
        raise typer.Exit(2)
    results = validate_paths(targets)
    _print_problems(results, format, err)
    problems = _problems(results)
    if format is Format.text:
        files_bad = sum(1 for r in results if r.problems)
        summary = f"{len(results)} file(s) checked, {len(problems)} problem(s) in {files_bad} file(s)"
        err.print(summary if problems else f"{len(results)} file(s) checked, all valid", markup=False)
    raise typer.Exit(1 if problems else 0)


def _trigger_text(playbook: Playbook) -> str:
    t = playbook.trigger
    if t.type == "event":
        return f"event {t.event}" + (" (filtered)" if t.when else "")
    if t.type == "schedule":
        return f"schedule {t.cron}"
    return "manual"


def library_table(results: list[FileResult]) -> Table:
    scenarios: Counter[str] = Counter(
        r.playbook.id for r in results if isinstance(r, ScenarioResult) and r.playbook is not None
    )
    table = Table(title="Playbook library", title_justify="left")
    for column in ("id", "title", "trigger", "steps", "scenarios", "version", "status"):
        table.add_column(column, no_wrap=column in ("id", "version"))
    for r in results:
        if isinstance(r, ScenarioResult):
            continue
        if r.playbook is None:
            table.add_row(Path(r.file).name, "", "", "", "", "", f"[red]{len(r.problems)} problem(s)[/red]")
            continue
        p = r.playbook
        table.add_row(
            p.id,
            p.title,
            _trigger_text(p),
            str(sum(1 for _ in p.walk())),
            str(scenarios.get(p.id, 0)),
            p.version[:8],
            "[green]valid[/green]",
        )
    return table


@app.command("list")
def list_playbooks(
    library: Annotated[Path, typer.Argument(help="The library folder.")] = DEFAULT_LIBRARY,
) -> None:
    """Show the library: each playbook's trigger, steps, scenarios and version."""
    results = validate_paths([library])
    _console().print(library_table(results))
    raise typer.Exit(1 if _problems(results) else 0)


@app.command()
def dev(
    library: Annotated[Path, typer.Option("--library", help="The library folder.")] = DEFAULT_LIBRARY,
) -> None:
    """Check the library and show it. (Starting the local engine arrives with durable execution, issue 4.)"""
    console = _console()
    err = Console(stderr=True)
    files = discover([library])
    results = validate_paths(files)
    _print_problems(results, Format.text, err)
    console.print(library_table(results))
    problems = _problems(results)
    n_playbooks = sum(1 for f in files if not is_scenario(f))
    console.print(
        f"{n_playbooks} playbook(s), {len(files) - n_playbooks} scenario(s), {len(problems)} problem(s).",
        markup=False,
    )
    raise typer.Exit(1 if problems else 0)


@app.command()
def test(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Scenario files or folders (default: playbooks/).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run scenarios on Temporal's time-skipping test server and check their expectations."""
    import asyncio
    import json

    from .testing.scenarios import run_scenarios

    targets = paths or [DEFAULT_LIBRARY]
    missing = [p for p in targets if not p.exists()]
    if missing:
        Console(stderr=True).print(f"no such file or folder: {', '.join(map(str, missing))}", markup=False)
        raise typer.Exit(2)
    scenarios = [p for p in discover(targets) if is_scenario(p)]
    if not scenarios:
        Console(stderr=True).print("no scenario files (*.scenario.yaml) found", markup=False)
        raise typer.Exit(2)
    reports = asyncio.run(run_scenarios(scenarios))
    if json_output:
        print(json.dumps({"scenarios": [r.as_json() for r in reports]}, indent=2))
    else:
        console = _console()
        for r in reports:
            mark = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
            console.print(f"{mark} {r.file}  (outcome {r.outcome}, {r.seconds:.1f} s)")
            table = Table(show_header=True, box=None, pad_edge=False)
            for column in ("at", "step", "kind", "status", "detail"):
                table.add_column(column, overflow="fold")
            for entry in r.timeline:
                table.add_row(entry["at"], str(entry["step"] or ""), entry["kind"], entry["status"], entry["detail"])
            console.print(table)
            for failure in r.failures:
                console.print(f"  [red]✗[/red] {failure}", highlight=False)
        passed = sum(r.passed for r in reports)
        console.print(f"{passed} passed, {len(reports) - passed} failed", markup=False)
    raise typer.Exit(0 if all(r.passed for r in reports) else 1)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
