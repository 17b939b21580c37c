"""Where training runs: in the flow process (serial) or on Dask workers (prefect-dask).

The flow picks the runner from its own params at run time (``orchestration.task_runner``), so a
run started by the CLI, by ``bnpipe serve``, by a ``prefect deploy`` work pool or by a custom
run in the UI with edited params all train where their params say.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner

from bnpipe.config import Config


def make_task_runner(cfg: Config) -> TaskRunner | None:
    """The task runner that trains groups, or None: serial runs train in the flow process.

    Serial is not a thread pool on purpose: TensorFlow has one runtime per process, so two
    trainings in threads are neither faster on CPU nor reproducible. Dask workers are processes
    with one thread each.
    """
    orch = cfg.orchestration
    if orch.task_runner == "serial":
        return None
    from prefect_dask import DaskTaskRunner

    if orch.dask_address:
        return DaskTaskRunner(address=orch.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": orch.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            # Loopback only: a local cluster is nobody else's business; the dashboard gets a
            # free port so two runs on one machine never collide (prefect-dask logs its link).
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        },
    )


def _api_for_workers() -> Any:
    """Make this process's Prefect API the one that Dask workers report their task runs to.

    Without PREFECT_API_URL a Prefect process starts its own temporary API server; every worker
    process would then start another one on the same SQLite database (seconds each, and
    "database is locked" under load). Pointing the workers at the flow's temporary server (it
    listens on 127.0.0.1) avoids both. With PREFECT_API_URL set (a real server) nothing changes.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return nullcontext()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide singleton: already started by the flow
    server.start()
    return temporary_settings(updates={PREFECT_API_URL: server.api_url})


@contextmanager
def training_runner(cfg: Config) -> Iterator[TaskRunner]:
    """A started task runner for training (Dask only); the cluster lives as long as the block."""
    runner = make_task_runner(cfg)
    if runner is None:
        raise ValueError("orchestration.task_runner is serial: train in the flow process")
    # The settings are entered before the runner: each submit serializes the current settings
    # (the API URL included) for the worker that runs the task.
    with _api_for_workers(), runner:
        yield runner


def final_state(future: PrefectFuture[Any]) -> State:
    """Wait for a submitted task run; a worker lost on the way becomes a Failed state.

    A task that raises comes back as its own Failed state. A worker that dies (out of memory,
    killed, network gone) returns no state at all; that group is failed, not the whole flow.
    """
    try:
        future.result(raise_on_failure=False)
    except Exception as exc:  # KilledWorker, CommClosedError, ...: no task state came back
        return Failed(message=f"{type(exc).__name__}: {exc}")
    return future.state
