"""The model builder: BN position, init scale, and the reference model unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bnpipe.models import build_model, kernel_initializer, layer_seed


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
