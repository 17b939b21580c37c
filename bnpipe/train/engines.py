"""One entry point for every training engine: train all seeds of one (BN, batch size) group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnpipe.train.common import DEFAULT_SHARD_SIZE, Cell, TrainResult
from bnpipe.train.keras_engine import EpochCallback, train_keras

ENGINES = ("keras", "fused")
DEFAULT_STEPS_PER_EXECUTION = 100


def train_group(
    engine: str,
    bn: bool,
    batch_size: int,
    seeds: Sequence[int],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    hidden_units: tuple[int, ...] = (64, 64),
    num_classes: int = 10,
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION,
    shard_size: int = DEFAULT_SHARD_SIZE,
    parallel_shards: int | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[TrainResult]:
    """Train one model per seed of the (bn, batch_size) group; results come back in seed order.

    Args:
        engine: "keras" (one ``model.fit`` per seed) or "fused" (all seeds in one stacked model).
        bn: BatchNormalization after each hidden layer.
        batch_size: examples per step.
        seeds: one model per seed.
        x_train, y_train, x_val, y_val: data; validation runs after every epoch.
        epochs: training epochs.
        learning_rate: Adam learning rate.
        hidden_units: hidden layer widths.
        num_classes: output units (labels must be below it).
        steps_per_execution: keras engine only (steps per graph call; changes no numbers).
        shard_size: fused engine only: members per stacked model (it decides the results' last
            bits, so it is part of a cell's key).
        parallel_shards: fused engine only: shards trained at once (speed only; None: one
            per CPU core).
        on_epoch: called as ``on_epoch(cell, epoch, row)`` after every epoch of every model.

    Raises:
        ValueError: for an unknown engine name.
    """
    if engine == "keras":
        return [
            train_keras(
                Cell(bn=bn, batch_size=batch_size, seed=seed),
                x_train,
                y_train,
                x_val,
                y_val,
                epochs=epochs,
                learning_rate=learning_rate,
                hidden_units=hidden_units,
                num_classes=num_classes,
                steps_per_execution=steps_per_execution,
                on_epoch=on_epoch,
            )
            for seed in seeds
        ]
    if engine == "fused":
        # Imported here so the keras engine works even while the fused one cannot be imported.
        from bnpipe.train.fused import train_fused

        return train_fused(
            bn,
            batch_size,
            seeds,
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=epochs,
            learning_rate=learning_rate,
            hidden_units=hidden_units,
            num_classes=num_classes,
            shard_size=shard_size,
            parallel_shards=parallel_shards,
            on_epoch=on_epoch,
        )
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
