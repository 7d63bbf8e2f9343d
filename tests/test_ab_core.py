"""The pure A/B core (``core/abtest.py``): deterministic assignment in the split's proportions,
and the verdict — known cases, its thresholds, properties by hypothesis, and agreement with
computations that share none of its code (Evan Miller's closed form for two variants, a slow
integration against the incomplete beta function for more)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.core.abtest import (
    MIN_CLICKS,
    MIN_SENT_PER_VARIANT,
    WINNER_P,
    Arm,
    in_test_share,
    leader,
    p_best,
    pick,
    verdict,
)


def test_assignment_is_fixed_and_follows_the_weights() -> None:
    weights = [50, 30, 20]
    picks = [pick(7, subscriber, weights) for subscriber in range(1, 30_001)]
    assert picks == [pick(7, subscriber, weights) for subscriber in range(1, 30_001)]  # the same every time
    counts = Counter(picks)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / 30_000 - weight / 100) < 0.01
    # Another test splits the same people independently.
    other = [pick(8, subscriber, weights) for subscriber in range(1, 30_001)]
    assert sum(a == b for a, b in zip(picks, other, strict=True)) / 30_000 == pytest.approx(0.38, abs=0.02)
    with pytest.raises(ValueError):
        pick(7, 1, [50, 0])


def test_the_test_share_is_its_own_draw() -> None:
    inside = [s for s in range(1, 20_001) if in_test_share(3, s, 20)]
    assert abs(len(inside) / 20_000 - 0.20) < 0.01
    assert all(in_test_share(3, s, 100) for s in range(1, 1000))
    assert not any(in_test_share(3, s, 0) for s in range(1, 1000))
    # Whether someone is in the share says nothing about their variant.
    split = Counter(pick(3, s, [1, 1]) for s in inside)
    assert abs(split[0] / len(inside) - 0.5) < 0.03


@pytest.mark.parametrize("k", [2, 3, 4])
def test_equal_evidence_is_a_tie(k: int) -> None:
    probabilities = p_best([Arm(500, 25)] * k)
    assert probabilities == pytest.approx([1 / k] * k, abs=1e-6)
    result = verdict([Arm(500, 25)] * k)
    assert result.status == "undecided" and result.winner is None and result.leader == 0
    assert result.sentence.startswith("No clear winner yet: Variant A leads with")


def test_a_clear_difference_names_the_winner() -> None:
    result = verdict([Arm(1000, 20), Arm(1000, 60), Arm(1000, 25)])
    assert result.status == "winner" and result.winner == 1
    assert result.p_best[1] > 0.999
    assert result.sentence == "Variant B is best with over 99 % probability."
    result = verdict([Arm(1000, 30), Arm(1000, 50)])
    assert result.winner == 1 and result.sentence == "Variant B is best with 98 % probability."


def test_not_enough_data_whatever_the_probabilities() -> None:
    lopsided = [Arm(MIN_SENT_PER_VARIANT - 1, 40), Arm(400, 0)]
    result = verdict(lopsided)
    assert result.status == "too_early" and result.winner is None
    assert result.p_best[0] > WINNER_P  # the model alone would have called it
    assert result.sentence == "Not enough data yet: 99 of 100 sends per variant."
    result = verdict([Arm(100, MIN_CLICKS - 1), Arm(100, 0)])
    assert result.status == "too_early"
    assert result.sentence == "Not enough data yet: 4 of 5 human clicks in all."
    assert verdict([Arm(0, 0), Arm(0, 0)]).p_best == pytest.approx((0.5, 0.5))


def test_leader_prefers_the_earlier_on_a_tie() -> None:
    assert leader([0.25, 0.5, 0.25]) == 1
    assert leader([0.5, 0.5]) == 0


def test_clicks_cannot_exceed_sends() -> None:
    with pytest.raises(ValueError):
        Arm(3, 4)
    with pytest.raises(ValueError):
        Arm(3, -1)


arm = st.integers(0, 4000).flatmap(lambda sent: st.builds(Arm, st.just(sent), st.integers(0, sent)))
arms = st.lists(arm, min_size=2, max_size=4)


@settings(max_examples=60, deadline=None)
@given(arms)
def test_probabilities_sum_to_one(test_arms: list[Arm]) -> None:
    probabilities = p_best(test_arms)
    assert all(0 <= p <= 1 for p in probabilities)
    assert sum(probabilities) == pytest.approx(1, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(arms, st.randoms(use_true_random=False))
def test_reordering_variants_reorders_the_answer(test_arms: list[Arm], random) -> None:  # type: ignore[no-untyped-def]
    order = list(range(len(test_arms)))
    random.shuffle(order)
    before = p_best(test_arms)
    after = p_best([test_arms[i] for i in order])
    assert after == pytest.approx([before[i] for i in order], abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(arms, st.integers(0, 3), st.booleans())
def test_a_click_more_never_lowers_a_variants_chance(test_arms: list[Arm], index: int, new_mail: bool) -> None:
    index %= len(test_arms)
    old = test_arms[index]
    if new_mail:  # one more delivered mail, clicked
        better = Arm(old.sent + 1, old.clicks + 1)
    elif old.clicks < old.sent:  # one of its mails clicked after all
        better = Arm(old.sent, old.clicks + 1)
    else:
        return
    improved = [*test_arms[:index], better, *test_arms[index + 1 :]]
    assert p_best(improved)[index] >= p_best(test_arms)[index] - 1e-7


# Independent references.


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def miller(a: Arm, b: Arm) -> float:
    """P(rate of b > rate of a), exactly: Evan Miller's sum for two Beta posteriors."""
    alpha_a, beta_a = 1 + a.clicks, 1 + a.sent - a.clicks
    alpha_b, beta_b = 1 + b.clicks, 1 + b.sent - b.clicks
    return sum(
        math.exp(
            _log_beta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - _log_beta(1 + i, beta_b)
            - _log_beta(alpha_a, beta_a)
        )
        for i in range(alpha_b)
    )


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) by its continued fraction
    (Numerical Recipes' ``betai``/``betacf``, modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(1 - x, b, a)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return front * h


def slow_p_best(test_arms: list[Arm], points: int = 6000) -> list[float]:
    """∫ f_i ∏ F_j by the midpoint rule on a uniform grid, each F_j from the incomplete beta."""
    params = [(1 + a.clicks, 1 + a.sent - a.clicks) for a in test_arms]
    out = [0.0] * len(test_arms)
    for n in range(points):
        x = (n + 0.5) / points
        cdfs = [incomplete_beta(x, a, b) for a, b in params]
        for i, (a, b) in enumerate(params):
            density = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - _log_beta(a, b))
            out[i] += density * math.prod(c for j, c in enumerate(cdfs) if j != i) / points
    return out


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Arm(1000, 30), Arm(1000, 50)),
        (Arm(100, 5), Arm(100, 9)),
        (Arm(5, 0), Arm(3, 3)),
        (Arm(1_000_000, 30_000), Arm(1_000_000, 30_300)),
        (Arm(10_000_000, 0), Arm(10_000_000, 1)),
        (Arm(0, 0), Arm(100_000, 50_000)),
    ],
)
def test_two_variants_agree_with_the_closed_form(a: Arm, b: Arm) -> None:
    assert p_best([a, b])[1] == pytest.approx(miller(a, b), abs=1e-6)


@pytest.mark.parametrize(
    "test_arms",
    [
        [Arm(200, 10), Arm(200, 20), Arm(200, 15)],
        [Arm(120, 3), Arm(150, 9), Arm(90, 4), Arm(300, 14)],
        [Arm(40, 0), Arm(40, 1), Arm(40, 2)],
    ],
)
def test_more_variants_agree_with_a_slow_integration(test_arms: list[Arm]) -> None:
    assert p_best(test_arms) == pytest.approx(slow_p_best(test_arms), abs=2e-4)
