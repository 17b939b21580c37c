"""Ctrl-C, SIGTERM and kill -9 of a real ``bnpipe run``, started the way a user starts it.

bnpipe runs in its own session with Prefect's temporary server (no PREFECT_API_URL), as in a
terminal. Ctrl-C there is SIGINT to the whole foreground process group, which used to kill the
temporary server too and leave bnpipe retrying a dead API for minutes. Every test checks that no
process bnpipe started outlives it.

Real MNIST (first 3,000 train / 500 test images), the keras engine, 2 epochs, BN off/on x
batch size 32 x 3 seeds = 6 cells in two groups: an interrupt lands while the second trains.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest

from bnpipe.tracking import PARENT_TAG
from tests.conftest import requires_mnist, seed_prefect_home

ROOT = Path(__file__).resolve().parents[1]
BNPIPE = Path(sys.executable).parent / "bnpipe"
EXPERIMENT = "bnpipe-bn-ablation"
GRID = [
    "data.limit_train=3000",
    "data.limit_test=500",
    "train.engine=keras",
    "train.epochs=2",
    "grid.batch_sizes=[32]",
    "grid.seeds=[0,1,2]",
    "stats.n_resamples=199",
]
CELLS = 6
INTERRUPT_LINE = re.compile(
    r"^interrupted: (\d+) open cell run\(s\) marked FAILED; rerun to continue$"
)


class Bnpipe:
    """``bnpipe run`` in a session of its own, its output read line by line as it comes."""

    def __init__(self, tmp: Path, prefect_home: Path) -> None:
        self.store = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        args = [*GRID, f"tracking.uri={self.store}", f"tracking.reports_dir={tmp / 'reports'}"]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE")
        }
        env |= {
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(prefect_home),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.cmd = [str(BNPIPE), "run", *(a for item in args for a in ("--set", item))]
        self.env, self.cwd = env, tmp
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> Bnpipe:
        self.lines = []
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # as a shell's job: its own process group and session
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.lines):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout}s:\n{self.output}"
            time.sleep(0.1)

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def left_behind(started: list[psutil.Process], session: int, within_s: float = 10) -> list[str]:
    """Processes bnpipe started (or of its session) still alive after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == session and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except (OSError, psutil.Error):
                pass
        if not alive or time.monotonic() > deadline:
            return [" ".join(p.cmdline()[:6]) for p in alive if p.is_running()]
        time.sleep(0.2)


def runs(store: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    mlflow.set_tracking_uri(store)
    try:
        found = mlflow.search_runs(experiment_names=[EXPERIMENT], max_results=1000)
    finally:
        mlflow.set_tracking_uri(None)
    if "tags.bnpipe.role" in found:
        found = found[found["tags.bnpipe.role"] != "arm"]  # a finished parent's arm summaries
    is_child = found[f"tags.{PARENT_TAG}"].notna()
    return found[~is_child], found[is_child]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory, prefect_db: Path) -> Path:
    """One PREFECT_HOME for the module, its database migrated already (a user's home after the
    first run): no temporary server here migrates it. A new home is the subject of
    test_two_servers_started_at_once_on_a_new_prefect_home_both_come_up, which makes its own."""
    return seed_prefect_home(tmp_path_factory.mktemp("prefect-home"), prefect_db)


@pytest.fixture
def bnpipe(tmp_path: Path, prefect_home: Path) -> Iterator[Bnpipe]:
    run = Bnpipe(tmp_path, prefect_home)
    yield run
    run.stop()


def started_and_training(run: Bnpipe, progress: str = rf"^\[\s*3/{CELLS}\].*training") -> list:
    """Start ``run``, wait for a progress line (by default: the second training group has begun,
    3 cells finished), and return what it started then: Prefect's temporary server at least."""
    run.start().wait_for(progress)
    started = run.descendants()
    assert any("uvicorn" in " ".join(p.cmdline()) for p in started), started
    return started


@pytest.mark.slow
@pytest.mark.server
@requires_mnist
def test_ctrl_c_stops_within_seconds_and_the_rerun_trains_what_is_missing(bnpipe) -> None:
    started = started_and_training(bnpipe)
    assert bnpipe.proc is not None
    sent = time.monotonic()
    os.killpg(bnpipe.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rc = bnpipe.proc.wait(timeout=60)
    took = time.monotonic() - sent
    print(f"Ctrl-C to exit: {took:.1f}s")
    assert rc == 130 and took < 15, f"rc {rc} after {took:.1f}s:\n{bnpipe.output}"
    assert left_behind(started, bnpipe.proc.pid) == []
    time.sleep(0.5)  # the reader thread takes the last lines
    said = [line for line in bnpipe.lines if "interrupt" in line.lower()]
    assert len(said) == 1 and INTERRUPT_LINE.match(said[0]), bnpipe.output
    assert "Traceback" not in bnpipe.output
    marked = int(INTERRUPT_LINE.match(said[0])[1])

    parents, children = runs(bnpipe.store)
    assert parents["status"].tolist() == ["FAILED"]
    assert "RUNNING" not in set(children["status"])
    failed = children[children["status"] == "FAILED"]
    assert len(failed) == marked == 3  # the group that was training
    assert set(failed["tags.bnpipe.failure_reason"]) == {"interrupted"}
    finished = set(children.loc[children["status"] == "FINISHED", "tags.bnpipe.cell_key"])
    assert 3 <= len(finished) < CELLS

    # The rerun trains exactly the cells without a finished run, and leaves nothing behind.
    bnpipe.start().wait_for(r"training")
    started = bnpipe.descendants()
    assert bnpipe.proc.wait(timeout=600) == 0, bnpipe.output
    assert left_behind(started, bnpipe.proc.pid) == []
    assert f"{CELLS} cells: {CELLS - len(finished)} trained, {len(finished)} reused;" in (
        bnpipe.output
    )
    _, children = runs(bnpipe.store)
    done = children[children["status"] == "FINISHED"]
    assert len(done) == CELLS and done["tags.bnpipe.cell_key"].nunique() == CELLS


@pytest.mark.slow
@pytest.mark.server
@requires_mnist
@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGKILL, False)],
    ids=["SIGTERM", "SIGTERM-group", "SIGKILL"],
)
def test_terminated_or_killed_run_leaves_no_process_behind(
    bnpipe, sig: signal.Signals, to_group: bool
) -> None:
    started = started_and_training(bnpipe, r"training")  # the first group has begun
    assert bnpipe.proc is not None
    if to_group:  # as `timeout` or a service manager's stop signals the whole group
        os.killpg(bnpipe.proc.pid, sig)
    else:  # to bnpipe alone, as `kill` or a scheduler sends it
        bnpipe.proc.send_signal(sig)
    rc = bnpipe.proc.wait(timeout=60)
    assert left_behind(started, bnpipe.proc.pid) == []
    if sig == signal.SIGTERM:
        assert rc == 143, bnpipe.output
        time.sleep(0.5)
        said = [line for line in bnpipe.lines if "interrupt" in line.lower()]
        assert len(said) == 1 and INTERRUPT_LINE.match(said[0]), bnpipe.output
        # One line: the training process ignores the group's signal and is stopped by bnpipe,
        # so no task reports its death (it said `TrainerDied (code -15)` with a traceback).
        assert "Traceback" not in bnpipe.output and "ERROR" not in bnpipe.output, bnpipe.output
        parents, children = runs(bnpipe.store)
        assert "RUNNING" not in set(children["status"]) | set(parents["status"])
    else:
        assert rc == -signal.SIGKILL


# -- the temporary server itself (no training) ---------------------------------------------------
SERVER_PROBE = r"""
import json, os, sys
from prefect.server.api.server import SubprocessASGIServer
from flows.server import ServerError, TemporaryServer

with TemporaryServer(timeout_s=float(sys.argv[1])) as server:
    try:
        server.wait()
    except ServerError as exc:
        print(json.dumps({"error": str(exc), "pid": server.process.pid}))
        sys.exit(0)
    ours = server.process.pid
    prefects = SubprocessASGIServer()
    prefects.start()  # what Prefect calls at the first flow run: must find ours running
    print(json.dumps({"pid": ours, "prefect_pid": prefects.server_process.pid,
                      "sid": os.getsid(ours), "own_sid": os.getsid(0)}), flush=True)
"""


def _start_probe(prefect_home: Path, timeout_s: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    env |= {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(prefect_home)}
    return subprocess.Popen(
        [sys.executable, "-c", SERVER_PROBE, str(timeout_s)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _probe_result(proc: subprocess.Popen) -> tuple[dict, str]:
    """What a probe printed (its JSON line) and its stderr."""
    import json

    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _probe(prefect_home: Path, timeout_s: float) -> dict:
    return _probe_result(_start_probe(prefect_home, timeout_s))[0]


def _stopped(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.server
def test_a_server_too_slow_to_start_is_stopped_with_one_line(prefect_home) -> None:
    got = _probe(prefect_home, 0.05)  # no server answers that fast: the load case, compressed
    assert got["error"].startswith("Prefect's temporary API server on 127.0.0.1 did not answer")
    assert "\n" not in got["error"]
    assert _stopped(got["pid"])


@pytest.mark.server
def test_two_servers_started_at_once_on_a_new_prefect_home_both_come_up(tmp_path) -> None:
    # Two bnpipe runs started together: without the start lock both servers migrated the new
    # database at once and one died with a traceback (3 of 4 tries here).
    probes = [_start_probe(tmp_path / "new-prefect-home", 120) for _ in range(2)]
    for got, err in map(_probe_result, probes):
        assert "error" not in got and "Traceback" not in err, got.get("error", err[-3000:])
        # Each is the server Prefect then uses, in a session of its own, stopped on the way
        # out (a probe of its own for this was ~8 s of CPU for a server start these two make).
        assert got["prefect_pid"] == got["pid"]  # no second server
        assert got["sid"] == got["pid"] != got["own_sid"]  # Ctrl-C to bnpipe's group misses it
        assert _stopped(got["pid"])
