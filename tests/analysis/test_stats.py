"""The t-distribution and the paired test against scipy and hand-computed values."""

from __future__ import annotations

import math

import pytest

from bilma.analysis.stats import (
    ALPHA,
    MIN_PAIRS,
    betainc,
    mean,
    paired_t,
    sample_std,
    significant,
    t_two_sided_p,
)


def test_mean_and_sample_std():
    xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert mean(xs) == 5.0
    assert sample_std(xs) == pytest.approx(math.sqrt(32 / 7))  # n - 1 in the denominator
    assert math.isnan(sample_std([1.0])) and math.isnan(mean([]))


def test_t_p_values_known():
    # Textbook critical values: two-sided 5% at df=1 is 12.706, at df=10 is 2.228.
    assert t_two_sided_p(12.706, 1) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(0.0, 4) == pytest.approx(1.0)
    assert t_two_sided_p(-3.0, 5) == t_two_sided_p(3.0, 5)
    # df = 1 is the Cauchy distribution: p = 1 - 2 atan(|t|) / pi
    for t in (0.3, 1.0, 7.5):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-12)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # closed form


def test_t_p_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 30, 200):
        for t in (0.05, 0.5, 1.0, 2.0, 4.0, 10.0, 60.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-15)


def test_paired_t_uses_shared_seeds_only():
    a = {1: 50.0, 2: 52.0, 3: 49.0}
    b = {1: 51.0, 2: 54.5, 3: 49.5, 4: 99.0}  # seed 4 has no partner: left out
    test = paired_t(a, b)
    diffs = [1.0, 2.5, 0.5]
    sd = sample_std(diffs)
    assert test.pairs == 3 and test.mean_diff == pytest.approx(4 / 3)
    assert test.t == pytest.approx((4 / 3) / (sd / math.sqrt(3)))
    stats = pytest.importorskip("scipy.stats")
    assert test.p == pytest.approx(stats.ttest_rel([51.0, 54.5, 49.5], [50.0, 52.0, 49.0]).pvalue)


def test_paired_t_undefined_cases():
    assert math.isnan(paired_t({1: 1.0}, {1: 2.0}).p)  # one pair
    assert math.isnan(paired_t({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}).p)  # no difference at all
    same = paired_t({1: 1.0, 2: 2.0}, {1: 2.0, 2: 3.0})  # the same difference on every seed
    assert same.p == 0.0 and same.t == math.inf


def test_significant_needs_three_pairs_and_p_below_alpha():
    assert (ALPHA, MIN_PAIRS) == (0.05, 3)
    base = {1: 50.0, 2: 52.0, 3: 49.0}
    two = paired_t({1: 50.0, 2: 52.0}, {1: 55.0, 2: 57.01})
    assert two.p == pytest.approx(0.0006359835770077605, rel=1e-9)  # scipy's ttest_rel
    assert not significant(two)  # p < 0.05, but over two seeds only
    clear = paired_t(base, {1: 54.0, 2: 58.0, 3: 54.0})
    assert clear.p == pytest.approx(0.013072457560346515, rel=1e-9) and significant(clear)
    noise = paired_t(base, {1: 50.5, 2: 51.0, 3: 49.8})
    assert noise.p == pytest.approx(0.8740118423302586, rel=1e-9) and not significant(noise)
    assert not significant(paired_t(base, base))  # p undefined (NaN)
    assert significant(paired_t(base, {s: v + 1 for s, v in base.items()}))  # p = 0


def test_t_quantiles_match_scipy_s_tables():
    from bilma.analysis.stats import t_quantile

    # scipy.stats.t.ppf values
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert t_quantile(0.8, 9) == pytest.approx(0.883404, abs=1e-5)
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-4)
    assert t_quantile(0.5, 5) == pytest.approx(0.0, abs=1e-8)


def test_power_sample_size_and_interval():
    from bilma.analysis.stats import detectable_effect, paired_interval, paired_sample_size

    # (t_.975,n-1 + t_.8,n-1) * sd / sqrt(n) <= effect: sd 1.6 needs 8 pairs for 2 points
    assert paired_sample_size(1.6, 2.0) == 8
    assert detectable_effect(1.6, 7) > 2.0 >= detectable_effect(1.6, 8)
    assert paired_sample_size(2.0, 2.0) == 10
    low, high = paired_interval([1.0, 2.0, 3.0])
    assert (low + high) / 2 == pytest.approx(2.0)
    assert high - 2.0 == pytest.approx(4.302653 * 1.0 / 3**0.5, abs=1e-5)
