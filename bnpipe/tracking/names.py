"""What bnpipe's runs are called in MLflow: tags, metric and param names, and reading a recorded
cell back from its params (old spellings included)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bnpipe.factors import FACTORS, Cell, parse_level

TAG_PREFIX = "bnpipe."
PARENT_TAG = "mlflow.parentRunId"
CELL_KEY_TAG = TAG_PREFIX + "cell_key"
STATUS_TAG = TAG_PREFIX + "status"
ROLE_TAG = TAG_PREFIX + "role"
OWNER_TAG = TAG_PREFIX + "owner"
HEARTBEAT_TAG = TAG_PREFIX + "heartbeat"
FAILURE_TAG = TAG_PREFIX + "failure_reason"
ERROR_TAG = TAG_PREFIX + "error"
UNUSABLE_TAG = TAG_PREFIX + "unusable_reason"
DESIGN_ID_TAG = TAG_PREFIX + "design_id"
# The cells a sequential design looks at (a hash of its seed-0 cell keys), and the earlier
# design a run replaced knowingly (bnpipe run --new-design).
DESIGN_CELLS_TAG = TAG_PREFIX + "design_cells"
NEW_DESIGN_TAG = TAG_PREFIX + "new_design_from"
ABANDONED = "abandoned"
INTERRUPTED = "interrupted"
WITHDRAWN = "withdrawn"
# The cell outcomes a FINISHED child run may record (its STATUS_TAG); both are reused.
OUTCOMES = ("finished", "diverged")
# One summary run per arm (stratum x level of the compared factor) sits beside a parent's cells:
# role "arm", no cell key, so finding, claiming and reusing cells never meets one. The order tag
# sorts them (stratum, then control before treatment) in the view that lists them.
ARM_ROLE = "arm"
ARM_ORDER_TAG = TAG_PREFIX + "arm_order"
ARM_FILTER = f"tags.`{ROLE_TAG}` = '{ARM_ROLE}'"
# An arm's statistics (stats.arm_summary's columns) as metrics: the mean under the cells' own
# test-accuracy name, so a table or chart of test/accuracy shows arms and cells alike.
ARM_METRICS = {
    "mean": "test/accuracy",
    "sd": "test/accuracy_sd",
    "ci_low": "test/accuracy_ci_low",
    "ci_high": "test/accuracy_ci_high",
    "n": "n_seeds",
}
# MLflow's UI opens the view stored in the experiment tag <prefix><key> when its link carries
# ?viewStateShareKey=<key> (its Share button writes such tags). The value is the UI's own state
# (MLflow 3.17: searchFilter, orderByKey, orderByAsc, selectedColumns, columnOrder,
# columnWidths); a key it cannot read makes it show an error and the plain runs table.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
# What the MLflow UI reads: the experiment's kind decides whether it opens on the runs table
# (Model training) or on GenAI traces; the note is the description shown on top of a run/experiment.
KIND_TAG = "mlflow.experimentKind"
NOTE_TAG = "mlflow.note.content"
# Where the Prefect flow run that wrote a parent run is (its id; its URL where a UI is known).
FLOW_RUN_ID_TAG = TAG_PREFIX + "prefect.flow_run_id"
FLOW_RUN_URL_TAG = TAG_PREFIX + "prefect.flow_run_url"
EXPERIMENT_NOTE = (
    "BatchNormalization on/off x batch size x seed ablation of a 784-64-64-10 MLP on MNIST "
    "(bnpipe). One parent run per `bnpipe run` (its description is the verdict, its artifacts the "
    "report); one child run per cell, and one per arm (`bn=on bs=32 (mean of N seeds)`: its mean "
    "over every seed; the link `bnpipe run` prints for arm means lists only those). Compare cells: "
    "Model training view, group by `bn` and `batch_size`."
)
# Metric names as logged: sections (train/, val/, test/, time/) group the UI's charts and keep the
# metric `train/loss` apart from the param naming the loss function. Runs written before carry the
# names on the left; reading maps them (CellRun.of), so their results are still found and reused.
METRIC_NAMES = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "epoch_time_s": "time/epoch_s",
    "train_time_s": "time/train_s",
}
# Child params as logged, spelled as the parent's (``train.epochs`` on both); the keys are
# grid.cell_params' names, which the cell key hashes, so keys stay as they were.
PARAM_NAMES = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "optimizer": "train.optimizer",
    "loss": "train.loss_function",
    "engine": "train.engine",
    "shard_size": "train.shard_size",
    "hidden_units": "model.hidden_units",
    "num_classes": "model.num_classes",
    "limit_train": "data.limit_train",
    "limit_test": "data.limit_test",
    "bootstrap_train": "data.bootstrap_train",  # only on a cell that trained on a resample
    "data_digest": "data.digest",
}
# What tells the cells of one grid apart, besides the grid's factors' levels.
CELL_PARAMS = ("seed",)
# A parent records its grid's factors as params ``grid.factors.<name>``. Parents written before
# the factor registry (and cells whose parent is gone) had the one grid there was: BN x batch size.
GRID_FACTOR_PARAM = "grid.factors."
LEGACY_GRID = ("bn", "batch_size")


def metric_name(name: str) -> str:
    """The logged name of a metric known by its legacy name (``test_loss`` -> ``test/loss``)."""
    if name in METRIC_NAMES:
        return METRIC_NAMES[name]
    return "test/" + name.removeprefix("test_") if name.startswith("test_") else name


def current_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics under today's names; runs logged before the renaming are read the same way (where
    a run has both spellings of one metric, today's wins)."""
    out = {metric_name(k): v for k, v in metrics.items() if metric_name(k) not in metrics}
    out.update({k: v for k, v in metrics.items() if metric_name(k) == k})
    return out


def logged_params(cell_params: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's params as logged: the parent's spelling, on/off factors (``bn``) as on/off like
    the run names."""
    out = {PARAM_NAMES.get(k, k): v for k, v in cell_params.items()}
    for name, f in FACTORS.items():
        if f.kind is bool and name in out:
            out[name] = f.format(out[name])
    return out


def parent_params(
    flat_config: Mapping[str, Any],
    cell_params: Mapping[str, Any],
    varying: Iterable[str] = (),
) -> dict[str, Any]:
    """The parent's params: the whole config plus what its cells share, spelled as they are
    (``varying``: the grid's factors, whose levels differ from cell to cell)."""
    varying = tuple(varying)
    differ = {PARAM_NAMES.get(k, k) for k in (*varying, *CELL_PARAMS)}
    shared = {k: v for k, v in logged_params(cell_params).items() if k not in differ}
    # A grid factor's default field (``model.bn False``) is a level no cell used: the parent
    # records the factor's levels (``grid.factors.bn``) instead.
    unused = {FACTORS[n].default_field for n in varying if n in FACTORS}
    return {**{k: v for k, v in flat_config.items() if k not in unused}, **shared}


def recorded_cell_params(params: Mapping[str, str]) -> dict[str, str]:
    """A child's params under grid.cell_params' names, whichever spelling it was logged with
    (on/off factors as "True"/"False", as the oldest runs logged ``bn``)."""
    out = dict(params)
    for old, new in PARAM_NAMES.items():
        if new in params:
            out[old] = params[new]
    for name, f in FACTORS.items():
        if f.kind is bool and name in params:
            out[name] = str(parse_level(name, params[name]))
    return out


def grid_factors(parent: Mapping[str, str] | None) -> tuple[str, ...]:
    """The factors of the grid a parent run recorded in its params (``grid.factors.<name>``);
    :data:`LEGACY_GRID` for a parent older than those params, or none at all."""
    names = [
        k.removeprefix(GRID_FACTOR_PARAM) for k in parent or {} if k.startswith(GRID_FACTOR_PARAM)
    ]
    return tuple(n for n in FACTORS if n in names) or LEGACY_GRID


def recorded_cell(params: Mapping[str, str], factors: Iterable[str] = LEGACY_GRID) -> Cell:
    """The grid cell a child run recorded: the levels of ``factors`` (its grid's, see
    :func:`grid_factors`) and the seed, from its params (old and new spellings alike). The run
    name is for people and is never read.

    Raises:
        KeyError, ValueError: the params do not describe a cell of such a grid.
    """
    p = recorded_cell_params(params)
    if "seed" not in p:
        raise ValueError(f"params {sorted(p)} are not a cell's (no seed)")
    return Cell.of(int(p["seed"]), **{n: parse_level(n, p[n]) for n in factors})
