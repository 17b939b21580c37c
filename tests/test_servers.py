"""Server-backed tests: real servers on 127.0.0.1, started the way docs/servers.md starts them.

- MLflow: ``mlflow server`` (SQLite backend, artifacts served by the server): tests/test_auth.py's
  ``bnpipe run`` logs a small grid over HTTP to one (with basic auth) and reads every run and
  artifact back; the serve and deploy runs here log to SQLite.
- Dask: the flow's own ``distributed.LocalCluster`` (2 worker processes, one thread each);
  every cell is logged once and the numbers equal a serial run's. And ``dask scheduler`` plus
  ``dask worker`` processes: a worker killed mid-group fails that group only, nothing is logged
  twice, and the rerun trains exactly the lost cells.
- Prefect: ``prefect server start``; ``bnpipe serve --cron`` creates the scheduled deployment,
  a run triggered through the API completes and leaves its MLflow parent run; ``prefect deploy``
  of prefect.yaml to a process work pool runs too.

Real MNIST (first 500 train / 200 test images), 1 epoch, 2 seeds: each test takes well under
3 minutes on 2 cores. Servers run in their own process groups and are always stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

# Imported now, at collection, on purpose: importing Prefect configures logging, which closes
# the handlers that exist (TensorFlow's absl one included); done inside a test that captures
# output, that closes the capture stream the handler holds and breaks pytest's capturing.
from prefect.settings import PREFECT_API_URL, temporary_settings

from bnpipe.config import load_config
from bnpipe.procs import stop_process
from bnpipe.tracking import PARENT_TAG
from tests.conftest import requires_mnist, seed_prefect_home

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A real but tiny grid: 2 BN settings x 1 batch size x 2 seeds = 4 cells. No report figures:
# no server test looks at them (0.8-1.1 s of CPU a run); test_prefect_ui, which does, sets them on.
TINY = {
    "data": {"limit_train": 500, "limit_test": 200},
    "train": {"epochs": 1},
    "grid": {"seeds": [0, 1], "batch_sizes": [128]},
    "stats": {"n_resamples": 199},
    "report": {"figures": False},
}
EXPERIMENT = "bnpipe-bn-ablation"
# `bnpipe serve` under test looks for due runs every 2 s, not Prefect's 10: the tests trigger
# runs and wait for them, and each pickup would otherwise idle up to 10 s.
SERVE_POLL_S = "2"


# -- helpers -------------------------------------------------------------------------------------
def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def client_env(tmp: Path, *, prefect_db: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment of a user's shell: this checkout first on the path, its own Prefect home
    (``tmp``/prefect-home; given ``prefect_db``, its database migrated already, as for a server
    that has started there before: conftest.prefect_db)."""
    if prefect_db is not None:
        seed_prefect_home(tmp / "prefect-home", prefect_db)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and everything it started (its process group): Ctrl-C first, as a user
    would, then SIGKILL to what is left after a bounded wait."""
    stop_process(proc, timeout_s=15, first=signal.SIGINT, group=True)


@contextmanager
def running(
    cmd: list[str],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
    ready_url: str | None = None,
    timeout: float = 120,
) -> Iterator[subprocess.Popen]:
    """A background process (its own process group, output to ``log``), stopped on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        if ready_url is not None:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{cmd[0]} exited with {proc.returncode}:\n{tail(log)}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{ready_url} not ready after {timeout}s:\n{tail(log)}")
                time.sleep(0.5)
        yield proc
    finally:
        stop(proc)


@contextmanager
def logs_on_failure(**logs: Path) -> Iterator[None]:
    """Re-raise a failed assertion with the tails of the named logs (what the servers said)."""
    try:
        yield
    except AssertionError as exc:
        shown = "".join(f"\n--- {name}:\n{tail(path)}" for name, path in logs.items())
        raise AssertionError(f"{exc}{shown}") from None


def run_cli(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> str:
    """Run a command to completion; fail with its output when it fails."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{out[-4000:]}"
    return out


def write_params(tmp: Path, **sections: dict) -> Path:
    """A params.yaml for a tiny grid that keeps its store and reports under ``tmp``."""
    params = {
        **TINY,
        "tracking": {
            "uri": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
            "reports_dir": str(tmp / "reports"),
        },
    }
    params.update(sections)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def runs_of(uri: str, experiment: str = EXPERIMENT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent runs, cell runs) of an experiment, read through the public MLflow API (the
    parents' arm summary runs left out)."""
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    finally:
        mlflow.set_tracking_uri(None)
    if "tags.bnpipe.role" in runs:
        runs = runs[runs["tags.bnpipe.role"] != "arm"]
    is_child = runs[f"tags.{PARENT_TAG}"].notna() if f"tags.{PARENT_TAG}" in runs else False
    return runs[~is_child], runs[is_child]


# -- Dask ----------------------------------------------------------------------------------------
@pytest.mark.server
@requires_mnist
@pytest.mark.usefixtures("prefect_api")
def test_dask_local_cluster_matches_serial_run(tmp_path: Path) -> None:
    from flows.pipeline import ablation

    def run(task_runner: str) -> tuple[dict, str]:
        # A store per run: the serial run must train, not reuse the cells the dask run logged.
        store = f"sqlite:///{tmp_path / task_runner / 'mlflow.db'}"
        cfg = load_config(
            None,
            [
                "data.limit_train=500",
                "data.limit_test=200",
                "train.epochs=1",
                "grid.seeds=[0,1]",
                "grid.batch_sizes=[64,128]",  # 4 groups for 2 workers
                "stats.n_resamples=199",
                "report.figures=false",  # the numbers and records are the subject
                f"tracking.uri={store}",
                f"tracking.reports_dir={tmp_path / 'reports'}",
                f"orchestration.task_runner={task_runner}",
                "orchestration.dask_workers=2",
            ],
        )
        return ablation(cfg.model_dump(mode="json")), store

    started = time.monotonic()
    on_dask, dask_store = run("dask")
    dask_s = time.monotonic() - started
    serial, serial_store = run("serial")
    for out, store in ((on_dask, dask_store), (serial, serial_store)):
        parents, children = runs_of(store)
        assert parents["run_id"].tolist() == [out["parent_run_id"]]
        assert parents["status"].iloc[0] == "FINISHED"
        # every cell logged exactly once (by the flow process)
        assert len(children) == 8 and children["tags.bnpipe.cell_key"].nunique() == 8
        assert set(children["status"]) == {"FINISHED"}
    keys = ["bn", "batch_size", "seed"]
    numbers = ["status", "test_accuracy", "test_loss", "train_accuracy"]
    got = pd.DataFrame(on_dask["results"]).sort_values(keys)[keys + numbers]
    want = pd.DataFrame(serial["results"]).sort_values(keys)[keys + numbers]
    # Same seeds, same data order, deterministic ops: identical numbers, not merely close ones.
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    assert dask_s < 150, f"dask run took {dask_s:.0f}s"


@contextmanager
def dask_cluster(tmp: Path, workers: int, **env: str) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, as a user starts them."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = client_env(tmp, BNPIPE_DATA_DIR=os.environ["BNPIPE_DATA_DIR"], **env)
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1"]
    worker += ["--host", "127.0.0.1", "--no-dashboard"]
    with ExitStack() as stack:
        stack.enter_context(
            running([*scheduler, "--no-dashboard"], env=env, log=tmp / "scheduler.log")
        )
        for i in range(workers):
            stack.enter_context(running(worker, env=env, log=tmp / f"worker{i}.log"))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address


def kill_a_busy_worker(address: str, killed: list[int], timeout: float = 240) -> None:
    """SIGKILL the worker process of the first task seen running for 2 s (not its nanny)."""
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout=60) as client:
        while time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                time.sleep(2)
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)


@pytest.mark.server
@requires_mnist
@pytest.mark.usefixtures("prefect_api")
def test_dask_worker_killed_mid_group_loses_nothing_and_logs_nothing_twice(tmp_path) -> None:
    from flows.pipeline import ablation

    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    def run(address: str) -> dict:
        cfg = load_config(
            None,
            [
                "data.limit_train=2000",
                "data.limit_test=200",
                "train.engine=keras",
                "train.epochs=2",
                "grid.seeds=[0,1]",
                "grid.batch_sizes=[32]",  # 2 groups, one per worker
                "stats.n_resamples=199",
                "report.figures=false",  # the numbers and records are the subject
                f"tracking.uri={store}",
                f"tracking.reports_dir={tmp_path / 'reports'}",
                "orchestration.task_runner=dask",
                f"orchestration.dask_address={address}",
            ],
        )
        return ablation(cfg.model_dump(mode="json"))

    # No second chance for a task whose worker died: the group must be recorded failed, not
    # retried (the scheduler's default of 3 retries would hide the loss this test is about).
    with dask_cluster(tmp_path, 2, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0") as address:
        killed: list[int] = []
        killer = threading.Thread(target=kill_a_busy_worker, args=(address, killed))
        killer.start()
        first = run(address)
        killer.join()
        assert killed, "no worker was busy"
        failed = [r for r in first["results"] if r["status"] == "failed"]
        assert len(failed) == 2 and all("KilledWorker" in r["error"] for r in failed), failed
        assert len({(r["bn"], r["batch_size"]) for r in failed}) == 1  # one whole group
        assert first["trained"] == 4
        # The nanny restarted the worker; the rerun trains the lost group only.
        second = run(address)
    assert second["trained"] == 2 and second["reused"] == 2
    assert {r["status"] for r in second["results"]} == {"finished"}
    parents, children = runs_of(store)
    assert sorted(parents["status"]) == ["FAILED", "FINISHED"]
    # One run per cell and attempt: 4 finished (one per cell key) + the 2 failed of the lost group.
    finished = children[children["status"] == "FINISHED"]
    assert len(finished) == 4 and finished["tags.bnpipe.cell_key"].nunique() == 4
    lost = children[children["status"] == "FAILED"]
    assert len(lost) == 2 and set(lost["tags.bnpipe.cell_key"]) <= set(
        finished["tags.bnpipe.cell_key"]
    )


# -- Prefect server: serve, schedule, deploy ------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, prefect_db: Path
) -> Iterator[tuple[str, Path]]:
    """``prefect server start`` on a free loopback port with its own PREFECT_HOME (its database
    migrated already, conftest.prefect_db)."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = tmp / "server.log"
    with running(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=client_env(tmp, prefect_db=prefect_db),
        log=log,
        ready_url=f"{api}/health",
    ):
        yield api, log


def drain_prefect_workers() -> None:
    """Send what this process's Prefect log and event workers hold while their server is up. The
    session harness drains every worker when it stops, and one bound to a server a test has
    since stopped never drains (the session hangs at its end)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def probe(api: str, tmp: Path, name: str, parameters: dict | None = None, runs: int = 1) -> dict:
    """Wait for deployment ``name`` and its scheduled runs, then trigger ``runs`` runs one after
    the other through the API (as ``prefect deployment run`` does) and wait for each.

    The client side of the Prefect checks, in this process (a Python process of its own cost
    ~2-3 s of CPU a call) with its settings pointed at ``api`` for the call only: the session's
    test harness, where this process uses one, is what they name again afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    def wait_for(what: str, fn, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = fn()
            if got:
                return got
            time.sleep(1)
        pytest.fail(f"timed out after {seconds}s waiting for {what}")

    def deployment():
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None

    def scheduled():
        state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(state=state),
        )

    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            dep = wait_for("deployment " + name, deployment, 120)
            found_deployment = time.monotonic() - started
            scheduled_runs = wait_for("scheduled flow runs (see the server log)", scheduled, 90)
            found_scheduled = time.monotonic() - started
        # One after the other, as consecutive nightly runs would come.
        finished = [
            run_deployment(name, parameters=parameters or None, timeout=180, poll_interval=2)
            for _ in range(runs)
        ]
        drain_prefect_workers()
    got = {
        "schedules": [
            {"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
            for s in dep.schedules
        ],
        "parameters": dep.parameters,
        "scheduled": [r.expected_start_time.isoformat() for r in scheduled_runs],
        "waited_s": [
            round(t) for t in (found_deployment, found_scheduled, time.monotonic() - started)
        ],
        "run_states": [r.state.type.value for r in finished],
        "run_messages": [r.state.message for r in finished],
    }
    print("probe:", got)  # shown with -rP: where the time went (deployment, schedule, runs)
    return got


def cron_far_from_now() -> tuple[str, int]:
    """A daily cron 12 hours away, so no scheduled run comes due while the test runs."""
    hour = (datetime.now(UTC).hour + 12) % 24
    return f"0 {hour} * * *", hour


@pytest.mark.server
@requires_mnist
def test_serve_creates_scheduled_deployment_and_runs_it(
    prefect_server: tuple[str, Path], tmp_path: Path
) -> None:
    api, server_log = prefect_server
    cron, hour = cron_far_from_now()
    params = write_params(tmp_path)
    env = client_env(tmp_path, PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY=SERVE_POLL_S)
    serve_cmd = [str(BIN / "bnpipe"), "serve", "--cron", cron, "--params", str(params)]
    log = tmp_path / "serve.log"
    with (
        running(serve_cmd, env=env, log=log, cwd=tmp_path),
        logs_on_failure(serve=log, server=server_log),
    ):
        got = probe(api, tmp_path, "bn-ablation/nightly", runs=2)
    assert got["schedules"] == [{"cron": cron, "timezone": "UTC", "active": True}]
    # The scheduled runs carry the params file's grid (read when serving started).
    assert got["parameters"]["params"]["grid"]["seeds"] == [0, 1]
    assert got["scheduled"] and all(
        datetime.fromisoformat(t).astimezone(UTC).hour == hour for t in got["scheduled"]
    )
    assert got["run_states"] == ["COMPLETED", "COMPLETED"], got["run_messages"]
    parents, children = runs_of(load_config(params).tracking.uri)
    assert len(parents) == 2 and set(parents["status"]) == {"FINISHED"}
    # The first run trained the 4 cells; the rerun with unchanged params reused all of them.
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    reused = parents.sort_values("start_time")["tags.bnpipe.cells_reused"].tolist()
    assert reused == ["0", "4"]


@pytest.mark.server
@requires_mnist
def test_prefect_yaml_deploys_to_a_work_pool(
    prefect_server: tuple[str, Path], tmp_path: Path
) -> None:
    api, server_log = prefect_server
    # A copy of the project whose params.yaml is the tiny grid: `prefect deploy` records the
    # folder it runs in as the runs' working dir, and every run reads params.yaml from there.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "prefect.yaml", project)
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__py*"))
    write_params(tmp_path).rename(project / "params.yaml")
    env = client_env(tmp_path, PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="2")
    prefect = str(BIN / "prefect")
    pool = [prefect, "work-pool", "create", "bnpipe", "--type", "process"]
    run_cli(pool, env=env, cwd=project, timeout=60)
    run_cli([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=project, timeout=120)
    worker = [prefect, "worker", "start", "--pool", "bnpipe"]
    log = tmp_path / "worker.log"
    with (
        running(worker, env=env, log=log, cwd=tmp_path),
        logs_on_failure(worker=log, server=server_log),
    ):
        # A per-run parameter, as a custom run in the UI or `--param` would set it.
        got = probe(
            api,
            tmp_path,
            "bn-ablation-from-file/nightly",
            {"overrides": ["tracking.experiment=deployed"]},
        )
    assert got["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    assert got["parameters"] == {"params_file": "params.yaml", "overrides": []}
    assert got["run_states"] == ["COMPLETED"], got["run_messages"]
    parents, children = runs_of(load_config(project / "params.yaml").tracking.uri, "deployed")
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert len(children) == 4


# -- fast checks of the plumbing (no servers) -----------------------------------------------------
def test_task_runner_follows_orchestration_config() -> None:
    from prefect_dask import DaskTaskRunner

    from flows.runners import make_task_runner

    assert make_task_runner(load_config(None)) is None  # serial: train in the flow process
    local = make_task_runner(
        load_config(None, ["orchestration.task_runner=dask", "orchestration.dask_workers=3"])
    )
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }
    remote = make_task_runner(
        load_config(
            None,
            ["orchestration.task_runner=dask", "orchestration.dask_address=tcp://sched:8786"],
        )
    )
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://sched:8786"


@requires_mnist
def test_worker_refuses_data_that_differs_from_the_flows() -> None:
    from bnpipe.data import DataError, load_mnist, worker_data

    data = load_config(None, ["data.limit_train=100", "data.limit_test=50"]).data
    digest = load_mnist().subset(100, 50).digest
    assert worker_data(data, digest).x_train.shape == (100, 784)
    with pytest.raises(DataError, match="give the workers the same MNIST files"):
        worker_data(data, "0" * 64)


def test_serve_refuses_bad_cron_and_a_missing_server(capsys: pytest.CaptureFixture) -> None:
    import argparse

    from flows.serve import add_arguments, check_schedule, run

    assert check_schedule("0 3 * * *", "UTC") is None
    assert "--cron 'every night'" in (check_schedule("every night", "UTC") or "")
    assert check_schedule("0 3 * * *", "Mars/Olympus") is not None
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = load_config(None)
    assert run(parser.parse_args(["--cron", "61 * * * *"]), cfg) == 2
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert run(parser.parse_args(["--cron", "0 3 * * *"]), cfg) == 2
    err = capsys.readouterr().err
    assert "--cron '61 * * * *'" in err and "PREFECT_API_URL is not set" in err
