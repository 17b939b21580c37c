"""Synthetic study frames (the general-grid schema) for the claims' tests, and their outcomes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

SEEDS = list(range(10))
Outcome = Callable[[dict, int, np.random.Generator], dict]


def frames(
    factors: dict[str, list], seeds: list[int], outcome: Outcome, epochs: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results and histories of a grid: ``outcome(levels, seed, rng)`` gives a cell's numbers.

    Its keys: status, test_accuracy, train_accuracy, epoch_time_s and optionally ``val``
    (per-epoch validation accuracies) and ``times`` (per-epoch seconds).
    """
    rng = np.random.default_rng(0)
    rows, hist = [], []
    names = list(factors)
    for combo in itertools.product(*factors.values()):
        levels = dict(zip(names, combo, strict=True))
        for seed in seeds:
            o = {"status": "finished", "train_accuracy": math.nan, "epoch_time_s": 1.0}
            o.update(outcome(levels, seed, rng))
            rows.append({**levels, "seed": seed, **{k: o[k] for k in C_RESULT}, "run_id": "r"})
            val = o.get("val", [o["test_accuracy"]] * epochs)
            times = o.get("times", [o["epoch_time_s"]] * len(val))
            for e, (v, t) in enumerate(zip(val, times, strict=True), start=1):
                hist.append(
                    {**levels, "seed": seed, "epoch": e, "loss": 0.1, "accuracy": 0.99,
                     "val_loss": 0.1, "val_accuracy": v, "epoch_time_s": t}
                )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(hist)


C_RESULT = ("status", "test_accuracy", "train_accuracy", "epoch_time_s")


def bn_effect(effect: float, noise: float) -> Outcome:
    """Test accuracy 0.97 + effect with BN, paired noise ``noise`` per cell."""

    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        base = 0.97 + 0.002 * np.sin(seed)  # the seed's shared part
        return {"test_accuracy": base + (effect if lv["bn"] else 0.0) + noise * rng.normal()}

    return out


ACC_GRID = {"bn": [False, True], "batch_size": [16, 32, 64, 128]}


def lr_outcome(bn_diverges: bool, no_bn_diverges: bool) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        top = lv["learning_rate"] == 0.1
        if top and (bn_diverges if lv["bn"] else no_bn_diverges):
            return {"status": "diverged", "test_accuracy": math.nan}
        return {"test_accuracy": 0.96 + 0.001 * rng.normal()}

    return out


LR_GRID = {"bn": [False, True], "learning_rate": [0.001, 0.01, 0.1]}


def init_outcome(bn_flat: bool) -> Outcome:
    """One arm loses accuracy away from init scale 1 and diverges at 4 on odd seeds."""

    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        s = lv["init_scale"]
        sensitive = lv["bn"] != bn_flat
        if sensitive and s == 4 and seed % 2:
            return {"status": "diverged", "test_accuracy": math.nan}
        drop = (0.02 if sensitive else 0.001) * abs(math.log2(s))
        return {"test_accuracy": 0.97 - drop + 0.0005 * rng.normal()}

    return out


INIT_GRID = {"bn": [False, True], "init_scale": [0.25, 1.0, 4.0]}


def curve_outcome(bn_epoch: int, no_bn_epoch: int | None) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        at = bn_epoch if lv["bn"] else no_bn_epoch
        jitter = seed % 2 if at is not None else 0
        val = [0.98 if at is not None and e >= at + jitter else 0.95 for e in range(1, 6)]
        return {"test_accuracy": val[-1], "train_accuracy": 0.99, "val": val}

    return out


def small_batch_outcome(bn_breaks: bool) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        bs = lv["batch_size"]
        acc = 0.97 + (0.003 if lv["bn"] else 0.0) + 0.001 * rng.normal()
        if bn_breaks and lv["bn"] and bs == 2:
            if seed < 3:
                return {"status": "diverged", "test_accuracy": math.nan, "val": [0.9, 0.1]}
            acc = 0.90 + 0.01 * rng.normal()
        return {"test_accuracy": acc}

    return out


SB_GRID = {"bn": [False, True], "batch_size": [2, 4, 8, 16]}
