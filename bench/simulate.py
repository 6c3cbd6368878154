"""A year of a renewal run, simulated (goal: under 3 s), beside a one-step scenario as the baseline.

bench/simulate/renewal-365d.scenario.yaml runs the bundled renewal playbook for an account whose renewal is
365 days out: waits of 275, 30, 30 and 29 days, two call tasks answered through updates, an email, CRM writes.
bench/simulate/one-step.scenario.yaml sends one email. Both go through engine.testing.scenarios.run_scenarios
exactly as `playbook test` runs them (a fresh time-skipping server per scenario, the real interpreter and
activities). One warm-up scenario first (the process's first pays for imports and the sandbox's first load),
then the two alternate, each timed ROUNDS times; printed are the median and the slowest.

    .venv/bin/python bench/simulate.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._stack import quiet_logs  # noqa: E402
from engine.testing.scenarios import ScenarioReport, run_scenarios  # noqa: E402

HERE = Path(__file__).resolve().parent / "simulate"
YEAR = HERE / "renewal-365d.scenario.yaml"
BASELINE = HERE / "one-step.scenario.yaml"
GOAL_SECONDS = 3.0


async def timed(path: Path) -> tuple[float, ScenarioReport]:
    started = time.perf_counter()
    [report] = await run_scenarios([path])
    elapsed = time.perf_counter() - started
    if not report.passed:
        sys.exit(f"{path.name} failed, so its time means nothing: {report.failures}")
    return elapsed, report


async def bench(rounds: int) -> None:
    quiet_logs()
    warm_up, _ = await timed(BASELINE)
    walls: dict[Path, list[float]] = {YEAR: [], BASELINE: []}
    alone: dict[Path, list[float]] = {YEAR: [], BASELINE: []}
    simulated = ""
    for _ in range(rounds):
        for path in (YEAR, BASELINE):
            elapsed, report = await timed(path)
            walls[path].append(elapsed)
            alone[path].append(report.seconds)
            if path == YEAR:
                simulated = report.timeline[-1]["at"]
    print(f"warm-up (the process's first scenario, the one-step one): {warm_up:.2f} s")
    print(f"{rounds} rounds, alternating; the renewal run ended at {simulated} simulated")
    print(f"{'':<48}{'365-day renewal':>17}{'1-step baseline':>17}{'ratio':>8}")

    def row(label: str, year: float, base: float) -> None:
        print(f"{label:<48}{year:>15.2f} s{base:>15.2f} s{year / base:>7.1f}x")

    row("wall time, median (server start included)", statistics.median(walls[YEAR]), statistics.median(walls[BASELINE]))
    row("wall time, slowest", max(walls[YEAR]), max(walls[BASELINE]))
    alone_year, alone_base = statistics.median(alone[YEAR]), statistics.median(alone[BASELINE])
    row("scenario alone, median (after server start)", alone_year, alone_base)
    slowest = max(walls[YEAR])
    print(f"goal: 365-day scenario < {GOAL_SECONDS:.0f} s -> {'met' if slowest < GOAL_SECONDS else 'NOT met'} "
          f"(slowest of {rounds}: {slowest:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.rounds))


if __name__ == "__main__":
    main()
