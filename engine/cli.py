"""The `playbook` command."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from .commands.health import health_app
from .commands.runs_cancel import runs_cancel
from .commands.stats import stats
from .language.library import FileResult, discover, is_scenario, validate_paths
from .language.model import Playbook
from .language.policy_file import PolicyResult
from .language.problems import Problem, format_github, format_json, format_text
from .language.scenario import ScenarioResult
from .language.scorecard import ScorecardResult

app = typer.Typer(
    name="playbook",
    help="Customer-success playbooks: validate, test and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_LIBRARY = Path("playbooks")


class Format(enum.StrEnum):
    text = "text"
    json = "json"
    github = "github"


def _console() -> Console:
    # rich assumes 80 columns when not on a terminal, which folds every cell of the table
    return Console() if sys.stdout.isatty() else Console(width=140)


def _problems(results: list[FileResult]) -> list[Problem]:
    return [p for r in results for p in r.problems]


def _print_problems(results: list[FileResult], fmt: Format, err: Console) -> None:
    problems = _problems(results)
    if fmt is Format.json:
        print(format_json((r.file, r.problems) for r in results))
    elif fmt is Format.github:
        if problems:
            print(format_github(problems))
    elif problems:
        err.print(
            format_text(problems, {r.file: r.text for r in results}), markup=False, highlight=False, soft_wrap=True
        )


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Playbook, scenario or scorecard files, or folders (default: playbooks/)."),
    ] = None,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="text, json, or github (annotations for CI).")
    ] = Format.text,
) -> None:
    """Check playbooks, scenarios and scorecards: YAML, schema and meaning. Exits 1 on any problem."""
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
        if isinstance(r, PolicyResult):  # the library's messaging policy: a row of its own, not a playbook
            if r.policy is None:
                table.add_row(Path(r.file).name, "", "", "", "", "", f"[red]{len(r.problems)} problem(s)[/red]")
            else:
                what = f"messaging policy: {len(r.policy.categories)} categories, {len(r.policy.caps)} caps"
                table.add_row(Path(r.file).name, what, "", "", "", "", "[green]valid[/green]")
            continue
        if isinstance(r, ScorecardResult):  # a health scorecard: a row of its own, not a playbook
            if r.scorecard is None:
                table.add_row(Path(r.file).name, "", "", "", "", "", f"[red]{len(r.problems)} problem(s)[/red]")
            else:
                what = f"scorecard: {len(r.scorecard.measures)} measures"
                table.add_row(r.scorecard.id, what, "", "", "", r.scorecard.version[:8], "[green]valid[/green]")
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


def _load_library_table(library: Path) -> tuple[list[FileResult], int]:
    console = _console()
    files = discover([library])
    results = validate_paths(files)
    _print_problems(results, Format.text, Console(stderr=True))
    console.print(library_table(results))
    return results, len(_problems(results))


@app.command()
def dev(
    library: Annotated[Path, typer.Option("--library", help="The library folder.")] = DEFAULT_LIBRARY,
    port: Annotated[int, typer.Option(help="Temporal's gRPC port.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port.")] = 8233,
    check_only: Annotated[
        bool, typer.Option("--check-only", help="Check and show the library, start nothing.")
    ] = False,
) -> None:
    """Start everything locally: the Temporal dev server (with Web UI), the worker, the bundled playbooks."""
    import asyncio

    results, n_problems = _load_library_table(library)
    if check_only:
        raise typer.Exit(1 if n_problems else 0)
    settings = dev_settings(library, port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_dev_stack(settings, port, ui_port))
    Console().print("stopped.", markup=False)


def dev_settings(library: Path, port: int):  # type: ignore[no-untyped-def]
    """`playbook dev` is the one command that is dev without being told: it sets PLAYBOOK_ENVIRONMENT=dev for
    itself and for whatever it starts (every other command defaults to production and its checks)."""
    import os

    from .runtime.settings import load_settings

    os.environ["PLAYBOOK_ENVIRONMENT"] = "dev"
    return load_settings(library=str(library), temporal_address=f"127.0.0.1:{port}")


def _settings_to_start(command: str):  # type: ignore[no-untyped-def]
    """The checked settings of a long-running command, or one line on stderr saying why not, and exit 2."""
    from .runtime.settings import SettingsError, load_settings

    try:
        return load_settings().check()
    except SettingsError as err:
        print(f"playbook {command}: refusing to start: {err}", file=sys.stderr)
        raise typer.Exit(2) from None


def _health_nightly(command: str) -> str:
    """PLAYBOOK_HEALTH_NIGHTLY (scenarios recompute health at its nights, as production does), or one line on stderr
    saying why it cannot be used, and exit 2."""
    from .runtime.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"playbook {command}: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    if (why := settings.health_nightly_problem()) is not None:
        print(f"playbook {command}: {why}", file=sys.stderr)
        raise typer.Exit(2)
    return settings.health_nightly


async def _dev_stack(settings, port: int, ui_port: int) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import signal

    from .runtime.codec import EncryptionCodec
    from .runtime.connect import data_converter
    from .runtime.demo import seed_demo
    from .runtime.devstack import DevServer
    from .runtime.logs import configure
    from .storage.db import migrate

    console = Console()
    configure(settings.logs_as_json)
    home = Path(settings.home)
    server = DevServer(home, port, ui_port, settings.temporal_namespace, data_converter=data_converter(settings))
    console.print(f"starting Temporal dev server (state in {home / 'temporal.db'}) ...", markup=False)
    client = await server.start()
    try:
        migrate(settings.db_url)
        from .language.library import Library
        from .runtime.schedules import health_cron, sync_schedules

        synced = await sync_schedules(
            client, Library.load(settings.library).playbooks, settings.task_queue, health_nightly=health_cron(settings)
        )
        if synced.created or synced.updated:
            console.print(f"schedules: {', '.join(synced.created + synced.updated)}", markup=False)
        if synced.health in ("created", "updated"):
            console.print(f"health: nightly recompute at {settings.health_nightly} UTC", markup=False)
        if seed_demo(settings.db_url):
            console.print(
                "seeded a demo team (csm-de, csm-en, csm-fr, lead-1) and accounts acc-kraus, acc-brightside",
                markup=False,
            )
        from worker import run_worker

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print(f"Temporal:  {server.address} (namespace {settings.temporal_namespace})", markup=False)
        console.print(f"Web UI:    {server.ui_url}", markup=False)
        console.print(f"Database:  {settings.db_url}", markup=False)
        keys = server.data_converter.payload_codec if server.data_converter else None
        console.print(
            f"Payloads:  encrypted (key {keys.key_id})" if isinstance(keys, EncryptionCodec) else "Payloads:  in clear",
            markup=False,
        )
        from .runtime.workers import versioning

        version = versioning(settings)
        # The worker makes its version current, as `playbook deploy` does in production (docs/operations.md).
        label = version.label if version else "unversioned (PLAYBOOK_WORKER_VERSIONING=false)"
        console.print(f"Version:   {label}", markup=False)
        console.print(
            f"API:       http://127.0.0.1:{settings.api_port}/docs   (tokens: playbook token create)", markup=False
        )
        console.print(
            f"Inbox:     http://127.0.0.1:{settings.api_port}/inbox  (CSMs sign in with their token)", markup=False
        )
        console.print(
            "Try:       playbook run repricer-onboarding --account acc-kraus   (Ctrl-C stops everything)", markup=False
        )
        await asyncio.gather(run_worker(settings, stop, current=True), _serve_api(settings, stop))
    finally:
        server.stop()


async def _serve_api(settings, stop) -> None:  # type: ignore[no-untyped-def]
    import uvicorn

    from api.app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # Ctrl-C is handled by `dev`, which stops the API with the rest of the stack

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port, log_config=None)
    server = Server(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


@app.command()
def api(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the HTTP API against the Temporal cluster in the settings."""
    import uvicorn

    from api.app import create_app

    from .runtime.logs import configure
    from .runtime.metrics import TracingError, start_tracing

    settings = _settings_to_start("api")
    configure(settings.logs_as_json)
    try:
        # PLAYBOOK_TRACING: the spans of workflow starts and signals go where OTEL_* says (docs/metrics.md)
        stop_tracing = start_tracing("playbook-api") if settings.tracing else None
    except TracingError as err:
        typer.echo(f"playbook api: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None)
    finally:
        if stop_tracing is not None:
            stop_tracing()  # flushes the spans not yet exported


token_app = typer.Typer(help="API tokens (stored hashed; shown once).", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what uses it.")],
    role: Annotated[str, typer.Option(help="ops, csm or system.")],
    csm: Annotated[str | None, typer.Option(help="For role csm: the CSM's id.")] = None,
) -> None:
    """Create an API token and print it (only its hash is stored)."""
    from api.security import create_token

    from .runtime.settings import load_settings
    from .storage.db import migrate as upgrade

    settings = load_settings()
    upgrade(settings.db_url)
    try:
        token = create_token(settings.db_url, name, role, csm)
    except ValueError as err:
        Console(stderr=True).print(str(err), markup=False)
        raise typer.Exit(2) from None
    print(token)


keys_app = typer.Typer(help="Keys of encrypted Temporal payloads (PLAYBOOK_PAYLOAD_KEYS, docs/encryption.md).",
                        no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    key_id: Annotated[
        str | None, typer.Option("--id", help="The key's id (letters, digits, . _ -); default: a random one.")
    ] = None,
) -> None:
    """Print a new AES-256 key as KEY_ID:BASE64, ready for PLAYBOOK_PAYLOAD_KEYS (put it first to encrypt with it)."""
    from .runtime.codec import new_key

    try:
        print(new_key(key_id))
    except ValueError as err:
        print(f"playbook keys new: {err}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command()
def run(
    playbook: Annotated[str, typer.Argument(help="A playbook id in the library, or a path to a playbook file.")],
    account: Annotated[str, typer.Option("--account", help="The account to run it for.")],
    event: Annotated[
        Path | None, typer.Option("--event", help="A JSON or YAML file with the trigger event {type, data}.")
    ] = None,
    library: Annotated[Path, typer.Option("--library", help="The library folder.")] = DEFAULT_LIBRARY,
) -> None:
    """Start a run of a playbook for an account by hand."""
    import asyncio

    import yaml

    from .interpreter.messages import Event
    from .language.library import Library
    from .language.validator import validate_playbook_file
    from .runtime.connect import connect
    from .runtime.runs import start_run
    from .runtime.settings import load_settings

    err = Console(stderr=True)
    if playbook.endswith((".yaml", ".yml")):
        checked = validate_playbook_file(playbook)
        if checked.playbook is None:
            err.print(format_text(checked.problems, {checked.file: checked.text}), markup=False)
            raise typer.Exit(1)
        model = checked.playbook
    else:
        lib = Library.load(library)
        if playbook not in lib.playbooks:
            err.print(f"no valid playbook '{playbook}' in {library}; run `playbook validate`", markup=False)
            raise typer.Exit(1)
        model = lib.playbooks[playbook]
    trigger_event = None
    if event is not None:
        data = yaml.safe_load(event.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or "type" not in data:
            err.print(f"{event}: an event is a mapping with at least 'type'", markup=False)
            raise typer.Exit(2)
        trigger_event = Event(
            type=str(data["type"]), data=dict(data.get("data") or {}), id=data.get("id"), account_id=account
        )
    settings = load_settings()

    async def go() -> str:
        client = await connect(settings)
        handle = await start_run(client, settings.task_queue, model, account, trigger_event)
        return handle.id

    try:
        run_id = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - reported, not a traceback
        err.print(f"could not start the run: {exc}", markup=False)
        raise typer.Exit(1) from None
    Console().print(f"started {run_id} ({model.id} version {model.version[:8]})", markup=False)


runs_app = typer.Typer(help="List runs, or show one's timeline.", invoke_without_command=True, no_args_is_help=False)
app.add_typer(runs_app, name="runs")


@runs_app.callback()
def runs_list(
    ctx: typer.Context,
    playbook: Annotated[str | None, typer.Option(help="Only this playbook.")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    status: Annotated[str | None, typer.Option(help="running, completed, failed, terminated, ...")] = None,
) -> None:
    """List runs: playbook, version, account, status and current step."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from .runtime.connect import connect
    from .runtime.runs import RunSummary, list_runs
    from .runtime.settings import load_settings

    async def go() -> list[RunSummary]:
        client = await connect(load_settings())
        return await list_runs(client, playbook=playbook, account=account, status=status)

    try:
        runs = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001
        Console(stderr=True).print(f"could not list runs: {exc}", markup=False)
        raise typer.Exit(1) from None
    table = Table(title="Runs", title_justify="left")
    for column in ("run", "playbook", "version", "account", "status", "current step", "started"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            r.id,
            r.playbook,
            r.version,
            r.account,
            r.status,
            ", ".join(r.current),
            r.started_at.strftime("%Y-%m-%d %H:%M") if r.started_at else "",
        )
    _console().print(table)


runs_app.command("cancel")(runs_cancel)
app.command("stats")(stats)
app.add_typer(health_app, name="health")


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="The run (workflow) id.")]) -> None:
    """Show a run's version, status and timeline."""
    import asyncio

    from .interpreter.messages import RunState
    from .runtime.connect import connect
    from .runtime.runs import run_state
    from .runtime.settings import load_settings

    async def go() -> tuple[RunState, str]:
        client = await connect(load_settings())
        return await run_state(client, run_id)

    try:
        state, status = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001
        Console(stderr=True).print(f"could not read run {run_id}: {exc}", markup=False)
        raise typer.Exit(1) from None
    console = _console()
    console.print(
        f"{run_id}: {state.playbook_id} version {state.version[:8]}, account {state.account_id}, {status}", markup=False
    )
    table = Table(box=None)
    for column in ("at", "step", "kind", "status", "detail"):
        table.add_column(column, overflow="fold")
    for e in state.timeline:
        table.add_row(e.at[:19], e.step_id or e.path, e.kind, e.status, e.detail)
    console.print(table)
    for p in state.pending:
        console.print(f"waiting: {p.kind} {p.id} (step {p.step_id}) for {', '.join(p.deciders) or 'ops'}", markup=False)


@app.command()
def migrate() -> None:
    """Create or upgrade the engine's tables in the configured database (once per deploy)."""
    from .runtime.settings import load_settings
    from .storage.db import migrate as upgrade

    settings = load_settings()
    upgrade(settings.db_url)
    Console().print("database is at the newest schema", markup=False)


@app.command()
def deploy(
    library: Annotated[Path, typer.Option("--library", help="The library folder.")] = DEFAULT_LIBRARY,
    build_id: Annotated[
        str | None,
        typer.Option("--build-id", help="The version to make current (default: this code's, PLAYBOOK_BUILD_ID)."),
    ] = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for a worker of the version to poll.")] = 120,
) -> None:
    """Check the library, make the cluster's schedules match its scheduled playbooks, and make this version of the
    engine current: new runs start on its workers, runs in flight stay on the version they started on."""
    import dataclasses

    from .language.library import Library
    from .runtime.connect import connect
    from .runtime.schedules import health_cron, sync_schedules
    from .runtime.settings import load_settings
    from .runtime.workers import DeployError, make_current, versioning

    results, n_problems = _load_library_table(library)
    if n_problems:
        Console(stderr=True).print("not deployed: fix the problems above first", markup=False)
        raise typer.Exit(1)
    settings = load_settings()

    version = versioning(settings)
    if version is not None and build_id:
        version = dataclasses.replace(version, build_id=build_id)

    async def go() -> None:
        client = await connect(settings)
        nightly = health_cron(settings if settings.scorecards else settings.replace(library=str(library)))
        report = await sync_schedules(
            client, Library.load(library).playbooks, settings.task_queue, health_nightly=nightly
        )
        Console().print(
            f"schedules created: {', '.join(report.created) or '-'}; updated: {', '.join(report.updated) or '-'}; "
            f"removed: {', '.join(report.removed) or '-'}; health nightly: {report.health}",
            markup=False,
        )
        if version is None:
            Console().print("worker versioning is off (PLAYBOOK_WORKER_VERSIONING=false)", markup=False)
            return
        Console().print(f"making {version.label} current (waiting up to {wait:g} s for its workers) ...", markup=False)
        promotion = await make_current(client, version, settings.task_queue, timeout=wait)
        was = "it already was" if not promotion.changed else f"was {promotion.previous or 'none'}"
        Console().print(
            f"version {version.label} is current ({was}); new runs start on it, runs in flight stay on their version",
            markup=False,
        )

    try:
        asyncio.run(go())
    except DeployError as err:
        Console(stderr=True).print(f"not made current: {err}", markup=False)
        _exit_now(1)
    _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """Ends a command whose work is done and said. The threads of temporalio's core runtime can abort the
    interpreter's finalization ("Fatal Python error: PyGILState_Release", exit -6: seen once in three runs of
    tests/test_deploy.py), which would turn a deploy's answer into a crash; so the process ends here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def worker() -> None:
    """Run a worker against the Temporal cluster in the settings (same as `python worker.py`)."""
    _settings_to_start("worker")  # worker.main() checks them too, but a refusal there is a traceback
    import worker as worker_module

    worker_module.main()


@app.command()
def test(
    paths: Annotated[list[Path] | None, typer.Argument(help="Scenario files or folders (default: playbooks/).")] = None,
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
    reports = asyncio.run(run_scenarios(scenarios, nightly=_health_nightly("test")))
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


# ------------------------------------------------------------------------------ diff


class _DiffError(Exception):
    """One line for stderr; the command exits 2."""


def _git_text(file: Path, rev: str) -> tuple[str, str]:
    """The text of ``file`` at Git revision ``rev`` of the repository holding it, and a label "REV:path"."""
    import subprocess

    folder = file.resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=60, check=False)
        except FileNotFoundError:
            raise _DiffError("git is not installed (needed for --rev)") from None

    top = git("rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise _DiffError(f"{file} is not in a Git repository (needed for --rev)")
    root = Path(top.stdout.decode().strip())
    relative = file.resolve().relative_to(root.resolve()).as_posix()
    if git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise _DiffError(f"Git does not know the revision {rev!r} (in {root})")
    shown = git("show", f"{rev}:{relative}")
    if shown.returncode != 0:
        raise _DiffError(f"{relative} does not exist at revision {rev} (in {root})")
    return shown.stdout.decode("utf-8", errors="replace"), f"{rev}:{relative}"


def _diff_side(file: Path, rev: str | None = None):  # type: ignore[no-untyped-def]
    """A validated side of the diff (its PlaybookResult); a broken one is reported as validate reports it."""
    from .language.policy import DEFAULT_POLICY
    from .language.policy_file import PolicyFinder
    from .language.validator import validate_playbook_file, validate_playbook_text

    if rev is None:
        result = validate_playbook_file(file)
    else:
        text, label = _git_text(file, rev)
        # the policy that applies to the file now: the one its runs would be checked against
        found = PolicyFinder().result_for(file)
        if found is not None and found.policy is None:
            raise _DiffError(f"the messaging policy {found.file} that applies to {file} has problems; fix it first")
        result = validate_playbook_text(text, label, DEFAULT_POLICY if found is None else found.policy)
    if not result.ok:
        err = Console(stderr=True)
        sources = {result.file: result.text}
        err.print(format_text(result.problems, sources), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{result.file}: not a valid playbook; nothing compared", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    return result


@app.command()
def diff(
    old: Annotated[
        Path, typer.Argument(help="The old playbook file (with --rev: the file, compared with itself at REV).")
    ],
    new: Annotated[Path | None, typer.Argument(help="The new playbook file (not with --rev).")] = None,
    rev: Annotated[
        str | None, typer.Option("--rev", help="Compare OLD as it was at this Git revision with the file as it is.")
    ] = None,
    scenarios: Annotated[
        bool, typer.Option("--scenarios", help="Run the library's scenarios of the playbook on both versions.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the diff as JSON (docs/diff.md).")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live", help="Replay every live run of the playbook (PLAYBOOK_TEMPORAL_* settings) on both versions."
        ),
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="With --live: at most this many runs (newest first).")] = 500,
) -> None:
    """What a change to a playbook changes: steps, timing, audience, content, approvals, settings; with
    --scenarios, what its scenarios do differently; with --live, what its live runs would do differently.
    Exits 0: same behaviour, 1: behaviour changes, 2: errors."""
    import json

    from .language.diff import diff_playbooks

    err = Console(stderr=True)
    if (new is None) == (rev is None):
        err.print("give two playbook files (OLD NEW), or one and --rev REV", markup=False)
        raise typer.Exit(2)
    if limit < 1:
        err.print("--limit must be at least 1", markup=False)
        raise typer.Exit(2)
    missing = [p for p in (old, new) if p is not None and not p.is_file()]
    if missing:
        err.print(f"no such file: {', '.join(map(str, missing))}", markup=False)
        raise typer.Exit(2)
    try:
        before = _diff_side(old, rev)
    except _DiffError as error:  # the Git side; a side that is not a valid playbook was reported by _diff_side
        err.print(f"playbook diff: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    new_file = new if new is not None else old
    after = _diff_side(new_file)
    assert before.playbook is not None and after.playbook is not None
    changes = diff_playbooks(before.playbook, after.playbook)
    scenario_diffs = None
    if scenarios or live:
        import logging

        from .runtime.logs import configure

        configure(json_output=False, level=logging.WARNING)  # on stderr, and only what goes wrong: stdout is the diff
    if scenarios:
        from .testing.diff_scenarios import diff_scenarios, scenarios_of

        found = scenarios_of(new_file, after.playbook.id)
        scenario_diffs = asyncio.run(diff_scenarios(found, before.playbook, after.playbook, new_file.resolve().parent,
                                                    nightly=_health_nightly("diff")))
    live_diff = None
    if live:
        try:
            live_diff = asyncio.run(_diff_live(before.playbook, after.playbook, new_file, limit))
        except _DiffError as error:
            err.print(f"playbook diff --live: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    behaviour = (
        changes.behaviour_changed
        or any(d.differs for d in scenario_diffs or [])
        or (live_diff is not None and live_diff.changed)
    )
    sides = [
        {"file": r.file, "id": r.playbook.id, "version": r.playbook.version} for r in (before, after) if r.playbook
    ]
    if json_output:
        document = {
            "old": sides[0],
            "new": sides[1],
            "summary": changes.summary,
            "kinds": list(changes.by_kind()),
            "behaviour_changed": behaviour,
            "changes": [c.as_json() for c in changes.changes],
            "scenarios": None if scenario_diffs is None else [d.as_json() for d in scenario_diffs],
        }
        if live_diff is not None:  # only with --live: the shape without it is as it was
            document["live"] = live_diff.as_json()
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        _print_diff(sides, changes, scenario_diffs, live_diff)
    raise typer.Exit(1 if behaviour else 0)


async def _diff_live(old: Playbook, new: Playbook, new_file: Path, limit: int):  # type: ignore[no-untyped-def]
    """The live runs of OLD's playbook on the cluster of the settings, replayed on both versions (LiveDiff)."""
    from .language.library import find_library_root
    from .runtime.connect import connect
    from .runtime.settings import SettingsError, load_settings
    from .testing.diff_live import LiveError, diff_live

    try:
        settings = load_settings()
    except SettingsError as error:
        raise _DiffError(str(error)) from None
    try:
        client = await asyncio.wait_for(connect(settings), timeout=30)
    except SettingsError as error:
        raise _DiffError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - refused, a name that does not resolve, TLS, no answer in 30 s, ...
        raise _DiffError(
            f"cannot reach Temporal at {settings.temporal_address} (namespace {settings.temporal_namespace}; "
            f"PLAYBOOK_TEMPORAL_ADDRESS): {error or type(error).__name__}"
        ) from None
    try:
        return await diff_live(client, old, new, limit=limit, library=find_library_root(new_file.resolve()))
    except LiveError as error:
        raise _DiffError(str(error)) from None


def _print_diff(sides, changes, scenario_diffs, live_diff=None) -> None:  # type: ignore[no-untyped-def]
    console = _console()
    old, new = sides
    console.print(
        f"{old['file']} ({old['id']} {old['version'][:8]}) → {new['file']} ({new['id']} {new['version'][:8]})",
        markup=False,
    )
    if changes.changes:
        table = Table(title=f"Changes: {changes.summary}", title_justify="left")
        for column in ("kind", "change", "what"):
            table.add_column(column, overflow="fold", no_wrap=column != "what")
        for kind, group in changes.by_kind().items():
            for c in group:
                table.add_row(kind, c.change, c.text)
        console.print(table)
    else:
        console.print("no change to the playbook's model (only formatting or comments, if anything)", markup=False)
    for d in scenario_diffs if scenario_diffs is not None else []:
        if not d.differs:
            console.print(f"scenario {d.file}: same behaviour (outcome {d.new.outcome})", markup=False)
            continue
        console.print(f"scenario {d.file}: behaves differently", markup=False)
        table = Table(show_header=False)
        table.add_column("difference (old → new)", overflow="fold")
        for line in d.differences:
            table.add_row(line)
        console.print(table)
        missed = [f for f in d.new.failures if f not in d.old.failures]
        for failure in missed:
            console.print(f"  expectation missed on the new version: {failure}", markup=False, highlight=False)
    if scenario_diffs == []:
        console.print("no scenario of this playbook in its library", markup=False)
    if live_diff is not None:
        _print_live(console, live_diff)
    differs = sum(d.differs for d in scenario_diffs or [])
    kinds = ", ".join(changes.by_kind()) or "none"
    scenario_note = f"; {differs} of {len(scenario_diffs or [])} scenario(s) behave differently" if differs else ""
    live_changed = sum(r.changed for r in live_diff.runs) if live_diff is not None else 0
    if live_changed:
        scenario_note += f"; {live_changed} of {len(live_diff.runs)} live run(s) would behave differently"
    if changes.behaviour_changed or differs or live_changed:
        console.print(f"behaviour changes ({changes.summary}; kinds: {kinds}{scenario_note})", markup=False)
    else:
        console.print(f"behaviour unchanged ({changes.summary})", markup=False)


def _print_live(console: Console, live) -> None:  # type: ignore[no-untyped-def]
    """The live runs: one row each, then what differs for each run that would behave differently."""
    from datetime import timedelta

    from .testing.scenarios import offset_text

    if live.more:
        console.print(
            f"live runs of {live.playbook_id}: {live.total}; the {live.replayed} most recently started replayed "
            f"(--limit {live.limit}); the others are not shown",
            markup=False,
        )
    else:
        console.print(f"live runs of {live.playbook_id}: {live.total}", markup=False)
    if not live.runs:
        return
    table = Table(title="Live runs replayed on both versions", title_justify="left")
    for column in ("run", "account", "version", "age", "now (old version)", "verdict"):
        table.add_column(column, overflow="fold", no_wrap=column in ("version", "age"))
    for r in live.runs:
        version = r.version[:8] + (" (third)" if r.third_version else "")
        now = r.old.where() if r.old is not None else ""
        table.add_row(r.workflow_id, r.account_id, version, offset_text(timedelta(seconds=int(r.age))), now, r.verdict)
    console.print(table)
    for r in live.runs:
        if r.problem:
            console.print(f"run {r.workflow_id}: not replayed: {r.problem}", markup=False, highlight=False)
            continue
        if r.third_version:
            console.print(
                f"run {r.workflow_id}: on version {r.version[:8]}, neither side's: compared from its own version",
                markup=False,
            )
        if r.changed:
            console.print(f"run {r.workflow_id}: {r.verdict}", markup=False)
            details = Table(show_header=False)
            details.add_column("difference (old → new)", overflow="fold")
            for kind in r.kinds:
                for line in r.details[kind]:
                    details.add_row(line)
            console.print(details)
        if r.unfaithful:
            console.print(
                f"  note: the replay of its own version does not do what run {r.workflow_id} did "
                f"({'; '.join(r.unfaithful)}): its providers' answers were simulated",
                markup=False,
                highlight=False,
            )


# ------------------------------------------------------------------------------ consent and suppressions

suppressions_app = typer.Typer(help="The suppression list: addresses no email reaches.", no_args_is_help=True)
app.add_typer(suppressions_app, name="suppressions")
consent_app = typer.Typer(help="Consent: who opted out of which category of email.", no_args_is_help=True)
app.add_typer(consent_app, name="consent")


class Choice(enum.StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"


def _messaging_db() -> str:
    """The settings' database, upgraded to the newest schema (as `playbook token create` does)."""
    from .runtime.settings import load_settings
    from .storage.db import migrate as upgrade

    settings = load_settings()
    upgrade(settings.db_url)
    return settings.db_url


def _address(text: str) -> str:
    from .storage.governance import normalize_address

    address = normalize_address(text)
    if address is None:
        Console(stderr=True).print(f"{text!r} is not a valid email address", markup=False)
        raise typer.Exit(2)
    return address


def _when(at) -> str:  # type: ignore[no-untyped-def]
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


@suppressions_app.command("list")
def suppressions_list(
    email: Annotated[str | None, typer.Option(help="Only this address.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="From which (in address order).")] = 0,
) -> None:
    """List suppressed addresses with their reason, source and time."""
    from .storage.db import session
    from .storage.governance import list_suppressions

    db_url = _messaging_db()
    with session(db_url) as s:
        rows = list_suppressions(s, email=_address(email) if email else None, limit=limit, offset=offset)
    table = Table(title="Suppressed addresses", title_justify="left")
    for column in ("email", "reason", "source", "since", "detail"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.email, r.reason, r.source, _when(r.created_at), r.detail)
    _console().print(table)


@suppressions_app.command("add")
def suppressions_add(
    email: Annotated[str, typer.Argument(help="The address (a display name is ignored).")],
    reason: Annotated[str, typer.Option(help="Why: manual, bounced, spam_report, ...")] = "manual",
    detail: Annotated[str, typer.Option(help="A note kept with it.")] = "",
) -> None:
    """Suppress an address: no email of any category reaches it."""
    from datetime import UTC, datetime

    from .storage.db import session
    from .storage.governance import suppress

    address = _address(email)
    with session(_messaging_db()) as s:
        added = suppress(s, address, reason, "cli", datetime.now(UTC), detail)
    print(f"{address}: suppressed ({reason})" if added else f"{address}: already suppressed (the first reason stays)")


@suppressions_app.command("remove")
def suppressions_remove(email: Annotated[str, typer.Argument(help="The address.")]) -> None:
    """Take an address off the suppression list."""
    from .storage.db import session
    from .storage.governance import unsuppress

    address = _address(email)
    with session(_messaging_db()) as s:
        removed = unsuppress(s, address)
    if not removed:
        Console(stderr=True).print(f"{address} is not on the suppression list", markup=False)
        raise typer.Exit(1)
    print(f"{address}: removed from the suppression list")


@consent_app.command("show")
def consent_show(email: Annotated[str, typer.Argument(help="The address.")]) -> None:
    """A contact's choices by category (a category without one is subscribed)."""
    from .storage.db import session
    from .storage.governance import consents

    address = _address(email)
    with session(_messaging_db()) as s:
        rows = consents(s, address)
    if not rows:
        print(f"{address}: no recorded choice (subscribed to every category)")
        return
    table = Table(title=address, title_justify="left")
    for column in ("category", "status", "source", "at"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.category, r.status, r.source, _when(r.at))
    _console().print(table)


@consent_app.command("set")
def consent_set(
    email: Annotated[str, typer.Argument(help="The address.")],
    category: Annotated[str, typer.Argument(help="A category of the library's policy.")],
    choice: Annotated[Choice, typer.Argument(help="subscribed or unsubscribed.")],
) -> None:
    """Record a contact's choice for a category (source cli)."""
    from datetime import UTC, datetime

    from .language.library import Library
    from .runtime.settings import load_settings
    from .storage.db import session
    from .storage.governance import set_consent

    address = _address(email)
    policy = Library.load(load_settings().library).policy
    err = Console(stderr=True)
    if policy is not None and policy.categories:
        known = policy.category(category)
        if known is None:
            names = ", ".join(c.name for c in policy.categories)
            err.print(f"no category {category!r} in the library's policy (it has {names})", markup=False)
            raise typer.Exit(2)
        if not known.unsubscribe and choice is Choice.unsubscribed:
            err.print(f"{category} emails cannot be opted out of (unsubscribe: false in the policy)", markup=False)
            raise typer.Exit(2)
    with session(_messaging_db()) as s:
        set_consent(s, address, category, choice is Choice.subscribed, "cli", datetime.now(UTC))
    print(f"{address}: {choice.value} for {category}")


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
    except Exception as err:
        from .runtime.settings import SettingsError

        if not isinstance(err, SettingsError):
            raise
        print(f"playbook: {err}", file=sys.stderr)  # one line, never a secret; not a traceback
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
