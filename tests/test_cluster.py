"""A team deployment across hosts (issue 27): five hosts on one machine, PostgreSQL behind both
servers, and faults that take hosts away.

Hosts (network namespaces on one bridge, tests/netns.py), each with its own working dir, HOME,
PREFECT_HOME and copy of MNIST (no folder is shared, nothing but TCP links them):

- ``trk`` 10.27.0.1: PostgreSQL, ``mlflow server`` (PostgreSQL backend, artifacts served from its
  own disk), ``prefect server start`` (PostgreSQL);
- ``sch`` 10.27.0.2: ``dask scheduler`` and the flow (``bnpipe run``);
- ``w1``, ``w2`` 10.27.0.3-4: ``dask worker`` each;
- ``pw`` 10.27.0.5: ``prefect worker start`` polling a process work pool.

Every component is started the way docs/servers.md tells a person to (the Dask processes with
two of their diagnostics slowed or off: ``DASK_QUIET``). The test process itself
sits on no host: it reads records back by running small Python probes on ``sch``. Real MNIST,
tiny (first 500/2,000 training images), 1-2 epochs, 2 seeds; needs root, iproute2 and Debian's
PostgreSQL server (``.ci/run`` installs it), else every test skips with one line.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import netns
from tests.conftest import requires_mnist
from tests.test_servers import stop

pytestmark = [pytest.mark.cluster, requires_mnist]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOSTS = ["trk", "sch", "w1", "w2", "pw"]
EXPERIMENT = "bnpipe-bn-ablation"
MLFLOW_PORT, PREFECT_PORT, PG_PORT, DASK_PORT = 5000, 4200, 5432, 8786
# The default factors (BN x 4 batch sizes: 8 groups for 2 workers) on tiny data, 2 seeds.
SMALL = {
    "data": {"limit_train": 500, "limit_test": 200},
    "train": {"epochs": 1, "parallel_shards": 1},
    "grid": {"seeds": [0, 1]},
    "stats": {"n_resamples": 199},
    # No test here looks at a figure (report.md is checked; test_report draws them): drawing
    # them cost ~1 s of CPU in each of the module's ten flow runs.
    "report": {"figures": False},
}
# Faults need a group that is still training when they strike: 2 groups of 2 cells, each cell a
# few seconds of model.fit.
LONGER = {
    "data": {"limit_train": 2000, "limit_test": 200},
    "train": {"epochs": 2, "engine": "keras"},
    "grid": {"seeds": [0, 1], "batch_sizes": [32]},
    "stats": {"n_resamples": 199},
    "report": {"figures": False},
}
# Two of Dask's diagnostics, off the 2-core box's CPU: its event-loop latency check (every 20 ms
# by default; it only feeds the "event loop was unresponsive" warnings, still given past 3 s, and
# a dashboard figure) and the worker's statistical profiler (a stack sample every 10 ms, for the
# dashboard's profile page). They were most of an idle scheduler's, nanny's and worker's CPU,
# measured here: 0.012 -> 0.004 CPU s/s for a scheduler or nanny, 0.024 -> 0.006 for a worker.
# The five Dask processes sit idle through most of this ~8-10 min module. Neither changes what
# runs where, when a worker is dropped, or the task stream the tests read.
DASK_QUIET = {
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
}
# How long PostgreSQL or the tracking server stays down in the restart faults.
DOWN_S = 20
SUMMARY = re.compile(r"(\d+) cells: (\d+) trained, (\d+) reused")


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path.name})"


@dataclass
class Cluster:
    """The running hosts and how to reach, start, stop and inspect what runs on them."""

    hosts: netns.Hosts
    base: Path
    pg_dir: Path
    pg_password: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    run_logs: dict[str, Path] = field(default_factory=dict)

    def addr(self, host: str) -> str:
        return self.hosts.addresses[host]

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.addr('trk')}:{MLFLOW_PORT}"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.addr('trk')}:{PREFECT_PORT}/api"

    @property
    def dask_address(self) -> str:
        return f"tcp://{self.addr('sch')}:{DASK_PORT}"

    def work(self, host: str) -> Path:
        return self.base / host

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """A user's shell on ``host``: its own HOME (caches), PREFECT_HOME and MNIST copy."""
        work = self.work(host)
        keep = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TZ")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            HOME=str(work),
            PYTHONPATH=str(ROOT),
            PREFECT_HOME=str(work / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            BNPIPE_DATA_DIR=str(work / "mnist"),
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        if host != "trk":
            env["PREFECT_API_URL"] = self.prefect_api
        env.update(extra)
        return env

    def start(self, name: str, host: str, cmd: list[str], *, stdin: int | None = None,
              stdout: int | None = None, **env: str) -> subprocess.Popen:  # fmt: skip
        """A long-running process on ``host`` (own process group, output to <host>/<name>.log,
        or only its stderr where ``stdout`` is a pipe)."""
        with (self.work(host) / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                self.hosts.command(host, cmd),
                env=self.env(host, **env),
                cwd=self.work(host),
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=subprocess.STDOUT if stdout is None else log,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        """Ctrl-C, as a user would, then SIGKILL to what is left of the process group."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop(proc)

    def stop_all(self) -> None:
        """:meth:`stop` every process, at once."""
        stops = [threading.Thread(target=self.stop, args=(name,)) for name in list(self.procs)]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join()

    def sh(self, host: str, cmd: list[str], *, timeout: float = 120, user: str | None = None,
           check: bool = True, **env: str) -> subprocess.CompletedProcess:  # fmt: skip
        """Run a command on ``host`` to completion."""
        proc = subprocess.run(
            self.hosts.command(host, cmd, user=user),
            env=self.env(host, **env),
            cwd=self.work(host) if user is None else self.pg_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            said = (proc.stdout + proc.stderr)[-4000:]
            assert proc.returncode == 0, f"{host}: {' '.join(cmd)} -> {proc.returncode}\n{said}"
        return proc

    def python(self, host: str, code: str, *args: str, timeout: float = 180) -> dict:
        """Run a Python probe on ``host``; it prints one JSON line last.

        The probes run one after another in one Python session per host (``PROBE_SESSION``), as
        a person would type them into one: a probe in a process of its own paid its imports
        every time (``mlflow`` ~1.6 s of CPU, ``distributed`` ~0.5 s; ~20 probes a module)."""
        session = self.procs.get(f"probes-{host}")
        if session is None or session.poll() is not None:
            session = self.start(f"probes-{host}", host, [sys.executable, "-c", PROBE_SESSION],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert session.stdin is not None and session.stdout is not None
        session.stdin.write(json.dumps({"code": code, "args": args}).encode() + b"\n")
        session.stdin.flush()
        if not select.select([session.stdout], [], [], timeout)[0]:
            self.stop(f"probes-{host}")
            pytest.fail(f"probe on {host} still running after {timeout}s:\n{code[:300]}")
        line = session.stdout.readline()
        assert line, f"the probe session on {host} ended\n{self.log(f'probes-{host}')}"
        got = json.loads(line)
        assert got["error"] is None, f"probe on {host} failed:\n{got['error'][-3000:]}"
        return json.loads(got["out"].strip().splitlines()[-1])

    def wait_http(self, host: str, url: str, name: str, timeout: float = 240) -> None:
        got = self.python(host, WAIT_HTTP, url, str(timeout), timeout=timeout + 30)
        if not got["ok"]:
            pytest.fail(f"{url} not ready after {timeout}s: {got['why']}\n{self.log(name)}")

    def log(self, name: str) -> str:
        for host in HOSTS:
            path = self.work(host) / f"{name}.log"
            if path.exists():
                return f"--- {host}/{name}.log:\n{tail(path)}"
        return f"(no log {name})"

    # -- the components, as docs/servers.md starts them -----------------------------------------
    def pg_ctl(self, *args: str) -> None:
        opts = f"-c listen_addresses={self.addr('trk')} -c unix_socket_directories={self.pg_dir}"
        self.sh(
            "trk",
            [str(postgres_bin() / "pg_ctl"), "-D", str(self.pg_dir / "data"), "-l",
             str(self.pg_dir / "postgres.log"), "-w", "-t", "120", "-o", f"{opts} -p {PG_PORT}",
             *args],
            user="postgres",
        )  # fmt: skip

    def start_mlflow(self) -> None:
        a = self.addr("trk")
        self.start(
            "mlflow-server",
            "trk",
            [str(BIN / "mlflow"), "server", "--host", a, "--port", str(MLFLOW_PORT),
             "--backend-store-uri", f"postgresql://bnpipe@{a}:{PG_PORT}/mlflow",
             "--serve-artifacts", "--artifacts-destination", str(self.work("trk") / "artifacts"),
             "--allowed-hosts", f"{a}:{MLFLOW_PORT}", "--workers", "1"],
            PGPASSWORD=self.pg_password,
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # as docs/servers.md starts it
        )  # fmt: skip

    def start_prefect(self) -> None:
        a = self.addr("trk")
        self.start(
            "prefect-server",
            "trk",
            [str(BIN / "prefect"), "server", "start", "--host", a, "--port", str(PREFECT_PORT)],
            PREFECT_API_DATABASE_CONNECTION_URL=(
                f"postgresql+asyncpg://bnpipe:{self.pg_password}@{a}:{PG_PORT}/prefect"
            ),
            PREFECT_UI_API_URL=self.prefect_api,
        )

    def start_worker(self, host: str) -> None:
        self.start(
            f"dask-worker-{host}",
            host,
            [str(BIN / "dask"), "worker", self.dask_address, "--nthreads", "1", "--nworkers", "1",
             "--host", self.addr(host), "--no-dashboard",
             "--local-directory", str(self.work(host) / "dask")],
            **DASK_QUIET,
        )  # fmt: skip

    def wait_for_workers(self, n: int) -> None:
        self.python("sch", WAIT_WORKERS, self.dask_address, str(n))

    def params(self, host: str, experiment: str, recipe: dict, **extra: str) -> Path:
        """params.yaml on ``host``: the tracking server, the Dask cluster, reports kept there."""
        params = {
            **recipe,
            "tracking": {
                "uri": self.mlflow_url,
                "experiment": experiment,
                "reports_dir": "reports",
            },
            "orchestration": {"task_runner": "dask", "dask_address": self.dask_address},
        }
        path = self.work(host) / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        return path

    def bnpipe_run(self, experiment: str, recipe: dict) -> subprocess.Popen:
        """``bnpipe run`` on the scheduler's host, in the background (each run's output in its
        own run-<experiment>-<n>.log, kept for the fault table)."""
        self.params("sch", experiment, recipe)
        n = len(list(self.work("sch").glob(f"run-{experiment}-*.log"))) + 1
        log = self.work("sch") / f"run-{experiment}-{n}.log"
        self.run_logs[experiment] = log
        with log.open("wb") as out:
            return subprocess.Popen(
                self.hosts.command("sch", [str(BIN / "bnpipe"), "run", "--params", "params.yaml"]),
                env=self.env("sch"),
                cwd=self.work("sch"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def finish(self, proc: subprocess.Popen, experiment: str, timeout: float = 420) -> tuple:
        """(exit code, output) of a background ``bnpipe run``."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            code = proc.wait()
        return code, self.run_logs[experiment].read_text(errors="replace")

    def records(self, experiment: str, artifacts_of: int = 1) -> dict:
        """Every run of ``experiment``, read through the tracking server from ``sch``."""
        return self.python("sch", RECORDS, self.mlflow_url, experiment, str(artifacts_of))

    def task_stream(self) -> list[dict]:
        """(task key, worker address) of every task the scheduler has seen finish."""
        return self.python("sch", TASK_STREAM, self.dask_address)["tasks"]


# -- probes: small programs run on a host (the test process has no address of its own) ----------
# The Python session the probes run in: one JSON request a line (code, argv), one JSON answer a
# line (what the probe printed, or its traceback). A probe's sys.exit() ends the probe only.
PROBE_SESSION = r"""
import contextlib, io, json, sys, traceback
for line in sys.stdin:
    request, printed, error = json.loads(line), io.StringIO(), None
    sys.argv = ["-c", *request["args"]]
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(request["code"], "<probe>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        error = None if exc.code in (None, 0) else f"exit {exc.code}"
    except BaseException:
        error = traceback.format_exc()
    sys.__stdout__.write(json.dumps({"out": printed.getvalue(), "error": error}) + "\n")
    sys.__stdout__.flush()
"""

WAIT_HTTP = r"""
import json, sys, time, httpx
url, timeout = sys.argv[1], float(sys.argv[2])
deadline, why = time.monotonic() + timeout, ""
while time.monotonic() < deadline:
    try:
        r = httpx.get(url, timeout=3)
        if r.status_code == 200:
            print(json.dumps({"ok": True})); sys.exit()
        why = f"HTTP {r.status_code}"
    except httpx.HTTPError as exc:
        why = repr(exc)
    time.sleep(1)
print(json.dumps({"ok": False, "why": why}))
"""

WAIT_WORKERS = r"""
import json, sys
from distributed import Client
with Client(sys.argv[1], timeout=60) as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=180)
    # Ask for the task stream once now: the scheduler keeps it from this moment on.
    c.get_task_stream()
    print(json.dumps({"workers": sorted(c.scheduler_info()["workers"])}))
"""

TASK_STREAM = r"""
import json, sys
from distributed import Client
def took(t, action):
    return round(sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == action), 3)
with Client(sys.argv[1], timeout=60) as c:
    # (no result size: Dask's estimate for a Prefect state is sys.getsizeof, 80 bytes)
    tasks = [{"key": str(t["key"]), "worker": t["worker"],
              "compute_s": took(t, "compute"), "transfer_s": took(t, "transfer")}
             for t in c.get_task_stream()]
print(json.dumps({"tasks": tasks}))
"""

BUSY_WORKER = r"""
import json, sys, time
from distributed import Client
deadline = time.monotonic() + float(sys.argv[2])
with Client(sys.argv[1], timeout=60) as c:
    while time.monotonic() < deadline:
        busy = [w for w, tasks in c.processing().items() if tasks]
        if busy:
            print(json.dumps({"busy": busy})); sys.exit()
        time.sleep(0.3)
print(json.dumps({"busy": []}))
"""

RECORDS = r"""
import json, sys
from mlflow import MlflowClient
url, name, n_artifacts = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = MlflowClient(url)
exp = c.get_experiment_by_name(name)
runs = c.search_runs([exp.experiment_id], max_results=5000) if exp else []
mine = ("bnpipe.", "mlflow.parent")
out = [{"id": r.info.run_id, "status": r.info.status, "artifact_uri": r.info.artifact_uri,
        "tags": {k: v for k, v in r.data.tags.items() if k.startswith(mine)}} for r in runs]
cells = [r for r in out if "bnpipe.cell_key" in r["tags"] and r["status"] == "FINISHED"]
listed = {r["id"]: sorted(a.path for a in c.list_artifacts(r["id"])) for r in cells[:n_artifacts]}
print(json.dumps({"runs": out, "artifacts": listed}))
"""

FLOW_RUNS = r"""
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    runs = c.read_flow_runs()
print(json.dumps({"runs": [{"name": r.name, "state": r.state.type.value if r.state else None,
                           "deployment_id": str(r.deployment_id) if r.deployment_id else None}
                          for r in runs]}))
"""


def cells_of(records: dict) -> list[dict]:
    return [r for r in records["runs"] if "bnpipe.cell_key" in r["tags"]]


def parents_of(records: dict) -> list[dict]:
    return [
        r
        for r in records["runs"]
        if "mlflow.parentRunId" not in r["tags"] and r["tags"].get("bnpipe.role") != "arm"
    ]


def finished_once(records: dict) -> dict[str, int]:
    """FINISHED runs per cell key (each must be exactly 1)."""
    counts: dict[str, int] = {}
    for r in cells_of(records):
        if r["status"] == "FINISHED":
            key = r["tags"]["bnpipe.cell_key"]
            counts[key] = counts.get(key, 0) + 1
    return counts


def summary(out: str) -> tuple[int, int, int]:
    found = SUMMARY.findall(out)
    assert found, f"no summary line in:\n{out[-3000:]}"
    return tuple(int(x) for x in found[-1])  # type: ignore[return-value]


def seed_compile_cache(home: Path) -> None:
    """Give a host the compiled programs this machine has (hard links to the immutable entries of
    the test process's XLA cache, bnpipe.xla_cache), as a host that has trained before has them.

    A Dask worker writes what it compiled back only when it exits cleanly, and here workers are
    stopped with Ctrl-C then SIGKILL or killed by a fault: on cold hosts each worker process
    compiled every program it trained, again after each restart (a `bnpipe run` of the four
    batch sizes' fused programs on a cold cache: ~13 s more CPU than on a warm one). What the
    module checks (where groups train, what a fault loses) needs none of that compiling."""
    from bnpipe import xla_cache

    source = xla_cache.cache_root()
    if source is None or not source.is_dir():
        return
    target = home / ".cache" / "bnpipe" / "xla"
    try:
        shutil.copytree(
            source, target, ignore=shutil.ignore_patterns(xla_cache.STAGING), copy_function=os.link
        )
    except OSError:  # another file system: the host starts cold, as before
        shutil.rmtree(target, ignore_errors=True)


# -- the cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = netns.unavailable()
    if why is None and postgres_bin() is None:
        why = "cluster tests need PostgreSQL's server (apt-get install postgresql)"
    if why:
        pytest.skip(why)
    with started_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@contextmanager
def started_cluster(base: Path) -> Iterator[Cluster]:
    """The five hosts and everything on them, under ``base``; all of it gone on exit."""
    netns.remove_stale()
    # PostgreSQL's files belong to its own user, outside pytest's root-only tmp folder.
    pg_dir = Path(tempfile.mkdtemp(prefix="bnpc-pg-"))
    shutil.chown(pg_dir, "postgres", "postgres")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
        hosts = stack.enter_context(netns.Hosts(HOSTS))
        c = Cluster(hosts, base, pg_dir, secrets.token_hex(16))
        mnist = Path(os.environ["BNPIPE_DATA_DIR"])
        for host in HOSTS:
            (base / host).mkdir()
            # Each host its own copy of the data: nothing is read from a shared folder.
            shutil.copytree(mnist, base / host / "mnist")
        for host in ("w1", "w2"):  # the hosts that train
            seed_compile_cache(base / host)
        # PostgreSQL on trk: its own cluster, password logins from the hosts' subnet only.
        c.sh(
            "trk",
            [str(postgres_bin() / "initdb"), "-D", str(pg_dir / "data"), "-U", "postgres",
             "--auth-local=trust", "--auth-host=scram-sha-256"],
            user="postgres",
        )  # fmt: skip
        with (pg_dir / "data" / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all bnpipe {netns.SUBNET}.0/24 scram-sha-256\n")
        c.pg_ctl("start")
        stack.callback(lambda: c.pg_ctl("stop", "-m", "immediate"))
        # The servers first, while their database is still up (as a deployment is shut down),
        # and all at once, so their bounded waits overlap (session 16 saw a 22-24 s teardown
        # one by one in full runs; session 17's runs took ~7 s before and after this change).
        stack.callback(c.stop_all)
        psql = [str(postgres_bin() / "psql"), "-h", str(pg_dir), "-p", str(PG_PORT), "-U"]
        sql = (
            f"CREATE ROLE bnpipe LOGIN PASSWORD '{c.pg_password}';"
            "CREATE DATABASE mlflow OWNER bnpipe; CREATE DATABASE prefect OWNER bnpipe;"
        )
        for statement in sql.split(";")[:-1]:
            c.sh("trk", [*psql, "postgres", "-d", "postgres", "-c", statement], user="postgres")
        c.start_mlflow()
        c.start_prefect()
        c.start(
            "dask-scheduler",
            "sch",
            [str(BIN / "dask"), "scheduler", "--host", c.addr("sch"), "--port", str(DASK_PORT),
             "--no-dashboard"],
            **DASK_QUIET,
        )  # fmt: skip
        for host in ("w1", "w2"):
            c.start_worker(host)
        c.wait_http("sch", f"{c.mlflow_url}/health", "mlflow-server")
        c.wait_http("sch", f"{c.prefect_api}/health", "prefect-server")
        c.wait_for_workers(2)
        yield c


# -- a grid across the hosts --------------------------------------------------------------------
def test_grid_trains_on_worker_hosts_and_records_on_the_tracking_host(cluster: Cluster) -> None:
    c = cluster
    run = c.bnpipe_run("across-hosts", SMALL)
    code, out = c.finish(run, "across-hosts")
    assert code == 0, f"{out[-4000:]}\n{c.log('mlflow-server')}"
    assert summary(out) == (16, 16, 0)
    records = c.records("across-hosts")
    parents = parents_of(records)
    assert [p["status"] for p in parents] == ["FINISHED"]
    assert finished_once(records) and set(finished_once(records).values()) == {1}
    assert len(finished_once(records)) == 16
    # The flow claimed every cell from the scheduler's host (the claim names its hostname).
    owners = {r["tags"]["bnpipe.owner"].split("|")[0] for r in cells_of(records)}
    assert owners == {"sch"}
    # Training ran on the worker hosts only, and on both.
    tasks = c.task_stream()
    trained_on = {t["worker"].split("//")[1].split(":")[0] for t in tasks}
    assert trained_on == {c.addr("w1"), c.addr("w2")}, trained_on
    # Raw numbers for the scaling projection: per group, the worker's compute time; the flow's
    # own breakdown is its last "time:" line.
    print("groups:", json.dumps(tasks))
    print("flow:", [ln for ln in out.splitlines() if ln.startswith("time:")])
    # Artifacts: uploaded through the server, stored on the tracking host's disk only.
    assert all(r["artifact_uri"].startswith("mlflow-artifacts:") for r in records["runs"])
    (listed,) = records["artifacts"].values()
    assert {"history.csv", "confusion_matrix.csv", "weights.npz"} <= set(listed)
    stored = {p.name for p in (c.work("trk") / "artifacts").rglob("*") if p.is_file()}
    assert {"weights.npz", "history.csv", "report.md"} <= stored
    for host in ("sch", "w1", "w2", "pw"):
        tracked = ("mlruns", "mlflow.db", "artifacts")
        local = [p for p in c.work(host).rglob("*") if p.name in tracked]
        assert not local, f"{host} keeps tracking files: {local}"
    # The MLflow and Prefect databases are PostgreSQL's (no SQLite file on the tracking host).
    assert not list(c.work("trk").rglob("*.db")), list(c.work("trk").rglob("*.db"))


def test_scheduled_deployment_runs_on_the_prefect_worker_host(cluster: Cluster) -> None:
    c = cluster
    # The project as the Prefect worker's host has it: prefect.yaml, flows/, its own params.yaml.
    project = c.work("pw") / "project"
    project.mkdir()
    shutil.copy(ROOT / "prefect.yaml", project)
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__py*"))
    c.params("pw", "deployed", {**SMALL, "grid": {"seeds": [0, 1], "batch_sizes": [128]}}).rename(
        project / "params.yaml"
    )
    prefect = str(BIN / "prefect")
    c.sh("pw", [prefect, "work-pool", "create", "bnpipe", "--type", "process"])
    deploy = [prefect, "--no-prompt", "deploy", "--all"]
    subprocess.run(  # from the project folder: the runs' working dir is recorded as this one
        c.hosts.command("pw", deploy), env=c.env("pw"), cwd=project, check=True,
        capture_output=True, timeout=180,
    )  # fmt: skip
    c.start("prefect-worker", "pw", [prefect, "worker", "start", "--pool", "bnpipe"],
            PREFECT_WORKER_QUERY_SECONDS="2")  # fmt: skip
    try:
        # A run of the scheduled deployment, started as `prefect deployment run` does.
        got = c.sh(
            "sch",
            [prefect, "deployment", "run", "bn-ablation-from-file/nightly", "--watch",
             "--watch-timeout", "400"],
            timeout=450, check=False,
        )  # fmt: skip
        said = f"{got.stdout[-3000:]}{got.stderr[-2000:]}\n{c.log('prefect-worker')}"
        assert got.returncode == 0, said
    finally:
        c.stop("prefect-worker")
    runs = c.python("sch", FLOW_RUNS)["runs"]
    # The run we started, beside the schedule's next runs (still SCHEDULED).
    ran = [r for r in runs if r["deployment_id"] and r["state"] != "SCHEDULED"]
    assert [r["state"] for r in ran] == ["COMPLETED"], runs
    records = c.records("deployed")
    assert [p["status"] for p in parents_of(records)] == ["FINISHED"]
    assert len(finished_once(records)) == 4 and set(finished_once(records).values()) == {1}
    # The flow ran on the Prefect worker's host (its claims name their process's hostname) and
    # sent its groups to the Dask workers: the worker hosts trained them.
    assert {r["tags"]["bnpipe.owner"].split("|")[0] for r in cells_of(records)} == {"pw"}
    trained_on = {t["worker"].split("//")[1].split(":")[0] for t in c.task_stream()}
    assert trained_on <= {c.addr("w1"), c.addr("w2")}, trained_on


# -- faults across hosts ------------------------------------------------------------------------
def strike_mid_group(c: Cluster, experiment: str, strike) -> dict:
    """Start ``bnpipe run``, ``strike(busy worker's host)`` once a group is training, let the run
    end, rerun it; return what happened (a row of the README's fault table)."""
    run = c.bnpipe_run(experiment, LONGER)
    busy = c.python("sch", BUSY_WORKER, c.dask_address, "300")["busy"]
    assert busy, f"no group ever trained\n{c.finish(run, experiment)[1][-3000:]}"
    time.sleep(2)  # mid-group: the worker has its data and is fitting
    host = next(h for h in ("w1", "w2") if f"//{c.addr(h)}:" in busy[0])
    started = time.monotonic()
    what = strike(host)
    code, out = c.finish(run, experiment)
    first_s = time.monotonic() - started
    between = finished_once(c.records(experiment))
    rerun = c.bnpipe_run(experiment, LONGER)
    code2, out2 = c.finish(rerun, experiment)
    records = c.records(experiment)
    row = {
        "fault": what,
        "first_exit": code,
        "first_said": last_words(out, code),
        "first_finished_cells": len(between),
        "after_strike_s": round(first_s),
        "first_retried": [ln.strip()[:160] for ln in out.splitlines() if "etry" in ln][:3],
        "rerun_exit": code2,
        "rerun_trained_reused": summary(out2)[1:] if code2 == 0 else out2[-2000:],
    }
    print("fault table row:", json.dumps(row))  # shown with -rP
    assert code2 == 0, row
    # The rerun trained exactly the cells that had no finished run, and none has two.
    assert summary(out2) == (4, 4 - len(between), len(between)), row
    assert finished_once(records) == dict.fromkeys(finished_once(records), 1)
    assert len(finished_once(records)) == 4
    # The first run either finished or stopped with one line saying why (no traceback).
    if code == 0:
        assert summary(out)[0] == 4, row
    else:
        assert "Traceback" not in out[-3000:], out[-3000:]
        assert row["first_said"], out[-3000:]
    return row


def last_words(out: str, code: int) -> str:
    """The line a stopped run ends with (its one-line reason), or its summary line."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("bnpipe: stopped", "FAILED:")) or SUMMARY.search(ln):
            return ln.strip()[:300]
    return "" if code else (lines[-1] if lines else "")


def revive_workers(c: Cluster) -> None:
    """Start again each worker whose ``dask worker`` process has exited; wait for both."""
    for host in ("w1", "w2"):
        if c.procs[f"dask-worker-{host}"].poll() is not None:
            c.start_worker(host)
    c.wait_for_workers(2)


def test_worker_host_killed_mid_group(cluster: Cluster) -> None:
    c = cluster

    def kill(host: str) -> str:
        pids = c.hosts.kill(host)
        return f"{host} killed mid-group (SIGKILL to its {len(pids)} processes)"

    try:
        strike_mid_group(c, "fault-kill", kill)
    finally:
        revive_workers(c)  # the host boots again: its service manager starts the worker


def test_worker_host_cut_off_then_back(cluster: Cluster) -> None:
    c = cluster

    def cut(host: str) -> str:
        c.hosts.link(host, up=False)
        time.sleep(30)
        c.hosts.link(host, up=True)
        return f"{host}'s link down 30 s mid-group, then up"

    try:
        strike_mid_group(c, "fault-cut", cut)
    finally:
        for host in ("w1", "w2"):
            c.hosts.link(host, up=True)
        # A worker the scheduler dropped while it was cut off shuts itself down, nanny and all,
        # when it is heard again ("Scheduler was unaware of this worker"): a service manager
        # (Restart=always) starts it again, as docs/servers.md says to run it.
        revive_workers(c)


def test_postgres_restarted_mid_run(cluster: Cluster) -> None:
    c = cluster

    def restart(host: str) -> str:
        # Down long enough that the flow's writes (claims' heartbeats, the first group's cells)
        # meet a tracking server without its database.
        c.pg_ctl("stop", "-m", "fast")
        time.sleep(DOWN_S)
        c.pg_ctl("start")
        return f"PostgreSQL stopped (pg_ctl stop -m fast) mid-run, started {DOWN_S} s later"

    strike_mid_group(c, "fault-postgres", restart)


def test_tracking_server_restarted_mid_run(cluster: Cluster) -> None:
    c = cluster

    def restart(host: str) -> str:
        c.stop("mlflow-server")
        time.sleep(DOWN_S)
        c.start_mlflow()
        return f"mlflow server stopped (Ctrl-C) mid-run, started again {DOWN_S} s later"

    try:
        strike_mid_group(c, "fault-tracking", restart)
    finally:
        c.wait_http("sch", f"{c.mlflow_url}/health", "mlflow-server")
