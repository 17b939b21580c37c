"""The experiment grid: cells, training groups, what defines a cell, and the results table."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnpipe.config import Config
from bnpipe.data import MnistData
from bnpipe.factors import FACTORS, SPANNING, Cell, Level, Stratum, canonical, factor, levels_text
from bnpipe.provenance import (
    NUMERIC_PACKAGES,
    cell_key,
    code_digest,
    numeric_env,
    package_versions,
)
from bnpipe.train.common import HISTORY_KEYS, Architecture, TrainResult, TrainSpec

if TYPE_CHECKING:  # evaluate imports Keras; grid must not pull in TensorFlow
    from bnpipe.evaluate import Evaluation

# The results table: one column per grid factor (named as the factor), then these.
RESULT_TAIL = (
    "seed",
    "status",
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "epoch_time_s",
    "run_id",
    "error",
    "reused",
    # Which test examples the cell got right (evaluate.pack_correct): the crossed analysis.
    "test_correct",
)


def result_columns(cfg: Config) -> list[str]:
    """The results table's columns for ``cfg``'s grid."""
    return [*cfg.grid.levels, *RESULT_TAIL]


# Factors whose levels may differ inside one training group of the fused engine (the registry's
# ``spans_groups``: BN, whose two arms train in one masked program), so a comparison's two arms
# cost one compile per combination of the other levels, not two. (The keras engine fits one
# model at a time; its groups stay one combination of all levels.)
GROUP_SPANS = SPANNING


@dataclass(frozen=True)
class Group:
    """Cells that train together: one combination of the grid's levels other than BN, with
    their BN levels and seeds."""

    cells: tuple[Cell, ...]

    @classmethod
    def of(cls, levels: tuple[Level, ...], seeds: Iterable[int]) -> Group:
        """The group of one combination of levels with ``seeds``."""
        return cls(tuple(Cell(levels, s) for s in seeds))

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels every cell of the group shares."""
        first = self.cells[0].levels
        return tuple(lv for lv in first if all(lv in c.levels for c in self.cells))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(c.seed for c in self.cells)

    @property
    def name(self) -> str:
        """``bs=32`` (both BN arms) or ``bn=on bs=32``: its cells' run names without what
        varies (the seed, BN when both arms train together)."""
        return levels_text(self.levels)


def strata(cfg: Config) -> list[Stratum]:
    """The grid's comparisons: every combination of the levels of the factors other than the
    compared one (registry order, each factor's levels as listed); ``()`` when there are none."""
    others = {n: v for n, v in cfg.grid.levels.items() if n != cfg.grid.compare}
    return [tuple(zip(others, combo, strict=True)) for combo in itertools.product(*others.values())]


def grid_cells(cfg: Config, seeds: Mapping[Stratum, Sequence[int]]) -> list[Cell]:
    """The cells of ``seeds`` (stratum -> seeds) in grid order: strata as :func:`strata` lists
    them, then the compared factor's levels as listed (control first), then seed."""
    compare = cfg.grid.compare
    return [
        Cell(canonical({**dict(stratum), compare: level}), s)
        for stratum in strata(cfg)
        if stratum in seeds
        for level in cfg.grid.compare_levels
        for s in sorted(seeds[stratum])
    ]


def training_groups(cells: Iterable[Cell], spans: Sequence[str] = GROUP_SPANS) -> list[Group]:
    """``cells`` split into training groups (one per combination of the levels of factors other
    than ``spans``), in the order given (first appearance)."""
    by: dict[tuple[Level, ...], list[Cell]] = {}
    for c in cells:
        key = tuple(lv for lv in c.levels if lv[0] not in spans)
        by.setdefault(key, []).append(c)
    return [Group(tuple(group)) for group in by.values()]


# Every config field is one of these (tests/test_cell_key.py fails on a field in none of them).
# Fields that change a cell's numbers, with their name among the cell's params (the cell key):
NUMERIC_FIELDS = {
    "train.epochs": "epochs",
    "model.hidden_units": "hidden_units",
    "model.num_classes": "num_classes",
    "train.engine": "engine",
    # The fused engine's results depend on its shard width (see bnpipe.train.fused).
    "train.shard_size": "shard_size",
    "data.limit_train": "limit_train",
    "data.limit_test": "limit_test",
}
# Fields that change a cell's numbers only when set: their name and the value a cell keyed before
# they existed trained at, which stays out of the params (as a factor's keyless_default does), so
# every such cell keeps its key; any other value is in the params and so in the key.
KEYLESS_FIELDS = {"data.bootstrap_train": ("bootstrap_train", False)}
# The factors' default fields (model.bn, train.learning_rate, ...) are numeric too, through the
# factor they feed: a cell whose grid does not list the factor takes its level from there.
FACTOR_FIELDS = {f.default_field: f.name for f in FACTORS.values()}
# The grid's levels: each cell carries its own levels and seed, so the lists do not count.
GRID_FIELDS = frozenset(
    {"grid.factors", "grid.compare", "grid.bn", "grid.batch_sizes", "grid.seeds"}
)
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
# Whole sections that act only after training (statistics of finished cells, how the report is
# written).
SPEED_ONLY_SECTIONS = frozenset({"stats", "report"})


def field_kind(field: str) -> str | None:
    """ "numeric", "grid" or "speed-only" for a dotted config field; None if unclassified."""
    if field in NUMERIC_FIELDS or field in FACTOR_FIELDS or field in KEYLESS_FIELDS:
        return "numeric"
    if field in GRID_FIELDS or field.startswith("grid.factors."):
        return "grid"
    if field in SPEED_ONLY_FIELDS or field.partition(".")[0] in SPEED_ONLY_SECTIONS:
        return "speed-only"
    return None


def default_level(cfg: Config, name: str) -> Any:
    """The level of factor ``name`` for a cell whose grid does not list it (its default field)."""
    section, _, field = factor(name).default_field.partition(".")
    return getattr(getattr(cfg, section), field)


def resolved_levels(cfg: Config, levels: Cell | Iterable[Level]) -> dict[str, Any]:
    """Every registry factor's level for a cell (or a group's levels): its own where it has
    one, else the factor's default field."""
    own = dict(levels.levels if isinstance(levels, Cell) else levels)
    return {name: own[name] if name in own else default_level(cfg, name) for name in FACTORS}


# The reference recipe's settings that no config field holds, in every cell's params. A factor of
# the same name replaces its entry with the cell's level; where that level is the factor's
# keyless default (the recipe's own value), the entry stays as it was, and so does the key.
RECIPE = {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"}


def cell_params(cfg: Config, cell: Cell, data_digest: str) -> dict[str, Any]:
    """Every setting that defines a cell's result (logged as the child run's params).

    Every factor's level is there, except a level equal to the factor's ``keyless_default``:
    cells keyed before that factor existed keep their keys (a BN x batch-size cell's params
    are exactly what they were).
    """
    flat = cfg.flat()
    params: dict[str, Any] = {
        name: level
        for name, level in resolved_levels(cfg, cell).items()
        if FACTORS[name].keyless_default is None or level != FACTORS[name].keyless_default
    }
    params = {**RECIPE, **params}
    params.update(
        {
            "seed": cell.seed,
            **{name: flat[field] for field, name in NUMERIC_FIELDS.items()},
            **{
                name: flat[field]
                for field, (name, keyless) in KEYLESS_FIELDS.items()
                if flat[field] != keyless
            },
            "data_digest": data_digest,
        }
    )
    if cfg.train.engine != "fused":
        params["shard_size"] = None
    return params


def cell_key_for(cfg: Config, cell: Cell, data_digest: str) -> str:
    """Cell key: everything that decides a cell's numbers.

    The cell's params (data digest, model and training settings, every factor's level, seed,
    engine), the versions of the packages that compute them (and Python's), the digest of
    bnpipe's own numeric code, and the environment variables that change TF's kernels.
    Speed-only settings (SPEED_ONLY_FIELDS) are left out: they change no numbers, so a result
    found under the key stays valid.
    """
    return cell_key(
        {
            "params": cell_params(cfg, cell, data_digest),
            "versions": package_versions(NUMERIC_PACKAGES),
            "code": code_digest(),
            "env": numeric_env(),
        }
    )


def group_spans(cfg: Config) -> tuple[str, ...]:
    """The factors whose levels may differ inside one of ``cfg``'s training groups."""
    return GROUP_SPANS if cfg.train.engine == "fused" else ()


def train_spec(cfg: Config, group: Group) -> TrainSpec:
    """What the engines train for ``group`` under ``cfg`` (one member per cell)."""
    return TrainSpec(
        cells=group.cells,
        levels=tuple(tuple(resolved_levels(cfg, c).items()) for c in group.cells),
        epochs=cfg.train.epochs,
        hidden_units=cfg.model.hidden_units,
        num_classes=cfg.model.num_classes,
        engine=cfg.train.engine,
        steps_per_execution=cfg.train.steps_per_execution,
        shard_size=cfg.train.shard_size,
        parallel_shards=cfg.train.parallel_shards,
        bootstrap_train=cfg.data.bootstrap_train,
    )


def architecture(cfg: Config, cell: Cell) -> Architecture:
    """The cell's layers and shapes (to rebuild its Keras model)."""
    return Architecture.of(
        resolved_levels(cfg, cell), cfg.model.hidden_units, cfg.model.num_classes
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
    from bnpipe import tfkeras, xla_cache  # noqa: F401 -- tfkeras: before the engines import TF
    from bnpipe.train import engines

    # Before this process's first compile; a Dask worker's first one is here.
    xla_cache.enable()
    try:
        return engines.train_group(train_spec(cfg, group), data, on_epoch)
    except Exception as exc:
        # An entry that passed enable()'s check yet TensorFlow could not read: TF keeps the
        # failure for the process, so this group fails, but the next run compiles afresh.
        if (bad := xla_cache.heal(exc)) is not None:
            print(f"XLA cache: removed {bad.name}, unreadable to TensorFlow", file=sys.stderr)
        raise


def evaluate_cell(cfg: Config, result: TrainResult, data: MnistData) -> Evaluation:
    """Test metrics of one trained cell (an ordinary Keras model, BN in inference mode)."""
    from bnpipe import tfkeras  # noqa: F401 -- before bnpipe.evaluate imports Keras
    from bnpipe.evaluate import evaluate_weights

    return evaluate_weights(
        result.cell, result.weights, data.x_test, data.y_test, architecture(cfg, result.cell)
    )


def keras_model(cfg: Config, result: TrainResult) -> Any:
    """The cell's trained Keras model (whichever engine trained it: both return weights)."""
    from bnpipe import tfkeras  # noqa: F401 -- before bnpipe.models imports Keras
    from bnpipe.models import build_model

    model = build_model(seed=result.cell.seed, **architecture(cfg, result.cell).model_kwargs())
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
    test_correct: str = "",
) -> dict[str, Any]:
    """One row of the results table (schema :func:`result_columns`).

    ``reused`` marks a cell whose result comes from an earlier run (``run_id`` is that run).
    """
    has_history = history is not None and len(history) > 0
    return {
        **dict(cell.levels),
        "seed": cell.seed,
        "status": status,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_accuracy": float(history["accuracy"].iloc[-1]) if has_history else float("nan"),
        "epoch_time_s": float(history["epoch_time_s"].mean()) if has_history else float("nan"),
        "run_id": run_id,
        "error": error or "",
        "reused": reused,
        "test_correct": test_correct,
    }
