"""Paired statistics for the BN ablation: tests, intervals, effect sizes, corrections, power.

Pure functions over arrays and DataFrames; no tracking or orchestration imports. Every seed
pairs a BN and a no-BN cell (same data order, same Dense init), so comparisons are paired:
the unit of analysis is the per-seed difference ``treatment - control``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

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
        treatment: Per-seed metric with the treatment (e.g. BN on).
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


RESULT_REQUIRED = ("bn", "batch_size", "seed", "status", "test_accuracy")
HISTORY_COLUMNS = (
    "bn",
    "batch_size",
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


def normalize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Copy of a results frame with typed keys (bn bool, batch_size/seed int).

    Optional numeric columns (``train_accuracy``, ``epoch_time_s``, ``test_loss``) are added as
    NaN when absent.

    Raises:
        ValueError: If a required column is missing.
    """
    missing = [c for c in RESULT_REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks columns {missing}")
    out = results.copy()
    out["bn"] = _as_bool(out["bn"])
    out["batch_size"] = out["batch_size"].astype(int)
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
    needed = ("bn", "batch_size", "seed", "epoch", "val_accuracy")
    missing = [c for c in needed if c not in histories.columns]
    if missing:
        raise ValueError(f"histories frame lacks columns {missing}")
    out = histories.copy()
    out["bn"] = _as_bool(out["bn"])
    for col in ("batch_size", "seed", "epoch"):
        out[col] = out[col].astype(int)
    for col in ("accuracy", "epoch_time_s", "loss", "val_loss"):
        if col not in out:
            out[col] = math.nan
    return out


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    results = normalize_results(results)
    ok = (results["status"] == FINISHED) & np.isfinite(results["test_accuracy"].astype(float))
    return results.loc[ok]


def paired_frame(
    results: pd.DataFrame, treatment_bn: bool = True, metric: str = "test_accuracy"
) -> pd.DataFrame:
    """Join BN-on and BN-off cells by (batch_size, seed), finished cells only.

    Args:
        results: The results frame (one row per grid cell).
        treatment_bn: Which BN setting is the treatment (the other is the control).
        metric: Column to pair.

    Returns:
        Columns ``batch_size, seed, control, treatment, diff`` (diff = treatment - control),
        sorted by batch size and seed; only seeds finished in both arms.

    Raises:
        ValueError: If a finished cell appears twice (pairing would be ambiguous).
    """
    done = _finished(results)
    dup = done.duplicated(["bn", "batch_size", "seed"], keep=False)
    if dup.any():
        cells = done.loc[dup, ["bn", "batch_size", "seed"]].drop_duplicates().to_dict("records")
        raise ValueError(f"finished cells recorded more than once: {cells}")
    cols = ["batch_size", "seed", metric]
    treat = done.loc[done["bn"].astype(bool) == treatment_bn, cols]
    ctrl = done.loc[done["bn"].astype(bool) != treatment_bn, cols]
    merged = ctrl.merge(treat, on=["batch_size", "seed"], suffixes=("_c", "_t"))
    out = pd.DataFrame(
        {
            "batch_size": merged["batch_size"].astype(int),
            "seed": merged["seed"].astype(int),
            "control": merged[f"{metric}_c"].astype(float),
            "treatment": merged[f"{metric}_t"].astype(float),
        }
    )
    out["diff"] = out["treatment"] - out["control"]
    return out.sort_values(["batch_size", "seed"]).reset_index(drop=True)


# The columns a reader looks at first (the CLI table, the Prefect table artifact).
HEADLINE_COLUMNS = [
    "batch_size",
    "n_pairs",
    "acc_no_bn",
    "acc_bn",
    "mean_diff",
    "ci_low",
    "ci_high",
    "t_pvalue",
    "p_holm",
    "verdict",
]
SUMMARY_COLUMNS = [
    *HEADLINE_COLUMNS,
    "n_no_bn",
    "n_bn",
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
]


def summarize_by_batch_size(
    results: pd.DataFrame,
    *,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    n_resamples: int = 9999,
    random_state: int = 0,
) -> pd.DataFrame:
    """One paired BN-vs-no-BN comparison of test accuracy per batch size.

    ``diff`` is BN minus no-BN. ``acc_no_bn``/``acc_bn`` average all finished cells of that
    arm (``n_no_bn``/``n_bn`` of them); the paired statistics use the ``n_pairs`` seeds finished
    in both. ``p_holm`` adjusts ``t_pvalue`` across the batch sizes (Holm). A batch size with
    no complete pair gives ``n_pairs=0`` and NaN statistics.

    Returns:
        A DataFrame with ``SUMMARY_COLUMNS``, one row per batch size in ``results``, sorted.
    """
    results = normalize_results(results)
    done = _finished(results)
    pairs = paired_frame(results, treatment_bn=True)
    rows: list[dict[str, Any]] = []
    for bs in sorted(int(b) for b in pd.unique(results["batch_size"])):
        p = pairs.loc[pairs["batch_size"] == bs]
        cmp = compare_paired(
            p["treatment"].to_numpy(),
            p["control"].to_numpy(),
            alpha=alpha,
            equivalence_margin=equivalence_margin,
            n_resamples=n_resamples,
            random_state=random_state,
        )
        arm = done.loc[done["batch_size"] == bs]
        acc_bn = arm.loc[arm["bn"].astype(bool), "test_accuracy"].astype(float)
        acc_no = arm.loc[~arm["bn"].astype(bool), "test_accuracy"].astype(float)
        row = cmp.to_dict()
        row.update(
            batch_size=bs,
            n_pairs=row.pop("n"),
            acc_no_bn=float(acc_no.mean()) if len(acc_no) else math.nan,
            acc_bn=float(acc_bn.mean()) if len(acc_bn) else math.nan,
            n_no_bn=len(acc_no),
            n_bn=len(acc_bn),
            _cmp=cmp,
        )
        rows.append(row)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in SUMMARY_COLUMNS})
    adjusted = holm([r["t_pvalue"] for r in rows])
    for r, p_adj in zip(rows, adjusted, strict=True):
        r["p_holm"] = float(p_adj)
        r["verdict"] = verdict(r.pop("_cmp"), p_adj, alpha, equivalence_margin)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------------------------
# Across the grid: repeated-measures ANOVA with seed as the subject
# --------------------------------------------------------------------------------------------

ANOVA_METHOD = (
    "two-way repeated-measures ANOVA (BN x batch size, both within-seed), seeds complete "
    "across all cells; p uncorrected, p_gg with the Greenhouse-Geisser correction"
)
ANOVA_COLUMNS = [
    "effect",
    "ss",
    "df",
    "ss_error",
    "df_error",
    "F",
    "p",
    "gg_epsilon",
    "p_gg",
    "partial_eta_sq",
    "n_seeds",
    "method",
]


def _helmert(k: int) -> np.ndarray:
    """Orthonormal contrasts, (k-1) x k, each row orthogonal to the constant vector."""
    if k < 2:
        return np.zeros((0, k))
    h = np.zeros((k - 1, k))
    for i in range(1, k):
        h[i - 1, :i] = 1.0
        h[i - 1, i] = -float(i)
        h[i - 1] /= math.sqrt(i * (i + 1))
    return h


def gg_epsilon(cells: np.ndarray, contrasts: np.ndarray) -> float:
    """Greenhouse-Geisser epsilon of an effect given per-subject cell values.

    Args:
        cells: (n_subjects, p) values, one column per within-subject cell.
        contrasts: (q, p) orthonormal contrasts spanning the effect.

    Returns:
        epsilon in [1/q, 1]; 1.0 for a one-df effect; NaN when the covariance is degenerate.
    """
    q = contrasts.shape[0]
    if q == 1:
        return 1.0
    if q == 0 or cells.shape[0] < 2:
        return math.nan
    v = contrasts @ np.cov(cells, rowvar=False) @ contrasts.T
    denom = q * np.trace(v @ v)
    return float(np.trace(v) ** 2 / denom) if denom > 0 else math.nan


def _f_row(
    effect: str, ss: float, df: int, ss_err: float, df_err: int, eps: float, n: int
) -> dict[str, Any]:
    ok = df > 0 and df_err > 0 and ss_err > 0
    f = (ss / df) / (ss_err / df_err) if ok else math.nan
    p = float(stats.f.sf(f, df, df_err)) if ok else math.nan
    p_gg = float(stats.f.sf(f, eps * df, eps * df_err)) if ok and np.isfinite(eps) else math.nan
    total = ss + ss_err
    return {
        "effect": effect,
        "ss": ss,
        "df": df,
        "ss_error": ss_err,
        "df_error": df_err,
        "F": f,
        "p": p,
        "gg_epsilon": eps,
        "p_gg": p_gg,
        "partial_eta_sq": ss / total if total > 0 else math.nan,
        "n_seeds": n,
    }


def rm_anova_oneway(y: np.ndarray) -> dict[str, Any]:
    """One-way repeated-measures ANOVA on a complete (subjects x levels) array.

    Returns:
        Dict with ``ss, df, ss_error, df_error, F, p, gg_epsilon, p_gg, partial_eta_sq,
        n_seeds`` (effect named ``"level"``).
    """
    y = np.asarray(y, dtype=float)
    n, k = y.shape
    g = y.mean()
    ss_level = n * float(np.sum((y.mean(axis=0) - g) ** 2))
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + g
    ss_err = float(np.sum(resid**2))
    eps = gg_epsilon(y, _helmert(k))
    return _f_row("level", ss_level, k - 1, ss_err, (k - 1) * (n - 1), eps, n)


def rm_anova_twoway(y: np.ndarray, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Two-way repeated-measures ANOVA on a complete (subjects x A x B) array.

    Each effect is tested against its own subject-by-effect error term.

    Returns:
        Rows for A, B and A:B with ``ANOVA_COLUMNS`` (without ``method``).
    """
    y = np.asarray(y, dtype=float)
    n, a, b = y.shape
    g = y.mean()
    m_s = y.mean(axis=(1, 2))
    m_a = y.mean(axis=(0, 2))
    m_b = y.mean(axis=(0, 1))
    m_ab = y.mean(axis=0)
    m_as = y.mean(axis=2)  # (n, a)
    m_bs = y.mean(axis=1)  # (n, b)
    ss_a = n * b * float(np.sum((m_a - g) ** 2))
    ss_b = n * a * float(np.sum((m_b - g) ** 2))
    ss_ab = n * float(np.sum((m_ab - m_a[:, None] - m_b[None, :] + g) ** 2))
    ss_as = b * float(np.sum((m_as - m_a[None, :] - m_s[:, None] + g) ** 2))
    ss_bs = a * float(np.sum((m_bs - m_b[None, :] - m_s[:, None] + g) ** 2))
    ss_total = float(np.sum((y - g) ** 2))
    ss_s = a * b * float(np.sum((m_s - g) ** 2))
    ss_abs = ss_total - ss_s - ss_a - ss_b - ss_ab - ss_as - ss_bs
    flat = y.reshape(n, a * b)  # column index = i_a * b + i_b, matching np.kron below
    ca, cb = _helmert(a), _helmert(b)
    eps_a = gg_epsilon(flat, np.kron(ca, np.ones((1, b)) / math.sqrt(b)))
    eps_b = gg_epsilon(flat, np.kron(np.ones((1, a)) / math.sqrt(a), cb))
    eps_ab = gg_epsilon(flat, np.kron(ca, cb))
    rows = [
        _f_row(names[0], ss_a, a - 1, ss_as, (a - 1) * (n - 1), eps_a, n),
        _f_row(names[1], ss_b, b - 1, ss_bs, (b - 1) * (n - 1), eps_b, n),
        _f_row(
            f"{names[0]}:{names[1]}",
            ss_ab,
            (a - 1) * (b - 1),
            max(ss_abs, 0.0),
            (a - 1) * (b - 1) * (n - 1),
            eps_ab,
            n,
        ),
    ]
    return pd.DataFrame(rows)


def _complete_seeds(results: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[int]]:
    """Wide table (seed x (bn, batch_size)) of finished cells, restricted to complete seeds."""
    results = normalize_results(results)
    done = _finished(results)
    bns = sorted(bool(v) for v in pd.unique(results["bn"]))
    sizes = sorted(int(v) for v in pd.unique(results["batch_size"]))
    wide = done.assign(bn=done["bn"].astype(bool)).pivot_table(
        index="seed", columns=["bn", "batch_size"], values=metric, aggfunc="first"
    )
    full = pd.MultiIndex.from_product([bns, sizes], names=["bn", "batch_size"])
    wide = wide.reindex(columns=full).dropna(axis=0, how="any")
    return wide, sizes


def interaction_anova(results: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """BN x batch-size two-way RM-ANOVA on ``metric`` with seed as the subject.

    Only seeds finished (with a finite metric) in every cell of the grid are used.

    Returns:
        Rows ``bn``, ``batch_size``, ``bn:batch_size`` with ``ANOVA_COLUMNS``; NaN statistics
        (and ``n_seeds``) when fewer than two complete seeds or a factor has one level.
    """
    wide, sizes = _complete_seeds(results, metric)
    bns = sorted({bool(c[0]) for c in wide.columns})
    n = len(wide)
    if n >= 2 and len(bns) == 2 and len(sizes) >= 2:
        y = wide.to_numpy().reshape(n, len(bns), len(sizes))
        out = rm_anova_twoway(y, names=("bn", "batch_size"))
    else:
        nan_row = dict.fromkeys(ANOVA_COLUMNS[1:-2], math.nan)
        out = pd.DataFrame(
            [{"effect": e, **nan_row, "n_seeds": n} for e in ("bn", "batch_size", "bn:batch_size")]
        )
    out["method"] = ANOVA_METHOD
    return out[ANOVA_COLUMNS]


BATCH_EFFECT_COLUMNS = [
    "bn",
    "n_seeds",
    "n_levels",
    "F",
    "df",
    "df_error",
    "p",
    "gg_epsilon",
    "p_gg",
    "partial_eta_sq",
    "friedman_stat",
    "friedman_p",
]


def batch_size_effect(results: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Effect of batch size within each BN setting.

    One-way RM-ANOVA over batch size (seed as subject, Greenhouse-Geisser p in ``p_gg``) and
    Friedman's test as the nonparametric check (needs >= 3 batch sizes, else NaN). Seeds
    must be finished in every batch size of that BN setting.

    Returns:
        One row per BN setting with ``BATCH_EFFECT_COLUMNS``.
    """
    results = normalize_results(results)
    done = _finished(results)
    sizes = sorted(int(v) for v in pd.unique(results["batch_size"]))
    rows = []
    for bn in sorted(bool(v) for v in pd.unique(results["bn"])):
        arm = done.loc[done["bn"].astype(bool) == bn]
        wide = arm.pivot_table(index="seed", columns="batch_size", values=metric, aggfunc="first")
        y = wide.reindex(columns=sizes).dropna(axis=0, how="any").to_numpy()
        n, k = y.shape
        row: dict[str, Any] = {"bn": bn, "n_seeds": n, "n_levels": k}
        if n >= 2 and k >= 2:
            res = rm_anova_oneway(y)
            row.update({key: res[key] for key in BATCH_EFFECT_COLUMNS[3:10]})
        else:
            row.update(dict.fromkeys(BATCH_EFFECT_COLUMNS[3:10], math.nan))
        if n >= 2 and k >= 3 and np.ptp(y) > 0:
            fr = stats.friedmanchisquare(*y.T)
            row.update(friedman_stat=float(fr.statistic), friedman_p=float(fr.pvalue))
        else:
            row.update(friedman_stat=math.nan, friedman_p=math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=BATCH_EFFECT_COLUMNS)


# --------------------------------------------------------------------------------------------
# Training dynamics
# --------------------------------------------------------------------------------------------

DYNAMICS_COLUMNS = [
    "bn",
    "batch_size",
    "seed",
    "status",
    "n_epochs",
    "final_val_accuracy",
    "epochs_to_threshold",
    "stability",
    "generalization_gap",
    "time_per_epoch",
]
STABILITY_EPOCHS = 3


def _cell_dynamics(h: pd.DataFrame, threshold: float) -> dict[str, float]:
    h = h.sort_values("epoch")
    val = h["val_accuracy"].to_numpy(dtype=float)
    reached = np.flatnonzero(val >= threshold)
    tail = val[-STABILITY_EPOCHS:]
    return {
        "n_epochs": len(h),
        "final_val_accuracy": float(val[-1]) if len(val) else math.nan,
        "epochs_to_threshold": float(h["epoch"].iloc[reached[0]]) if reached.size else math.nan,
        "stability": float(np.std(tail, ddof=1)) if tail.size >= 2 else math.nan,
        "train_accuracy_hist": float(h["accuracy"].iloc[-1]) if len(h) else math.nan,
        "time_hist": float(h["epoch_time_s"].mean()) if len(h) else math.nan,
    }


def dynamics(
    histories: pd.DataFrame, results: pd.DataFrame, threshold: float = 0.97
) -> pd.DataFrame:
    """Per-cell training dynamics.

    ``epochs_to_threshold``: first (1-based) epoch with ``val_accuracy >= threshold``, NaN if
    never. ``stability``: sample SD of ``val_accuracy`` over the last 3 epochs (lower is
    steadier). ``generalization_gap``: final train accuracy minus test accuracy.
    ``time_per_epoch``: the results' ``epoch_time_s`` (history mean where missing).

    Returns:
        One row per cell in ``results`` with ``DYNAMICS_COLUMNS``, sorted by bn, batch_size, seed.
    """
    results = normalize_results(results)
    histories = normalize_histories(histories)
    keys = ["bn", "batch_size", "seed"]
    per_cell = {
        (bool(k[0]), int(k[1]), int(k[2])): _cell_dynamics(h, threshold)
        for k, h in histories.groupby(keys, sort=False)
    }
    empty = dict.fromkeys(
        ["final_val_accuracy", "epochs_to_threshold", "stability"]
        + ["train_accuracy_hist", "time_hist"],
        math.nan,
    )
    rows = []
    for r in results.itertuples(index=False):
        key = (bool(r.bn), int(r.batch_size), int(r.seed))
        d = per_cell.get(key, {"n_epochs": 0, **empty})
        train_acc = float(r.train_accuracy)
        if not np.isfinite(train_acc):
            train_acc = d["train_accuracy_hist"]
        t = float(r.epoch_time_s)
        rows.append(
            {
                "bn": key[0],
                "batch_size": key[1],
                "seed": key[2],
                "status": r.status,
                "n_epochs": d["n_epochs"],
                "final_val_accuracy": d["final_val_accuracy"],
                "epochs_to_threshold": d["epochs_to_threshold"],
                "stability": d["stability"],
                "generalization_gap": train_acc - float(r.test_accuracy),
                "time_per_epoch": t if np.isfinite(t) else d["time_hist"],
            }
        )
    out = pd.DataFrame(rows, columns=DYNAMICS_COLUMNS)
    return out.sort_values(keys).reset_index(drop=True)


DYNAMICS_SUMMARY_COLUMNS = [
    "bn",
    "batch_size",
    "n",
    "n_reached",
    "epochs_to_threshold",
    "stability",
    "generalization_gap",
    "time_per_epoch",
]


def dynamics_summary(
    histories: pd.DataFrame, results: pd.DataFrame, threshold: float = 0.97
) -> pd.DataFrame:
    """Mean dynamics per (bn, batch_size) over finished cells.

    ``n`` counts finished cells; ``n_reached`` those reaching ``threshold``;
    ``epochs_to_threshold`` averages only the cells that reached it.

    Returns:
        A DataFrame with ``DYNAMICS_SUMMARY_COLUMNS``.
    """
    dyn = dynamics(histories, results, threshold)
    dyn = dyn.loc[dyn["status"] == FINISHED]
    if dyn.empty:
        return pd.DataFrame(columns=DYNAMICS_SUMMARY_COLUMNS)
    grouped = dyn.groupby(["bn", "batch_size"], sort=True)
    out = grouped.agg(
        n=("seed", "size"),
        n_reached=("epochs_to_threshold", "count"),
        epochs_to_threshold=("epochs_to_threshold", "mean"),
        stability=("stability", "mean"),
        generalization_gap=("generalization_gap", "mean"),
        time_per_epoch=("time_per_epoch", "mean"),
    ).reset_index()
    return out[DYNAMICS_SUMMARY_COLUMNS]


# --------------------------------------------------------------------------------------------
# Accounting and plain language
# --------------------------------------------------------------------------------------------


def dropped_pairs(results: pd.DataFrame) -> pd.DataFrame:
    """Seeds present at a batch size but missing from the paired analysis, and why.

    Returns:
        Columns ``batch_size, seed, reason`` (e.g. ``"seed 4 diverged (BN on)"``).
    """
    results = normalize_results(results)
    done = _finished(results)
    ok = {(bool(r.bn), int(r.batch_size), int(r.seed)) for r in done.itertuples(index=False)}
    status = {
        (bool(r.bn), int(r.batch_size), int(r.seed)): (
            str(r.status) if r.status != FINISHED else "finished without a test accuracy"
        )
        for r in results.itertuples(index=False)
    }
    rows = []
    cells = results[["batch_size", "seed"]].drop_duplicates().astype(int)
    for bs, seed in sorted(cells.itertuples(index=False, name=None)):
        problems = []
        for bn, label in ((False, "BN off"), (True, "BN on")):
            if (bn, bs, seed) not in ok:
                problems.append(f"{status.get((bn, bs, seed), 'missing')} ({label})")
        if problems:
            rows.append(
                {"batch_size": bs, "seed": seed, "reason": f"seed {seed} " + ", ".join(problems)}
            )
    return pd.DataFrame(rows, columns=["batch_size", "seed", "reason"])


def _pp(x: float) -> str:
    """Format an accuracy difference in percentage points."""
    return f"{100 * x:+.2f} pp"


def _p(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return "< 0.001" if x < 0.001 else f"= {x:.3f}"


def verdict_sentence(row: pd.Series | dict[str, Any]) -> str:
    """Plain-language sentence for one row of ``summarize_by_batch_size``.

    Every number and the conclusion come from the row; nothing is hard-coded.
    """
    bs, n = int(row["batch_size"]), int(row["n_pairs"])
    if n == 0:
        return f"At batch size {bs}, no seed finished in both arms, so BN cannot be compared."
    margin = float(row["equivalence_margin"])
    head = f"At batch size {bs} (n = {n} seed pairs), BN changed test accuracy by "
    head += _pp(float(row["mean_diff"]))
    if np.isfinite(row["ci_low"]):
        level = 100 * (1 - float(row["alpha"]))
        head += f" ({level:g}% CI {_pp(row['ci_low'])} to {_pp(row['ci_high'])})"
    v = row["verdict"]
    if v in VERDICTS[:2]:
        tail = f": a {v} (Holm-adjusted p {_p(row['p_holm'])})."
    elif v == VERDICTS[2]:
        tail = (
            f": equivalent within ±{100 * margin:.2f} pp (TOST p {_p(row['tost_pvalue'])}; "
            f"Holm-adjusted p {_p(row['p_holm'])})."
        )
    else:
        tail = (
            f": inconclusive, neither significant (Holm-adjusted p {_p(row['p_holm'])}) nor "
            f"shown equivalent within ±{100 * margin:.2f} pp (TOST p {_p(row['tost_pvalue'])})."
        )
    need = float(row["seeds_for_80pct_power"])
    if np.isinf(need):
        tail += " A difference this small is not detectable with any practical number of seeds."
    elif np.isfinite(need):
        tail += (
            f" Detecting a difference of this size with 80% power would take about "
            f"{int(need)} seed pairs."
        )
    return head + tail
