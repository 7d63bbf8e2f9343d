"""The complaint governor: what the complaint rates say about sending to each layer at each
mailbox provider, as pure decisions.

Gmail and Yahoo (2024) and Outlook.com (2025) filter or refuse a bulk sender whose readers mark
more than 0.3 % of its mail as spam, and ask that it stay under 0.1 %. The rates are counted per
layer and per provider over a rolling day and a rolling week (a day reacts, a week smooths).

- ``warn`` at ``Thresholds.warn`` (0.1 %): said on the dashboard, in the log and by webhook;
- ``paused`` at ``Thresholds.pause`` (0.3 %): newsletters and drip steps (never the transactional
  mail: confirmations, acknowledgements, privacy mail) to that layer at that provider are held
  until an admin resumes them.

A layer over the line is paused by itself. When a provider's mail as a whole is over the line
though no layer alone is, layers are paused from the lowest trust up until what is left is under
it: the newest relationships complain most and matter least to the business.

A rate on too little mail says nothing: a window counts only once it holds ``min_sent`` mails,
and a pause takes at least ``MIN_COMPLAINTS`` complaints. After an admin resumes a pause, only a
complaint newer than the resume can pause it again.

Providers are known by the recipient's domain (``PROVIDER_DOMAINS``) or, for a company's own
domain hosted at one of them, by its MX hosts (``MX_PATTERNS``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

PROVIDERS = ("gmail", "yahoo", "microsoft", "other")
LEVELS = ("ok", "warn", "paused")
MIN_COMPLAINTS = 2  # one reader's click never pauses anything

PROVIDER_DOMAINS = {
    "gmail": ("gmail.com", "googlemail.com"),
    "yahoo": (
        "yahoo.com",
        "ymail.com",
        "rocketmail.com",
        "aol.com",
        "aim.com",
        "verizon.net",
        "yahoo.co.uk",
        "yahoo.fr",
        "yahoo.de",
        "yahoo.es",
        "yahoo.it",
        "yahoo.co.jp",
        "yahoo.com.br",
        "yahoo.ca",
        "yahoo.in",
    ),
    "microsoft": (
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "passport.com",
        "outlook.fr",
        "outlook.de",
        "hotmail.co.uk",
        "hotmail.fr",
        "hotmail.de",
        "hotmail.it",
        "hotmail.es",
        "live.co.uk",
        "live.fr",
        "live.de",
        "windowslive.com",
    ),
}
# MX host suffixes: Google Workspace, Yahoo (and AOL, which it runs), Microsoft 365 / Outlook.com.
MX_PATTERNS = (
    (".google.com", "gmail"),
    (".googlemail.com", "gmail"),
    (".yahoodns.net", "yahoo"),
    (".protection.outlook.com", "microsoft"),
    (".outlook.com", "microsoft"),
    (".hotmail.com", "microsoft"),
)
_BY_DOMAIN = {domain: provider for provider, domains in PROVIDER_DOMAINS.items() for domain in domains}


def known_provider(domain: str) -> str | None:
    """The provider a domain belongs to by name alone, or None when only its MX can tell."""
    return _BY_DOMAIN.get(domain.lower().rstrip("."))


def provider_of(domain: str, mx_hosts: Iterable[str] = ()) -> str:
    """``gmail`` | ``yahoo`` | ``microsoft`` | ``other``: by the domain, else by its MX hosts."""
    known = known_provider(domain)
    if known is not None:
        return known
    for host in mx_hosts:
        host = "." + host.lower().rstrip(".")
        for suffix, provider in MX_PATTERNS:
            if host.endswith(suffix):
                return provider
    return "other"


@dataclass(frozen=True)
class Thresholds:
    warn: float = 0.001
    pause: float = 0.003
    min_sent: int = 100


@dataclass(frozen=True)
class Counts:
    sent: int = 0
    complaints: int = 0

    @property
    def rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.sent + other.sent, self.complaints + other.complaints)


@dataclass(frozen=True)
class Group:
    """One layer's mail at one provider: the last day's and the last week's counts, and when
    its newest complaint came."""

    layer_id: int
    position: int
    provider: str
    day: Counts = Counts()
    week: Counts = Counts()
    last_complaint: dt.datetime | None = None


def level(day: Counts, week: Counts, thresholds: Thresholds) -> str:
    """``ok`` | ``warn`` | ``paused`` for the worse of the two windows that hold enough mail."""
    worst = "ok"
    for counts in (day, week):
        if counts.sent < thresholds.min_sent:
            continue
        if counts.rate >= thresholds.pause and counts.complaints >= MIN_COMPLAINTS:
            return "paused"
        if counts.rate >= thresholds.warn:
            worst = "warn"
    return worst


def worst_rate(day: Counts, week: Counts, thresholds: Thresholds) -> tuple[str, Counts]:
    """The window that decided (``day`` or ``week``) and its counts, for the reason given."""
    counted = [(name, c) for name, c in (("day", day), ("week", week)) if c.sent >= thresholds.min_sent]
    if not counted:
        return "week", week
    return max(counted, key=lambda item: item[1].rate)


@dataclass(frozen=True)
class Verdict:
    """What the governor says of one (layer, provider); ``layer_id`` 0 is a provider's mail as
    a whole, which is never paused itself."""

    layer_id: int
    provider: str
    level: str
    reason: str
    day: Counts = Counts()
    week: Counts = Counts()


@dataclass
class Decision:
    verdicts: list[Verdict] = field(default_factory=list)

    def level_of(self, layer_id: int, provider: str) -> str:
        for verdict in self.verdicts:
            if verdict.layer_id == layer_id and verdict.provider == provider:
                return verdict.level
        return "ok"

    @property
    def pauses(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.level == "paused" and v.layer_id]


def _why(provider: str, what: str, day: Counts, week: Counts, thresholds: Thresholds, line: float) -> str:
    window, counts = worst_rate(day, week, thresholds)
    return (
        f"{provider}: {counts.complaints} complaints in {counts.sent} mails over the last {window} "
        f"({counts.rate:.2%}) for {what}, at or over {line:.1%}"
    )


def govern(
    groups: Iterable[Group],
    thresholds: Thresholds,
    paused: Iterable[tuple[int, str]] = (),
    resumed: dict[tuple[int, str], dt.datetime] | None = None,
) -> Decision:
    """Every group's level, and the provider-wide ones, given the pauses already in force (they
    stay until an admin resumes them) and when groups were last resumed."""
    resumed = resumed or {}
    held = set(paused)
    decision = Decision()
    by_provider: dict[str, list[Group]] = {}
    for group in groups:
        by_provider.setdefault(group.provider, []).append(group)
    for provider in sorted(by_provider):
        members = sorted(by_provider[provider], key=lambda g: (g.position, g.layer_id))
        now_paused: set[int] = set()
        for group in members:
            key = (group.layer_id, provider)
            found = level(group.day, group.week, thresholds)
            since = resumed.get(key)
            if found == "paused" and since is not None and (group.last_complaint or since) <= since:
                found = "warn"  # resumed by an admin: only a newer complaint pauses it again
            if key in held:
                found = "paused"
                reason = "paused earlier; held until an admin resumes"
            elif found == "paused":
                reason = _why(provider, f"layer {group.position}", group.day, group.week, thresholds, thresholds.pause)
            elif found == "warn":
                reason = _why(provider, f"layer {group.position}", group.day, group.week, thresholds, thresholds.warn)
            else:
                reason = ""
            if found == "paused":
                now_paused.add(group.layer_id)
            decision.verdicts.append(Verdict(group.layer_id, provider, found, reason, group.day, group.week))
        day = sum((g.day for g in members), Counts())
        week = sum((g.week for g in members), Counts())
        whole = level(day, week, thresholds)
        reason = ""
        if whole != "ok":
            line = thresholds.pause if whole == "paused" else thresholds.warn
            reason = _why(provider, "every layer", day, week, thresholds, line)
        if whole == "paused":
            # Lowest trust first, until the mail still flowing is under the line.
            flowing = [g for g in members if g.layer_id not in now_paused]
            for group in flowing:
                rest = [g for g in flowing if g.layer_id not in now_paused]
                rest_day = sum((g.day for g in rest), Counts())
                rest_week = sum((g.week for g in rest), Counts())
                if level(rest_day, rest_week, thresholds) != "paused":
                    break
                if not (group.day.sent or group.week.sent):
                    continue
                key = (group.layer_id, provider)
                since = resumed.get(key)
                if since is not None and (group.last_complaint or since) <= since:
                    continue
                now_paused.add(group.layer_id)
                decision.verdicts = [
                    Verdict(
                        v.layer_id,
                        v.provider,
                        "paused",
                        f"{reason}; lowest-trust layers paused first",
                        v.day,
                        v.week,
                    )
                    if (v.layer_id, v.provider) == key
                    else v
                    for v in decision.verdicts
                ]
        decision.verdicts.append(Verdict(0, provider, whole, reason, day, week))
    return decision
