"""Types and the data-order rule shared by every training engine."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

# The grid cell is the factor registry's (re-exported: older imports keep working).
from bnpipe.factors import Cell

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "HISTORY_KEYS",
    "Architecture",
    "Cell",
    "TrainData",
    "TrainResult",
    "TrainSpec",
    "epoch_permutation",
]

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")
# Fused engine: members per stacked model. Two shards of 5 cover the default 10 seeds and keep
# both cores of a 2-core machine busy.
DEFAULT_SHARD_SIZE = 5


DEFAULT_STEPS_PER_EXECUTION = 100
BN_POSITIONS = ("after_relu", "before_relu")


class TrainData(NamedTuple):
    """Training and validation arrays (``bnpipe.data.MnistData`` has the same attributes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Architecture:
    """What decides a model's layers and shapes (its weights' layout)."""

    bn: bool = False
    bn_position: str = "after_relu"
    hidden_units: tuple[int, ...] = (64, 64)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.bn_position not in BN_POSITIONS:
            raise ValueError(f"bn_position must be one of {BN_POSITIONS}, got {self.bn_position!r}")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bnpipe.models.build_model` for this architecture."""
        return {
            "bn": self.bn,
            "bn_position": self.bn_position,
            "hidden_units": self.hidden_units,
            "num_classes": self.num_classes,
        }

    @classmethod
    def of(
        cls, levels: Mapping[str, Any], hidden_units: tuple[int, ...], num_classes: int
    ) -> Architecture:
        """The architecture of a cell from its resolved factor levels (every registry factor)."""
        return cls(
            bn=bool(levels["bn"]),
            bn_position=str(levels["bn_position"]),
            hidden_units=tuple(hidden_units),
            num_classes=num_classes,
        )


@dataclass(frozen=True)
class TrainSpec:
    """Everything an engine needs to train a group of cells: one model (member) per cell.

    Members share the architecture except BN, batch size and epochs; each has its own seed,
    learning rate, init scale and BN on/off (``bns``; empty: every member as
    ``architecture.bn``). ``cells`` label the results.
    """

    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    learning_rates: tuple[float, ...]
    init_scales: tuple[float, ...]
    batch_size: int
    epochs: int
    architecture: Architecture = Architecture()
    engine: str = "fused"
    # Engine settings: keras steps per graph call (speed only); fused members per stacked model
    # (decides the last bits) and shards trained at once (speed only; None: one per core).
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION
    shard_size: int = DEFAULT_SHARD_SIZE
    parallel_shards: int | None = None
    bns: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.cells)
        if not self.bns:
            object.__setattr__(self, "bns", (self.architecture.bn,) * n)
        lengths = {len(self.seeds), len(self.learning_rates), len(self.init_scales), len(self.bns)}
        if lengths != {n}:
            raise ValueError("TrainSpec: one seed, learning rate, init scale and BN flag per cell")

    def member_architecture(self, i: int) -> Architecture:
        """Member i's architecture (the shared one with its own BN on/off)."""
        return replace(self.architecture, bn=self.bns[i])

    @classmethod
    def of(
        cls,
        seeds: Iterable[int],
        *,
        bn: bool = False,
        batch_size: int = 32,
        epochs: int = 1,
        learning_rate: float = 1e-3,
        init_scale: float = 1.0,
        bn_position: str = "after_relu",
        hidden_units: tuple[int, ...] = (64, 64),
        num_classes: int = 10,
        cells: Iterable[Cell] | None = None,
        **settings: Any,
    ) -> TrainSpec:
        """A group whose members differ only by seed (cells named by BN and batch size unless
        given): the short form for tests, the benchmark and notebooks."""
        seeds = tuple(seeds)
        named = (
            tuple(cells)
            if cells is not None
            else tuple(Cell.of(s, bn=bn, batch_size=batch_size) for s in seeds)
        )
        return cls(
            cells=named,
            seeds=seeds,
            learning_rates=(float(learning_rate),) * len(seeds),
            init_scales=(float(init_scale),) * len(seeds),
            batch_size=batch_size,
            epochs=epochs,
            architecture=Architecture(bn, bn_position, tuple(hidden_units), num_classes),
            **settings,
        )

    @classmethod
    def for_cells(
        cls, cells: Sequence[Cell], levels: Sequence[Mapping[str, Any]], **settings: Any
    ) -> TrainSpec:
        """A spec from grid cells and each cell's resolved levels (every registry factor).

        Raises:
            ValueError: cells that disagree on the architecture (BN aside) or the batch size
                (they cannot share one compiled program).
        """
        if not cells:
            raise ValueError("TrainSpec.for_cells: no cells")
        hidden_units = settings.pop("hidden_units")
        num_classes = settings.pop("num_classes")
        bns = tuple(bool(lv["bn"]) for lv in levels)
        archs = {replace(Architecture.of(lv, hidden_units, num_classes), bn=False) for lv in levels}
        batches = {int(lv["batch_size"]) for lv in levels}
        if len(archs) != 1 or len(batches) != 1:
            raise ValueError("cells of one group must share the architecture and batch size")
        return cls(
            cells=tuple(cells),
            seeds=tuple(c.seed for c in cells),
            learning_rates=tuple(float(lv["learning_rate"]) for lv in levels),
            init_scales=tuple(float(lv["init_scale"]) for lv in levels),
            batch_size=batches.pop(),
            architecture=replace(archs.pop(), bn=any(bns)),
            bns=bns,
            **settings,
        )

    def members(self, indices: Sequence[int]) -> TrainSpec:
        """The same spec with only the members at ``indices`` (in that order)."""
        return replace(
            self,
            cells=tuple(self.cells[i] for i in indices),
            seeds=tuple(self.seeds[i] for i in indices),
            learning_rates=tuple(self.learning_rates[i] for i in indices),
            init_scales=tuple(self.init_scales[i] for i in indices),
            bns=tuple(self.bns[i] for i in indices),
        )


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


def usable_cores() -> int:
    """The CPU cores this process may use (here, not in the fused engine: the flow's process asks
    without importing TensorFlow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
