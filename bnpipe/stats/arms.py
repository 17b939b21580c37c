"""Per-arm descriptive statistics: the test accuracy of each level of the compared factor within
each stratum, over all of its finished seeds.

Unpaired on purpose: an arm's mean uses every finished seed of that arm, as a group in the MLflow
runs table would if all of its runs were loaded. The paired comparison between arms is
``summarize_by_stratum``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.stats.anova import finished_cells
from bnpipe.stats.describe import mean_ci
from bnpipe.stats.paired import normalize_results, stratum_factors

# What each arm row carries after its levels (the stratum factors', then the compared factor's).
ARM_COLUMNS = ["n", "mean", "sd", "ci_low", "ci_high"]


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _mean_ci(values: np.ndarray, alpha: float) -> dict[str, float]:
    """Mean, sample SD and the two-sided t interval of the mean (NaN where n is too small)."""
    mean, half, n = mean_ci(values, alpha)
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def arm_summary(
    results: pd.DataFrame,
    compare: str,
    levels: Sequence[Any] | None = None,
    strata: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Test accuracy of every arm (stratum levels x level of ``compare``) over its finished cells.

    Args:
        results: The results frame (one row per grid cell, one column per grid factor).
        compare: The compared factor; its levels are the arms.
        levels: The arms' levels, in the order rows take (control first); default: the levels
            present, sorted.
        strata: The factors whose level combinations make the strata; default: every factor
            column of ``results`` but ``compare``.
        alpha: The interval's level is ``1 - alpha`` (t-based, n - 1 degrees of freedom).

    Returns:
        One row per (stratum, arm), strata sorted and arms in ``levels`` order: the stratum
        factors' columns, ``compare``, then ``n`` (finished cells with a finite test accuracy),
        ``mean``, ``sd`` (sample SD), ``ci_low`` and ``ci_high``. An arm with no finished cell
        has n = 0 and NaN statistics; with one, NaN SD and interval. Every stratum present in
        ``results`` gets every arm.

    Raises:
        ValueError: If ``results`` lacks a column of ``compare`` or of ``strata``.
    """
    typed = normalize_results(results)
    strata = list(stratum_factors(typed, compare) if strata is None else strata)
    missing = [c for c in (*strata, compare) if c not in typed.columns]
    if missing:
        raise ValueError(f"results frame lacks factor columns {missing}")
    arms = list(levels) if levels is not None else sorted(pd.unique(typed[compare]).tolist())
    columns = [*strata, compare, *ARM_COLUMNS]
    if not len(typed) or not arms:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    done = finished_cells(typed)
    groups = {
        tuple(map(_py, key)): frame["test_accuracy"].to_numpy(float)
        for key, frame in done.groupby([*strata, compare], sort=False)
    }
    combos = (
        list(typed[strata].drop_duplicates().sort_values(strata).itertuples(index=False))
        if strata
        else [()]
    )
    rows = []
    for values in combos:
        for arm in arms:
            key = tuple(_py(v) for v in (*values, arm))
            acc = groups.get(key, np.array([], dtype=float))
            row = dict(zip([*strata, compare], key, strict=True))
            rows.append({**row, **_mean_ci(acc, alpha)})
    return pd.DataFrame(rows, columns=columns)
