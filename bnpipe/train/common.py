"""Types and the data-order rule shared by every training engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")
# Fused engine: members per stacked model. Two shards of 5 cover the default 10 seeds and keep
# both cores of a 2-core machine busy.
DEFAULT_SHARD_SIZE = 5


@dataclass(frozen=True, order=True)
class Cell:
    """One grid cell: BN on/off x batch size x seed."""

    bn: bool
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"bn={'on' if self.bn else 'off'} bs={self.batch_size} seed={self.seed}"


@dataclass
class TrainResult:
    """What training one cell produced.

    ``history`` holds one dict per finished epoch with the keys in HISTORY_KEYS (epoch is the
    1-based list position). ``status`` is "finished" or "diverged" (non-finite loss: training
    stopped early; history keeps the epochs up to and including the one that diverged).
    """

    cell: Cell
    weights: list[np.ndarray]
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = "finished"
    error: str | None = None
    train_time_s: float = 0.0
    engine: str = ""


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """Order of the n training examples in ``epoch`` (0-based) for model ``seed``.

    Every engine uses this one rule, so the BN and no-BN cells of a seed see the same data order
    (paired comparison), and the fused engine reproduces the keras engine's order exactly.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)
