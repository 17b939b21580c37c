"""Fused engine: the members of one group (same architecture and batch size) train together as
stacked models.

The seeds are cut into shards of a fixed width K (``train.shard_size``). In a shard every weight
gets a leading model axis K, so one batched matmul does the work of K small ones and one
XLA-compiled epoch loop replaces K * steps Python-driven ``fit`` steps; shards run side by side
on threads, one per core. Each member still trains exactly as the keras engine would train it
alone:

- initial weights come from :func:`bnpipe.models.build_model` for that member's seed and init
  scale;
- member k's batch at step s is ``x[training_order(seed_k, epoch, n)][s*B:(s+1)*B]`` (the
  rows are gathered on device per step, so the data is never copied K times; with
  ``data.bootstrap_train`` each member's rows come from its own seed's resample);
- the last partial batch is a step of its own, as in ``fit``;
- BN sits after each hidden ReLU or (``before_relu``) between the Dense and its ReLU; it uses
  per-member batch moments in training and per-member moving averages (momentum 0.99,
  epsilon 1e-3) in validation, with the same formulas as ``keras.layers.BatchNormalization``;
- the loss is Keras' sparse categorical cross-entropy of a softmax output. Keras reads the
  logits cached on its softmax output, so it never clips probabilities here; neither do we;
- the optimizer is Keras 3's update written out (``bnpipe.train.optimizers``);
- epoch loss/accuracy are Keras' ``Mean`` trackers: batch loss weighted by batch size.

The members only share the step counter and the batch schedule, which are identical anyway,
so fusion changes speed, not results (tests/test_fused.py checks this against the keras engine).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bnpipe.models import build_model
from bnpipe.train.common import (
    Cell,
    TrainData,
    TrainResult,
    TrainSpec,
    training_order,
    usable_cores,
)
from bnpipe.train.optimizers import OPTIMIZERS, optimizer_of
from bnpipe.xla_cache import stable_names, tune_xla

EpochCallback = Callable[[Cell, int, dict[str, float]], None]
Tensors = tuple[tf.Tensor, ...]
# The weights (get_weights order), then the optimizer's slots (one tuple per slot kind, each one
# tensor per trainable weight), all with leading axis K.
State = tuple[Tensors, ...]

# Keras 3 defaults (keras.layers.BatchNormalization).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Layout:
    """Where each variable sits in the flat ``model.get_weights()`` list of one member."""

    bn: bool  # BN variables present (every member has them in a mixed shard)
    n_layers: int  # hidden layers + output layer
    # Where BN sits (same variables either way): after each hidden ReLU, or before it.
    bn_position: str = "after_relu"
    # Members with and without BN in one program: a per-member mask picks each one's path.
    mixed: bool = False
    # The update rule (bnpipe.train.optimizers), which also decides the optimizer's slots.
    optimizer: str = "adam"

    @property
    def per_hidden(self) -> int:
        # Dense kernel, bias [, BN gamma, beta, moving_mean, moving_variance]
        return 6 if self.bn else 2

    @property
    def n_weights(self) -> int:
        return (self.n_layers - 1) * self.per_hidden + 2

    def trainable(self) -> tuple[int, ...]:
        """Indices of trainable weights, in ``model.trainable_weights`` order."""
        idx: list[int] = []
        for layer in range(self.n_layers - 1):
            base = layer * self.per_hidden
            idx += [base, base + 1] + ([base + 2, base + 3] if self.bn else [])
        base = (self.n_layers - 1) * self.per_hidden
        return (*idx, base, base + 1)


def forward(
    layout: Layout,
    weights: Sequence[tf.Tensor],
    x: tf.Tensor,
    *,
    training: bool,
    bn_mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, dict[int, tf.Tensor]]:
    """Logits [K, B, classes] of every member, and (training only) updated BN moving stats.

    Args:
        layout: the model's variable layout.
        weights: stacked weights (leading axis K) in ``get_weights`` order.
        x: [K, B, features] (each member its own batch) or [B, features] (shared batch).
        training: batch moments (and moving-average updates) instead of moving averages.
        bn_mask: [K] bool, which members use BN (a mixed layout only).

    Returns:
        (logits, {weight index: new moving mean/variance}); the dict is empty unless training.
    """
    updates: dict[int, tf.Tensor] = {}
    h = x
    for layer in range(layout.n_layers - 1):
        base = layer * layout.per_hidden
        h = _dense(h, weights[base], weights[base + 1])
        before = layout.bn and layout.bn_position == "before_relu"
        if not before:
            h = tf.nn.relu(h)
        if layout.bn:
            z = h
            if layout.mixed:
                # A member without BN keeps z through a select (exact, so it trains bit for bit
                # as in a program without BN); its BN branch sees zeros, so that branch and its
                # gradient stay finite whatever z holds.
                keep = bn_mask[:, None, None]
                h = tf.where(keep, z, tf.zeros_like(z))
            gamma, beta = weights[base + 2], weights[base + 3]
            moving_mean, moving_var = weights[base + 4], weights[base + 5]
            if training:
                # tf.nn.moments is what Keras' TF backend uses: biased variance, gradient
                # through both moments.
                mean, var = tf.nn.moments(h, axes=[1], keepdims=True)
                mean2, var2 = mean[:, 0, :], var[:, 0, :]
                updates[base + 4] = moving_mean * BN_MOMENTUM + mean2 * (1.0 - BN_MOMENTUM)
                updates[base + 5] = moving_var * BN_MOMENTUM + var2 * (1.0 - BN_MOMENTUM)
            else:
                mean, var = moving_mean[:, None, :], moving_var[:, None, :]
            h = tf.nn.batch_normalization(
                h, mean, var, beta[:, None, :], gamma[:, None, :], BN_EPSILON
            )
            if layout.mixed:
                h = tf.where(keep, h, z)
        if before:
            h = tf.nn.relu(h)
    base = (layout.n_layers - 1) * layout.per_hidden
    return _dense(h, weights[base], weights[base + 1]), updates


def _dense(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """Per-member ``h @ kernel + bias``; a shared [B, F] input is read once for all members."""
    equation = "kbi,kio->kbo" if h.shape.rank == 3 else "bi,kio->kbo"
    return tf.einsum(equation, h, kernel) + bias[:, None, :]


def _loss_and_correct(logits: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-member batch loss (sum / batch size, as Keras reduces) and number of correct [K]."""
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    batch = tf.cast(tf.shape(y)[1], tf.float32)
    loss = tf.reduce_sum(per_example, axis=1) / batch
    # Keras' accuracy takes the argmax of the softmax probabilities (ties resolve the same way).
    pred = tf.argmax(tf.nn.softmax(logits), axis=-1, output_type=y.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32), axis=1)
    return loss, correct


def train_step(
    layout: Layout,
    state: State,
    x: tf.Tensor,
    y: tf.Tensor,
    lr: tf.Tensor,
    step: tf.Tensor,
    bn_mask: tf.Tensor | None = None,
) -> tuple[State, tf.Tensor, tf.Tensor]:
    """One optimizer step of every member on its own batch.

    Args:
        layout: variable layout and update rule.
        state: (weights in get_weights order, *the optimizer's slots), all with leading axis K.
        x: [K, B, features] batches.
        y: [K, B] int labels.
        lr: learning rate.
        step: 1-based iteration number (float32), shared by all members.
        bn_mask: [K] bool, which members use BN (a mixed layout only). A member without BN gets
            zero gradients for its unused BN variables, so the optimizer leaves them as they are
            (Adam and SGD with momentum: zero moments, zero step).

    Returns:
        (new state, batch loss [K], number correct [K]).
    """
    weights, *slots = state
    trainable = layout.trainable()
    with tf.GradientTape() as tape:
        params = [weights[i] for i in trainable]
        tape.watch(params)
        # Rebuild the weight list with the watched tensors so the tape sees them.
        watched = list(weights)
        for i, p in zip(trainable, params, strict=True):
            watched[i] = p
        logits, updates = forward(layout, watched, x, training=True, bn_mask=bn_mask)
        loss, correct = _loss_and_correct(logits, y)
        # Members share no parameters, so the gradient of the sum is each member's own gradient.
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, params)
    optimizer = OPTIMIZERS[layout.optimizer]
    new_weights = list(weights)
    new_slots = [list(kind) for kind in slots]
    for j, (i, g) in enumerate(zip(trainable, grads, strict=True)):
        own = tuple(kind[j] for kind in slots)
        new_weights[i], own = optimizer.update(weights[i], own, g, lr, step)
        for kind, value in zip(new_slots, own, strict=True):
            kind[j] = value
    for i, value in updates.items():
        new_weights[i] = value
    return (tuple(new_weights), *(tuple(kind) for kind in new_slots)), loss, correct


def _run_epoch(
    layout: Layout,
    batch_size: int,
    state: State,
    x: tf.Tensor,
    y: tf.Tensor,
    perms: tf.Tensor,
    lr: tf.Tensor,
    iterations: tf.Tensor,
    bn_mask: tf.Tensor | None = None,
) -> tuple[State, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One epoch of every member: full steps in a while loop, then the partial batch.

    ``perms`` [K, n] holds each member's epoch order (``bn_mask`` [K]: who uses BN, a mixed
    layout only); returns (state, iterations, epoch loss [K], epoch accuracy [K]) with loss and
    accuracy as Keras' metric trackers report them.
    """
    k, n = perms.shape[0], perms.shape[1]
    # A batch above the training set is one batch of all examples, as in Keras fit.
    batch_size = min(batch_size, n)
    full_steps, rest = divmod(n, batch_size)
    zeros = tf.zeros([k], tf.float32)

    def one_step(carry, start, size):
        st, it, loss_sum, correct_sum = carry
        idx = tf.slice(perms, [0, start], [k, size])
        step = tf.cast(it + 1, tf.float32)
        batch_x, batch_y = tf.gather(x, idx), tf.gather(y, idx)
        st, loss, correct = train_step(layout, st, batch_x, batch_y, lr, step, bn_mask)
        # Keras' loss tracker: total += batch mean loss * batch size.
        return st, it + 1, loss_sum + loss * float(size), correct_sum + correct

    def body(s, st, it, loss_sum, correct_sum):
        return (s + 1, *one_step((st, it, loss_sum, correct_sum), s * batch_size, batch_size))

    _, state, iterations, loss_sum, correct_sum = tf.while_loop(
        lambda s, *_: s < full_steps,
        body,
        (tf.constant(0), state, iterations, zeros, zeros),
    )
    if rest:
        # fit's last partial batch: a step of its own with a smaller batch.
        state, iterations, loss_sum, correct_sum = one_step(
            (state, iterations, loss_sum, correct_sum), full_steps * batch_size, rest
        )
    return state, iterations, loss_sum / float(n), correct_sum / float(n)


def _evaluate(
    layout: Layout, weights: Tensors, x: tf.Tensor, y: tf.Tensor, bn_mask: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Inference-mode loss [K] and accuracy [K] of every member on one shared (x, y)."""
    logits, _ = forward(layout, weights, x, training=False, bn_mask=bn_mask)
    k = weights[0].shape[0]
    loss, correct = _loss_and_correct(logits, tf.broadcast_to(y, [k, y.shape[0]]))
    return loss, correct / float(y.shape[0])


def _epoch_and_validate(
    layout: Layout,
    batch_size: int,
    state: State,
    x: tf.Tensor,
    y: tf.Tensor,
    perms: tf.Tensor,
    lr: tf.Tensor,
    iterations: tf.Tensor,
    x_val: tf.Tensor,
    y_val: tf.Tensor,
    bn_mask: tf.Tensor | None = None,
) -> tuple:
    """One epoch (:func:`_run_epoch`) then validation (:func:`_evaluate`), as one program:
    (state, iterations, loss [K], accuracy [K], val_loss [K], val_accuracy [K])."""
    state, iterations, loss, acc = _run_epoch(
        layout, batch_size, state, x, y, perms, lr, iterations, bn_mask
    )
    val_loss, val_acc = _evaluate(layout, state[0], x_val, y_val, bn_mask)
    return state, iterations, loss, acc, val_loss, val_acc


@functools.lru_cache(maxsize=32)
def _compiled(layout: Layout, batch_size: int) -> Callable:
    """The XLA-compiled epoch-and-validation function for one layout and batch size.

    One program, not an epoch program and an evaluation program: each program costs a trace and
    a compile before its first step. Cached so every chunk and call with the same shapes reuses
    one trace and compile. Wrapping partials (not closures) gives each (layout, batch size) its
    own retracing statistics, so tf.function does not warn about "frequent retracing" when a
    grid moves between groups.
    """
    fn = functools.partial(_epoch_and_validate, layout, batch_size)
    # No AutoGraph: the loops are tf.while_loop already and every Python `if` is on a static
    # setting, so its source rewriting (about 2/3 of the trace time) would change nothing.
    program = tf.function(fn, jit_compile=True, autograph=False)
    # Stable function names let the persistent XLA cache find the program in any process.
    return stable_names(program, "epoch", layout, batch_size)


def stack_initial_weights(
    bn: bool,
    seeds: Sequence[int],
    hidden_units: tuple[int, ...],
    num_classes: int = 10,
    *,
    bn_position: str = "after_relu",
    init_scales: Sequence[float] | None = None,
    bns: Sequence[bool] | None = None,
) -> list[np.ndarray]:
    """Initial weights of each seed's Keras model (with its init scale), stacked on a leading
    model axis.

    ``bn``: the stack has BN variables; ``bns``: which members are models with BN (default:
    all as ``bn``). A member without BN in a stack with BN variables gets BN's initial values
    (gamma 1, beta 0, moving mean 0, moving variance 1) that it never uses.
    """
    scales = list(init_scales) if init_scales is not None else [1.0] * len(seeds)
    with_bn = list(bns) if bns is not None else [bn] * len(seeds)
    per_seed = [
        _with_bn_slots(
            build_model(
                bn=member_bn,
                seed=seed,
                hidden_units=hidden_units,
                num_classes=num_classes,
                bn_position=bn_position,
                init_scale=scale,
            ).get_weights(),
            bn and not member_bn,
        )
        for seed, scale, member_bn in zip(seeds, scales, with_bn, strict=True)
    ]
    return [np.stack(ws).astype(np.float32) for ws in zip(*per_seed, strict=True)]


def _with_bn_slots(weights: list[np.ndarray], add: bool) -> list[np.ndarray]:
    """A no-BN model's weights with BN's initial variables after each hidden Dense (if ``add``)."""
    if not add:
        return weights
    out: list[np.ndarray] = []
    hidden = len(weights) // 2 - 1
    for layer in range(hidden):
        kernel, bias = weights[2 * layer], weights[2 * layer + 1]
        ones, zeros = np.ones_like(bias), np.zeros_like(bias)
        out += [kernel, bias, ones, zeros, zeros, ones]
    return out + weights[-2:]


def shard_seeds(seeds: Sequence[int], shard_size: int) -> list[list[int]]:
    """Consecutive shards of at most ``shard_size`` seeds, in order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    seeds = list(seeds)
    return [seeds[i : i + shard_size] for i in range(0, len(seeds), shard_size)]


def default_parallel_shards(n_shards: int) -> int:
    """One shard program per CPU core this process may use, and no more than there are shards."""
    return max(1, min(usable_cores(), n_shards))


def train_fused(
    spec: TrainSpec, data: TrainData, on_epoch: EpochCallback | None = None
) -> list[TrainResult]:
    """Train one model per member of ``spec`` as stacked models.

    Members that share a learning rate are cut into shards of ``spec.shard_size``; each shard is
    one stacked model of exactly ``shard_size`` members (a short shard is padded with copies of
    its first member, whose results are dropped). Members with different learning rates never
    share a shard (the rate is one scalar of the shard's program); init scales only decide
    initial weights, so they mix freely, and so do members with and without BN (a shard of both
    kinds is one masked program, see :func:`shard_layout`). XLA compiles a program for its
    shapes, and the member count is one of them: on this CPU a member's last bits differed
    between K = 1, 2 and 10 at batch 128. With every shard the same width, a member's weights
    depend on its own settings only, never on which other members share the group, so a resumed
    group or ``bnpipe reproduce`` trains a cell bit for bit as the full grid did. Shards run
    ``parallel_shards`` at a time on threads, in step epoch by epoch: XLA keeps about 1.7 of 2
    cores busy with one small-matmul program, two keep both busy.

    Args:
        spec: the members (cells, seeds, learning rates, init scales), the shared architecture,
            batch size (a final partial batch is a step of its own) and epochs, and the engine
            settings (``shard_size``: decides the last bits; ``parallel_shards``: speed only,
            None: one per CPU core).
        data: x_train [n, features] float32, y_train [n] int labels, and the validation arrays
            x_test / y_test, evaluated (inference-mode BN) after every epoch.
        on_epoch: called as ``on_epoch(cell, epoch, row)`` (1-based epoch) per member per epoch,
            on the calling thread.

    Returns:
        One TrainResult per member, in member order (engine "fused"). ``epoch_time_s`` and
        ``train_time_s`` are the wall time of the shards trained together divided by their real
        members (the amortized cost of one model). A member whose epoch loss is non-finite is
        "diverged" with its history and weights up to that epoch; the others carry on.
    """
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_test, data.y_test
    if len(x_train) < 1 or len(x_val) < 1:
        raise ValueError("train_fused needs at least one training and one validation example")
    by_rate: dict[float, list[int]] = {}
    bns = spec.all("bn")
    # Members without BN first: a group of both kinds is cut into as many plain shards as it
    # can fill (a mixed program costs the members without BN the BN arithmetic they discard).
    for i in sorted(range(len(spec.cells)), key=lambda i: bns[i]):
        by_rate.setdefault(spec.level("learning_rate", i), []).append(i)
    shards = [
        chunk for members in by_rate.values() for chunk in shard_seeds(members, spec.shard_size)
    ]
    parallel_shards = spec.parallel_shards
    if parallel_shards is None:
        parallel_shards = default_parallel_shards(len(shards))
    if parallel_shards < 1:
        raise ValueError(f"parallel_shards must be >= 1, got {parallel_shards}")
    # XLA on CPU is deterministic; this also pins any op that falls back to TF kernels.
    tf.config.experimental.enable_op_determinism()
    tune_xla()
    tensors = (
        tf.constant(np.asarray(x_train, np.float32)),
        tf.constant(np.asarray(y_train, np.int32)),
        tf.constant(np.asarray(x_val, np.float32)),
        tf.constant(np.asarray(y_val, np.int32)),
    )
    results: dict[int, TrainResult] = {}
    with ThreadPoolExecutor(max_workers=parallel_shards, thread_name_prefix="fused") as pool:
        for wave_start in range(0, len(shards), parallel_shards):
            wave = [_Shard(spec, s) for s in shards[wave_start : wave_start + parallel_shards]]
            trained = _train_wave(wave, pool, tensors, spec.epochs, on_epoch)
            members = [i for shard in wave for i in shard.indices]
            results.update(zip(members, trained, strict=True))
    return [results[i] for i in range(len(spec.cells))]


def _train_wave(
    wave: list[_Shard],
    pool: ThreadPoolExecutor,
    data: tuple[tf.Tensor, ...],
    epochs: int,
    on_epoch: EpochCallback | None,
) -> list[TrainResult]:
    """Train shards side by side, one epoch at a time; callbacks run on this thread."""
    members = sum(len(shard.seeds) for shard in wave)
    start = time.perf_counter()
    for epoch in range(epochs):
        live = [shard for shard in wave if not shard.done]
        if not live:
            break
        t0 = time.perf_counter()
        # list() re-raises the first exception of any shard here.
        rows = list(pool.map(_Shard.run_epoch, live, [epoch] * len(live), [data] * len(live)))
        epoch_time = (time.perf_counter() - t0) / members
        for shard, shard_rows in zip(live, rows, strict=True):
            shard.record(shard_rows, epoch_time, (time.perf_counter() - start) / members, on_epoch)
    total = (time.perf_counter() - start) / members
    return [result for shard in wave for result in shard.results(total)]


class _Shard:
    """One stacked model of ``shard_size`` members: some of a spec's members (one learning
    rate), padded with copies of the first."""

    def __init__(self, spec: TrainSpec, indices: list[int]) -> None:
        self.indices = indices  # the spec's members trained here
        padded = indices + [indices[0]] * (spec.shard_size - len(indices))
        self.seeds = [spec.seeds[i] for i in indices]
        self.members = [spec.seeds[i] for i in padded]
        self.cells = [spec.cells[i] for i in indices]
        self.bootstrap = spec.bootstrap_train
        bns = [spec.level("bn", i) for i in padded]
        layout = shard_layout(spec, bns)
        self.layout, self.bns = layout, bns[: len(indices)]
        self.run_epoch_fn = _compiled(layout, spec.batch_size)
        # The mask is an input of mixed programs only: pure ones keep their signature.
        self.extra = (tf.constant(bns),) if layout.mixed else ()
        arch = spec.architecture
        # Keras builds the initial weights; it runs here, on the calling thread.
        stacked = stack_initial_weights(
            layout.bn,
            self.members,
            arch.hidden_units,
            arch.num_classes,
            bn_position=arch.bn_position,
            init_scales=[spec.level("init_scale", i) for i in padded],
            bns=bns,
        )
        if len(stacked) != layout.n_weights:
            raise ValueError(
                f"expected {layout.n_weights} weight arrays, build_model gave {len(stacked)}"
            )
        weights = tuple(tf.constant(w) for w in stacked)
        zeros = tuple(tf.zeros_like(weights[i]) for i in layout.trainable())
        self.state = (weights, *(zeros,) * OPTIMIZERS[layout.optimizer].slots)
        self.iterations = tf.constant(0, tf.int64)
        self.lr = tf.constant(spec.level("learning_rate", indices[0]), tf.float32)
        self.histories: list[list[dict[str, float]]] = [[] for _ in indices]
        self.final: list[list[np.ndarray] | None] = [None] * len(indices)
        self.end_time = [0.0] * len(indices)

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.final)

    def run_epoch(self, epoch: int, data: tuple[tf.Tensor, ...]) -> np.ndarray:
        """Train one epoch and validate; returns [real members, METRIC_KEYS] (worker thread)."""
        x_train, y_train, x_val, y_val = data
        n = int(x_train.shape[0])
        # Each member's own rows: with data.bootstrap_train, its seed's resample.
        perms = np.stack([training_order(s, epoch, n, self.bootstrap) for s in self.members])
        self.state, self.iterations, *metrics = self.run_epoch_fn(
            self.state,
            x_train,
            y_train,
            tf.constant(perms, tf.int32),
            self.lr,
            self.iterations,
            x_val,
            y_val,
            *self.extra,
        )
        loss, acc, val_loss, val_acc = metrics
        rows = np.stack([t.numpy() for t in (loss, acc, val_loss, val_acc)], axis=1)
        return rows[: len(self.seeds)]

    def record(
        self, rows: np.ndarray, epoch_time: float, elapsed: float, on_epoch: EpochCallback | None
    ) -> None:
        """Append the epoch to each live member's history; stop members whose loss diverged."""
        for i, cell in enumerate(self.cells):
            if self.final[i] is not None:
                continue
            row = {key: float(v) for key, v in zip(METRIC_KEYS, rows[i], strict=True)}
            row["epoch_time_s"] = epoch_time
            self.histories[i].append(row)
            if on_epoch is not None:
                on_epoch(cell, len(self.histories[i]), row)
            # Same rule as the keras engine: a non-finite loss never recovers.
            if not math.isfinite(row["loss"]):
                self.final[i] = self.member_weights(i)
                self.end_time[i] = elapsed

    def results(self, total_time: float) -> list[TrainResult]:
        out = []
        for i, cell in enumerate(self.cells):
            diverged = self.final[i] is not None
            out.append(
                TrainResult(
                    cell=cell,
                    weights=self.final[i] if diverged else self.member_weights(i),
                    history=self.histories[i],
                    status="diverged" if diverged else "finished",
                    error="non-finite training loss" if diverged else None,
                    train_time_s=self.end_time[i] if diverged else total_time,
                    engine="fused",
                )
            )
        return out

    def member_weights(self, i: int) -> list[np.ndarray]:
        """Member i's weights in its model's ``get_weights()`` order (ready for ``set_weights``);
        a member without BN in a mixed shard leaves out the BN slots it never used."""
        weights = [np.array(w[i].numpy()) for w in self.state[0]]
        if not self.layout.bn or self.bns[i]:
            return weights
        per = self.layout.per_hidden
        layers = range(self.layout.n_layers - 1)
        hidden = [w for layer in layers for w in weights[layer * per : layer * per + 2]]
        return hidden + weights[-2:]


def shard_layout(spec: TrainSpec, bns: Sequence[bool]) -> Layout:
    """The program layout of a shard whose (padded) members use BN as ``bns`` says.

    A shard whose members all agree gets the plain program, with or without BN; one that mixes
    them gets the masked program, in which each member trains bit for bit as in its plain one
    (tests/test_fused.py): a group's cells need one program instead of two.
    """
    arch = spec.architecture
    bn, mixed = any(bns), len(set(bns)) > 1
    # Without BN its position is moot: one program for both spellings.
    position = arch.bn_position if bn else "after_relu"
    return Layout(
        bn=bn,
        n_layers=len(arch.hidden_units) + 1,
        bn_position=position,
        mixed=mixed,
        optimizer=optimizer_of(spec).name,
    )
