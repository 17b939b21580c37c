"""The MLP of the reference experiment, with BatchNormalization (and where it sits) as a
parameter."""

from __future__ import annotations

import keras

INPUT_DIM = 784


def layer_seed(seed: int, layer: int) -> int:
    """Seed for the initializer of hidden/output Dense layer ``layer`` of model ``seed``.

    Explicit per-layer seeds (instead of Keras' global seed generator) make the Dense init a
    pure function of (seed, layer): the BN and no-BN models of one seed start from identical
    Dense weights (common random numbers), and the fused engine can rebuild them exactly.
    """
    return seed * 1000 + layer


def kernel_initializer(seed: int, init_scale: float = 1.0) -> keras.initializers.Initializer:
    """Glorot-uniform with its limit times ``init_scale``: VarianceScaling(scale=s**2, fan_avg,
    uniform), whose limit is s * sqrt(6 / (fan_in + fan_out)).

    At s = 1 it draws exactly Keras' GlorotUniform (bit for bit: tests/test_models.py), so the
    reference cells keep their weights.
    """
    return keras.initializers.VarianceScaling(
        scale=init_scale**2, mode="fan_avg", distribution="uniform", seed=seed
    )


def build_model(
    *,
    bn: bool = False,
    seed: int,
    hidden_units: tuple[int, ...] = (64, 64),
    num_classes: int = 10,
    input_dim: int = INPUT_DIM,
    bn_position: str = "after_relu",
    init_scale: float = 1.0,
) -> keras.Model:
    """Dense(h) -> ReLU and BN per hidden layer -> Dense(num_classes, softmax).

    ``bn_position`` "after_relu": Dense(h, relu) -> BN, as in the reference notebook;
    "before_relu": Dense(h, linear) -> BN -> ReLU, as in the BN paper. Keras defaults for
    BatchNormalization (momentum 0.99, epsilon 1e-3) are kept on purpose. ``init_scale``
    multiplies the Glorot-uniform limit of every Dense kernel.
    """
    if bn_position not in ("after_relu", "before_relu"):
        raise ValueError(f"bn_position must be after_relu or before_relu, got {bn_position!r}")
    before = bn and bn_position == "before_relu"
    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(
            units,
            activation=None if before else "relu",
            kernel_initializer=kernel_initializer(layer_seed(seed, i), init_scale),
            name=f"dense_{i}",
        )(x)
        if bn:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        if before:
            x = keras.layers.ReLU(name=f"relu_{i}")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=kernel_initializer(layer_seed(seed, len(hidden_units)), init_scale),
        name="output",
    )(x)
    name = f"mlp_{'bn' if bn else 'nobn'}_seed{seed}"
    return keras.Model(inputs, outputs, name=name)
