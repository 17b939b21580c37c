"""Small synthetic results/histories frames for the report's tests."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

# BN minus no-BN per seed: clearly positive at 16, tiny at 32 (inside a 0.2 pp margin).
DIFFS = {16: [0.010, 0.011, 0.012], 32: [0.0001, -0.0001, 0.0]}
BASE = [0.9751, 0.9760, 0.9744]


def make_frames(epochs: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 seeds x 2 batch sizes x 2 BN settings x ``epochs`` epochs, deterministic."""
    rows, hist = [], []
    for bs, diffs in DIFFS.items():
        for seed, (base, d) in enumerate(zip(BASE, diffs, strict=True)):
            for bn in (False, True):
                acc = base + (d if bn else 0.0)
                rows.append(
                    {
                        "bn": bn,
                        "batch_size": bs,
                        "seed": seed,
                        "status": "finished",
                        "test_accuracy": acc,
                        "test_loss": 0.08,
                        "train_accuracy": acc + 0.01,
                        "epoch_time_s": 2.0 if bs == 16 else 1.0,
                        "run_id": f"{bs}-{seed}-{int(bn)}",
                    }
                )
                for e in range(1, epochs + 1):
                    val = acc - 0.01 * (epochs - e)
                    hist.append(
                        {
                            "bn": bn,
                            "batch_size": bs,
                            "seed": seed,
                            "epoch": e,
                            "loss": 0.1,
                            "accuracy": val + 0.01,
                            "val_loss": 0.1,
                            "val_accuracy": val,
                            "epoch_time_s": 1.0,
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(hist)


def make_grid_frames(factors: dict[str, list], seeds: int = 3, epochs: int = 3):
    """Results and histories over any factors; the treatment gains 0.5 pp at the largest
    level of the last factor, nothing elsewhere (up to seed noise)."""
    rng = np.random.default_rng(1)
    names, last = list(factors), list(factors)[-1]
    compare = names[0]
    rows, hist = [], []
    for seed in range(seeds):
        for levels in itertools.product(*factors.values()):
            cell = dict(zip(names, levels, strict=True))
            gain = (
                0.005
                if cell[compare] == factors[compare][1] and cell[last] == max(factors[last])
                else 0
            )
            acc = 0.97 + gain + rng.normal(0, 0.0003)
            rows.append(
                {
                    **cell,
                    "seed": seed,
                    "status": "finished",
                    "test_accuracy": acc,
                    "train_accuracy": acc + 0.01,
                    "epoch_time_s": 1.0,
                }
            )
            hist += [
                {
                    **cell,
                    "seed": seed,
                    "epoch": e,
                    "accuracy": acc,
                    "val_accuracy": acc - 0.01 * (epochs - e),
                    "epoch_time_s": 1.0,
                }
                for e in range(1, epochs + 1)
            ]
    return pd.DataFrame(rows), pd.DataFrame(hist)
