"""Exact and small-sample estimates of a paired effect: an estimate, its interval and a p.

The claims report's primary tests, in terms of control and treatment. Each returns an
``Estimate`` (effect, interval, two-sided p, pairs used) that a caller turns into its own record;
the level ``alpha`` is the caller's (the claims pass a Bonferroni share of their family's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bnpipe.stats.paired import compare_paired


@dataclass(frozen=True)
class Estimate:
    """A paired effect with its ``1 - alpha`` interval and two-sided p.

    ``note`` says why the interval is not the method's usual one ("" when it is).
    """

    n: int
    effect: float
    ci_low: float
    ci_high: float
    p: float
    note: str = ""


def bonferroni_alpha(alpha: float, tests: int) -> float:
    """Per-test level at which ``tests`` intervals cover together at ``1 - alpha`` (Bonferroni)."""
    return alpha / max(1, tests)


def paired_t_estimate(
    treatment: np.ndarray,
    control: np.ndarray,
    *,
    alpha: float,
    margin: float,
    n_resamples: int,
) -> Estimate:
    """Mean of ``treatment - control`` with ``compare_paired``'s t interval and t p at ``alpha``.

    Identical differences (SD 0) have no t interval: the interval is the point and the p the
    exact sign-flip permutation p, so ten seeds all pointing one way still decide. Every pair
    tied leaves no spread to size an interval by: NaN interval, p 1.
    """
    cmp = compare_paired(
        treatment, control, alpha=alpha, equivalence_margin=margin, n_resamples=n_resamples
    )
    lo, hi, p, note = cmp.ci_low, cmp.ci_high, cmp.t_pvalue, ""
    if cmp.n >= 2 and cmp.sd_diff == 0 and cmp.mean_diff != 0:
        lo = hi = cmp.mean_diff
        p = cmp.permutation_pvalue
        note = "all differences equal: exact sign-flip p"
    elif cmp.n >= 2 and cmp.sd_diff == 0:
        lo = hi = math.nan
        p = 1.0
        note = "every pair tied: no interval"
    return Estimate(n=cmp.n, effect=cmp.mean_diff, ci_low=lo, ci_high=hi, p=p, note=note)


def sign_interval(diffs: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Median of paired differences with its exact distribution-free interval and sign-test p.

    The interval is [d_(k), d_(n+1-k)] of the sorted differences with the largest k whose
    coverage 1 - 2 P(Bin(n, 1/2) <= k - 1) is at least 1 - alpha; (-inf, inf) when n is too
    small for any. The p is the two-sided sign test on the non-zero differences.
    """
    d = np.sort(np.asarray(diffs, dtype=float))
    n = d.size
    k = 0
    while k + 1 <= n // 2 and 2 * sps.binom.cdf(k, n, 0.5) <= alpha:
        k += 1
    lo, hi = (d[k - 1], d[n - k]) if k else (-math.inf, math.inf)
    nonzero = d[np.round(d, 12) != 0]
    p = float(sps.binomtest(int((nonzero > 0).sum()), nonzero.size).pvalue) if nonzero.size else 1.0
    return float(lo), float(hi), p


def median_estimate(diffs: np.ndarray, alpha: float) -> Estimate:
    """Median of the finite ``diffs`` with ``sign_interval``'s exact interval and p.

    For differences that are a mixture of small and huge values (a few chance-level cells),
    where the t interval's normal theory fails and the median's interval needs no model.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    lo, hi, p = sign_interval(d, alpha) if d.size else (math.nan, math.nan, math.nan)
    effect = float(np.median(d)) if d.size else math.nan
    return Estimate(n=int(d.size), effect=effect, ci_low=lo, ci_high=hi, p=p)


def wilson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (``(0, 1)`` when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    z = sps.norm.ppf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(a: int, b: int, c: int, d: int, alpha: float) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for a paired difference p1 - p2.

    ``a``: both 1, ``b``: first 1 only, ``c``: second 1 only, ``d``: both 0. Unlike a Wald
    interval it stays honest with no discordant pair (0 of 20 is not "exactly 0").
    """
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, alpha)
    l2, u2 = wilson(a + c, n, alpha)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom > 0 else 0.0
    theta = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, theta - delta), min(1.0, theta + eps)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: the binomial test of b discordant pairs of b + c at 1/2."""
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(b, b + c, 0.5).pvalue)


def paired_counts(treatment: Sequence[int], control: Sequence[int]) -> tuple[int, int, int, int]:
    """The 2x2 table of paired 0/1 outcomes: (both 1, treatment only, control only, neither)."""
    t = np.asarray(treatment, dtype=int)
    c = np.asarray(control, dtype=int)
    return (
        int(((t == 1) & (c == 1)).sum()),
        int(((t == 1) & (c == 0)).sum()),
        int(((t == 0) & (c == 1)).sum()),
        int(((t == 0) & (c == 0)).sum()),
    )


def paired_proportion_estimate(a: int, b: int, c: int, d: int, alpha: float) -> Estimate:
    """Difference of paired proportions (treatment - control) from ``paired_counts``' table.

    Exact McNemar p (a binomial test on the discordant pairs: exact for the few a study of
    10-20 seeds has, with no resampling noise, where a bootstrap of 0/1 differences
    degenerates) and Newcombe's hybrid score interval. NaN everywhere when there is no pair.
    """
    n = a + b + c + d
    if n == 0:
        return Estimate(n=0, effect=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
    lo, hi = newcombe_paired(a, b, c, d, alpha)
    return Estimate(n=n, effect=(b - c) / n, ci_low=lo, ci_high=hi, p=mcnemar_exact(b, c))
