"""The optimizers a cell may train with: each one's Keras object (the keras engine) and its
update written out for the fused engine's compiled step, with the same formulas, so a member
trains in a stacked program as ``model.fit`` trains it (tests/test_fused.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from bnpipe.train.common import TrainSpec

Tensors = tuple[tf.Tensor, ...]

# Keras 3 defaults (keras.optimizers.Adam).
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-7
# The classic SGD setting the BN paper's learning-rate claim is about (Keras' default is 0).
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class Optimizer:
    """One optimizer.

    Attributes:
        name: the level of the ``optimizer`` factor.
        slots: state tensors per trainable variable (zeros at the start).
        keras: ``keras(learning_rate)`` -> the Keras optimizer.
        update: ``update(var, slots, grad, lr, step) -> (var, slots)``; ``step`` is the 1-based
            float32 iteration count shared by every member.
    """

    name: str
    slots: int
    keras: Callable[[float], keras.optimizers.Optimizer]
    update: Callable[..., tuple[tf.Tensor, Tensors]]


def _adam(
    var: tf.Tensor, slots: Tensors, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor
) -> tuple[tf.Tensor, Tensors]:
    """One Keras 3 Adam update (epsilon 1e-7, bias correction folded into the step)."""
    m, v = slots
    beta_1_power = tf.pow(tf.constant(ADAM_BETA_1, tf.float32), step)
    beta_2_power = tf.pow(tf.constant(ADAM_BETA_2, tf.float32), step)
    alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    m = m + (grad - m) * (1 - ADAM_BETA_1)
    v = v + (tf.square(grad) - v) * (1 - ADAM_BETA_2)
    return var - (m * alpha) / (tf.sqrt(v) + ADAM_EPSILON), (m, v)


def _sgd(
    var: tf.Tensor, slots: Tensors, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor
) -> tuple[tf.Tensor, Tensors]:
    """One Keras 3 SGD update with momentum (not Nesterov): m = m * momentum - grad * lr, then
    var + m. ``step`` plays no part."""
    (m,) = slots
    m = m * SGD_MOMENTUM - grad * lr
    return var + m, (m,)


ADAM = Optimizer("adam", 2, lambda lr: keras.optimizers.Adam(learning_rate=lr), _adam)
SGD = Optimizer(
    "sgd", 1, lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=SGD_MOMENTUM), _sgd
)
OPTIMIZERS = {o.name: o for o in (ADAM, SGD)}


def optimizer_of(spec: TrainSpec) -> Optimizer:
    """The optimizer every member of ``spec`` trains with (the ``optimizer`` factor, a GROUP
    setting: one per compiled program)."""
    return OPTIMIZERS[spec.shared("optimizer")]
