"""Reference engine: one Keras ``model.fit`` per grid cell, exactly the reference recipe.

Differences from the notebook are only those that make a cell reproducible and paired: seeds,
op determinism, and the data order from :func:`epoch_permutation` instead of fit's own shuffle.
``steps_per_execution`` is the one speed knob; it runs several steps per graph call and changes
no numbers (measured here at batch 32: ~2.3 s -> ~1.2 s per epoch with 100). XLA is no option:
Keras turns ``jit_compile`` off whenever TF op determinism is enabled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from bnpipe.models import build_model
from bnpipe.train.common import Cell, TrainData, TrainResult, TrainSpec, training_order
from bnpipe.train.optimizers import ADAM, Optimizer, optimizer_of

EpochCallback = Callable[[Cell, int, dict[str, float]], None]


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and TF and make TF ops deterministic (same run -> same bits)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_model(
    model: keras.Model,
    learning_rate: float,
    steps_per_execution: int = 1,
    optimizer: Optimizer = ADAM,
) -> None:
    """The optimizer (the reference's Adam unless told) + sparse categorical cross-entropy +
    accuracy, as in the reference."""
    model.compile(
        optimizer=optimizer.keras(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def train_keras(
    spec: TrainSpec, data: TrainData, on_epoch: EpochCallback | None = None
) -> list[TrainResult]:
    """Train every member of ``spec`` with its own ``model.fit``, one after another; validation
    runs on (x_test, y_test) after every epoch."""
    return [_train_one(spec, i, data, on_epoch) for i in range(len(spec.cells))]


def _train_one(
    spec: TrainSpec, i: int, data: TrainData, on_epoch: EpochCallback | None
) -> TrainResult:
    cell, seed = spec.cells[i], spec.seeds[i]
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_test, data.y_test
    set_determinism(seed)
    model = build_model(
        seed=seed,
        init_scale=spec.level("init_scale", i),
        **spec.member_architecture(i).model_kwargs(),
    )
    lr = spec.level("learning_rate", i)
    compile_model(model, lr, spec.steps_per_execution, optimizer_of(spec))
    history: list[dict[str, float]] = []
    status = "finished"
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        order = training_order(seed, epoch, len(x_train), spec.bootstrap_train)
        t0 = time.perf_counter()
        fit = model.fit(
            x_train[order],
            y_train[order],
            batch_size=spec.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            validation_data=(x_val, y_val),
            verbose=0,
        )
        row = {k: float(v[-1]) for k, v in fit.history.items()}
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(cell, epoch + 1, row)
        # A non-finite loss never recovers (NaN weights stay NaN, whatever the optimizer); stop
        # instead of burning the remaining epochs.
        if not math.isfinite(row["loss"]):
            status = "diverged"
            break
    return TrainResult(
        cell=cell,
        weights=model.get_weights(),
        history=history,
        status=status,
        error="non-finite training loss" if status == "diverged" else None,
        train_time_s=time.perf_counter() - start,
        engine="keras",
    )
