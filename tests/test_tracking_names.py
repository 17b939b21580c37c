"""bnpipe.tracking.names: params as logged, the parent's params, and a recorded cell read back
from its params (never from its run name), for runs of any age."""

from __future__ import annotations

import pytest

from bnpipe.config import load_config
from bnpipe.factors import Cell
from bnpipe.grid import cell_params
from bnpipe.tracking import (
    grid_factors,
    logged_params,
    parent_params,
    recorded_cell,
)

BN_LR = ["grid.factors={bn: [false, true], learning_rate: [0.001, 0.1]}", "grid.seeds=[0,1]"]


def test_params_log_like_today_and_read_back_as_the_cell():
    cfg = load_config(None, [*BN_LR, "model.init_scale=0.5", "train.batch_size=64"])
    cell = Cell.of(1, bn=True, learning_rate=0.1)
    params = cell_params(cfg, cell, "digest")
    logged = logged_params(params)
    assert logged["bn"] == "on" and logged["train.learning_rate"] == 0.1
    parent = parent_params(cfg.flat(), params, cfg.grid.levels)
    assert "bn" not in parent and "train.learning_rate" not in {k for k in parent if k == "lr"}
    assert parent["batch_size"] == 64  # shared by every cell of this grid
    # The grid's factors are recorded by their levels, never by a default no cell used.
    assert "model.bn" not in parent and "train.learning_rate" not in parent
    assert parent["grid.factors.bn"] == [False, True]
    assert parent["grid.factors.learning_rate"] == [0.001, 0.1]
    # A run's cell reads back from its params and its parent's, for any factor; its name is
    # never read.
    strings = {k: str(v) for k, v in logged.items()}
    factors = grid_factors({k: str(v) for k, v in parent.items()})
    assert factors == ("bn", "learning_rate")
    assert recorded_cell(strings, factors) == cell
    with pytest.raises(ValueError, match="not a cell"):
        recorded_cell({k: v for k, v in strings.items() if k != "seed"}, factors)


def test_runs_older_than_the_factor_registry_read_back_as_bn_x_batch_size():
    cfg = load_config(None, ["grid.seeds=[0]"])
    cell = Cell.of(3, bn=False, batch_size=32)
    # The oldest spelling: grid.cell_params' names, bn as True/False; parents recorded grid.bn
    # and grid.batch_sizes, or are gone.
    old = {k: str(v) for k, v in cell_params(cfg, cell, "digest").items()}
    assert old["bn"] == "False" and "train.epochs" not in old
    for parent in (None, {"grid.bn": "[False, True]", "grid.batch_sizes": "[16, 32]"}):
        assert recorded_cell(old, grid_factors(parent)) == cell
