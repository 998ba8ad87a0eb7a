"""Mean, sample standard deviation and the paired Student's t-test, with no scipy.

The tables report a paired test only over at least MIN_PAIRS shared seeds and emphasise a
difference only when it clears it at ALPHA (`significant`): with two seeds the t-test has
one degree of freedom, and its p-value says next to nothing.

The two-sided p-value of t with df degrees of freedom is the regularised incomplete beta
function I_x(df/2, 1/2) at x = df / (df + t^2), evaluated by its continued fraction
(Numerical Recipes' betacf); it agrees with scipy.stats.t to about 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05  # a difference is emphasised when its paired p is below this
MIN_PAIRS = 3  # fewer shared seeds: no p-value is reported


def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def sample_std(xs: Sequence[float]) -> float:
    """Standard deviation with n - 1 in the denominator; NaN for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry else.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of b - a over the seeds both have."""

    pairs: int  # seeds both share
    mean_diff: float  # mean of the paired differences (NaN with no pairs)
    t: float  # NaN when undefined (fewer than 2 pairs, or every difference 0)
    p: float  # two-sided; NaN when undefined


def paired_t(a: dict[int, float], b: dict[int, float]) -> PairedTest:
    """Student's t on the differences b[s] - a[s] for every seed s in both."""
    shared = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in shared]
    k = len(diffs)
    md = mean(diffs)
    if k < 2:
        return PairedTest(k, md, math.nan, math.nan)
    sd = sample_std(diffs)
    if sd == 0.0:
        if md == 0.0:  # identical on every seed: no evidence either way
            return PairedTest(k, md, math.nan, math.nan)
        return PairedTest(k, md, math.copysign(math.inf, md), 0.0)
    t = md / (sd / math.sqrt(k))
    return PairedTest(k, md, t, t_two_sided_p(t, k - 1))


def significant(test: PairedTest, alpha: float = ALPHA, min_pairs: int = MIN_PAIRS) -> bool:
    """Whether a paired test over at least `min_pairs` seeds gives p < alpha."""
    return test.pairs >= min_pairs and test.p < alpha  # an undefined (NaN) p is never below


# ----------------------------------------------------------------------------- power


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (0.5 <= q < 1) of Student's t with df degrees of freedom, by bisection
    on `t_two_sided_p` (to 1e-10)."""
    if not 0.5 <= q < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {q}")
    target = 2.0 * (1.0 - q)  # the two-sided p of the quantile
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2.0


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest mean paired difference that a two-sided paired t-test over `n` pairs with
    differences of standard deviation `sd` detects at `alpha` with probability `power`
    (the usual t approximation: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n))."""
    if n < 2:
        return math.inf
    df = n - 1
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * sd / math.sqrt(n)


def paired_sample_size(
    sd: float, effect: float, alpha: float = ALPHA, power: float = 0.8, most: int = 10_000
) -> int:
    """The fewest pairs (>= 2) whose `detectable_effect` is at most `effect`."""
    for n in range(2, most + 1):
        if detectable_effect(sd, n, alpha, power) <= effect:
            return n
    raise ValueError(f"more than {most} pairs needed for an effect of {effect} at sd {sd}")


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The `level` confidence interval of the mean of paired differences (NaNs below 2)."""
    n = len(diffs)
    if n < 2:
        return (math.nan, math.nan)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sample_std(diffs) / math.sqrt(n)
    return (mean(diffs) - half, mean(diffs) + half)
