"""Training dynamics per cell: epochs to a threshold, stability, generalization gap, time."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnpipe.stats.paired import FINISHED, normalize_histories, normalize_results

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
