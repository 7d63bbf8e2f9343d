"""A/B tests as pure functions: which variant a recipient gets, and an honest verdict on which
variant is best.

**Assignment.** A recipient's variant is a function of the test's id and the subscriber's id
alone (a SHA-256 of both read as a number in [0, 1), placed against the variants' cumulative
weights), so queueing the same recipient again — a retry, a crash, a second scheduler — always
gives the same variant. A newsletter's test share is decided the same way with another hash of
the same pair: who is in the test and who waits for the winner is known before anyone is sent
anything, and the two sets are disjoint and cover the audience.

**Verdict.** Each variant's human click rate gets a Beta–Binomial posterior,
``Beta(1 + clicks, 1 + sent − clicks)`` (a uniform prior; ``sent`` counts delivered mails,
``clicks`` mails a person clicked). The probability that variant *i* is best is
``∫ f_i(x) · ∏_{j≠i} F_j(x) dx``, computed by composite Simpson integration on a grid dense
around every posterior (deterministic; no sampling). Below ``MIN_SENT_PER_VARIANT`` delivered
mails for any variant, or ``MIN_CLICKS`` human clicks in all, the verdict is "not enough data
yet" whatever the probabilities say; a winner is named only when its probability of being best
reaches ``WINNER_P``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

LABELS = "ABCD"  # variant names, in order; 2 to 4 variants
MIN_VARIANTS, MAX_VARIANTS = 2, 4
MIN_SENT_PER_VARIANT = 100  # delivered mails each variant needs before any verdict
MIN_CLICKS = 5  # human clicks needed in all before any verdict
WINNER_P = 0.95  # the probability of being best a winner needs

# The integration grid: each posterior's window spans this many standard deviations either side
# of its mean, in this many Simpson panels, over a coarse grid of [0, 1].
_WINDOW_SD = 20.0
_PANELS_PER_ARM = 200
_BACKGROUND_PANELS = 100


def _unit(test_id: int, subscriber_id: int, purpose: str) -> float:
    digest = hashlib.sha256(f"ab:{purpose}:{test_id}:{subscriber_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_test_share(test_id: int, subscriber_id: int, share_pct: int) -> bool:
    """Whether a recipient of an A/B newsletter is in its test share (``share_pct`` of 100),
    rather than among the rest who get the winner. About ``share_pct`` % of any audience."""
    return _unit(test_id, subscriber_id, "share") * 100 < share_pct


def pick(test_id: int, subscriber_id: int, weights: Sequence[int]) -> int:
    """The index of the variant a subscriber gets: variant *i* with probability
    ``weights[i] / sum(weights)``, the same answer every time for the same pair."""
    if not weights or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive")
    point = _unit(test_id, subscriber_id, "variant") * sum(weights)
    total = 0
    for index, weight in enumerate(weights):
        total += weight
        if point < total:
            return index
    return len(weights) - 1


@dataclass(frozen=True)
class Arm:
    """One variant's evidence: delivered mails, and how many of them a person clicked."""

    sent: int
    clicks: int

    def __post_init__(self) -> None:
        if not 0 <= self.clicks <= self.sent:
            raise ValueError(f"clicks ({self.clicks}) must be between 0 and sent ({self.sent})")


def _posterior(arm: Arm) -> tuple[float, float]:
    return 1.0 + arm.clicks, 1.0 + arm.sent - arm.clicks


def _grid(params: Sequence[tuple[float, float]]) -> list[float]:
    """Panel edges over [0, 1]: a coarse grid plus a dense window around each posterior."""
    edges = {i / _BACKGROUND_PANELS for i in range(_BACKGROUND_PANELS + 1)}
    for a, b in params:
        mean = a / (a + b)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        lo, hi = max(0.0, mean - _WINDOW_SD * sd), min(1.0, mean + _WINDOW_SD * sd)
        edges.update(lo + (hi - lo) * i / _PANELS_PER_ARM for i in range(_PANELS_PER_ARM + 1))
    ordered = sorted(edges)
    kept = [ordered[0]]
    for x in ordered[1:]:
        if x - kept[-1] > 1e-15:
            kept.append(x)
    return kept


def _density(a: float, b: float, xs: Sequence[float], logs: Sequence[tuple[float, float]]) -> list[float]:
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    out = []
    for x, (log_x, log_1mx) in zip(xs, logs, strict=True):
        if (x <= 0.0 and a > 1.0) or (x >= 1.0 and b > 1.0):
            out.append(0.0)
            continue
        term = log_norm
        if a > 1.0:
            term += (a - 1.0) * log_x
        if b > 1.0:
            term += (b - 1.0) * log_1mx
        out.append(math.exp(term))
    return out


def p_best(arms: Sequence[Arm]) -> list[float]:
    """For each arm, the posterior probability that its click rate is the highest; they sum
    to 1. Symmetric in the arms (reordering them reorders the answer)."""
    if not arms:
        return []
    if len(arms) == 1:
        return [1.0]
    params = [_posterior(arm) for arm in arms]
    edges = _grid(params)
    # Nodes: every edge and every panel's midpoint (Simpson's rule on each panel).
    xs = [edges[0]]
    for left, right in zip(edges, edges[1:], strict=False):
        xs += [(left + right) / 2, right]
    logs = [(math.log(x) if x > 0 else 0.0, math.log1p(-x) if x < 1 else 0.0) for x in xs]
    densities = [_density(a, b, xs, logs) for a, b in params]
    panels = len(edges) - 1
    cdfs = []
    for f in densities:
        # The CDF at every node: Simpson over whole panels, and to a panel's midpoint the
        # integral of the same parabola (h/24 · (5 f0 + 8 f1 − f2) over the half panel).
        cdf = [0.0] * len(xs)
        total = 0.0
        for k in range(panels):
            h = xs[2 * k + 2] - xs[2 * k]
            f0, f1, f2 = f[2 * k], f[2 * k + 1], f[2 * k + 2]
            cdf[2 * k] = total
            cdf[2 * k + 1] = total + max(0.0, h / 24 * (5 * f0 + 8 * f1 - f2))
            total += h / 6 * (f0 + 4 * f1 + f2)
        cdf[-1] = total
        cdfs.append([min(1.0, c / total) for c in cdf])
    widths = [(xs[2 * k + 2] - xs[2 * k]) / 6 for k in range(panels)]
    results = []
    for i, f in enumerate(densities):
        g = f
        for j, cdf in enumerate(cdfs):
            if j != i:
                g = [value * c for value, c in zip(g, cdf, strict=True)]
        integral = sum(w * (g[2 * k] + 4 * g[2 * k + 1] + g[2 * k + 2]) for k, w in enumerate(widths))
        results.append(max(0.0, integral))
    norm = sum(results)
    return [r / norm for r in results]


@dataclass(frozen=True)
class Verdict:
    """``status``: ``too_early`` (below the minimums), ``undecided`` (no variant reaches
    ``WINNER_P``) or ``winner``. ``leader`` is the variant most likely best (the earlier one on
    a tie); ``winner`` is it when the status is ``winner``."""

    status: str
    p_best: tuple[float, ...]
    leader: int
    winner: int | None
    sentence: str


def _percent(p: float) -> str:
    """A probability as a person reads it, never rounded up past what it is."""
    return "over 99 %" if p >= 0.995 else f"{math.floor(p * 100)} %"


def leader(probabilities: Sequence[float]) -> int:
    """The index most likely best; the earliest among equals."""
    best = max(probabilities)
    return next(i for i, p in enumerate(probabilities) if p >= best - 1e-12)


def verdict(arms: Sequence[Arm], labels: Sequence[str] | None = None) -> Verdict:
    """The verdict on a test's arms, with a sentence saying it in plain words."""
    names = [f"Variant {label}" for label in (labels or LABELS[: len(arms)])]
    probabilities = tuple(p_best(arms))
    top = leader(probabilities)
    fewest = min(arm.sent for arm in arms)
    clicks = sum(arm.clicks for arm in arms)
    if fewest < MIN_SENT_PER_VARIANT:
        sentence = f"Not enough data yet: {fewest} of {MIN_SENT_PER_VARIANT} sends per variant."
        return Verdict("too_early", probabilities, top, None, sentence)
    if clicks < MIN_CLICKS:
        sentence = f"Not enough data yet: {clicks} of {MIN_CLICKS} human clicks in all."
        return Verdict("too_early", probabilities, top, None, sentence)
    if probabilities[top] >= WINNER_P:
        sentence = f"{names[top]} is best with {_percent(probabilities[top])} probability."
        return Verdict("winner", probabilities, top, top, sentence)
    sentence = (
        f"No clear winner yet: {names[top]} leads with {_percent(probabilities[top])} probability of being best "
        f"(a winner needs {round(WINNER_P * 100)} %)."
    )
    return Verdict("undecided", probabilities, top, None, sentence)


def rest_choice(result: Verdict, on_no_winner: str) -> tuple[int | None, str | None]:
    """Which variant the rest of an A/B newsletter's audience gets when its wait is over, and
    why: the verdict's winner (``verdict``); without one, the variant most likely best
    (``leader``) when the newsletter says ``best``, or nobody yet (an admin picks) for ``wait``."""
    if result.winner is not None:
        return result.winner, "verdict"
    if on_no_winner == "best":
        return result.leader, "leader"
    return None, None


def kept_winner(arms: Sequence[Arm], result: Verdict, keep_after: int | None) -> int | None:
    """The variant a drip step keeps for good: once every variant has ``keep_after``
    deliveries, the verdict's winner; without a winner the split goes on."""
    if keep_after is None or any(arm.sent < keep_after for arm in arms):
        return None
    return result.winner
