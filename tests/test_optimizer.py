"""The optimizer factor: SGD with momentum 0.9 beside the reference's Adam, in both engines.

Mirrors tests/test_fused.py's checks for Adam: a member of a fused group, with or without BN,
trains bit for bit as alone, and the fused engine matches ``model.fit`` up to round-off.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe.config import ConfigError, load_config
from bnpipe.data import MnistData
from bnpipe.factors import Cell
from bnpipe.grid import cell_params, grid_cells, strata, train_spec, training_groups
from bnpipe.tracking import logged_params, recorded_cell
from bnpipe.train.common import TrainSpec
from bnpipe.train.fused import shard_layout, train_fused
from bnpipe.train.keras_engine import train_keras
from tests.conftest import make_tiny_mnist
from tests.test_fused import BATCH, KERAS_ATOL, N_TRAIN, _assert_identical, _max_abs_diff

# SGD's steps are lr * gradient (Adam's are ~lr): 0.01 moves the weights about as far here as
# Adam's 0.001 does, and keeps Adam's round-off bounds. Measured (2 epochs): weights within
# 5e-8 (no BN) / 1.3e-6 (BN), every metric within 2e-6.
SGD_LR = 0.01


@pytest.fixture(scope="module")
def data() -> MnistData:
    return make_tiny_mnist(n_train=N_TRAIN, n_test=100, seed=3)


def _sgd(seeds: list[int], bn: bool, **kwargs) -> TrainSpec:
    kwargs = {"epochs": 2, "learning_rate": SGD_LR, **kwargs}
    return TrainSpec.of(seeds, bn=bn, batch_size=BATCH, optimizer="sgd", **kwargs)


@pytest.mark.parametrize("bn", [False, True])
def test_sgd_fused_matches_keras_engine(data: MnistData, bn: bool) -> None:
    """Same init, data order, BN, loss, SGD with momentum and metrics as model.fit."""
    spec = _sgd([0, 1], bn)
    for ours, ref in zip(train_fused(spec, data), train_keras(spec, data), strict=True):
        assert ours.cell == ref.cell and ours.status == ref.status == "finished"
        assert _max_abs_diff(ours.weights, ref.weights) <= KERAS_ATOL[bn]
        assert len(ours.history) == len(ref.history) == 2
        for a, b in zip(ours.history, ref.history, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert a[key] == pytest.approx(b[key], abs=1e-4)


def test_sgd_members_with_and_without_bn_train_as_apart_and_alone(data: MnistData) -> None:
    """Both BN arms of an SGD group in one masked shard: each member is bit for bit what the
    plain program of its arm gives, and what it gives trained alone (momentum of a member's
    unused BN variables stays zero, so they never move)."""
    seeds = [0, 1]
    group = _sgd(seeds, False) + _sgd(seeds, True)
    assert shard_layout(group, group.all("bn")).mixed
    mixed = train_fused(group, data)
    apart = [r for bn in (False, True) for r in train_fused(_sgd(seeds, bn), data)]
    for a, b in zip(mixed, apart, strict=True):
        _assert_identical(a, b)
    for i, result in enumerate(mixed):
        _assert_identical(result, train_fused(group.members([i]), data)[0])
    assert [len(r.weights) for r in mixed] == [6, 6, 14, 14]
    # SGD is what trained them: Adam at the same settings ends elsewhere.
    adam = train_fused(group.members([0]).with_levels(optimizer="adam"), data)[0]
    assert not np.array_equal(adam.weights[0], mixed[0].weights[0])


def test_the_optimizer_is_one_per_group_and_keyed_only_when_sgd() -> None:
    """An optimizer is a group setting (one per compiled program): a grid over it trains one
    group per optimizer, both BN arms together. Adam cells keep their params (hence keys)
    whether or not the grid lists the factor; SGD cells differ in the optimizer only."""
    plain = load_config(None, ["grid.seeds=[0]", "grid.batch_sizes=[32]"])
    listed = load_config(None, ["grid.factors={bn: [false, true], optimizer: [adam, sgd]}"])
    cells = grid_cells(listed, dict.fromkeys(strata(listed), (0,)))
    groups = training_groups(cells)
    assert [g.name for g in groups] == ["opt=adam", "opt=sgd"]
    assert train_spec(listed, groups[1]).all("optimizer") == ("sgd", "sgd")
    with pytest.raises(ValueError, match="optimizer differs"):
        TrainSpec.of([0]) + TrainSpec.of([0], optimizer="sgd")
    adam = cell_params(plain, Cell.of(0, bn=True, batch_size=32), "d")
    assert adam["optimizer"] == "adam"
    assert cell_params(listed, cells[1], "d") == adam
    sgd = cell_params(listed, cells[3], "d")
    assert {k for k in adam if adam[k] != sgd[k]} == {"optimizer"} and sgd["optimizer"] == "sgd"
    # Unlisted, it comes from train.optimizer.
    unlisted = load_config(None, ["train.optimizer=sgd"])
    assert cell_params(unlisted, Cell.of(0, bn=True, batch_size=32), "d") == sgd
    # The logged params (and the parent's grid.factors) give the cell back.
    strings = {k: str(v) for k, v in logged_params(sgd).items()}
    assert recorded_cell(strings, ("bn", "optimizer")) == cells[3]


def test_an_unknown_optimizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["train.optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["grid.factors={bn: [false, true], optimizer: [adam, rmsprop]}"])
