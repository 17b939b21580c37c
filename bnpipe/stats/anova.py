"""Across the grid: repeated-measures ANOVA with seed as the subject.

Main effects and interactions of every grid factor (the compared one included), and the effect
of each other factor within each level of the compared one, on the seeds complete in every
cell; exploratory, not part of the error-controlled decisions.

The N-way ANOVA is written here rather than taken from a library: pingouin's ``rm_anova``
stops at two within factors and statsmodels' ``AnovaRM`` has no sphericity correction, while the
orthonormal-contrast form below is a few lines for any number of factors and gives every
effect its own Greenhouse-Geisser epsilon. It is checked against published results (pingouin's
``rm_anova2`` data against JAMOVI; statsmodels' three-factor data against R's ``ezANOVA``) in
tests/test_stats_anova.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bnpipe.factors import factor, factor_columns
from bnpipe.stats.paired import FINISHED, normalize_results

ANOVA_METHOD = (
    "repeated-measures ANOVA over every grid factor (all within-seed), seeds complete "
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


# -------------------------------------------------------------------------------- frames


def _factors(frame: pd.DataFrame) -> list[str]:
    return factor_columns(frame.columns)


def finished_cells(results: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """The finished cells of ``results`` with a finite ``metric``, keys typed."""
    out = normalize_results(results)
    out[metric] = pd.to_numeric(out[metric], errors="coerce").astype(float)
    ok = (out["status"] == FINISHED) & np.isfinite(out[metric])
    return out.loc[ok]


def levels_of(frame: pd.DataFrame, name: str) -> list[Any]:
    """The sorted distinct levels of factor column ``name`` (as Python values)."""
    return sorted(v.item() if isinstance(v, np.generic) else v for v in pd.unique(frame[name]))


# -------------------------------------------------------------------------------- the ANOVA


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
        "partial_eta_sq": ss / total if total > 0 and df > 0 else math.nan,
        "n_seeds": n,
    }


def effect_contrasts(shape: Sequence[int], effect: Sequence[int]) -> np.ndarray:
    """Orthonormal contrasts of one effect over a full factorial of ``shape`` levels.

    The Kronecker product, factor by factor, of Helmert contrasts for the factors in the effect
    and the normalised mean for the others; columns follow C order over ``shape`` (the last
    factor varies fastest), as ``ndarray.reshape`` lays out cells.

    Returns:
        A (prod(k_i - 1 for i in effect), prod(shape)) matrix.
    """
    out = np.ones((1, 1))
    for i, k in enumerate(shape):
        part = _helmert(k) if i in effect else np.ones((1, k)) / math.sqrt(k)
        out = np.kron(out, part)
    return out


def rm_anova_array(y: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Repeated-measures ANOVA on a complete (subjects x k_1 x ... x k_m) array.

    Every main effect and interaction is tested against its own subject-by-effect error term;
    with orthonormal contrasts C the per-subject scores z = C y give SS = n |mean z|^2 and
    SS_error = sum |z - mean z|^2 (the classical balanced sums of squares).

    Returns:
        One row per effect (main effects, then two-way interactions, ... in ``names`` order,
        named ``a:b``) with ``ANOVA_COLUMNS`` without ``method``.
    """
    y = np.asarray(y, dtype=float)
    n, shape = y.shape[0], y.shape[1:]
    if len(shape) != len(names):
        raise ValueError(f"{len(names)} factor names for an array with {len(shape)} factors")
    flat = y.reshape(n, int(np.prod(shape)))
    rows = []
    for order in range(1, len(shape) + 1):
        for effect in itertools.combinations(range(len(shape)), order):
            c = effect_contrasts(shape, effect)
            q = c.shape[0]
            z = flat @ c.T
            if n:
                mean = z.mean(axis=0)
                ss, ss_err = n * float(np.sum(mean**2)), float(np.sum((z - mean) ** 2))
            else:
                ss = ss_err = math.nan
            eps = gg_epsilon(flat, c) if n >= 2 else math.nan
            name = ":".join(names[i] for i in effect)
            rows.append(_f_row(name, ss, q, ss_err, q * (n - 1), eps, n))
    return pd.DataFrame(rows)


def rm_anova(
    frame: pd.DataFrame, dv: str, within: Sequence[str], subject: str = "seed"
) -> pd.DataFrame:
    """N-way repeated-measures ANOVA on a long frame, Greenhouse-Geisser per effect.

    Only subjects with a finite ``dv`` in every combination of the ``within`` levels are used
    (complete cases). A factor with one level gives its effects NaN statistics (df 0).

    Args:
        frame: One row per (subject, cell).
        dv: The outcome column.
        within: The within-subject factor columns, in the order effects are named.
        subject: The subject column (seed).

    Returns:
        One row per effect with ``ANOVA_COLUMNS`` (``method`` = ``ANOVA_METHOD``).

    Raises:
        ValueError: When a (subject, cell) appears twice or a column is missing.
    """
    within = list(within)
    missing = [c for c in [subject, dv, *within] if c not in frame.columns]
    if missing:
        raise ValueError(f"rm_anova: frame lacks columns {missing}")
    if not within:
        raise ValueError("rm_anova: no within factors")
    dup = frame.duplicated([subject, *within], keep=False)
    if dup.any():
        raise ValueError(f"rm_anova: {int(dup.sum())} rows repeat a ({subject}, cell) pair")
    levels = [sorted(pd.unique(frame[w]).tolist()) for w in within]
    values = pd.to_numeric(frame[dv], errors="coerce").astype(float)
    wide = frame.assign(**{dv: values}).pivot_table(
        index=subject, columns=within, values=dv, aggfunc="first", dropna=False
    )
    full = pd.MultiIndex.from_product(levels, names=within)
    wide = wide.reindex(columns=full) if len(within) > 1 else wide.reindex(columns=levels[0])
    wide = wide.loc[np.isfinite(wide.to_numpy()).all(axis=1)]
    y = wide.to_numpy().reshape(len(wide), *(len(lv) for lv in levels))
    out = rm_anova_array(y, within)
    out["method"] = ANOVA_METHOD
    return out[ANOVA_COLUMNS]


def rm_anova_oneway(y: np.ndarray) -> dict[str, Any]:
    """One-way repeated-measures ANOVA on a complete (subjects x levels) array.

    Returns:
        Dict with ``ss, df, ss_error, df_error, F, p, gg_epsilon, p_gg, partial_eta_sq,
        n_seeds`` (effect named ``"level"``).
    """
    return rm_anova_array(np.asarray(y, dtype=float), ["level"]).iloc[0].to_dict()


def rm_anova_twoway(y: np.ndarray, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Two-way repeated-measures ANOVA on a complete (subjects x A x B) array.

    Returns:
        Rows for A, B and A:B with ``ANOVA_COLUMNS`` (without ``method``).
    """
    return rm_anova_array(y, names)


def interaction_anova(results: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """RM-ANOVA on ``metric`` over every grid factor of ``results``, seed as the subject.

    Only seeds finished (with a finite metric) in every cell of the grid are used: the grid's
    cells are the combinations of the levels present in ``results``.

    Returns:
        One row per effect (``a``, ``b``, ``a:b`` for a grid of factors a and b) with
        ``ANOVA_COLUMNS``; NaN statistics where fewer than two seeds are complete or an effect
        involves a factor with one level.
    """
    results = normalize_results(results)
    within = _factors(results)
    levels = {w: levels_of(results, w) for w in within}
    done = finished_cells(results, metric)
    # Cells absent from the finished ones must still count: reindex over the whole grid.
    grid = pd.MultiIndex.from_product(list(levels.values()), names=within).to_frame(index=False)
    seeds = pd.DataFrame({"seed": sorted(results["seed"].unique())})
    full = grid.merge(seeds, how="cross").merge(
        done[[*within, "seed", metric]], on=[*within, "seed"], how="left"
    )
    return rm_anova(full, metric, within, subject="seed")


# -------------------------------------------------------------------------------- per factor

FACTOR_EFFECT_COLUMNS = [
    "factor",
    "compare",
    "compare_level",
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
    "trend_slope",
    "trend_ci_low",
    "trend_ci_high",
    "trend_p",
]
_ONEWAY = ["F", "df", "df_error", "p", "gg_epsilon", "p_gg", "partial_eta_sq"]


def trend_x(name: str, levels: Sequence[Any]) -> np.ndarray | None:
    """The x of a factor's trend: log2 of its levels for a positive numeric factor (batch
    size, learning rate and init scale are explored on doubling scales), else None."""
    if factor(name).kind not in (int, float):
        return None
    x = np.asarray(levels, dtype=float)
    return np.log2(x) if (x > 0).all() else None


def _trend(y: np.ndarray, x: np.ndarray | None, alpha: float) -> dict[str, float]:
    """Per-seed least-squares slope of y on x, then a one-sample t-test of the slopes."""
    nan = dict.fromkeys(["trend_slope", "trend_ci_low", "trend_ci_high", "trend_p"], math.nan)
    n = y.shape[0]
    if x is None or n < 2 or y.shape[1] < 2:
        return nan
    xc = x - x.mean()
    slopes = (y - y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    mean, sd = float(slopes.mean()), float(slopes.std(ddof=1))
    if not sd > 0:
        return {**nan, "trend_slope": mean}
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return {
        "trend_slope": mean,
        "trend_ci_low": mean - half,
        "trend_ci_high": mean + half,
        "trend_p": p,
    }


def factor_effects(
    results: pd.DataFrame,
    compare: str,
    metric: str = "test_accuracy",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The effect of each non-compared factor, within each level of the compared one.

    Per (factor, compare level): the seeds' cell values averaged over the other factors (seeds
    complete in every cell of that compare level), then a one-way RM-ANOVA over the factor's
    levels (Greenhouse-Geisser p in ``p_gg``), Friedman's test as the nonparametric check (>= 3
    levels, else NaN), and for a positive numeric factor the trend: the mean per-seed slope of
    ``metric`` per doubling of the level (log2 scale) with its t CI and p.

    Returns:
        One row per (factor, compare level) with ``FACTOR_EFFECT_COLUMNS``.
    """
    results = normalize_results(results)
    within = _factors(results)
    others = [w for w in within if w != compare]
    done = finished_cells(results, metric)
    rows = []
    for name in others:
        levels = levels_of(results, name)
        rest = [w for w in others if w != name]
        cells = {w: levels_of(results, w) for w in rest}
        n_cells = int(np.prod([len(v) for v in cells.values()])) if cells else 1
        for level in levels_of(results, compare) if compare in within else [None]:
            arm = done if level is None else done.loc[done[compare] == level]
            # A seed counts only when complete in every cell, so its mean is over the same cells.
            per = arm.groupby(["seed", name, *rest])[metric].first().reset_index()
            counts = per.groupby("seed").size()
            full = counts.index[counts == n_cells * len(levels)]
            per = per.loc[per["seed"].isin(full)]
            wide = per.groupby(["seed", name])[metric].mean().unstack(name)
            y = wide.reindex(columns=levels).to_numpy(dtype=float)
            n, k = y.shape
            row: dict[str, Any] = {
                "factor": name,
                "compare": compare,
                "compare_level": level,
                "n_seeds": n,
                "n_levels": k,
            }
            if n >= 2 and k >= 2:
                res = rm_anova_oneway(y)
                row.update({key: res[key] for key in _ONEWAY})
            else:
                row.update(dict.fromkeys(_ONEWAY, math.nan))
            if n >= 2 and k >= 3 and np.ptp(y) > 0:
                fr = stats.friedmanchisquare(*y.T)
                row.update(friedman_stat=float(fr.statistic), friedman_p=float(fr.pvalue))
            else:
                row.update(friedman_stat=math.nan, friedman_p=math.nan)
            row.update(_trend(y, trend_x(name, levels), alpha))
            rows.append(row)
    return pd.DataFrame(rows, columns=FACTOR_EFFECT_COLUMNS)
