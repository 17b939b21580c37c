"""Shared fixtures: tiny generated MNIST-like data, an isolated Prefect API, a temp MLflow store."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import prefect  # noqa: F401  (import before TensorFlow: its logging setup would close the capture stream absl holds)
import pytest

from bnpipe.data import MnistData
from bnpipe.factors import Cell

REAL_DATA = os.environ.get("BNPIPE_DATA_DIR")
# Every `mlflow ui` / `mlflow server` a test starts (they inherit this), as docs/servers.md says:
# without MLflow's GenAI job runner (eight processes bnpipe never uses, ~7 s of CPU a start).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
requires_mnist = pytest.mark.skipif(
    not REAL_DATA, reason="set BNPIPE_DATA_DIR to the MNIST folder (CI does)"
)


def bs_cell(bn: bool, batch_size: int, seed: int) -> Cell:
    """A cell of the reference grid (BN x batch size), as the tests name them."""
    return Cell.of(seed, bn=bn, batch_size=batch_size)


def make_tiny_mnist(n_train: int = 600, n_test: int = 200, seed: int = 0) -> MnistData:
    """Learnable fake MNIST: each class is a noisy copy of its own random prototype image."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 784), dtype=np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(np.int32)
        x = np.clip(prototypes[y] + 0.35 * rng.standard_normal((n, 784)), 0, 1)
        return x.astype(np.float32), y

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return MnistData(x_train, y_train, x_test, y_test, digest=f"tiny-{seed}", source="generated")


@pytest.fixture(scope="session")
def tiny_mnist() -> MnistData:
    return make_tiny_mnist()


@pytest.fixture(scope="session")
def prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect database migrated to this Prefect's latest schema, made once for all xdist
    workers: a server starting on a new database spends ~5 of its ~10 s of CPU migrating it.
    Copied into a test's PREFECT_HOME (:func:`seed_prefect_home`), it is a home whose server has
    started before. Tests whose subject is a new home (test_interrupt's) do not use it."""
    import fcntl
    import subprocess
    import sys
    import tempfile

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker else root  # the workers' basetemps share this run's folder
    db = root / "prefect-db" / "prefect.db"
    with (root / "prefect-db.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            home = Path(tempfile.mkdtemp(dir=root))
            prefect = Path(sys.executable).with_name("prefect")
            env = {**os.environ, "PREFECT_HOME": str(home)}
            env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
            env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
            cmd = [str(prefect), "server", "database", "upgrade", "-y"]
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
            db.parent.mkdir(exist_ok=True)
            os.replace(home / "prefect.db", db)
            shutil.rmtree(home)
    return db


def seed_prefect_home(home: Path, prefect_db: Path) -> Path:
    """``home`` as a PREFECT_HOME whose server has migrated its database already."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(prefect_db, home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def prefect_api(prefect_db: Path):
    """One isolated temporary Prefect API for the whole session (one per xdist worker), and its
    URL: a `bnpipe run` subprocess given it as PREFECT_API_URL skips its own temporary server's
    start (20-40 s of CPU). Tests whose subject is that server (test_interrupt) do not use it."""
    import prefect.settings
    import prefect.testing.utilities as harness

    made_temp_dir = harness.mkdtemp

    def seeded_mkdtemp() -> str:
        # The harness's database is <its temp dir>/prefect-test.db: start it migrated.
        folder = made_temp_dir()
        shutil.copy(prefect_db, Path(folder) / "prefect-test.db")
        return folder

    with contextlib.ExitStack() as stack:
        # Both only while the server starts: the harness makes its folder then, and the server
        # takes its environment from this process's then (later servers keep every service).
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(harness, "mkdtemp", seeded_mkdtemp)
            for name in QUIET_API_SERVICES:
                patch.setenv(name, "false")
            stack.enter_context(harness.prefect_test_harness(server_startup_timeout=120))
        yield str(prefect.settings.PREFECT_API_URL.value())


# What the session Prefect API (prefect_api) does not run: the services that turn the clients'
# events into task-run rows, stored events, automations and live streams. No test reads them
# from it (the Prefect UI tests run a `prefect server start` of their own, with every service).
# Measured on test_flow, test_design, test_resume and the claims flow test (34 tests, -p no:xdist,
# A/B x2): 121.2/121.4 -> 114.4/113.5 s of CPU, the same wall time.
QUIET_API_SERVICES = (
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED",
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED",
    # Nor its telemetry, which `bnpipe run` turns off too (bnpipe/cli.py): it tried to reach
    # Prefect's servers whenever this fixture started before anything had set that.
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's tables, made once per session: creating the tables
    (MLflow's migrations) costs ~1 s of CPU a store. Tests whose subject is a store's creation
    (preflight, `bnpipe run` in a new folder) make their own."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store under tmp_path, a copy of the empty one (MLFLOW_TRACKING_URI
    is ignored)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_store, tmp_path / "mlruns" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


# -- scheduling over pytest-xdist workers (`make test` runs `-n 2 --dist load`) -------------------
# Modules whose tests share a costly module-scoped fixture (a cluster, a server started once, a
# store a flow filled): their tests go to one worker together. Every other test is scheduled on
# its own, so a long file's tests spread over the workers. (xdist's own `loadgroup` does not
# group under pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads.)
SHARED_FIXTURE_MODULES = frozenset(
    {
        "test_auth",
        "test_browser",
        "test_cluster",
        "test_interrupt",
        "test_preflight",
        "test_servers",
        "test_tracking_cells",
        "test_tracking_ui",
        "test_trainer",
    }
)
# Modules whose tests run first: the longest unit of work (the cluster module, 6-7 min on one
# worker, a third of it waiting on its hosts) would otherwise start last and finish alone.
FIRST_MODULES = ("test_cluster",)


def _module(nodeid: str) -> str:
    return Path(nodeid.split("::", 1)[0]).stem


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(FIRST_MODULES)}
    items.sort(key=lambda item: first.get(_module(item.nodeid), len(first)))


class SharedFixtureScheduler:
    """Under ``--dist load``: one unit of work per shared-fixture module, one per other test.
    A plugin of its own, registered only where xdist is loaded (``-p no:xdist`` has no such hook).
    """

    @staticmethod
    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
        if config.getvalue("dist") != "load":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                shared = _module(nodeid) in SHARED_FIXTURE_MODULES
                return nodeid.split("::", 1)[0] if shared else nodeid

        return Scheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(SharedFixtureScheduler(), "bnpipe-scheduler")


# -- per-test CPU (the measurement README "Development" quotes) -----------------------------------
# BNPIPE_TEST_CPU=FILE appends one line per test: node id, CPU seconds, wall seconds, xdist
# worker (a worker's wall seconds summed is its busy time). The CPU is user + sys of this
# process, of the children it waited for (`bnpipe run`, kernels, servers it stopped) and what its
# live descendants spent meanwhile (the session's Prefect API serving a test). Setup and
# teardown count, so a shared fixture is charged to the first test using it.
CPU_LOG = os.environ.get("BNPIPE_TEST_CPU")


def _cpu_s() -> float:
    import psutil

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()  # its own time and that of the children it has reaped
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


if CPU_LOG:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
        cpu, wall = _cpu_s(), time.monotonic()
        yield
        with open(CPU_LOG, "a") as log:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
            took = f"{_cpu_s() - cpu:.1f}\t{time.monotonic() - wall:.1f}"
            log.write(f"{item.nodeid}\t{took}\t{worker}\n")
