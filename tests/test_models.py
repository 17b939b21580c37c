"""The model builder: BN position, init scale, and the reference model unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe.models import build_model, kernel_initializer, layer_seed
from bnpipe.tfkeras import keras
from tests.conftest import bs_cell


@pytest.mark.parametrize("seed", [0, 3, 41])
def test_init_scale_one_is_glorot_uniform_bit_for_bit(seed):
    # So the reference cells (init_scale 1) keep their exact initial weights.
    for shape in ((784, 64), (64, 10)):
        ours = np.asarray(kernel_initializer(seed)(shape))
        glorot = np.asarray(keras.initializers.GlorotUniform(seed=seed)(shape))
        assert np.array_equal(ours, glorot)


def test_init_scale_multiplies_the_glorot_limit():
    limit = np.sqrt(6 / (784 + 64))
    for scale in (0.5, 2.0):
        w = np.asarray(kernel_initializer(layer_seed(1, 0), scale)((784, 64)))
        assert np.abs(w).max() <= scale * limit + 1e-7
        assert np.abs(w).max() > 0.95 * scale * limit
    model = build_model(bn=True, seed=1, init_scale=2.0)
    ref = build_model(bn=True, seed=1)
    assert not np.array_equal(model.get_weights()[0], ref.get_weights()[0])


def test_bn_position_orders_the_layers_and_keeps_the_weights_layout():
    after = build_model(bn=True, seed=0)
    before = build_model(bn=True, seed=0, bn_position="before_relu")
    kinds = [type(layer).__name__ for layer in before.layers]
    assert kinds == ["InputLayer", "Dense", "BatchNormalization", "ReLU"] * 1 + [
        "Dense",
        "BatchNormalization",
        "ReLU",
        "Dense",
    ]
    assert before.get_layer("dense_0").activation.__name__ == "linear"
    assert after.get_layer("dense_0").activation.__name__ == "relu"
    # Same variables in the same order, same initial values: the fused engine's layout holds.
    assert all(
        np.array_equal(a, b) for a, b in zip(after.get_weights(), before.get_weights(), strict=True)
    )
    with pytest.raises(ValueError, match="bn_position"):
        build_model(seed=0, bn_position="inside")


def test_cells_evaluated_one_after_another_each_get_their_own_models_bits() -> None:
    """evaluate_weights keeps one model per architecture and gives it each cell's weights: every
    evaluation equals that of a model built for the cell alone, bit for bit, in any order."""
    from bnpipe.evaluate import evaluate_weights, metrics_from_probs
    from bnpipe.train.common import Architecture

    rng = np.random.default_rng(0)
    x = rng.random((300, 784), dtype=np.float32)
    y = rng.integers(0, 10, 300).astype(np.int32)
    for bn in (True, False):
        arch = Architecture(bn=bn, hidden_units=(16, 8))
        cells = [bs_cell(bn, 32, seed) for seed in (1, 2)]
        weights = [build_model(seed=c.seed, **arch.model_kwargs()).get_weights() for c in cells]
        if bn:  # moving statistics of their own, so that inference-mode BN differs too
            weights = [[w + 0.1 * s for w in ws] for s, ws in enumerate(weights, 1)]

        def alone(w: list[np.ndarray], arch: Architecture = arch) -> object:
            model = build_model(seed=7, **arch.model_kwargs())
            model.set_weights(w)
            return metrics_from_probs(np.asarray(model(x, training=False), np.float64), y)

        for i in (0, 1, 0):
            got, want = evaluate_weights(cells[i], weights[i], x, y, arch), alone(weights[i])
            assert got.test_loss == want.test_loss
            assert np.array_equal(got.correct, want.correct)
            assert np.array_equal(got.confusion, want.confusion)
        # The two cells' weights differ, so a model left with the other's would have failed.
        assert alone(weights[0]).test_loss != alone(weights[1]).test_loss
