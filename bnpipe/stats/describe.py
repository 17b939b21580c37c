"""Descriptive statistics the figures draw: means with t-based CIs per arm and per epoch.

Computed here, once per run (``bnpipe.analysis``), so the report's figures only draw them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from bnpipe.factors import factor_columns
from bnpipe.stats.anova import finished_cells
from bnpipe.stats.paired import normalize_histories

CURVE_COLUMNS = ["epoch", "mean", "half", "n"]


def mean_ci(values: np.ndarray | pd.Series, alpha: float = 0.05) -> tuple[float, float, int]:
    """Mean and t-based CI half-width of the finite values; half-width NaN when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(x.mean()), math.nan, 1
    half = sps.t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def epoch_curves(
    histories: pd.DataFrame, results: pd.DataFrame, compare: str, *, alpha: float = 0.05
) -> pd.DataFrame:
    """Validation accuracy per epoch of the finished cells: one row per (factor levels, epoch)
    with the mean over seeds, its t-based CI half-width and the number of seeds.

    Returns:
        Columns: every grid factor of ``results`` (``compare`` included), then
        ``CURVE_COLUMNS``; empty when no history was recorded.
    """
    factors = factor_columns(results.columns)
    keys = [*factors, "seed"]
    columns = [*factors, *CURVE_COLUMNS]
    if histories is None or not len(histories) or compare not in factors:
        return pd.DataFrame(columns=columns)
    done = finished_cells(results)[keys]
    h = normalize_histories(histories).merge(done, on=keys)
    rows = [
        {**dict(zip(factors, levels, strict=True)), "epoch": int(epoch)}
        | dict(zip(("mean", "half", "n"), mean_ci(g["val_accuracy"], alpha), strict=True))
        for (*levels, epoch), g in h.groupby([*factors, "epoch"], sort=True)
    ]
    return pd.DataFrame(rows, columns=columns)
