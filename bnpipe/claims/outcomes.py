"""A study's cells as outcomes: typed levels, diverged cells, control/treatment pairs.

The claims' tests (``checks``) all start here: a results frame becomes one row per cell with an
outcome ``value``, cells become pairs by stratum and seed, pairs become per-seed means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.factors import factor, factor_columns
from bnpipe.stats import FINISHED, paired_frame

DIVERGED = "diverged"
# A finished network below this test accuracy did not learn the task (the recipe reaches ~0.97,
# chance is 0.1): what "diverge" means to a user even when the loss stayed finite. Measured on
# full MNIST: Adam at lr 0.1 without BN ends at 0.19-0.20 with a finite loss (BN: 0.94-0.96).
FAILED_ACCURACY = 0.5


def as_level(name: str, s: pd.Series) -> pd.Series:
    if factor(name).kind is bool:
        if s.dtype == bool:
            return s
        return s.map(lambda v: str(v).strip().lower() in ("true", "1", "on", "yes")).astype(bool)
    return s.astype(factor(name).kind)


def cell_outcomes(
    results: pd.DataFrame,
    outcome: str = "test_accuracy",
    *,
    diverged: str = "drop",
    num_classes: int = 10,
) -> pd.DataFrame:
    """One row per cell with typed factor columns, ``seed``, ``diverged`` (0/1) and ``value``.

    Args:
        results: a results frame (factor columns, seed, status, test_accuracy, ...).
        outcome: the column taken as ``value``.
        diverged: ``"drop"``: only finished cells that trained count (as in the ablation's
            statistics); ``"chance"``: diverged cells count, with their measured accuracy or,
            when there is none (non-finite loss), chance accuracy ``1 / num_classes``.
        num_classes: for chance accuracy.

    A cell is diverged when its loss went non-finite (status ``diverged``) or it finished below
    ``FAILED_ACCURACY`` test accuracy. Failed cells (errors) are never outcomes.
    """
    if diverged not in ("drop", "chance"):
        raise ValueError(f"diverged must be 'drop' or 'chance', not {diverged!r}")
    missing = [c for c in ("seed", "status", "test_accuracy") if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks columns {missing}")
    out = results.copy()
    for name in factor_columns(out.columns):
        out[name] = as_level(name, out[name])
    out["seed"] = out["seed"].astype(int)
    acc = pd.to_numeric(out["test_accuracy"], errors="coerce").astype(float)
    chance = 1.0 / num_classes
    collapsed = (out["status"] == FINISHED) & (acc < FAILED_ACCURACY)
    out["diverged"] = ((out["status"] == DIVERGED) | collapsed).astype(int)
    if outcome not in out.columns:
        raise ValueError(f"results frame has no outcome column {outcome!r}")
    value = pd.to_numeric(out[outcome], errors="coerce").astype(float)
    if diverged == "chance":
        keep = (out["status"] == FINISHED) | (out["status"] == DIVERGED)
        if outcome == "test_accuracy":
            value = value.where(np.isfinite(value) | (out["status"] != DIVERGED), chance)
    else:
        keep = (out["status"] == FINISHED) & (out["diverged"] == 0)
    out["value"] = value
    out = out.loc[keep & np.isfinite(out["value"])]
    return out[[*factor_columns(out.columns), "seed", "diverged", "value"]].reset_index(drop=True)


def pair_cells(
    cells: pd.DataFrame, compare: str = "bn", levels: Sequence[Any] = (False, True)
) -> pd.DataFrame:
    """Join control and treatment cells of the same stratum and seed (``stats.paired_frame``).

    Args:
        cells: ``cell_outcomes`` output (any per-cell ``value`` column): every row is an
            outcome, so each is handed to ``paired_frame`` as a finished cell.
        compare: the compared factor; ``levels`` = (control, treatment).

    Returns:
        Columns: the stratum factors, ``seed``, ``control``, ``treatment``, ``diff``
        (treatment - control); only seeds present in both arms.

    Raises:
        ValueError: a cell appears twice (the pairing would be ambiguous).
    """
    as_finished = cells.assign(status=FINISHED, test_accuracy=cells["value"])
    pairs = paired_frame(as_finished, compare, tuple(levels), outcome="value")
    return pairs.drop(columns=["stratum"])


def seed_means(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the mean of control and treatment over the strata, for seeds in every stratum.

    A seed's cells across batch sizes are not independent replicates (same initial weights),
    so the seed, not the (stratum, seed) pair, is the unit of a claim pooled over strata.
    """
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    if pairs.empty:
        return pd.DataFrame(columns=["seed", "control", "treatment", "diff", "strata"])
    n_strata = len(pairs[strata].drop_duplicates()) if strata else 1
    g = pairs.groupby("seed")
    out = g[["control", "treatment", "diff"]].mean()
    out["strata"] = g.size()
    return out.loc[out["strata"] == n_strata].reset_index()


def stratum_detail(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per stratum: pairs, mean control, mean treatment, mean diff."""
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    if not strata:
        pairs = pairs.assign(stratum="all")
        strata = ["stratum"]
    g = pairs.groupby(strata, sort=True)
    return g.agg(
        n=("seed", "size"),
        control=("control", "mean"),
        treatment=("treatment", "mean"),
        diff=("diff", "mean"),
    ).reset_index()


def n_strata(pairs: pd.DataFrame) -> int:
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    return len(pairs[strata].drop_duplicates()) if strata and len(pairs) else 1


def history_cells(histories: pd.DataFrame) -> pd.DataFrame:
    h = histories.copy()
    for name in factor_columns(h.columns):
        h[name] = as_level(name, h[name])
    h["seed"] = h["seed"].astype(int)
    h["epoch"] = h["epoch"].astype(int)
    return h


def per_cell(
    histories: pd.DataFrame, results: pd.DataFrame, column: str, values: pd.DataFrame
) -> pd.DataFrame:
    """``results`` with ``column`` taken from a per-cell frame keyed like the histories."""
    keys = [*factor_columns(results.columns), "seed"]
    typed = results.copy()
    for name in factor_columns(typed.columns):
        typed[name] = as_level(name, typed[name])
    typed["seed"] = typed["seed"].astype(int)
    typed = typed.drop(columns=[column], errors="ignore")
    return typed.merge(values[[*keys, column]], on=keys, how="left")
