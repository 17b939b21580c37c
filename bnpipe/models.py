"""The MLP of the reference experiment, with BatchNormalization as a parameter."""

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


def build_model(
    *,
    bn: bool,
    seed: int,
    hidden_units: tuple[int, ...] = (64, 64),
    num_classes: int = 10,
    input_dim: int = INPUT_DIM,
) -> keras.Model:
    """Dense(h, relu) -> [BN] per hidden layer -> Dense(num_classes, softmax).

    BN follows each hidden layer's ReLU, as in the reference notebook. Keras defaults for
    BatchNormalization (momentum 0.99, epsilon 1e-3) are kept on purpose.
    """
    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(
            units,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=layer_seed(seed, i)),
            name=f"dense_{i}",
        )(x)
        if bn:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(
            seed=layer_seed(seed, len(hidden_units))
        ),
        name="output",
    )(x)
    name = f"mlp_{'bn' if bn else 'nobn'}_seed{seed}"
    return keras.Model(inputs, outputs, name=name)
