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
    # No "seeds needed" from the observed effect here: post-hoc power says nothing the CI does
    # not; the sequential design's expected seeds (at a planning SD) are the design quantity.
    return head + tail
