"""Types and the data-order rule shared by every training engine."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np

from bnpipe.config import DEFAULT_SHARD_SIZE, factor_defaults

# The grid cell is the factor registry's (re-exported: older imports keep working).
from bnpipe.factors import ARCHITECTURE, FACTORS, MEMBER, SPANNING, Cell, Level, canonical

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "HISTORY_KEYS",
    "Architecture",
    "Cell",
    "TrainData",
    "TrainResult",
    "TrainSpec",
    "bootstrap_sample",
    "epoch_permutation",
    "training_order",
]

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")


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
    """What decides a model's layers and shapes (its weights' layout): the ARCHITECTURE factors'
    levels (fields named as the factors) and the layer widths."""

    bn: bool = False
    bn_position: str = "after_relu"
    hidden_units: tuple[int, ...] = (64, 64)
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.bn_position not in BN_POSITIONS:
            raise ValueError(f"bn_position must be one of {BN_POSITIONS}, got {self.bn_position!r}")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bnpipe.models.build_model` for this architecture."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(
        cls, levels: Mapping[str, Any], hidden_units: tuple[int, ...], num_classes: int
    ) -> Architecture:
        """The architecture of a cell from its resolved factor levels (every registry factor)."""
        own = {n: levels[n] for n, f in FACTORS.items() if f.reaches == ARCHITECTURE}
        return cls(**own, hidden_units=tuple(hidden_units), num_classes=num_classes)


@dataclass(frozen=True)
class TrainSpec:
    """Everything an engine needs to train a group of cells: one model (member) per cell.

    ``levels`` holds every registry factor's level per member. How a level reaches training is
    the registry's (``Factor.reaches``): GROUP and ARCHITECTURE levels are one per spec (read
    them with :meth:`shared`), except a factor that ``spans_groups`` (BN); MEMBER levels may
    differ (:meth:`level`). ``cells`` label the results and carry the seeds.
    """

    cells: tuple[Cell, ...]
    levels: tuple[tuple[Level, ...], ...]
    epochs: int
    hidden_units: tuple[int, ...] = (64, 64)
    num_classes: int = 10
    engine: str = "fused"
    # Engine settings: keras steps per graph call (speed only); fused members per stacked model
    # (decides the last bits) and shards trained at once (speed only; None: one per core).
    steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION
    shard_size: int = DEFAULT_SHARD_SIZE
    parallel_shards: int | None = None
    # data.bootstrap_train: each member trains on its seed's bootstrap resample of the training
    # set (:func:`training_order`), shared by every member of that seed.
    bootstrap_train: bool = False

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError("TrainSpec: no cells")
        if len(self.levels) != len(self.cells):
            raise ValueError("TrainSpec: one set of levels per cell")
        object.__setattr__(self, "levels", tuple(canonical(lv) for lv in self.levels))
        missing = set(FACTORS) - set(dict(self.levels[0]))
        if missing:
            raise ValueError(f"TrainSpec: no level for {', '.join(sorted(missing))}")
        for name, f in FACTORS.items():
            if f.reaches != MEMBER and not f.spans_groups and len(set(self.all(name))) != 1:
                raise ValueError(
                    "cells of one group must share every group and architecture level "
                    f"({f.words} differs)"
                )

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(c.seed for c in self.cells)

    def level(self, name: str, i: int) -> Any:
        """Member i's level of factor ``name``."""
        return dict(self.levels[i])[name]

    def all(self, name: str) -> tuple[Any, ...]:
        """Every member's level of factor ``name``, in member order."""
        return tuple(dict(lv)[name] for lv in self.levels)

    def shared(self, name: str) -> Any:
        """The level of ``name`` that every member has (a GROUP or ARCHITECTURE factor)."""
        (value,) = set(self.all(name))
        return value

    @property
    def batch_size(self) -> int:
        return int(self.shared("batch_size"))

    def member_architecture(self, i: int) -> Architecture:
        """Member i's architecture."""
        return Architecture.of(dict(self.levels[i]), self.hidden_units, self.num_classes)

    @property
    def architecture(self) -> Architecture:
        """The members' shared architecture; a factor that spans groups (BN) is on where any
        member has it on (the stacked program holds its variables)."""
        spanning = {n: any(self.all(n)) for n in SPANNING if FACTORS[n].reaches == ARCHITECTURE}
        return replace(self.member_architecture(0), **spanning)

    @classmethod
    def of(
        cls,
        seeds: Iterable[int],
        *,
        epochs: int = 1,
        hidden_units: tuple[int, ...] = (64, 64),
        num_classes: int = 10,
        cells: Iterable[Cell] | None = None,
        engine: str = "fused",
        steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION,
        shard_size: int = DEFAULT_SHARD_SIZE,
        parallel_shards: int | None = None,
        bootstrap_train: bool = False,
        **levels: Any,
    ) -> TrainSpec:
        """A group whose members differ only by seed, at ``levels`` (factor -> level; a factor
        not given: its config default, e.g. BN off, batch 32, Adam at 0.001); cells named by
        BN and batch size unless given: the short form for tests, the benchmark and notebooks."""
        seeds = tuple(seeds)
        resolved = canonical({**factor_defaults(), **levels})
        bn, batch_size = dict(resolved)["bn"], dict(resolved)["batch_size"]
        named = (
            tuple(cells)
            if cells is not None
            else tuple(Cell.of(s, bn=bn, batch_size=batch_size) for s in seeds)
        )
        return cls(
            cells=named,
            levels=(resolved,) * len(seeds),
            epochs=epochs,
            hidden_units=tuple(hidden_units),
            num_classes=num_classes,
            engine=engine,
            steps_per_execution=steps_per_execution,
            shard_size=shard_size,
            parallel_shards=parallel_shards,
            bootstrap_train=bootstrap_train,
        )

    def members(self, indices: Sequence[int]) -> TrainSpec:
        """The same spec with only the members at ``indices`` (in that order)."""
        return replace(
            self,
            cells=tuple(self.cells[i] for i in indices),
            levels=tuple(self.levels[i] for i in indices),
        )

    def with_levels(self, **levels: Any) -> TrainSpec:
        """The same spec with every member at ``levels`` (factor -> level)."""
        return replace(self, levels=tuple({**dict(lv), **levels} for lv in self.levels))

    def __add__(self, other: TrainSpec) -> TrainSpec:
        """One spec of both specs' members (this one's first; other settings: this one's)."""
        return replace(self, cells=self.cells + other.cells, levels=self.levels + other.levels)


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


# The bootstrap resample's own stream: a spawn key no other stream of a seed uses (the epoch
# orders above seed with [seed, epoch] and no spawn key; Keras' initializers take their own
# seeds), so turning data.bootstrap_train on changes which rows a seed trains on and nothing
# else about its cell: same initial weights, same permutation of positions.
BOOTSTRAP_SALT = 0x626F6F74  # "boot"


@functools.lru_cache(maxsize=8)
def bootstrap_sample(seed: int, n: int) -> np.ndarray:
    """Row indices of model ``seed``'s bootstrap resample of n training examples: n draws with
    replacement, a function of the seed and n only (so BN off and on of a seed, and every other
    level of every factor, train on the same resample: the pair stays paired). Read-only."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BOOTSTRAP_SALT,)))
    rows = rng.integers(0, n, size=n)
    rows.flags.writeable = False
    return rows


def training_order(seed: int, epoch: int, n: int, bootstrap: bool = False) -> np.ndarray:
    """Rows of the n training examples that model ``seed`` trains on in ``epoch``, in order.

    Without ``bootstrap`` the :func:`epoch_permutation` itself. With it, the same permutation
    of positions applied to the seed's :func:`bootstrap_sample`: training on
    ``x[bootstrap_sample]`` with the usual shuffle, without copying the data per member (the
    fused engine gathers these rows on device). Only the training set is resampled: validation
    and test stay the fixed test set (there is no validation split taken from the training set;
    the test examples are the crossed factor of ``stats.population: digits``).
    """
    order = epoch_permutation(seed, epoch, n)
    return bootstrap_sample(seed, n)[order] if bootstrap else order


def usable_cores() -> int:
    """The CPU cores this process may use (here, not in the fused engine: the flow's process asks
    without importing TensorFlow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
