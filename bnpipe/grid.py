"""The experiment grid: cells, training groups, what defines a cell, and the results table."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnpipe.config import Config
from bnpipe.data import MnistData
from bnpipe.provenance import (
    NUMERIC_PACKAGES,
    cell_key,
    code_digest,
    numeric_env,
    package_versions,
)
from bnpipe.train.common import HISTORY_KEYS, Cell, TrainResult

if TYPE_CHECKING:  # evaluate imports Keras; grid must not pull in TensorFlow
    from bnpipe.evaluate import Evaluation

RESULT_COLUMNS = (
    "bn",
    "batch_size",
    "seed",
    "status",
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "epoch_time_s",
    "run_id",
    "error",
    "reused",
)


@dataclass(frozen=True)
class Group:
    """Cells that train together: one (BN, batch size) with all seeds (fused) or one seed."""

    bn: bool
    batch_size: int
    seeds: tuple[int, ...]

    @property
    def cells(self) -> list[Cell]:
        return [Cell(self.bn, self.batch_size, s) for s in self.seeds]

    @property
    def name(self) -> str:
        return f"bn={'on' if self.bn else 'off'} bs={self.batch_size}"


def grid_cells(cfg: Config, seeds: Mapping[int, Sequence[int]]) -> list[Cell]:
    """The cells of ``seeds`` (batch size -> seeds) in grid order: batch size as configured,
    then BN off before on, then seed."""
    return [
        Cell(bn, bs, s)
        for bs in cfg.grid.batch_sizes
        if bs in seeds
        for bn in sorted(cfg.grid.bn)
        for s in sorted(seeds[bs])
    ]


def training_groups(cells: Iterable[Cell]) -> list[Group]:
    """``cells`` split into training groups (one per BN and batch size), in grid order as
    given (first appearance)."""
    by: dict[tuple[bool, int], list[int]] = {}
    for c in cells:
        by.setdefault((c.bn, c.batch_size), []).append(c.seed)
    return [Group(bn, bs, tuple(seeds)) for (bn, bs), seeds in by.items()]


# Every config field is one of these (tests/test_cell_key.py fails on a field in none of them).
# Fields that change a cell's numbers, with their name among the cell's params (the cell key):
NUMERIC_FIELDS = {
    "train.epochs": "epochs",
    "train.learning_rate": "learning_rate",
    "model.hidden_units": "hidden_units",
    "model.num_classes": "num_classes",
    "train.engine": "engine",
    # The fused engine's results depend on its shard width (see bnpipe.train.fused).
    "train.shard_size": "shard_size",
    "data.limit_train": "limit_train",
    "data.limit_test": "limit_test",
}
# The grid's levels: each cell carries its own (bn, batch size, seed), so the lists do not count.
GRID_FIELDS = frozenset({"grid.bn", "grid.batch_sizes", "grid.seeds"})
# Settings that change speed or bookkeeping, never a cell's numbers. data.dir counts only through
# the data digest (the same files elsewhere are the same data).
SPEED_ONLY_FIELDS = frozenset(
    {
        "data.dir",
        "train.steps_per_execution",
        "train.parallel_shards",
        "tracking.uri",
        "tracking.experiment",
        "tracking.log_weights",
        "tracking.log_models",
        "tracking.reports_dir",
        "orchestration.task_runner",
        "orchestration.dask_address",
        "orchestration.dask_workers",
        "orchestration.retries",
    }
)
# Whole sections that act only after training (statistics of finished cells).
SPEED_ONLY_SECTIONS = frozenset({"stats"})


def field_kind(field: str) -> str | None:
    """ "numeric", "grid" or "speed-only" for a dotted config field; None if unclassified."""
    if field in NUMERIC_FIELDS:
        return "numeric"
    if field in GRID_FIELDS:
        return "grid"
    if field in SPEED_ONLY_FIELDS or field.partition(".")[0] in SPEED_ONLY_SECTIONS:
        return "speed-only"
    return None


def cell_params(cfg: Config, cell: Cell, data_digest: str) -> dict[str, Any]:
    """Every setting that defines a cell's result (logged as the child run's params)."""
    flat = cfg.flat()
    params: dict[str, Any] = {
        "bn": cell.bn,
        "batch_size": cell.batch_size,
        "seed": cell.seed,
        "optimizer": "adam",
        "loss": "sparse_categorical_crossentropy",
        **{name: flat[field] for field, name in NUMERIC_FIELDS.items()},
        "data_digest": data_digest,
    }
    if cfg.train.engine != "fused":
        params["shard_size"] = None
    return params


def cell_key_for(cfg: Config, cell: Cell, data_digest: str) -> str:
    """Cell key: everything that decides a cell's numbers.

    The cell's params (data digest, model, training settings, BN, batch size, seed, engine), the
    versions of the packages that compute them (and Python's), the digest of bnpipe's own
    numeric code, and the environment variables that change TF's kernels. Speed-only settings
    (SPEED_ONLY_FIELDS) are left out: they change no numbers, so a result found under the key
    stays valid.
    """
    return cell_key(
        {
            "params": cell_params(cfg, cell, data_digest),
            "versions": package_versions(NUMERIC_PACKAGES),
            "code": code_digest(),
            "env": numeric_env(),
        }
    )


def train_cells(
    cfg: Config,
    group: Group,
    data: MnistData,
    on_epoch: Callable[[Cell, int, dict[str, float]], None] | None = None,
) -> list[TrainResult]:
    """Train a group's seeds as ``cfg`` says: the one place that turns settings into a training
    call, for the flow and for ``bnpipe reproduce`` alike (fused: stacked shards; keras: one fit
    per seed)."""
    # Looked up at call time (TensorFlow only once something trains; tests wrap it there).
    from bnpipe import xla_cache
    from bnpipe.train import engines

    # Before this process's first compile; a Dask worker's first one is here.
    xla_cache.enable()

    return engines.train_group(
        cfg.train.engine,
        group.bn,
        group.batch_size,
        group.seeds,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        epochs=cfg.train.epochs,
        learning_rate=cfg.train.learning_rate,
        hidden_units=cfg.model.hidden_units,
        num_classes=cfg.model.num_classes,
        steps_per_execution=cfg.train.steps_per_execution,
        shard_size=cfg.train.shard_size,
        parallel_shards=cfg.train.parallel_shards,
        on_epoch=on_epoch,
    )


def evaluate_cell(cfg: Config, result: TrainResult, data: MnistData) -> Evaluation:
    """Test metrics of one trained cell (an ordinary Keras model, BN in inference mode)."""
    from bnpipe.evaluate import evaluate_weights

    return evaluate_weights(
        result.cell,
        result.weights,
        data.x_test,
        data.y_test,
        hidden_units=cfg.model.hidden_units,
        num_classes=cfg.model.num_classes,
    )


def keras_model(cfg: Config, result: TrainResult) -> Any:
    """The cell's trained Keras model (whichever engine trained it: both return weights)."""
    from bnpipe.models import build_model

    model = build_model(
        bn=result.cell.bn,
        seed=result.cell.seed,
        hidden_units=cfg.model.hidden_units,
        num_classes=cfg.model.num_classes,
    )
    model.set_weights(result.weights)
    return model


def history_frame(result: TrainResult) -> pd.DataFrame:
    """Per-epoch history with a 1-based ``epoch`` column."""
    frame = pd.DataFrame(result.history, columns=list(HISTORY_KEYS))
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame


def result_row(
    cell: Cell,
    *,
    status: str,
    run_id: str = "",
    test_accuracy: float = float("nan"),
    test_loss: float = float("nan"),
    history: pd.DataFrame | None = None,
    error: str | None = None,
    reused: bool = False,
) -> dict[str, Any]:
    """One row of the results table (schema RESULT_COLUMNS).

    ``reused`` marks a cell whose result comes from an earlier run (``run_id`` is that run).
    """
    has_history = history is not None and len(history) > 0
    return {
        "bn": cell.bn,
        "batch_size": cell.batch_size,
        "seed": cell.seed,
        "status": status,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_accuracy": float(history["accuracy"].iloc[-1]) if has_history else float("nan"),
        "epoch_time_s": float(history["epoch_time_s"].mean()) if has_history else float("nan"),
        "run_id": run_id,
        "error": error or "",
        "reused": reused,
    }
