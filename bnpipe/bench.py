"""``bnpipe bench``: time the reference recipe, the keras engine and the fused engine.

All three train the same cells on the same data in one process, so their ratios are fair even
on a busy machine. A float32 matmul probe measures what this CPU attains, which turns the FLOPs
of one model-epoch into a floor that no engine can beat by much.

TensorFlow is imported inside functions: ``bnpipe --help`` must not pay for it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnpipe.data import DataError, MnistData, load_mnist
from bnpipe.procs import stop_process
from bnpipe.train.common import usable_cores

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
    import tensorflow as tf

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


def _probe(seconds: float, log: Any) -> dict[str, float]:
    log("matmul probe ...")
    probe = matmul_probe(seconds)
    log(
        f"  square GEMM {probe['square_gflops']:.1f} GFLOP/s, "
        f"fused layer-1 shape {probe['mlp_shape_gflops']:.1f} GFLOP/s"
    )
    return probe


def _time_reference(data: MnistData, bn: bool, batch_size: int, seeds: int, epochs: int) -> dict:
    """The notebook recipe exactly as written: default fit settings (own shuffle, no seeds)."""
    import keras

    from bnpipe.models import build_model

    epoch_times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epoch_times.append(time.perf_counter() - self.t0)

    start, cpu_start = time.perf_counter(), time.process_time()
    for seed in range(seeds):
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
    from bnpipe.peers.jax_peer import time_group

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
    probes = [_probe(probe_seconds, log)]

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
    probes.append(_probe(probe_seconds, log))
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


def model_epoch_seconds(report: dict[str, Any], engine: str) -> dict[Any, float]:
    """Overall seconds per model-epoch (compiles included) of ``engine`` in a bench report
    (``bnpipe bench --json``): per batch size the mean of its cells, under None the mean of all;
    empty when the report did not time that engine."""
    by_batch: dict[Any, list[float]] = {}
    for row in report.get("cells", []):
        if isinstance(row, dict) and isinstance(row.get(engine), dict):
            by_batch.setdefault(row.get("batch_size"), []).append(
                float(row[engine]["s_per_model_epoch"])
            )
    out: dict[Any, float] = {bs: float(np.mean(v)) for bs, v in by_batch.items()}
    if out:
        out[None] = float(np.mean([x for v in by_batch.values() for x in v]))
    return out


def _ratio(a: dict | float | None, b: dict | float | None, key: str = "s_per_model_epoch"):
    """a / b for timings (their ``key``) or plain seconds; None when either engine was not run."""
    if a is None or b is None:
        return None
    a, b = (x[key] if isinstance(x, dict) else x for x in (a, b))
    return a / b


def format_report(report: dict) -> str:
    """A fixed-width table: seconds per model-epoch, speed-ups over (a), fused / FLOP floor."""
    lines = [
        f"MNIST {report['n_train']} train / {report['n_val']} val; floor "
        f"{report['floor_s']:.3f} s/model-epoch at {report['probe']['square_gflops']:.1f} GFLOP/s",
        "s/model-epoch overall (steady state after epoch 1 in brackets)",
        f"{'bn':>3} {'bs':>4} {'(a) reference':>16} {'(b) keras':>16} {'(c) fused':>16}"
        f" {'b/a':>6} {'c/a':>6} {'c/floor':>13}",
    ]
    for row in report["cells"]:

        def cell(key: str, row: dict = row) -> str:
            t = row[key]
            if t is None:
                return NOT_RUN
            return f"{t['s_per_model_epoch']:.3f} ({t['steady_s_per_model_epoch']:.3f})"

        lines.append(
            f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4} {cell('reference'):>16}"
            f" {cell('keras'):>16} {cell('fused'):>16} {_num(row['speedup_keras'], '5.1f', 'x'):>6}"
            f" {_num(row['speedup_fused'], '5.1f', 'x'):>6}"
            f" {_num(row['fused_floor_ratio'], '5.2f')}"
            f" ({_num(row['fused_steady_floor_ratio'], '.2f')})"
        )
    lines.append("CPU-s per model-epoch (all threads; less sensitive to other load on the machine)")
    for row in report["cells"]:
        cpu = "  ".join(
            f"({label}) {_num(row[k] and row[k]['cpu_s_per_model_epoch'], '.3f')}"
            for label, k in zip("abc", ENGINE_KEYS, strict=True)
        )
        lines.append(f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  {cpu}")
    lines.append("fused compile s per group (first epoch's wall time minus a steady epoch's)")
    lines += [
        f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  {row['fused']['compile_s']:.2f}"
        for row in report["cells"]
        if row["fused"] is not None
    ]
    for row in report["cells"]:
        peers = [(k, v) for k, v in row.items() if k.endswith("_vs_fused") and row["fused"]]
        for key, peer in peers:
            name = key.removesuffix("_vs_fused")
            lines.append(
                f"{'on' if row['bn'] else 'off':>3} {row['batch_size']:>4}  fused/{name}: steady "
                f"{peer['fused_steady_ratio']:.2f}x ({row['fused']['steady_s_per_model_epoch']:.3f}"
                f" vs {peer[name]['steady_s_per_model_epoch']:.3f} s/model-epoch), compile "
                f"{peer['fused_compile_ratio']:.2f}x ({row['fused']['compile_s']:.2f} vs "
                f"{peer[name]['compile_s']:.2f} s)"
            )
    every = report["all_cells"]
    secs = [
        f"({label}) {_num(every[f'{k}_s'], '.2f', 's')}"
        for label, k in zip("abc", ENGINE_KEYS, strict=True)
    ]
    lines.append(
        f"all cells (one model-epoch each, as in the grid): {' '.join(secs)} -> "
        f"b/a {_num(every['speedup_keras'], '.1f', 'x')}, "
        f"c/a {_num(every['speedup_fused'], '.1f', 'x')}"
    )
    if report["not_run"]:
        lines.append(f"not run (0 models asked): {', '.join(report['not_run'])}")
    lines.append(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


NOT_RUN = "not run"


def _num(x: float | None, spec: str, unit: str = "") -> str:
    return NOT_RUN if x is None else f"{x:{spec}}{unit}"


SMOKE_SETS = ("grid.seeds=[0,1]", "train.epochs=1")
# The full grid of the targets: the 80 cells of the default factors on 10 fixed seeds (the
# default sequential design would train as many seeds as its decisions need).
FULL_GRID_SETS = ("grid.seeds=[0,1,2,3,4,5,6,7,8,9]",)


def _timed(cmd: list[str], env: dict[str, str], cwd: Path, log_file: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one command and every process it waited for (a ``bnpipe run``:
    its training process and Prefect's server); its output goes to ``log_file``; a failure raises.

    The CPU figure bounds the wall time from below on a box with N usable cores (CPU / N),
    whatever overlaps what.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log_file}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def prefect_server(home: Path, timeout_s: float = 180.0) -> Iterator[tuple[str, int]]:
    """A long-lived ``prefect server start`` on a free 127.0.0.1 port, as a user who iterates
    keeps one (PREFECT_API_URL): yields (its API URL, its pid) once it answers; stopped after."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with (home / "server.log").open("w") as out:
        proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server start did not answer; see {home}/server.log")
            time.sleep(0.5)
        yield api, proc.pid
    finally:
        stop_process(proc, timeout_s=30)


def run_smoke(
    sets: Sequence[str] = (),
    *,
    repeats: int = 1,
    keep: Path | None = None,
    served: bool = False,
    log: Any = print,
) -> dict:
    """Whole ``bnpipe run`` smoke commands against ``python -c "import tensorflow"``, in one run.

    Each repeat times the import, then the smoke grid with a cold XLA cache, then again with the
    cache the first one filled (``--fresh`` in a new store, so it trains rather than reuses).
    Every command is a new process in a new folder: nothing is warm but the OS file cache.

    Args:
        sets: extra ``--set`` overrides after the smoke grid's (e.g. ``train.shard_size=2``).
        repeats: rounds; the report keeps each and the median ratios.
        keep: folder for the stores and logs (default: a temporary one, removed after).
        served: also time the warm grid against a long-lived Prefect server (PREFECT_API_URL,
            started once by the bench) instead of the temporary one each run boots; its CPU
            during the command counts as the command's.
        log: progress printer.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each command gets its own store
    cores = usable_cores()
    overrides = [arg for s in (*SMOKE_SETS, *sets) for arg in ("--set", s)]
    rounds = []
    labels = ("cold", "warm", "served") if served else ("cold", "warm")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base = keep or Path(tmp)
        if served:
            (base / "prefect-served").mkdir(parents=True, exist_ok=True)
            api, server_pid = stack.enter_context(prefect_server(base / "prefect-served"))
        for r in range(repeats):
            folder = base / f"round{r}"
            folder.mkdir(parents=True, exist_ok=True)
            env["BNPIPE_XLA_CACHE"] = str(folder / "xla")
            row = {}
            import_tf = [sys.executable, "-c", "import tensorflow"]
            row["import_tf_s"], row["import_tf_cpu_s"] = _timed(
                import_tf, env, folder, folder / "import.log"
            )
            for label in labels:
                store = folder / label
                store.mkdir(exist_ok=True)
                cmd = [sys.executable, "-m", "bnpipe.cli", "run", "--fresh", *overrides]
                run_env = {**env, "PREFECT_API_URL": api} if label == "served" else env
                server_before = _process_cpu_s(server_pid) if label == "served" else 0.0
                row[f"{label}_s"], row[f"{label}_cpu_s"] = _timed(
                    cmd, run_env, store, folder / f"{label}.log"
                )
                if label == "served":
                    row["served_cpu_s"] += _process_cpu_s(server_pid) - server_before
                row[f"{label}_ratio"] = row[f"{label}_s"] / row["import_tf_s"]
                # The best ratio this box allows the command: its CPU spread over every core.
                row[f"{label}_cpu_bound_ratio"] = row[f"{label}_cpu_s"] / cores / row["import_tf_s"]
            log(
                f"round {r + 1}: import tensorflow {row['import_tf_s']:.1f}s, smoke cold "
                f"{row['cold_s']:.1f}s ({row['cold_ratio']:.2f}x), warm {row['warm_s']:.1f}s "
                f"({row['warm_ratio']:.2f}x); CPU cold {row['cold_cpu_s']:.1f}s, warm "
                f"{row['warm_cpu_s']:.1f}s, so no less than {row['cold_cpu_bound_ratio']:.2f}x / "
                f"{row['warm_cpu_bound_ratio']:.2f}x on {cores} cores"
                + (
                    f"; warm with a long-lived Prefect server {row['served_s']:.1f}s "
                    f"({row['served_ratio']:.2f}x, CPU {row['served_cpu_s']:.1f}s with the "
                    f"server's, no less than {row['served_cpu_bound_ratio']:.2f}x)"
                    if served
                    else ""
                )
            )
            rounds.append(row)
    medians = {
        key: float(np.median([r[key] for r in rounds]))
        for label in labels
        for key in (f"{label}_ratio", f"{label}_cpu_bound_ratio")
    }
    return {
        "command": "bnpipe run --fresh " + " ".join(overrides),
        "rounds": rounds,
        **medians,
        "cores": cores,
        "load_avg_1min": os.getloadavg()[0],
    }


def run_full_grid(sets: Sequence[str] = (), *, probe_seconds: float = 2.0, log: Any = print):
    """The whole default grid on 10 fixed seeds, ``bnpipe run --fresh`` (cold XLA cache), against
    the FLOP floor.

    The floor is every model-epoch's FLOPs at the bench's square-GEMM probe, probed before and
    after the run (the faster kept, as in :func:`run_bench`).
    """
    from bnpipe.config import load_config

    sets = [*FULL_GRID_SETS, *sets]
    cfg = load_config(None, sets)
    models = math.prod(len(v) for v in cfg.grid.levels.values()) * len(cfg.grid.seeds or ())
    probes = [_probe(probe_seconds, log)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BNPIPE_XLA_CACHE": f"{tmp}/xla", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "bnpipe.cli", "run", "--fresh"]
        cmd += [arg for s in sets for arg in ("--set", s)]
        log(f"{' '.join(cmd[2:])} ({models} models x {cfg.train.epochs} epochs) ...")
        wall, cpu = _timed(cmd, env, Path(tmp), Path(tmp) / "run.log")
    probes.append(_probe(probe_seconds, log))
    gflops = max(p["square_gflops"] for p in probes)
    n_train = cfg.data.limit_train or 60_000
    n_val = cfg.data.limit_test or 10_000
    floor = models * cfg.train.epochs * flops_per_model_epoch(n_train, n_val) / (gflops * 1e9)
    log(
        f"whole command {wall:.1f}s ({cpu:.1f}s of CPU), FLOP floor {floor:.1f}s at "
        f"{gflops:.1f} GFLOP/s"
    )
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "floor_s": floor,
        "ratio": wall / floor,
        "square_gflops": gflops,
        "models": models,
        "epochs": cfg.train.epochs,
        "load_avg_1min": os.getloadavg()[0],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bnpipe bench``."""
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES), metavar="B"
    )
    parser.add_argument("--bn", choices=("on", "off", "both"), default="on")
    parser.add_argument("--seeds", type=int, default=10, help="models trained by the fused engine")
    parser.add_argument("--keras-seeds", type=int, default=2, help="models for the keras engine")
    parser.add_argument(
        "--reference-seeds", type=int, default=1, help="models for the reference recipe"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per model (>= 2 gives steady-state times)"
    )
    parser.add_argument("--steps-per-execution", type=int, default=100, help="keras engine knob")
    parser.add_argument("--limit-train", type=int, default=None, help="first N training images")
    parser.add_argument("--limit-test", type=int, default=None, help="first N test images")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (else $BNPIPE_DATA_DIR)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="time whole `bnpipe run` smoke grids (cold and warm XLA cache) against "
        "`python -c 'import tensorflow'` instead of the engines",
    )
    parser.add_argument(
        "--smoke-set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="extra --set for the smoke grid, e.g. train.shard_size=2",
    )
    parser.add_argument("--repeats", type=int, default=1, help="smoke rounds (median ratios)")
    parser.add_argument(
        "--prefect-server",
        action="store_true",
        help="with --smoke: also time the warm grid against a long-lived `prefect server start` "
        "(PREFECT_API_URL), as when iterating, instead of a temporary server per run",
    )
    parser.add_argument(
        "--full-grid",
        action="store_true",
        help="time the whole default `bnpipe run --fresh` (plus any --smoke-set) against the "
        "FLOP floor",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=("jax",),
        default=[],
        help="also time the same recipe in these frameworks (make bench-peers installs JAX)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bnpipe bench``; returns the exit status."""
    if args.full_grid:
        report = run_full_grid(args.smoke_set)
        print(f"full grid: {report['ratio']:.2f}x the FLOP floor end to end")
        return _write_json(args.json, report)
    if args.smoke:
        report = run_smoke(args.smoke_set, repeats=args.repeats, served=args.prefect_server)
        served = (
            f", warm with a long-lived Prefect server {report['served_ratio']:.2f}x"
            if args.prefect_server
            else ""
        )
        print(
            f"smoke: cold {report['cold_ratio']:.2f}x, warm {report['warm_ratio']:.2f}x{served} "
            f"the time of `import tensorflow` (median of {args.repeats}; its CPU alone allows no "
            f"less than {report['cold_cpu_bound_ratio']:.2f}x / "
            f"{report['warm_cpu_bound_ratio']:.2f}x on {report['cores']} cores; 1-min load "
            f"{report['load_avg_1min']:.1f})"
        )
        return _write_json(args.json, report)
    try:
        data = load_mnist(args.data_dir).subset(args.limit_train, args.limit_test)
    except DataError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if "jax" in args.peers and importlib.util.find_spec("jax") is None:
        print("bench: --peers jax needs JAX: make bench-peers installs it", file=sys.stderr)
        return 2
    bn_values = {"on": (True,), "off": (False,), "both": (False, True)}[args.bn]
    report = run_bench(
        data,
        batch_sizes=args.batch_sizes,
        bn_values=bn_values,
        seeds=args.seeds,
        keras_seeds=args.keras_seeds,
        reference_seeds=args.reference_seeds,
        epochs=args.epochs,
        steps_per_execution=args.steps_per_execution,
        peers=args.peers,
    )
    print(format_report(report))
    return _write_json(args.json, report)


def _write_json(path: Path | None, report: dict) -> int:
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {path}")
    return 0
