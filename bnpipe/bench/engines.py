"""The engines timed side by side: the reference recipe, the keras engine, the fused engine.

All three train the same cells on the same data in one process, so their ratios are fair even
on a busy machine. A float32 matmul probe measures what this CPU attains, which turns the FLOPs
of one model-epoch into a floor that no engine can beat by much.

TensorFlow is imported inside functions: ``bnpipe --help`` must not pay for it.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnpipe.data import MnistData

DEFAULT_BATCH_SIZES = (16, 32, 64, 128)
ENGINE_KEYS = ("reference", "keras", "fused")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_model_epoch(
    n_train: int,
    n_val: int,
    hidden_units: Sequence[int] = (64, 64),
    input_dim: int = 784,
    num_classes: int = 10,
) -> float:
    """Multiply-add FLOPs of one model-epoch: 3 x forward per training example, 1 x per val one.

    Counts the matmuls only (bias, ReLU, BN and softmax are O(units), not O(units^2)), with the
    usual backward ~ 2 x forward convention; the first layer's input gradient is not needed, so a
    good engine may even beat this floor slightly.
    """
    dims = [input_dim, *hidden_units, num_classes]
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return 2.0 * macs * (3 * n_train + n_val)


def matmul_probe(seconds: float = 2.0) -> dict[str, float]:
    """Attainable float32 GEMM speed in GFLOP/s: one large square GEMM and the MLP's layer-1 shape.

    The square GEMM is what the CPU can sustain; the stacked [10, 320, 784] x [10, 784, 64] batch
    is what the fused engine's biggest matmul looks like at batch 32 with 10 members.
    """
    from bnpipe.tfkeras import tf

    def rate(a: tf.Tensor, b: tf.Tensor, flops: float) -> float:
        mm = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)), jit_compile=True)
        mm(a, b).numpy()  # compile and warm up
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            mm(a, b).numpy()
            reps += 1
        return reps * flops / (time.perf_counter() - start) / 1e9

    rng = np.random.default_rng(0)
    n = 1024
    square = tf.constant(rng.random((n, n), np.float32))
    x = tf.constant(rng.random((10, 320, 784), np.float32))
    w = tf.constant(rng.random((10, 784, 64), np.float32))
    return {
        "square_gflops": rate(square, square, 2.0 * n**3),
        "mlp_shape_gflops": rate(x, w, 2.0 * 10 * 320 * 784 * 64),
    }


def logged_probe(seconds: float, log: Any) -> dict[str, float]:
    log("matmul probe ...")
    probe = matmul_probe(seconds)
    log(
        f"  square GEMM {probe['square_gflops']:.1f} GFLOP/s, "
        f"fused layer-1 shape {probe['mlp_shape_gflops']:.1f} GFLOP/s"
    )
    return probe


def _time_reference(data: MnistData, bn: bool, batch_size: int, seeds: int, epochs: int) -> dict:
    """The notebook recipe exactly as written: default fit settings (own shuffle, no seeds)."""
    from bnpipe.models import build_model
    from bnpipe.tfkeras import keras

    epoch_times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epoch_times.append(time.perf_counter() - self.t0)

    start, cpu_start = time.perf_counter(), time.process_time()
    for seed in range(seeds):
        # A global seed for model.fit's shuffling: once an engine has run in this process (an
        # earlier round, a test before), TF's op determinism is on and refuses unseeded random
        # ops. The reference's cost does not depend on its seed.
        keras.utils.set_random_seed(seed)
        model = build_model(bn=bn, seed=seed)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=0.001),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(
            data.x_train,
            data.y_train,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=(data.x_test, data.y_test),
            verbose=0,
            callbacks=[EpochTimer()],
        )
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return _timing(total, cpu, seeds, epochs, [epoch_times[i::epochs] for i in range(epochs)])


def _time_engine(
    engine: str,
    data: MnistData,
    bn: bool,
    batch_size: int,
    seeds: int,
    epochs: int,
    steps_per_execution: int,
) -> dict:
    from bnpipe.train.common import TrainSpec
    from bnpipe.train.engines import train_group

    spec = TrainSpec.of(
        range(seeds),
        bn=bn,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=0.001,
        engine=engine,
        steps_per_execution=steps_per_execution,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    results = train_group(spec, data)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # Fused rows hold the amortized (per member) time; keras rows one model's own time.
    per_epoch = [[r.history[e]["epoch_time_s"] for r in results] for e in range(epochs)]
    timing = _timing(total, cpu, seeds, epochs, per_epoch)
    timing["val_accuracy"] = float(np.mean([r.history[-1]["val_accuracy"] for r in results]))
    return timing


def _time_peer(peer: str, data: MnistData, bn: bool, batch_size: int, seeds: int, epochs: int):
    """A peer implementation of the same recipe (same shards of 5 as the fused engine)."""
    if peer != "jax":
        raise ValueError(f"unknown peer {peer!r} (known: jax)")
    from bnpipe.bench.peers.jax_peer import time_group

    return time_group(data, bn, batch_size, seeds, epochs)


def _timing(
    total: float,
    cpu: float,
    models: int,
    epochs: int,
    per_epoch: list[list[float]],
) -> dict:
    """Seconds per model-epoch: overall (setup and compiles included) and in steady state.

    ``per_epoch[e]`` lists epoch e's times (one per model, or the amortized share per member).
    Steady state is the mean over epochs after the first, whose time includes tracing/compiling.
    CPU seconds (all threads) are reported too: on a shared machine they inflate less than wall
    time when other processes compete for the cores.
    """
    later = [t for row in per_epoch[1:] for t in row]
    steady = float(np.mean(later)) if later else float("nan")
    return {
        "total_s": total,
        "s_per_model_epoch": total / (models * epochs),
        "steady_s_per_model_epoch": steady,
        # The first epoch's extra wall time over a steady one: tracing plus the XLA compile (or
        # the persistent cache's load) of the group's programs; rows hold per-model shares.
        "compile_s": (float(np.mean(per_epoch[0])) - steady) * models if later else float("nan"),
        "cpu_s_per_model_epoch": cpu / (models * epochs),
        "models": models,
        "epochs": epochs,
    }


def run_bench(
    data: MnistData,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    bn_values: Sequence[bool] = (True,),
    seeds: int = 10,
    keras_seeds: int = 2,
    reference_seeds: int = 1,
    epochs: int = 2,
    steps_per_execution: int = 100,
    probe_seconds: float = 2.0,
    peers: Sequence[str] = (),
    log: Any = print,
) -> dict:
    """Time (a) the reference recipe, (b) the keras engine, (c) the fused engine on one data set.

    Engines run phase by phase (all reference cells first) so that the op-determinism switch the
    engines turn on cannot slow down the reference runs.

    Returns:
        {"probe": ..., "flops_per_model_epoch", "floor_s", "cells": [per bn x batch size rows],
        "peak_rss_mib", ...}; each row holds the three timings, speed-ups over the reference and
        the fused engine's ratio to the FLOP floor.
    """
    from bnpipe.xla_cache import tune_xla

    # XLA reads its flags at a process's first compile, and the probe compiles first: the fused
    # engine must run with the settings it has in `bnpipe run`. (The JAX peer's XLA reads the
    # same XLA_FLAGS when it starts, so both run under the same code generation settings.)
    tune_xla()
    probes = [logged_probe(probe_seconds, log)]

    cells = [(bn, bs) for bn in bn_values for bs in batch_sizes]
    timings: dict[tuple[bool, int], dict[str, dict]] = {c: {} for c in cells}
    plan = [("reference", reference_seeds), ("keras", keras_seeds), ("fused", seeds)]
    # An engine asked for 0 models is not run (a fused-only bench is a natural request).
    not_run = [engine for engine, models in plan if models < 1]
    for engine, models in plan:
        if engine in not_run:
            continue
        for bn, bs in cells:
            log(f"{engine:>9}: bn={'on' if bn else 'off'} bs={bs} ({models} models x {epochs} ep)")
            if engine == "reference":
                t = _time_reference(data, bn, bs, models, epochs)
            else:
                t = _time_engine(engine, data, bn, bs, models, epochs, steps_per_execution)
            timings[(bn, bs)][engine] = t
            log(
                f"           {t['s_per_model_epoch']:.3f} s/model-epoch overall, "
                f"{t['steady_s_per_model_epoch']:.3f} steady, "
                f"{t['cpu_s_per_model_epoch']:.3f} CPU-s; peak RSS {peak_rss_mib():.0f} MiB"
            )

    for peer in peers:
        for bn, bs in cells:
            log(f"{peer:>9}: bn={'on' if bn else 'off'} bs={bs} ({seeds} models x {epochs} ep)")
            t = _time_peer(peer, data, bn, bs, seeds, epochs)
            timings[(bn, bs)][peer] = t
            log(
                f"           {t['steady_s_per_model_epoch']:.3f} steady s/model-epoch, "
                f"compile {t['compile_s']:.2f}s"
            )

    # Probing again at the end and keeping the faster result makes the floor the speed this CPU
    # attains when nothing else competes for it (a shared machine's load comes and goes).
    probes.append(logged_probe(probe_seconds, log))
    probe = max(probes, key=lambda p: p["square_gflops"])
    flops = flops_per_model_epoch(len(data.x_train), len(data.x_test))
    floor = flops / (probe["square_gflops"] * 1e9)
    log(f"{flops / 1e9:.2f} GFLOP per model-epoch -> floor {floor:.3f} s per model-epoch")
    rows = []
    for bn, bs in cells:
        t = {k: timings[(bn, bs)].get(k) for k in ENGINE_KEYS}
        rows.append(
            {
                "bn": bn,
                "batch_size": bs,
                **t,
                "speedup_keras": _ratio(t["reference"], t["keras"]),
                "speedup_fused": _ratio(t["reference"], t["fused"]),
                "fused_floor_ratio": _ratio(t["fused"], floor),
                "fused_steady_floor_ratio": _ratio(t["fused"], floor, "steady_s_per_model_epoch"),
                **{
                    f"{peer}_vs_fused": {
                        peer: p,
                        "fused_steady_ratio": _ratio(t["fused"], p, "steady_s_per_model_epoch"),
                        "fused_compile_ratio": _ratio(t["fused"], p, "compile_s"),
                    }
                    for peer in peers
                    for p in [timings[(bn, bs)][peer]]
                },
            }
        )
    return {
        "not_run": not_run,
        "n_train": len(data.x_train),
        "n_val": len(data.x_test),
        "probe": probe,
        "probes": probes,
        "flops_per_model_epoch": flops,
        "floor_s": floor,
        "cells": rows,
        "all_cells": all_cells(rows),
        "peak_rss_mib": peak_rss_mib(),
    }


def all_cells(rows: list[dict]) -> dict[str, float]:
    """Each engine's time for one model-epoch of every cell, and the speed-ups over (a).

    The grid trains the same number of models per cell, so these ratios are the whole grid's
    (compiles included, as far as the bench's epochs amortise them; a longer run amortises more).
    """
    totals = {
        k: sum(r[k]["s_per_model_epoch"] for r in rows) if rows and rows[0][k] else None
        for k in ENGINE_KEYS
    }
    return {
        **{f"{k}_s": v for k, v in totals.items()},
        "speedup_keras": _ratio(totals["reference"], totals["keras"]),
        "speedup_fused": _ratio(totals["reference"], totals["fused"]),
    }


def _ratio(a: dict | float | None, b: dict | float | None, key: str = "s_per_model_epoch"):
    """a / b for timings (their ``key``) or plain seconds; None when either engine was not run."""
    if a is None or b is None:
        return None
    a, b = (x[key] if isinstance(x, dict) else x for x in (a, b))
    return a / b
