"""Model settings reach both engines: hidden_units and num_classes train and evaluate the same
in the keras and the fused engine, and a batch above the training set is one batch (as in fit)."""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe import grid
from bnpipe.config import load_config
from bnpipe.data import MnistData
from bnpipe.train.common import TrainSpec
from bnpipe.train.fused import train_fused
from bnpipe.train.keras_engine import train_keras
from tests.conftest import make_tiny_mnist
from tests.test_fused import KERAS_ATOL


def _with_labels_below(data: MnistData, classes: int) -> MnistData:
    return MnistData(
        data.x_train, data.y_train % classes, data.x_test, data.y_test % classes, "t", "generated"
    )


@pytest.mark.parametrize(
    ("hidden", "classes", "labels"),
    [((32,), 3, 3), ((16, 16, 16), 12, 10)],
    ids=["32-units-3-classes", "3-layers-12-classes-10-labels"],
)
def test_hidden_units_and_num_classes_reach_both_engines(hidden, classes, labels):
    data = _with_labels_below(make_tiny_mnist(n_train=120, n_test=40, seed=5), labels)
    evaluations, weights = {}, {}
    for engine in ("keras", "fused"):
        cfg = load_config(
            None,
            [
                f"train.engine={engine}",
                "train.epochs=2",
                f"model.hidden_units={list(hidden)}",
                f"model.num_classes={classes}",
                "grid.bn=[true]",
                "grid.batch_sizes=[32]",
                "grid.seeds=[1]",
            ],
        )
        (group,) = grid.training_groups(grid.grid_cells(cfg, {(("batch_size", 32),): [1]}))
        (result,) = grid.train_cells(cfg, group, data)
        assert result.status == "finished", result.error
        assert np.isfinite(result.history[-1]["loss"])
        # Dense kernel, bias, 4 BN arrays per hidden layer; then the output layer.
        assert len(result.weights) == 6 * len(hidden) + 2
        assert result.weights[-2].shape == (hidden[-1], classes)
        evaluations[engine] = grid.evaluate_cell(cfg, result, data)
        weights[engine] = result.weights
    keras_eval, fused_eval = evaluations["keras"], evaluations["fused"]
    assert keras_eval.confusion.shape == (classes, classes)
    assert 0 <= fused_eval.test_accuracy <= 1
    assert fused_eval.test_accuracy == pytest.approx(keras_eval.test_accuracy, abs=1 / 40 + 1e-9)
    for k, f in zip(weights["keras"], weights["fused"], strict=True):
        np.testing.assert_allclose(f, k, atol=KERAS_ATOL[True])


@pytest.mark.parametrize(("bn", "n_train"), [(True, 1), (False, 5)])
def test_batch_above_the_training_set_is_one_batch_as_in_fit(bn, n_train):
    data = make_tiny_mnist(n_train=n_train, n_test=10, seed=2)
    spec = TrainSpec.of([0], bn=bn, batch_size=16, epochs=2, learning_rate=1e-3)
    (fused,) = train_fused(spec, data)
    (keras,) = train_keras(spec, data)
    assert fused.status == keras.status == "finished"
    for f, k in zip(fused.weights, keras.weights, strict=True):
        np.testing.assert_allclose(f, k, atol=KERAS_ATOL[bn])
    for f, k in zip(fused.history, keras.history, strict=True):
        assert f["loss"] == pytest.approx(k["loss"], rel=1e-4, abs=1e-5)
