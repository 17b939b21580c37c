"""bnpipe.stats.exact: sign-test, Wilson, Newcombe and McNemar intervals; estimates without data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bnpipe import stats as S
from tests.stats_frames import SLEEP_DRUG1, SLEEP_DRUG2


def test_newcombe_interval_is_not_degenerate_without_discordant_pairs() -> None:
    lo, hi = S.newcombe_paired(0, 0, 0, 30, 0.05)
    assert lo < 0 < hi and hi - lo > 0.1
    # Wider at a stricter level, narrower with more pairs.
    assert S.newcombe_paired(0, 0, 0, 30, 0.01)[1] > hi
    assert S.newcombe_paired(0, 0, 0, 300, 0.05)[1] < hi


def test_newcombe_is_square_and_add_of_wilson_intervals() -> None:
    # Uncorrelated margins (a*d == b*c, so phi = 0): Newcombe's method 10 reduces to adding
    # the two Wilson intervals' distances in quadrature; scipy gives the Wilson intervals.
    a, b, c, d = 6, 2, 3, 1
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    w1 = sps.binomtest(a + b, n).proportion_ci(0.95, method="wilson")
    w2 = sps.binomtest(a + c, n).proportion_ci(0.95, method="wilson")
    assert S.wilson(a + b, n, 0.05) == pytest.approx((w1.low, w1.high))
    lo = p1 - p2 - math.hypot(p1 - w1.low, w2.high - p2)
    hi = p1 - p2 + math.hypot(w1.high - p1, p2 - w2.low)
    assert S.newcombe_paired(a, b, c, d, 0.05) == pytest.approx((lo, hi))
    # Positively correlated arms (the usual paired case) give a narrower interval.
    wide = S.newcombe_paired(a, b, c, d, 0.05)
    narrow = S.newcombe_paired(a + 10, b, c, d + 10, 0.05)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_sign_interval_is_exact_and_needs_enough_seeds() -> None:
    d = np.arange(1.0, 11.0)  # ten positive differences
    lo, hi, p = S.sign_interval(d, 0.05 / 7)
    assert (lo, hi) == (1.0, 10.0)  # k = 1: 2 * 0.5**10 <= alpha < 2 * P(Bin <= 1)
    assert p == pytest.approx(2 * 0.5**10)
    lo, hi, _ = S.sign_interval(d, 0.05)  # 2 * P(Bin(10) <= 1) = 0.021 <= 0.05
    assert (lo, hi) == (2.0, 9.0)
    assert S.sign_interval(d[:3], 0.05)[:2] == (-math.inf, math.inf)  # 2 * 0.5**3 > 0.05


def test_paired_t_estimate_replaces_a_degenerate_t_interval() -> None:
    t, c = np.full(6, 0.971), np.full(6, 0.97)
    est = S.paired_t_estimate(t, c, alpha=0.05, margin=0.002, n_resamples=999)
    cmp = S.compare_paired(t, c, alpha=0.05, n_resamples=999)
    assert est.ci_low == est.ci_high == est.effect == cmp.mean_diff
    assert est.p == cmp.permutation_pvalue and "sign-flip" in est.note
    tied = S.paired_t_estimate(c, c, alpha=0.05, margin=0.002, n_resamples=999)
    assert math.isnan(tied.ci_low) and tied.p == 1.0 and "tied" in tied.note
    usual = S.paired_t_estimate(SLEEP_DRUG2, SLEEP_DRUG1, alpha=0.05, margin=1.0, n_resamples=99)
    assert usual.p == pytest.approx(0.002833, abs=1e-6) and usual.note == ""


def test_median_and_proportion_estimates_without_data_are_nan() -> None:
    assert math.isnan(S.median_estimate(np.array([np.nan]), 0.05).effect)
    assert S.median_estimate(np.array([np.nan, 1.0, 3.0]), 0.05).n == 2
    assert math.isnan(S.paired_proportion_estimate(0, 0, 0, 0, 0.05).p)
    counts = S.paired_counts([1, 1, 0, 0, 1], [1, 0, 1, 0, 0])
    assert counts == (1, 2, 1, 1)
    est = S.paired_proportion_estimate(*counts, 0.05)
    assert est.effect == pytest.approx(1 / 5) and est.p == S.mcnemar_exact(2, 1)
