"""Training dynamics per cell and per stratum: epochs to a threshold, stability, generalization
gap, time. Generic over the grid's factor columns (whatever ``grid.factors`` holds)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bnpipe.factors import Cell, factor_columns, stratum_label
from bnpipe.stats.paired import FINISHED, normalize_histories, normalize_results

# What ``dynamics`` measures per cell, after the factor columns and seed.
DYNAMICS_MEASURES = [
    "status",
    "n_epochs",
    "final_val_accuracy",
    "epochs_to_threshold",
    "stability",
    "generalization_gap",
    "time_per_epoch",
]
STABILITY_EPOCHS = 3
SUMMARY_MEASURES = [
    "n",
    "n_reached",
    "epochs_to_threshold",
    "stability",
    "generalization_gap",
    "time_per_epoch",
]


def dynamics_columns(factors: Sequence[str]) -> list[str]:
    """``dynamics``' columns for a frame with these factor columns (``factor_columns``)."""
    return [*factors, "seed", *DYNAMICS_MEASURES]


def dynamics_summary_columns(factors: Sequence[str]) -> list[str]:
    """``dynamics_summary``'s columns for a frame with these factor columns."""
    return ["stratum", *factors, *SUMMARY_MEASURES]


def convergence(histories: pd.DataFrame, threshold: float, censor_at: float) -> pd.DataFrame:
    """Per cell of typed histories: ``to_threshold``, the first epoch whose val accuracy
    reaches ``threshold`` (``censor_at`` when none does), and ``stability``, the SD of val
    accuracy over the last ``STABILITY_EPOCHS`` epochs (NaN under two epochs).

    Returns:
        One row per cell: its factor columns, ``seed``, ``to_threshold``, ``stability``.
    """
    keys = [*factor_columns(histories.columns), "seed"]
    rows = []
    for key, cell in histories.groupby(keys, sort=False):
        cell = cell.sort_values("epoch")
        val = cell["val_accuracy"].to_numpy(float)
        reached = np.flatnonzero(val >= threshold)
        tail = val[-STABILITY_EPOCHS:]
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "to_threshold": float(cell["epoch"].iloc[reached[0]])
                if reached.size
                else float(censor_at),
                "stability": float(np.std(tail, ddof=1)) if tail.size >= 2 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=[*keys, "to_threshold", "stability"])


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


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame.copy()
    for col in columns:
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else math.nan
    return out


def dynamics(
    histories: pd.DataFrame | None, results: pd.DataFrame, threshold: float = 0.97
) -> pd.DataFrame:
    """Per-cell training dynamics.

    ``epochs_to_threshold``: first (1-based) epoch with ``val_accuracy >= threshold``, NaN if
    never. ``stability``: sample SD of ``val_accuracy`` over the last 3 epochs (lower is
    steadier). ``generalization_gap``: final train accuracy minus test accuracy.
    ``time_per_epoch``: the results' ``epoch_time_s`` (history mean where missing).

    Args:
        histories: One row per cell per epoch: the results' factor columns, ``seed``, ``epoch``,
            ``val_accuracy`` (``accuracy``, ``epoch_time_s`` optional); may be empty or None.
        results: One row per cell: factor columns, ``seed``, ``status``, ``test_accuracy``.
        threshold: The validation accuracy to reach.

    Returns:
        One row per cell in ``results``: ``dynamics_columns`` of its factor columns (the
        factors, ``seed``, then ``DYNAMICS_MEASURES``); sorted by the factors and seed.

    Raises:
        ValueError: If a non-empty ``histories`` lacks a column the dynamics need.
    """
    factors = factor_columns(results.columns)
    keys = [*factors, "seed"]
    results = normalize_results(results)
    per_cell: dict[tuple, dict[str, float]] = {}
    if histories is not None and len(histories):
        missing = [c for c in [*keys, "epoch", "val_accuracy"] if c not in histories.columns]
        if missing:
            raise ValueError(f"histories frame lacks columns {missing}")
        h = _numeric(normalize_histories(histories), ["val_accuracy", "accuracy", "epoch_time_s"])
        per_cell = {
            k if isinstance(k, tuple) else (k,): _cell_dynamics(g, threshold)
            for k, g in h.groupby(keys, sort=False)
        }
    empty = dict.fromkeys(
        ["final_val_accuracy", "epochs_to_threshold", "stability"]
        + ["train_accuracy_hist", "time_hist"],
        math.nan,
    )
    rows = []
    for r in results.to_dict("records"):
        key = tuple(r[k] for k in keys)
        d = per_cell.get(key, {"n_epochs": 0, **empty})
        train_acc = float(r["train_accuracy"])
        if not np.isfinite(train_acc):
            train_acc = d["train_accuracy_hist"]
        t = float(r["epoch_time_s"])
        rows.append(
            {
                **{k: r[k] for k in keys},
                "status": r["status"],
                "n_epochs": d["n_epochs"],
                "final_val_accuracy": d["final_val_accuracy"],
                "epochs_to_threshold": d["epochs_to_threshold"],
                "stability": d["stability"],
                "generalization_gap": train_acc - float(r["test_accuracy"]),
                "time_per_epoch": t if np.isfinite(t) else d["time_hist"],
            }
        )
    out = pd.DataFrame(rows, columns=dynamics_columns(factors))
    return out.sort_values(keys).reset_index(drop=True)


def dynamics_summary(
    histories: pd.DataFrame | None,
    results: pd.DataFrame,
    threshold: float = 0.97,
    *,
    compare: str,
) -> pd.DataFrame:
    """Mean dynamics per stratum and level of the compared factor, over finished cells.

    ``n`` counts finished cells; ``n_reached`` those reaching ``threshold``;
    ``epochs_to_threshold`` averages only the cells that reached it.

    Returns:
        ``dynamics_summary_columns`` of the factor columns (``stratum``, the comparison's
        label, then the factors and ``SUMMARY_MEASURES``); one row per (stratum, compare level),
        sorted by the factors.
    """
    factors = factor_columns(results.columns)
    dyn = dynamics(histories, results, threshold)
    dyn = dyn.loc[dyn["status"] == FINISHED]
    columns = dynamics_summary_columns(factors)
    if dyn.empty:
        return pd.DataFrame(columns=columns)
    out = (
        dyn.groupby(factors, sort=True)
        .agg(
            n=("seed", "size"),
            n_reached=("epochs_to_threshold", "count"),
            epochs_to_threshold=("epochs_to_threshold", "mean"),
            stability=("stability", "mean"),
            generalization_gap=("generalization_gap", "mean"),
            time_per_epoch=("time_per_epoch", "mean"),
        )
        .reset_index()
    )
    out["stratum"] = [
        stratum_label(Cell.of(0, **{f: r[f] for f in factors}).stratum(compare))
        for r in out.to_dict("records")
    ]
    return out[columns]
