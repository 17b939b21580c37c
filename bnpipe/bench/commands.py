"""Whole commands timed: ``bnpipe run`` smoke grids and the full grid, with a Prefect server.

Every command is a new process: its wall and CPU time (its children's included) are what a user
waits for, against ``python -c "import tensorflow"`` or the FLOP floor.
"""

from __future__ import annotations

import contextlib
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

from bnpipe.bench.engines import flops_per_model_epoch, logged_probe
from bnpipe.procs import stop_process
from bnpipe.train.common import usable_cores

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


# The warm session's rows: the smoke grid's seeds, then new seeds, then the new seeds again.
SESSION_SEEDS = ("grid.seeds=[0,1]", "grid.seeds=[2,3]", "grid.seeds=[2,3]")
SESSION_LABELS = ("session_first", "session_new_seeds", "session_rerun")


def session_main(sets: Sequence[str]) -> None:
    """In a process of its own: ``bnpipe.run`` on the smoke grid three times in one warm
    session (the first call starts the training process and Prefect's server; then new seeds;
    then the same seeds again, every cell reused). Prints one JSON line: each call's wall and CPU
    seconds, this process's and the session's processes' (they outlive the calls, so the
    bench's own accounting of its children cannot see them)."""
    import json

    import bnpipe
    from bnpipe.session import session_pids

    def cpu(pids: list[int]) -> float:
        return sum(_process_cpu_s(p) for p in (os.getpid(), *pids))

    out = {}
    for label, seeds in zip(SESSION_LABELS, SESSION_SEEDS, strict=True):
        pids = session_pids()
        cpu_before, start = cpu(pids), time.perf_counter()
        run = bnpipe.run(None, sets=[*SMOKE_SETS, *sets, seeds])
        out[f"{label}_s"] = time.perf_counter() - start
        # The first call's processes started during it: all their CPU is this call's.
        out[f"{label}_cpu_s"] = cpu(session_pids()) - cpu_before
        out[f"{label}_trained"], out[f"{label}_reused"] = run.trained, run.reused
    out["session_train_alone_s"], out["session_train_alone_cpu_s"] = _train_alone(sets)
    print(json.dumps(out), flush=True)


def _train_alone(sets: Sequence[str]) -> tuple[float, float]:
    """The new-seeds call's training and nothing else, in this process: the floor under that
    call (no claim, record, evaluation, analysis or figure). Wall and CPU seconds of the second
    of two passes: the first imports TensorFlow and loads the compiled programs, which the
    session's training process had done before its new-seeds call."""
    from bnpipe import grid
    from bnpipe.config import load_config
    from bnpipe.data import read_data

    cfg = load_config(None, [*SMOKE_SETS, *sets, SESSION_SEEDS[1]])
    data = read_data(cfg.data)
    cells = grid.grid_cells(cfg, {stratum: cfg.grid.seeds for stratum in grid.strata(cfg)})
    groups = grid.training_groups(cells, grid.group_spans(cfg))
    for _ in range(2):
        cpu, start = _process_cpu_s(os.getpid()), time.perf_counter()
        for group in groups:
            grid.train_cells(cfg, group, data)
        wall = time.perf_counter() - start
    return wall, _process_cpu_s(os.getpid()) - cpu


def _session_rows(env: dict[str, str], folder: Path, sets: Sequence[str]) -> dict:
    """:func:`session_main` in a new process in ``folder``; its JSON."""
    import json

    code = f"from bnpipe.bench.commands import session_main; session_main({list(sets)!r})"
    log_file = folder / "session.log"
    with log_file.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=folder, stdout=subprocess.PIPE, stderr=out,
            text=True,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the warm session exited {proc.returncode}; see {log_file}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_smoke(
    sets: Sequence[str] = (),
    *,
    repeats: int = 1,
    keep: Path | None = None,
    served: bool = False,
    session: bool = True,
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
        session: also time ``bnpipe.run`` in one warm Python session (a notebook's): new seeds
            (XLA cache warm) and a rerun reusing every cell, against the same import.
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
            if session:
                (folder / "session").mkdir(exist_ok=True)
                row |= _session_rows(env, folder / "session", sets)
                for label in (*SESSION_LABELS, "session_train_alone"):
                    row[f"{label}_ratio"] = row[f"{label}_s"] / row["import_tf_s"]
                    row[f"{label}_cpu_bound_ratio"] = (
                        row[f"{label}_cpu_s"] / cores / row["import_tf_s"]
                    )
                log(
                    f"round {r + 1}: warm session (bnpipe.run): first call "
                    f"{row['session_first_s']:.1f}s, new seeds {row['session_new_seeds_s']:.1f}s "
                    f"({row['session_new_seeds_ratio']:.2f}x, CPU "
                    f"{row['session_new_seeds_cpu_s']:.1f}s), rerun reusing every cell "
                    f"{row['session_rerun_s']:.1f}s ({row['session_rerun_ratio']:.2f}x, CPU "
                    f"{row['session_rerun_cpu_s']:.1f}s); the new seeds' training alone "
                    f"{row['session_train_alone_s']:.1f}s ({row['session_train_alone_ratio']:.2f}x"
                    f", CPU {row['session_train_alone_cpu_s']:.1f}s)"
                )
            rounds.append(row)
    names = [*labels, *((*SESSION_LABELS, "session_train_alone") if session else ())]
    medians = {
        key: float(np.median([r[key] for r in rounds]))
        for label in names
        for key in (f"{label}_ratio", f"{label}_cpu_bound_ratio")
    }
    # The box's speed that day, after the commands (the probe imports TensorFlow here).
    probe = logged_probe(2.0, log)
    return {
        "command": "bnpipe run --fresh " + " ".join(overrides),
        "rounds": rounds,
        **medians,
        "cores": cores,
        "square_gflops": probe["square_gflops"],
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
    probes = [logged_probe(probe_seconds, log)]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BNPIPE_XLA_CACHE": f"{tmp}/xla", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "bnpipe.cli", "run", "--fresh"]
        cmd += [arg for s in sets for arg in ("--set", s)]
        log(f"{' '.join(cmd[2:])} ({models} models x {cfg.train.epochs} epochs) ...")
        wall, cpu = _timed(cmd, env, Path(tmp), Path(tmp) / "run.log")
    probes.append(logged_probe(probe_seconds, log))
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
