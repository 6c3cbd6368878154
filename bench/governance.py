"""Messaging governance: what consent, suppression and frequency caps add per email, at 10,000 contacts, side by
side with them off in one run (issue 11).

The send_email activity is called directly (no Temporal: the checks are all in the activity), with the embedded
outbox as the provider, on one SQLite database in a temporary folder (WAL, as the worker runs it). The database
holds --contacts contacts' records: per contact a consent for three categories (one in ten unsubscribed from
marketing), one in twenty on the suppression list, and a history of deliveries in the caps' ledger (two in the
last week, one in ten of the contacts three: at the weekly cap). Every email goes to one contact, each phase to
contacts of its own, at a clock of its own (the history is seeded before each phase, relative to its clock).

* on: what a playbook run sends now: category marketing, unsubscribe allowed (consent checked, the link and the
  List-Unsubscribe headers added, the token signed), two caps (marketing+onboarding 1 a day; all categories 3 a
  week), so every admission also counts the ledger under the write lock and records the delivery.
* off: a request without a category, as runs started before policies existed send it: only the suppression list,
  what send_email checked before this change. The difference is what governance adds.

Each side runs on, off, off, on (A B B A, --rounds times) after an untimed warm-up of both, --emails emails per
phase, each timed around the activity call. Printed per side: the median and p95 per email, and how the emails
ended (sent, suppressed, capped); then the added median and p95 and the ratio. Goal: under 1 ms added at the
median; a missed goal prints MISSED and the bench exits 1. The machine's load average is printed before and
after (2 cores, shared: other benches may be running).

    .venv/bin/python bench/governance.py [--contacts 10000] [--emails 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from activities.crm import BuiltinCrm  # noqa: E402
from activities.email import OutboxProvider  # noqa: E402
from activities.playbook_activities import PlaybookActivities  # noqa: E402
from activities.types import CapRule, EmailRequest, RunRef  # noqa: E402
from engine.storage import models as t  # noqa: E402
from engine.storage.db import migrate, session  # noqa: E402
from engine.storage.governance import UnsubscribeLinks, UnsubscribeTokens  # noqa: E402

GOAL_ADDED_MS = 1.0
CATEGORIES = ("marketing", "onboarding", "product")
CAPS = [CapRule(max=1, per_seconds=86_400, categories=["marketing", "onboarding"]),
        CapRule(max=3, per_seconds=7 * 86_400)]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PHASE_GAP = timedelta(days=30)  # each phase's clock: its own week of history, nothing of the phase before


def address(n: int) -> str:
    return f"contact{n:05d}@customer{n % 97}.example"


def seed(url: str, contacts: int) -> None:
    """Consents and the suppression list for every contact (the history comes per phase, see seed_history)."""
    rng = random.Random(11)
    consents, suppressions = [], []
    for n in range(contacts):
        for category in CATEGORIES:
            subscribed = not (category == "marketing" and rng.random() < 0.1)
            consents.append({"email": address(n), "category": category,
                             "status": "subscribed" if subscribed else "unsubscribed", "source": "import",
                             "at": START - timedelta(days=90)})
        if rng.random() < 0.05:
            suppressions.append({"email": address(n), "reason": "bounced", "source": "sendgrid", "detail": "",
                                 "created_at": START - timedelta(days=30)})
    with session(url) as s:
        s.execute(insert(t.Consent.__table__), consents)
        s.execute(insert(t.Suppression.__table__), suppressions)


def seed_history(url: str, contacts: range, now: datetime, tag: str) -> None:
    """The week before ``now`` for these contacts: two deliveries each, three for one in ten (at the weekly cap)."""
    rng = random.Random(tag)
    rows = []
    for n in contacts:
        ago = [2, 5] + ([6] if rng.random() < 0.1 else [])
        for days in ago:
            rows.append({"key": f"history/{tag}/{n}/{days}", "address": address(n), "category": rng.choice(CATEGORIES),
                         "at": now - timedelta(days=days), "status": "sent"})
    with session(url) as s:
        s.execute(insert(t.EmailDelivery.__table__), rows)


@dataclass
class Phase:
    side: str
    times_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


def run_phase(acts: PlaybookActivities, url: str, side: str, tag: str, contacts: range, now: datetime) -> Phase:
    seed_history(url, contacts, now, tag)
    ref = RunRef(workflow_id=f"bench-{tag}", playbook_id="webinar-invitations", account_id="acct", step_id="invite")
    governed = side == "on"
    phase = Phase(side)
    for i, n in enumerate(contacts):
        request = EmailRequest(
            key=f"{tag}/{n}", ref=ref, to=[f"Contact {n} <{address(n)}>"], at=(now + timedelta(seconds=i)).isoformat(),
            subject="Our monthly webinar", body="Join us on Thursday at 10:00.",
            category="marketing" if governed else "", unsubscribe=governed, caps=list(CAPS) if governed else [],
        )
        started = time.perf_counter()
        result = acts.send_email(request)
        phase.times_ms.append((time.perf_counter() - started) * 1000)
        phase.outcomes[result.status] += 1
    return phase


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--emails", type=int, default=1000, help="emails per phase")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    phases_needed = 2 + 4 * args.rounds  # warm-up of both, then A B B A per round
    if args.emails * phases_needed > args.contacts:
        parser.error(f"--contacts must hold {phases_needed} phases of --emails contacts each")

    # the activity logs a line per email; the bench measures the checks, not the console
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-governance-") as home:
        url = f"sqlite:///{Path(home) / 'playbook.db'}"
        migrate(url)
        seed(url, args.contacts)
        links = UnsubscribeLinks("https://engine.example", UnsubscribeTokens(b"bench-governance-secret"))
        acts = PlaybookActivities(url, BuiltinCrm(url), OutboxProvider(), default_sender="success@vendor.example",
                                  unsubscribe_links=links)
        print(f"{args.contacts} contacts, {args.contacts * len(CATEGORIES)} consents, SQLite at {home}")
        order = ["on", "off"] + ["on", "off", "off", "on"] * args.rounds
        results: dict[str, list[Phase]] = {"on": [], "off": []}
        for number, side in enumerate(order):
            contacts = range(number * args.emails, (number + 1) * args.emails)
            phase = run_phase(acts, url, side, f"p{number}", contacts, START + number * PHASE_GAP)
            warm_up = number < 2
            label = "warm-up" if warm_up else f"phase {number - 1}"
            print(f"  {label:8} {side:3}: median {statistics.median(phase.times_ms):.3f} ms, "
                  f"p95 {p95(phase.times_ms):.3f} ms, {dict(phase.outcomes)}")
            if not warm_up:
                results[side].append(phase)

    summary = {}
    for side in ("off", "on"):
        times = [ms for phase in results[side] for ms in phase.times_ms]
        outcomes = sum((phase.outcomes for phase in results[side]), Counter())
        summary[side] = (statistics.median(times), p95(times))
        print(f"{side:3}: {len(times)} emails, median {summary[side][0]:.3f} ms, p95 {summary[side][1]:.3f} ms per "
              f"email; {dict(outcomes)}")
    added_median = summary["on"][0] - summary["off"][0]
    added_p95 = summary["on"][1] - summary["off"][1]
    met = added_median < GOAL_ADDED_MS
    print(f"added by governance: median {added_median:.3f} ms, p95 {added_p95:.3f} ms per email; ratio on/off "
          f"{summary['on'][0] / summary['off'][0]:.2f}x at the median; goal < {GOAL_ADDED_MS:.1f} ms at the median: "
          f"{'met' if met else 'MISSED'}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
