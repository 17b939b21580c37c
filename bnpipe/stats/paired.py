"""Paired statistics of an ablation: tests, intervals, effect sizes, corrections, power.

Pure functions over arrays and DataFrames; no tracking or orchestration imports. Every seed
pairs a control and a treatment cell (same data order, same Dense init), so comparisons are
paired: the unit of analysis is the per-seed difference ``treatment - control``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from bnpipe.factors import FACTORS, factor_columns, level_phrase, stratum_label

FINISHED = "finished"

# Accuracies are multiples of 1/n_test; differences of such floats carry ~1e-17 round-off that
# would turn genuine ties and zeros into distinct ranks. Rank-based tests round this away.
_RANK_DECIMALS = 12

# scipy's wilcoxon enumerates the exact null only up to this many non-zero differences
# when ties/zeros are present; beyond it the normal approximation is used.
_WILCOXON_PERM_MAX_N = 13
_WILCOXON_EXACT_MAX_N = 50

VERDICTS = (
    "significant improvement",
    "significant harm",
    "equivalent within margin",
    "inconclusive",
)


@dataclass(frozen=True)
class PairedComparison:
    """Paired comparison of ``treatment - control`` over seeds.

    All float fields are NaN where the statistic is undefined (n < 2, zero variance, ...).
    ``hedges_gz`` uses the exact small-sample correction
    ``J = Gamma(df/2) / (sqrt(df/2) * Gamma((df-1)/2))`` with ``df = n - 1``.
    ``seeds_for_80pct_power`` is a float (integer-valued, NaN when undefined, inf when more
    than ``MAX_SEEDS`` would be needed) so that it sits in a numeric DataFrame column.
    """

    n: int
    mean_diff: float
    sd_diff: float
    se_diff: float
    ci_low: float
    ci_high: float
    boot_ci_low: float
    boot_ci_high: float
    t_stat: float
    t_pvalue: float
    wilcoxon_stat: float
    wilcoxon_pvalue: float
    wilcoxon_method: str
    permutation_pvalue: float
    permutation_method: str
    cohens_dz: float
    hedges_gz: float
    tost_pvalue: float
    equivalent: bool
    seeds_for_80pct_power: float
    alpha: float
    equivalence_margin: float

    def seeds_needed(self, delta: float | None = None, power: float = 0.8) -> float:
        """Pairs needed to detect ``delta`` (default: the observed mean diff) at ``power``.

        Uses the observed SD of the differences and this comparison's alpha.
        """
        effect = self.mean_diff if delta is None else delta
        return seeds_needed(effect, self.sd_diff, alpha=self.alpha, power=power)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (JSON/MLflow friendly)."""
        return asdict(self)


MAX_SEEDS = 1_000_000


def _t_power(n: int, effect_size: float, alpha: float) -> float:
    """Power of a two-sided one-sample (paired) t-test with ``n`` pairs."""
    df = n - 1
    nc = effect_size * math.sqrt(n)
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t_crit, df, nc) + stats.nct.cdf(-t_crit, df, nc))


def seeds_needed(delta: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest number of pairs giving ``power`` to detect ``delta`` with a paired t-test.

    Two-sided test at ``alpha``; power from the noncentral t with ``nc = delta/sd * sqrt(n)``.

    Args:
        delta: True mean difference to detect.
        sd: Standard deviation of the paired differences.
        alpha: Two-sided significance level.
        power: Target power.

    Returns:
        The number of pairs (>= 2) as a float; NaN when undefined (delta 0, sd <= 0 or not
        finite); inf when more than ``MAX_SEEDS`` would be needed.
    """
    if not (np.isfinite(delta) and np.isfinite(sd)) or delta == 0 or sd <= 0:
        return math.nan
    effect = abs(delta) / sd
    if _t_power(2, effect, alpha) >= power:
        return 2.0
    # Power increases with n, so double to bracket and bisect instead of stepping one by one.
    lo, hi = 2, 4
    while _t_power(hi, effect, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _t_power(mid, effect, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return float(hi)


def hedges_correction(df: float) -> float:
    """Exact small-sample bias correction J(df) for a standardized mean difference."""
    if not np.isfinite(df) or df <= 1:
        return 0.0 if df == 1 else math.nan
    return float(
        math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    )


def tost_pvalue(mean: float, sd: float, n: int, margin: float) -> float:
    """Paired TOST p-value: max of the two one-sided t-tests against ``-margin`` and ``+margin``.

    NaN when the t statistic is undefined (n < 2 or sd == 0) or the margin is not positive.
    """
    if n < 2 or not np.isfinite(sd) or sd <= 0 or not margin > 0:
        return math.nan
    se = sd / math.sqrt(n)
    df = n - 1
    p_lower = stats.t.sf((mean + margin) / se, df)  # H0: mean <= -margin
    p_upper = stats.t.cdf((mean - margin) / se, df)  # H0: mean >= +margin
    return float(max(p_lower, p_upper))


def _wilcoxon(diffs: np.ndarray, n_resamples: int) -> tuple[float, float, str]:
    """Wilcoxon signed-rank test choosing (and naming) the p-value method explicitly."""
    d = np.round(diffs, _RANK_DECIMALS)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return math.nan, math.nan, "undefined (all differences zero)"
    has_ties = np.unique(np.abs(nonzero)).size < nonzero.size
    has_zeros = nonzero.size < d.size
    if not (has_ties or has_zeros) and nonzero.size <= _WILCOXON_EXACT_MAX_N:
        method: Any = "exact"
        label = "exact"
    elif nonzero.size <= _WILCOXON_PERM_MAX_N:
        # 2**13 sign flips <= 9999, so this enumerates the exact conditional null.
        method = stats.PermutationMethod(n_resamples=max(n_resamples, 2**_WILCOXON_PERM_MAX_N))
        label = "exact permutation (ties/zeros present; zeros dropped)"
    else:
        method = "asymptotic"
        label = "normal approximation (tie-corrected; zeros dropped)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.wilcoxon(d, zero_method="wilcox", method=method)
    return float(res.statistic), float(res.pvalue), label


def _permutation(diffs: np.ndarray, n_resamples: int, random_state: int) -> tuple[float, str]:
    """Paired sign-flip permutation test of the mean difference."""
    n = diffs.size
    exact = 2**n <= n_resamples
    res = stats.permutation_test(
        (diffs,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",  # one sample: the null flips the sign of each difference
        vectorized=True,
        n_resamples=n_resamples,
        rng=np.random.default_rng(random_state),
    )
    label = f"exact ({2**n} sign flips)" if exact else f"Monte Carlo ({n_resamples} sign flips)"
    return float(res.pvalue), label


def _bootstrap_ci(
    diffs: np.ndarray, alpha: float, n_resamples: int, random_state: int
) -> tuple[float, float]:
    """BCa bootstrap CI of the mean paired difference (resampling pairs)."""
    if diffs.size < 3 or np.ptp(diffs) == 0:
        # BCa's jackknife acceleration is 0/0 here; there is nothing to resample.
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning on near-constant resamples
        res = stats.bootstrap(
            (diffs,),
            lambda x, axis: np.mean(x, axis=axis),
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=1 - alpha,
            method="BCa",
            rng=np.random.default_rng(random_state),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _nan_comparison(
    n: int, alpha: float, margin: float, mean: float, sd: float
) -> PairedComparison:
    nan = math.nan
    return PairedComparison(
        n=n,
        mean_diff=mean,
        sd_diff=sd,
        se_diff=nan,
        ci_low=nan,
        ci_high=nan,
        boot_ci_low=nan,
        boot_ci_high=nan,
        t_stat=nan,
        t_pvalue=nan,
        wilcoxon_stat=nan,
        wilcoxon_pvalue=nan,
        wilcoxon_method=f"undefined (n={n})",
        permutation_pvalue=nan,
        permutation_method=f"undefined (n={n})",
        cohens_dz=nan,
        hedges_gz=nan,
        tost_pvalue=nan,
        equivalent=False,
        seeds_for_80pct_power=nan,
        alpha=alpha,
        equivalence_margin=margin,
    )


def compare_paired(
    treatment: np.ndarray | pd.Series | list[float],
    control: np.ndarray | pd.Series | list[float],
    *,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    n_resamples: int = 9999,
    random_state: int = 0,
) -> PairedComparison:
    """Compare paired samples: t-test, Wilcoxon, sign-flip permutation, BCa CI, TOST, power.

    Pairs with NaN in either arm are dropped first; ``n`` is the number of pairs used.
    Undefined statistics come back as NaN rather than raising (n < 2, all diffs equal).

    Args:
        treatment: Per-seed metric with the treatment (the compared factor's second level).
        control: Per-seed metric without it, aligned with ``treatment``.
        alpha: Significance level for CIs, TOST and power.
        equivalence_margin: TOST margin on the mean difference (same units as the metric).
        n_resamples: Bootstrap resamples and permutation budget (exact when 2**n fits).
        random_state: Seed for the bootstrap and Monte Carlo permutations.

    Returns:
        A frozen ``PairedComparison``.
    """
    t_arr = np.asarray(treatment, dtype=float)
    c_arr = np.asarray(control, dtype=float)
    if t_arr.shape != c_arr.shape or t_arr.ndim != 1:
        raise ValueError(
            f"paired arms must be 1-D and equal length: {t_arr.shape} vs {c_arr.shape}"
        )
    keep = np.isfinite(t_arr) & np.isfinite(c_arr)
    diffs = t_arr[keep] - c_arr[keep]
    n = int(diffs.size)
    mean = float(np.mean(diffs)) if n else math.nan
    if n < 2:
        return _nan_comparison(n, alpha, equivalence_margin, mean, math.nan)

    sd = float(np.std(diffs, ddof=1))
    # Differences equal up to float round-off are a zero-variance sample, not a huge t.
    if sd <= 1e-12 * max(1.0, abs(mean)):
        sd = 0.0
    df = n - 1
    wil_stat, wil_p, wil_method = _wilcoxon(diffs, n_resamples)
    perm_p, perm_method = _permutation(diffs, n_resamples, random_state)
    boot_low, boot_high = _bootstrap_ci(diffs, alpha, n_resamples, random_state)

    if sd == 0:
        se = t_stat = t_p = ci_low = ci_high = dz = gz = math.nan
    else:
        se = sd / math.sqrt(n)
        res = stats.ttest_rel(t_arr[keep], c_arr[keep])
        t_stat, t_p = float(res.statistic), float(res.pvalue)
        half = stats.t.ppf(1 - alpha / 2, df) * se
        ci_low, ci_high = float(mean - half), float(mean + half)
        dz = mean / sd
        gz = dz * hedges_correction(df)
    tost_p = tost_pvalue(mean, sd, n, equivalence_margin)
    return PairedComparison(
        n=n,
        mean_diff=mean,
        sd_diff=sd,
        se_diff=se,
        ci_low=ci_low,
        ci_high=ci_high,
        boot_ci_low=boot_low,
        boot_ci_high=boot_high,
        t_stat=t_stat,
        t_pvalue=t_p,
        wilcoxon_stat=wil_stat,
        wilcoxon_pvalue=wil_p,
        wilcoxon_method=wil_method,
        permutation_pvalue=perm_p,
        permutation_method=perm_method,
        cohens_dz=dz,
        hedges_gz=gz,
        tost_pvalue=tost_p,
        equivalent=bool(tost_p < alpha),
        seeds_for_80pct_power=seeds_needed(mean, sd, alpha=alpha, power=0.8),
        alpha=alpha,
        equivalence_margin=equivalence_margin,
    )


def holm(pvalues: np.ndarray | pd.Series | list[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values.

    NaNs pass through untouched and do not count towards the family size.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    # Step-down: an adjusted p can never be smaller than the one before it.
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def verdict(cmp: PairedComparison, p_adj: float, alpha: float, margin: float) -> str:
    """Classify a comparison as one of ``VERDICTS``.

    Significant when the (Holm-)adjusted p < alpha, with the sign of the mean difference
    deciding improvement vs harm; else equivalent when the TOST p at ``margin`` < alpha;
    else inconclusive.
    """
    if np.isfinite(p_adj) and p_adj < alpha:
        return VERDICTS[0] if cmp.mean_diff > 0 else VERDICTS[1]
    if tost_pvalue(cmp.mean_diff, cmp.sd_diff, cmp.n, margin) < alpha:
        return VERDICTS[2]
    return VERDICTS[3]


# A results table has one column per grid factor (any of bnpipe.factors.FACTORS), then these.
RESULT_REQUIRED = ("seed", "status", "test_accuracy")
# The columns an empty histories frame keeps (its factor columns are the grid's, unknown here).
HISTORY_COLUMNS = (
    "seed",
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_time_s",
)
_TRUE = {"true", "1", "yes", "on"}


def _as_bool(s: pd.Series) -> pd.Series:
    # Read back from CSV/MLflow the flag can be a string; astype(bool) would make "False" True.
    if s.dtype == bool:
        return s
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        return s.map(lambda v: str(v).strip().lower() in _TRUE).astype(bool)
    return s.astype(bool)


def _typed_factors(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every factor column in its factor's type (in place; returns it)."""
    for name in factor_columns(frame.columns):
        kind = FACTORS[name].kind
        if kind is bool:
            frame[name] = _as_bool(frame[name])
        elif kind is int:
            frame[name] = frame[name].astype(int)
        elif kind is float:
            frame[name] = pd.to_numeric(frame[name]).astype(float)
        else:
            frame[name] = frame[name].astype(str)
    return frame


def normalize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Copy of a results frame with typed keys (each factor column in its factor's type, seed
    int).

    Optional numeric columns (``train_accuracy``, ``epoch_time_s``, ``test_loss``) are added as
    NaN when absent.

    Raises:
        ValueError: If a required column is missing.
    """
    missing = [c for c in RESULT_REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks columns {missing}")
    out = _typed_factors(results.copy())
    out["seed"] = out["seed"].astype(int)
    out["test_accuracy"] = pd.to_numeric(out["test_accuracy"], errors="coerce").astype(float)
    for col in ("train_accuracy", "epoch_time_s", "test_loss"):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else math.nan
    return out


def normalize_histories(histories: pd.DataFrame | None) -> pd.DataFrame:
    """Copy of a histories frame with typed keys; an empty/column-less frame stays empty.

    Raises:
        ValueError: If a non-empty frame lacks a column needed for the dynamics.
    """
    if histories is None or len(histories) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in HISTORY_COLUMNS})
    needed = ("seed", "epoch", "val_accuracy")
    missing = [c for c in needed if c not in histories.columns]
    if missing:
        raise ValueError(f"histories frame lacks columns {missing}")
    out = _typed_factors(histories.copy())
    for col in ("seed", "epoch"):
        out[col] = out[col].astype(int)
    for col in ("accuracy", "epoch_time_s", "loss", "val_loss"):
        if col not in out:
            out[col] = math.nan
    return out


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    results = normalize_results(results)
    ok = (results["status"] == FINISHED) & np.isfinite(results["test_accuracy"].astype(float))
    return results.loc[ok]


def stratum_factors(results: pd.DataFrame, compare: str) -> list[str]:
    """The factor columns of ``results`` other than ``compare``: what makes its strata."""
    return [c for c in factor_columns(results.columns) if c != compare]


def _compare_levels(
    results: pd.DataFrame, compare: str, levels: Sequence[Any] | None
) -> tuple[Any, Any] | None:
    """(control, treatment); None when ``results`` has fewer than two levels of ``compare``.

    Without ``levels`` the two levels present, in sorted order (False before True).
    """
    if compare not in results.columns:
        raise ValueError(f"results frame lacks the compared factor's column {compare!r}")
    if levels is not None:
        if len(levels) != 2:
            return None
        return levels[0], levels[1]
    present = sorted(pd.unique(results[compare]).tolist())
    if len(present) > 2:
        raise ValueError(f"{compare} has {len(present)} levels; say which two to compare")
    return (present[0], present[1]) if len(present) == 2 else None


def _label(strata: list[str], values: Sequence[Any]) -> str:
    return stratum_label(tuple((n, _py(v)) for n, v in zip(strata, values, strict=True)))


def _py(v: Any) -> Any:
    """A numpy scalar as the Python value (levels compare and format as the config's)."""
    return v.item() if isinstance(v, np.generic) else v


def paired_frame(
    results: pd.DataFrame,
    compare: str,
    levels: Sequence[Any] | None = None,
    outcome: str = "test_accuracy",
    *,
    metric: str | None = None,
) -> pd.DataFrame:
    """Join the control and treatment cells of ``compare`` by (stratum, seed), finished cells
    only.

    Args:
        results: The results frame (one row per grid cell, one column per grid factor).
        compare: The compared factor (its column in ``results``).
        levels: (control, treatment); default: the two levels present, sorted.
        outcome: Column to pair.
        metric: Older name of ``outcome``.

    Returns:
        Columns ``stratum`` (its label, e.g. ``batch_size=32``), one per stratum factor,
        ``seed, control, treatment, diff`` (diff = treatment - control), sorted by stratum and
        seed; only seeds finished in both arms.

    Raises:
        ValueError: If a finished cell appears twice (pairing would be ambiguous).
    """
    outcome = metric or outcome
    strata = stratum_factors(results, compare)
    empty = pd.DataFrame(
        {
            c: pd.Series(dtype=float)
            for c in ["stratum", *strata, "seed", "control", "treatment", "diff"]
        }
    )
    done = _finished(results)
    keys = [*factor_columns(done.columns), "seed"]
    dup = done.duplicated(keys, keep=False)
    if dup.any():
        cells = done.loc[dup, keys].drop_duplicates().to_dict("records")
        raise ValueError(f"finished cells recorded more than once: {cells}")
    arms = _compare_levels(normalize_results(results), compare, levels)
    if arms is None:
        return empty
    control, treatment = arms
    cols = [*strata, "seed", outcome]
    ctrl = done.loc[done[compare] == control, cols]
    treat = done.loc[done[compare] == treatment, cols]
    merged = ctrl.merge(treat, on=[*strata, "seed"], suffixes=("_c", "_t"))
    out = merged[[*strata, "seed"]].copy()
    out["seed"] = out["seed"].astype(int)
    out["control"] = merged[f"{outcome}_c"].astype(float)
    out["treatment"] = merged[f"{outcome}_t"].astype(float)
    out["diff"] = out["treatment"] - out["control"]
    out = out.sort_values([*strata, "seed"]).reset_index(drop=True)
    labels = [_label(strata, row) for row in out[strata].itertuples(index=False, name=None)]
    out.insert(0, "stratum", pd.Series(labels, index=out.index, dtype=object))
    return out


# The columns a reader looks at first (the CLI table, the Prefect table artifact).
# ``acc_control`` and ``acc_treatment`` are the arms' mean test accuracy.
HEADLINE_COLUMNS = [
    "stratum",
    "n_pairs",
    "acc_control",
    "acc_treatment",
    "mean_diff",
    "ci_low",
    "ci_high",
    "t_pvalue",
    "p_holm",
    "verdict",
]
SUMMARY_COLUMNS = [
    *HEADLINE_COLUMNS,
    "n_control",
    "n_treatment",
    "sd_diff",
    "se_diff",
    "boot_ci_low",
    "boot_ci_high",
    "t_stat",
    "wilcoxon_stat",
    "wilcoxon_pvalue",
    "wilcoxon_method",
    "permutation_pvalue",
    "permutation_method",
    "cohens_dz",
    "hedges_gz",
    "tost_pvalue",
    "equivalent",
    "seeds_for_80pct_power",
    "alpha",
    "equivalence_margin",
    "compare",
    "control_level",
    "treatment_level",
]


def summary_columns(strata: Sequence[str]) -> list[str]:
    """A summary's columns: ``stratum``, one per stratum factor, then the statistics."""
    return [SUMMARY_COLUMNS[0], *strata, *SUMMARY_COLUMNS[1:]]


def summarize_by_stratum(
    results: pd.DataFrame,
    compare: str,
    levels: Sequence[Any] | None = None,
    *,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    n_resamples: int = 9999,
    random_state: int = 0,
) -> pd.DataFrame:
    """One paired comparison (treatment vs control level of ``compare``) of test accuracy per
    stratum (combination of the other factors' levels).

    ``diff`` is treatment minus control. ``acc_control``/``acc_treatment`` average all finished
    cells of the arm (``n_control``/``n_treatment`` of them); the paired statistics use the
    ``n_pairs`` seeds finished in both. ``p_holm`` adjusts ``t_pvalue`` across the strata
    (Holm). A stratum with no complete pair gives ``n_pairs=0`` and NaN statistics.

    Returns:
        A DataFrame with :func:`summary_columns`, one row per stratum in ``results``, sorted.
    """
    results = normalize_results(results)
    strata = stratum_factors(results, compare)
    columns = summary_columns(strata)
    arms = _compare_levels(results, compare, levels)
    control, treatment = arms if arms is not None else (None, None)
    done = _finished(results)
    pairs = paired_frame(results, compare, arms)
    rows: list[dict[str, Any]] = []
    combos = results[strata].drop_duplicates().sort_values(strata) if strata else [()]
    for values in combos.itertuples(index=False, name=None) if strata else combos:

        def at(frame: pd.DataFrame, values: tuple = values) -> pd.Series:
            mask = pd.Series(True, index=frame.index)
            for name, value in zip(strata, values, strict=True):
                mask &= frame[name] == value
            return mask

        p = pairs.loc[at(pairs)]
        cmp = compare_paired(
            p["treatment"].to_numpy(),
            p["control"].to_numpy(),
            alpha=alpha,
            equivalence_margin=equivalence_margin,
            n_resamples=n_resamples,
            random_state=random_state,
        )
        arm = done.loc[at(done)]
        acc_t = arm.loc[arm[compare] == treatment, "test_accuracy"].astype(float)
        acc_c = arm.loc[arm[compare] == control, "test_accuracy"].astype(float)
        row = cmp.to_dict()
        row.update(
            stratum=_label(strata, values),
            **{name: _py(v) for name, v in zip(strata, values, strict=True)},
            n_pairs=row.pop("n"),
            acc_control=float(acc_c.mean()) if len(acc_c) else math.nan,
            acc_treatment=float(acc_t.mean()) if len(acc_t) else math.nan,
            n_control=len(acc_c),
            n_treatment=len(acc_t),
            compare=compare,
            control_level=_py(control),
            treatment_level=_py(treatment),
            _cmp=cmp,
        )
        rows.append(row)
    if not rows or not len(results):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    adjusted = holm([r["t_pvalue"] for r in rows])
    for r, p_adj in zip(rows, adjusted, strict=True):
        r["p_holm"] = float(p_adj)
        r["verdict"] = verdict(r.pop("_cmp"), p_adj, alpha, equivalence_margin)
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


def dropped_pairs(
    results: pd.DataFrame, compare: str, levels: Sequence[Any] | None = None
) -> pd.DataFrame:
    """Seeds present in a stratum but missing from the paired analysis, and why.

    Returns:
        Columns ``stratum``, one per stratum factor, ``seed, reason`` (e.g.
        ``"seed 4 diverged (BN on)"``).
    """
    results = normalize_results(results)
    strata = stratum_factors(results, compare)
    columns = ["stratum", *strata, "seed", "reason"]
    arms = _compare_levels(results, compare, levels) if len(results) else None
    if arms is None:
        return pd.DataFrame(columns=columns)
    done = _finished(results)
    keys = [*strata, compare, "seed"]
    ok = {tuple(map(_py, k)) for k in done[keys].itertuples(index=False, name=None)}
    status = {
        tuple(map(_py, k)): (s if s != FINISHED else "finished without a test accuracy")
        for *k, s in results[[*keys, "status"]].itertuples(index=False, name=None)
    }
    rows = []
    cells = results[[*strata, "seed"]].drop_duplicates()
    for *values, seed in sorted(
        tuple(map(_py, c)) for c in cells.itertuples(index=False, name=None)
    ):
        problems = []
        for level in arms:
            key = (*values, _py(level), seed)
            if key not in ok:
                problems.append(f"{status.get(key, 'missing')} ({level_phrase(compare, level)})")
        if problems:
            rows.append(
                {
                    "stratum": _label(strata, values),
                    **dict(zip(strata, values, strict=True)),
                    "seed": seed,
                    "reason": f"seed {seed} " + ", ".join(problems),
                }
            )
    return pd.DataFrame(rows, columns=columns)
