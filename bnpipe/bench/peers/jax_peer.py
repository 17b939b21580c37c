"""The recipe written the way a JAX expert would: vmap over seeds, lax.scan over steps.

Same as the fused engine in everything but the framework: initial weights (Keras' Glorot
uniform per seed, via :func:`bnpipe.train.fused.stack_initial_weights`), data order
(:func:`epoch_permutation`), Adam 1e-3 with Keras' constants, BN after ReLU with Keras'
momentum and epsilon, the last partial batch as a step of its own, shards of ``shard_size``
seeds trained side by side on threads. Only ``bnpipe bench --peers jax`` imports it; JAX comes
from the optional ``jax`` dependency group (``make bench-peers``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bnpipe.train.common import epoch_permutation

ADAM = (0.9, 0.999, 1e-7)
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3


def _programs(bn: bool, n_hidden: int, learning_rate: float) -> tuple[Any, Any]:
    """Jitted (epoch over [K, steps, B] index blocks, evaluation) for stacked members."""
    import jax
    import jax.numpy as jnp

    def forward(params, stats, x, training):
        h, new_stats = x, []
        for layer in range(n_hidden):
            w, b = params[f"w{layer}"], params[f"b{layer}"]
            h = jax.nn.relu(h @ w + b)
            if bn:
                mean_m, var_m = stats[layer]
                if training:
                    mean, var = h.mean(0), h.var(0)
                    new_stats.append(
                        (
                            mean_m * BN_MOMENTUM + mean * (1 - BN_MOMENTUM),
                            var_m * BN_MOMENTUM + var * (1 - BN_MOMENTUM),
                        )
                    )
                else:
                    mean, var = mean_m, var_m
                h = (h - mean) * jax.lax.rsqrt(var + BN_EPSILON) * params[f"gamma{layer}"] + params[
                    f"beta{layer}"
                ]
        logits = h @ params["w_out"] + params["b_out"]
        return logits, new_stats if training else stats

    def loss_fn(params, stats, x, y):
        logits, new_stats = forward(params, stats, x, True)
        logp = jax.nn.log_softmax(logits)
        loss = -jnp.take_along_axis(logp, y[:, None], 1).mean()
        return loss, (new_stats, (logits.argmax(-1) == y).sum())

    def step(carry, idx, x_all, y_all):
        params, stats, m, v, t = carry
        (loss, (stats, correct)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, x_all[idx], y_all[idx]
        )
        t = t + 1
        b1, b2, eps = ADAM
        alpha = learning_rate * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        m = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), m, g)
        v = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), v, g)
        params = jax.tree.map(lambda p, m, v: p - m * alpha / (jnp.sqrt(v) + eps), params, m, v)
        return (params, stats, m, v, t), (loss * idx.shape[0], correct)

    def member_epoch(carry, blocks, rest, x_all, y_all):
        carry, (losses, correct) = jax.lax.scan(
            lambda c, i: step(c, i, x_all, y_all), carry, blocks
        )
        loss_sum, correct_sum = losses.sum(), correct.sum()
        if rest is not None:
            carry, (loss, c) = step(carry, rest, x_all, y_all)
            loss_sum, correct_sum = loss_sum + loss, correct_sum + c
        return carry, loss_sum, correct_sum

    epoch = jax.jit(jax.vmap(member_epoch, in_axes=(0, 0, 0, None, None)))

    def member_eval(params, stats, x, y):
        logits, _ = forward(params, stats, x, False)
        return (logits.argmax(-1) == y).mean()

    evaluate = jax.jit(jax.vmap(member_eval, in_axes=(0, 0, None, None)))
    return epoch, evaluate


def _initial(bn: bool, seeds: list[int], hidden: tuple[int, ...]) -> tuple[dict, list]:
    """Keras' initial weights of each seed, stacked, as JAX params and BN moving stats."""
    from bnpipe.train.fused import stack_initial_weights

    w = stack_initial_weights(bn, seeds, hidden)
    per = 6 if bn else 2
    params, stats = {}, []
    for layer in range(len(hidden)):
        base = layer * per
        params[f"w{layer}"], params[f"b{layer}"] = w[base], w[base + 1]
        if bn:
            params[f"gamma{layer}"], params[f"beta{layer}"] = w[base + 2], w[base + 3]
            stats.append((w[base + 4], w[base + 5]))
    params["w_out"], params["b_out"] = w[-2], w[-1]
    return params, stats


def time_group(
    data: Any,
    bn: bool,
    batch_size: int,
    seeds: int,
    epochs: int,
    *,
    shard_size: int = 5,
    hidden: tuple[int, ...] = (64, 64),
    learning_rate: float = 1e-3,
) -> dict:
    """Train ``seeds`` models as shards side by side; wall seconds per epoch and val accuracy."""
    import jax
    import jax.numpy as jnp

    epoch_fn, eval_fn = _programs(bn, len(hidden), learning_rate)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train, jnp.int32)
    xv, yv = jnp.asarray(data.x_test), jnp.asarray(data.y_test, jnp.int32)
    n = len(data.x_train)
    full, rest = divmod(n, batch_size)
    shards = [list(range(s, min(s + shard_size, seeds))) for s in range(0, seeds, shard_size)]
    states = []
    for shard in shards:
        params, stats = _initial(bn, shard, hidden)
        zeros = jax.tree.map(np.zeros_like, params)
        states.append((params, stats, zeros, zeros, jnp.zeros(len(shard), jnp.float32)))

    def run(i: int, epoch: int) -> np.ndarray:
        perms = np.stack([epoch_permutation(s, epoch, n) for s in shards[i]]).astype(np.int32)
        blocks = perms[:, : full * batch_size].reshape(len(shards[i]), full, batch_size)
        tail = perms[:, full * batch_size :] if rest else None
        carry, _, _ = epoch_fn(states[i], blocks, tail, x, y)
        states[i] = carry
        return np.asarray(eval_fn(carry[0], carry[1], xv, yv))

    walls, accuracy = [], []
    with ThreadPoolExecutor(max_workers=len(shards)) as pool:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            accuracy = np.concatenate(
                list(pool.map(run, range(len(shards)), [epoch] * len(shards)))
            )
            walls.append(time.perf_counter() - t0)
    steady = float(np.mean(walls[1:])) if len(walls) > 1 else float("nan")
    return {
        "steady_s_per_model_epoch": steady / seeds,
        "compile_s": walls[0] - steady,
        "val_accuracy": float(np.mean(accuracy)),
        "epoch_walls_s": walls,
    }
