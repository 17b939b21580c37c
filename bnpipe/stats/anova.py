"""Across the grid: repeated-measures ANOVA with seed as the subject.

BN x batch-size interaction and the batch-size effect within each BN setting, on the seeds
complete in every cell; exploratory, not part of the error-controlled decisions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bnpipe.stats.paired import _finished, normalize_results

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
