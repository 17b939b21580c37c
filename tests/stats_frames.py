"""Data the statistics' tests share: published samples and generated results/histories frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Student (1908) / Cushny & Peebles sleep data, as in R's `sleep`: extra hours of sleep.
SLEEP_DRUG1 = np.array([0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0])
SLEEP_DRUG2 = np.array([1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4])


def make_results(
    sizes: tuple[int, ...] = (16, 32, 64, 128),
    seeds: int = 10,
    effect: dict[int, float] | None = None,
    noise: float = 0.0008,
    rng_seed: int = 1,
) -> pd.DataFrame:
    """Synthetic results frame; ``effect`` maps batch size to the BN shift in accuracy."""
    rng = np.random.default_rng(rng_seed)
    effect = effect or {}
    rows = []
    for bs in sizes:
        for seed in range(seeds):
            base = 0.975 + rng.normal(0, 0.001)
            for bn in (False, True):
                acc = base + (effect.get(bs, 0.0) if bn else 0.0) + rng.normal(0, noise)
                rows.append(
                    {
                        "bn": bn,
                        "batch_size": bs,
                        "seed": seed,
                        "status": "finished",
                        "test_accuracy": acc,
                        "test_loss": 0.08,
                        "train_accuracy": acc + 0.015,
                        "epoch_time_s": 1.0 + 0.1 * bn,
                        "run_id": f"r{bs}-{seed}-{int(bn)}",
                    }
                )
    return pd.DataFrame(rows)


def set_cell(results: pd.DataFrame, bn: bool, bs: int, seed: int, **values: object) -> None:
    mask = (results["bn"] == bn) & (results["batch_size"] == bs) & (results["seed"] == seed)
    for k, v in values.items():
        results.loc[mask, k] = v


def make_histories(results: pd.DataFrame, epochs: int = 4) -> pd.DataFrame:
    rows = []
    for r in results.itertuples(index=False):
        for e in range(1, epochs + 1):
            val = r.test_accuracy - 0.01 * (epochs - e)
            rows.append(
                {
                    "bn": r.bn,
                    "batch_size": r.batch_size,
                    "seed": r.seed,
                    "epoch": e,
                    "loss": 0.1,
                    "accuracy": val + 0.01,
                    "val_loss": 0.1,
                    "val_accuracy": val,
                    "epoch_time_s": 2.0,
                }
            )
    return pd.DataFrame(rows)
