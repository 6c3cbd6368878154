"""The messaging policy of a library: email categories, frequency caps and what a capped email does.

A library declares it in ``policy.yaml`` at its root (see docs/playbook-language.md, "Messaging policy");
a library without one gets ``DEFAULT_POLICY``. The file is validated like a playbook (policy_file.py) and
the model here is attached to every playbook the library loads (``Playbook.policy``), so it travels
with a run's input and a run keeps the rules it started with.

Like the playbook model, every class is a frozen dataclass of plain values with a default for each
field added later: a run's recorded input must still decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Category:
    name: str
    unsubscribe: bool = True  # recipients may opt out: consent is checked, the unsubscribe link and headers added
    capped: bool = True  # counted by, and held to, the caps that name it (or all categories)
    sendgrid_group: int | None = None  # SendGrid ASM suppression group id


@dataclass(frozen=True, kw_only=True)
class Cap:
    """At most ``max`` emails per recipient in any rolling window of ``per`` (``per_seconds``)."""

    channel: str = "email"
    max: int
    per: str
    per_seconds: int
    categories: tuple[str, ...] = ()  # empty: every capped category


@dataclass(frozen=True, kw_only=True)
class EmailRules:
    """What the policy says about one email step's email."""

    category: str
    unsubscribe: bool = True
    capped: bool = True
    caps: tuple[Cap, ...] = ()  # the caps that count this email, categories spelt out; none when not capped
    when_capped: str = "skip"
    max_delay_seconds: int | None = None  # with defer: how long the email may wait for the caps
    sendgrid_group: int | None = None


@dataclass(frozen=True, kw_only=True)
class Policy:
    default_category: str = "marketing"
    categories: tuple[Category, ...] = ()
    caps: tuple[Cap, ...] = ()
    when_capped: str = "skip"  # skip | defer
    max_delay: str | None = None  # with defer (default 3d)
    max_delay_seconds: int | None = None
    file: str | None = field(default=None, compare=False)  # where it was read from; None: the built-in default

    def category(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    def for_email(self, category: str | None) -> EmailRules:
        """The rules of an email of ``category`` (None: the default category).

        A category the policy does not know (validation refuses it, so only a policy changed under a
        running playbook gets here) is treated as the strictest: opting out allowed, every all-category
        cap applies. Erring that way keeps a promise to a recipient rather than breaking it.
        """
        name = category or self.default_category
        known = self.category(name) or Category(name=name)
        caps: tuple[Cap, ...] = ()
        if known.capped:
            capped_names = tuple(c.name for c in self.categories if c.capped)
            if name not in capped_names:
                capped_names += (name,)
            caps = tuple(
                Cap(
                    channel=cap.channel,
                    max=cap.max,
                    per=cap.per,
                    per_seconds=cap.per_seconds,
                    # spelt out, so counting never includes categories that are not capped (transactional)
                    categories=cap.categories or capped_names,
                )
                for cap in self.caps
                if cap.channel == "email" and (not cap.categories or name in cap.categories)
            )
        return EmailRules(
            category=name,
            unsubscribe=known.unsubscribe,
            capped=known.capped,
            caps=caps,
            when_capped=self.when_capped,
            max_delay_seconds=self.max_delay_seconds if self.when_capped == "defer" else None,
            sendgrid_group=known.sendgrid_group,
        )

    def opt_out_categories(self) -> tuple[str, ...]:
        """The categories a recipient may unsubscribe from."""
        return tuple(c.name for c in self.categories if c.unsubscribe)


DEFAULT_POLICY = Policy(
    default_category="marketing",
    categories=(
        Category(name="transactional", unsubscribe=False, capped=False),
        Category(name="onboarding"),
        Category(name="marketing"),
    ),
)
