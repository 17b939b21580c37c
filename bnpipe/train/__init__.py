"""Training engines. Each returns :class:`TrainResult` objects; none of them logs anywhere."""

from __future__ import annotations

from typing import Any

from bnpipe.train.common import Cell, TrainResult, epoch_permutation

__all__ = ["ENGINES", "Cell", "TrainResult", "epoch_permutation", "train_group"]


def __getattr__(name: str) -> Any:
    # Lazy: importing bnpipe.train.common (a plain dataclass module) must not pull in TensorFlow.
    if name in ("ENGINES", "train_group"):
        from bnpipe.train import engines

        return getattr(engines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
