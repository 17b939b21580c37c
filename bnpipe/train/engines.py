"""One entry point for every training engine: train the members of one :class:`TrainSpec`."""

from __future__ import annotations

from bnpipe.train.common import DEFAULT_STEPS_PER_EXECUTION, TrainData, TrainResult, TrainSpec
from bnpipe.train.keras_engine import EpochCallback, train_keras

ENGINES = ("keras", "fused")
__all__ = ["DEFAULT_STEPS_PER_EXECUTION", "ENGINES", "train_group"]


def train_group(
    spec: TrainSpec, data: TrainData, on_epoch: EpochCallback | None = None
) -> list[TrainResult]:
    """Train one model per member of ``spec`` with ``spec.engine``; results in member order.

    Args:
        spec: the cells, their seeds, learning rates and init scales, the shared architecture,
            batch size and epochs, and the engine settings.
        data: x_train, y_train, x_test, y_test (``MnistData`` or ``TrainData``); the test
            arrays are validated on after every epoch.
        on_epoch: called as ``on_epoch(cell, epoch, row)`` after every epoch of every model.

    Raises:
        ValueError: for an unknown engine name.
    """
    if spec.engine == "keras":
        return train_keras(spec, data, on_epoch)
    if spec.engine == "fused":
        # Imported here so the keras engine works even while the fused one cannot be imported.
        from bnpipe.train.fused import train_fused

        return train_fused(spec, data, on_epoch)
    raise ValueError(f"unknown engine {spec.engine!r}; expected one of {ENGINES}")
