"""Faults: a diverging cell, a task that raises, a cell that keeps failing, an unusable store."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest

# Imported at collection, before any test captures output: importing it later, inside a test
# that captures stderr (capsys), leaves TensorFlow's log handler on a stream pytest then closes.
import flows.pipeline  # noqa: F401
from bnpipe import evaluate, trainer
from bnpipe.cli import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, main
from bnpipe.train import engines
from bnpipe.train.common import Cell
from tests.conftest import bs_cell, requires_mnist
from tests.test_resume import (  # noqa: F401 (bnpipe_process is a fixture)
    STATS,
    TrainCounter,
    _set_args,
    bnpipe_process,
    run_flow,
    search,
    store_overrides,
    use_data,
)

pytestmark = pytest.mark.usefixtures("prefect_api")
GRID = ["train.engine=keras", "train.epochs=2", "grid.batch_sizes=[32,64]", "grid.seeds=[0,1,2]"]
# Where the fault is in evaluation, not training, the engine is beside the point: the fused one
# trains tiny data in a fraction of the keras engine's time (one model.fit per cell).
FAST = [*GRID, "train.engine=fused"]


def _cell(r: dict) -> Cell:
    return bs_cell(bool(r["bn"]), int(r["batch_size"]), int(r["seed"]))


def test_diverging_cell_fails_alone_and_only_its_pair_is_dropped(
    monkeypatch, tiny_mnist, store, tmp_path
):

    bad = bs_cell(True, 64, 1)
    real = engines.train_group

    def one_cell_diverges(spec, *args, **kwargs):
        results = []
        for i, cell in enumerate(spec.cells):  # the keras engine trains seed by seed anyway
            one = spec.members([i])
            if cell == bad:
                one = one.with_levels(learning_rate=1e30)
            results += real(one, *args, **kwargs)
        return results

    monkeypatch.setattr(engines, "train_group", one_cell_diverges)
    # GRID's 2 epochs: the bad cell diverges in its first, so 1 row of 2 is "stopped early"
    # (3 epochs were half as many model.fit calls again, for the same proof).
    out, cfg = run_flow(monkeypatch, tiny_mnist, store, GRID)
    status = {_cell(r): r["status"] for r in out["results"]}
    assert status.pop(bad) == "diverged"
    assert set(status.values()) == {"finished"}  # the rest of the grid completed
    summary = pd.DataFrame(out["summary"]).set_index("batch_size")
    assert summary.loc[32, "n_pairs"] == 3 and summary.loc[64, "n_pairs"] == 2
    report = Path(out["report"]).read_text()
    assert "1 pair dropped at batch size 64: seed 1 diverged (BN on)" in report

    runs = search(store, cfg.tracking.experiment)
    child = runs[runs["tags.mlflow.runName"] == bad.name].iloc[0]
    assert child["status"] == "FINISHED"  # an outcome, not an error
    assert child["tags.bnpipe.status"] == child["tags.bnpipe.failure_reason"] == "diverged"
    client = mlflow.MlflowClient(store)
    history = pd.read_csv(client.download_artifacts(child["run_id"], "history.csv", str(tmp_path)))
    assert 1 <= len(history) < cfg.train.epochs == 2  # stopped early, its history so far kept
    assert (runs["status"] == "FAILED").sum() == 0

    # The rerun (the cell would diverge again) trains nothing and drops the same pair.
    counter = TrainCounter(monkeypatch)
    again, _ = run_flow(monkeypatch, tiny_mnist, store, GRID)
    assert counter.take() == set() and again["reused"] == 12
    assert {_cell(r): r["status"] for r in again["results"]}[bad] == "diverged"
    summary = pd.DataFrame(again["summary"]).set_index("batch_size")
    assert summary.loc[32, "n_pairs"] == 3 and summary.loc[64, "n_pairs"] == 2
    assert (
        "1 pair dropped at batch size 64: seed 1 diverged (BN on)"
        in Path(again["report"]).read_text()
    )


def test_evaluate_that_fails_once_is_retried(monkeypatch, tiny_mnist, store):
    real, calls = evaluate.evaluate_weights, []

    def flaky(cell, *args, **kwargs):
        calls.append(cell)
        if cell == bs_cell(False, 32, 1) and calls.count(cell) == 1:
            raise ConnectionError("worker lost (simulated)")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_weights", flaky)
    # 4 cells: the flaky one and three that never fail.
    grid = [*FAST, "grid.batch_sizes=[32]", "grid.seeds=[0,1]"]
    out, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert calls.count(bs_cell(False, 32, 1)) == 2
    assert {r["status"] for r in out["results"]} == {"finished"}


def test_cell_that_keeps_failing_is_recorded_and_run_exits_1(
    monkeypatch, tiny_mnist, store, capsys
):
    bad, real = bs_cell(True, 32, 2), evaluate.evaluate_weights

    def broken(cell, *args, **kwargs):
        if cell == bad:
            raise RuntimeError("evaluation exploded (simulated)")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_weights", broken)
    use_data(monkeypatch, tiny_mnist)
    args = [
        a for o in [*store_overrides(store), *FAST, "grid.batch_sizes=[32]"] for a in ("--set", o)
    ]
    assert main(["run", *args]) == EXIT_FAILED_CELLS
    out = capsys.readouterr().out
    assert "FAILED: 1 of 6 cells (their pairs are left out):" in out
    assert "bn=on bs=32 seed=2: RuntimeError: evaluation exploded (simulated)" in out
    runs = search(store, "bnpipe-bn-ablation")
    child = runs[runs["tags.mlflow.runName"] == bad.name].iloc[0]
    assert child["status"] == "FAILED"
    assert child["tags.bnpipe.failure_reason"] == "error"
    assert "evaluation exploded" in child["tags.bnpipe.error"]
    cells = runs[runs["tags.mlflow.parentRunId"].notna() & (runs["tags.bnpipe.role"] != "arm")]
    others = cells[cells["run_id"] != child["run_id"]]
    assert len(others) == 5 and set(others["status"]) == {"FINISHED"}
    # The next run trains only the failed cell again.
    monkeypatch.setattr(evaluate, "evaluate_weights", real)
    assert main(["run", *args]) == 0
    assert "(6 cells: 1 trained, 5 reused" in capsys.readouterr().out


def test_a_group_that_fails_as_a_whole_stops_the_run_and_the_rerun_continues(
    monkeypatch, tiny_mnist, store, capsys
):
    # An outage (the training process killed, a broken device or cache): going on would fail
    # every later cell alike (the attack round's kill -9 wrote 240 FAILED runs and 743 lines).
    real = engines.train_group

    def lost_at_64(spec, *args, **kwargs):
        if spec.cells[0]["batch_size"] == 64:
            raise RuntimeError("device lost (simulated)")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engines, "train_group", lost_at_64)
    use_data(monkeypatch, tiny_mnist)
    grid = [*FAST, "grid.batch_sizes=[32,64,128]", "grid.seeds=[0,1]"]
    args = [a for o in [*store_overrides(store), *grid] for a in ("--set", o)]
    assert main(["run", *args]) == EXIT_FAILED_CELLS
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.strip()]
    assert len(said) == 1, captured.err
    assert said[0].startswith(
        "bnpipe: stopped: training bs=64 failed: RuntimeError: device lost (simulated); "
    )
    assert "Traceback" not in captured.err + captured.out
    runs = search(store, "bnpipe-bn-ablation")
    cells = runs[runs["tags.mlflow.parentRunId"].notna()]
    finished = cells[cells["status"] == "FINISHED"]["tags.mlflow.runName"]
    assert sorted(finished) == sorted(bs_cell(b, 32, s).name for b in (False, True) for s in (0, 1))
    assert "RUNNING" not in set(runs["status"])
    # The rerun trains what is missing, and only that.
    monkeypatch.setattr(engines, "train_group", real)
    assert main(["run", *args]) == 0
    assert "(12 cells: 8 trained, 4 reused" in capsys.readouterr().out


# -- an unusable tracking store: a clear error before any training -----------------------------
@pytest.fixture
def no_training(monkeypatch, tiny_mnist):
    """Generated data, and a train_group that fails the test if anything trains."""

    use_data(monkeypatch, tiny_mnist)

    def must_not_train(*_a, **_k):
        raise AssertionError("training started although the store is unusable")

    monkeypatch.setattr(engines, "train_group", must_not_train)


def assert_store_rejected(
    capsys, uri: str, fragment: str, within_s: float = 20.0, *, monkeypatch=None
) -> None:
    """``bnpipe run`` on store ``uri`` (in MLFLOW_TRACKING_URI when given ``monkeypatch``, else
    in tracking.uri) stops in one line holding ``fragment``, exit 2, within ``within_s``."""
    if monkeypatch is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        where = []
    else:
        where = ["--set", f"tracking.uri={uri}"]
    started = time.monotonic()
    code = main(["run", *where, *[f"--set={s}" for s in STATS]])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("bnpipe: error: ") and "\n" not in err, err
    assert fragment in err, err
    assert elapsed < within_s, f"took {elapsed:.0f}s to notice"


def test_store_under_a_file_is_rejected(capsys, no_training, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "afile").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    assert_store_rejected(capsys, uri, "is a file, not a folder")


def test_store_that_sqlite_cannot_open_is_rejected_in_seconds(
    capsys, no_training, tmp_path, monkeypatch
):
    # Both pass every folder check (as root any folder can be made), and MLflow retries a
    # database SQLite cannot open for ~100 s, printing a warning per attempt.
    dangling = tmp_path / "mlflow.db"
    dangling.symlink_to(tmp_path / "gone" / "mlflow.db")
    assert_store_rejected(
        capsys,
        f"sqlite:///{dangling}",
        f"SQLite cannot open it: the file is a link to {tmp_path / 'gone' / 'mlflow.db'}",
        monkeypatch=monkeypatch,
    )
    assert not (tmp_path / "gone").exists()
    deep = tmp_path.joinpath(*["d" * 100] * 5) / "mlflow.db"  # over SQLite's 512 bytes
    assert_store_rejected(
        capsys, f"sqlite:///{deep}", "too long for SQLite", monkeypatch=monkeypatch
    )
    assert not deep.exists()


def test_store_that_is_not_a_database_is_rejected(capsys, no_training, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").write_bytes(b"\x00garbage" * 100)
    assert_store_rejected(capsys, f"sqlite:///{tmp_path / 'mlflow.db'}", "not a database")


def test_unwritable_artifact_folder_is_rejected(capsys, no_training, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "artifacts").write_text("a file where the artifact folder should be")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert_store_rejected(capsys, uri, f"artifact store {tmp_path / 'artifacts'}")


@pytest.fixture
def read_only_store(tmp_path):
    """A store behind a read-only bind mount: read-only even for root (needs mount rights)."""
    src, mnt = tmp_path / "store", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{src / 'mlflow.db'}")
    client.create_experiment("bnpipe-bn-ablation", artifact_location=(mnt / "a").as_uri())
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (no privileges)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
        yield f"sqlite:///{mnt / 'mlflow.db'}"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_store_is_rejected(capsys, no_training, read_only_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_store_rejected(capsys, read_only_store, "mlflow.db: not writable")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_that_refuses_is_rejected_fast(capsys, no_training, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_store_rejected(capsys, f"http://127.0.0.1:{_closed_port()}", "connection refused", 15)


def test_server_that_never_answers_is_rejected_fast(capsys, no_training, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as silent:  # accepts connections (backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        assert_store_rejected(capsys, f"http://127.0.0.1:{port}", "no answer within 5 s", 20)


class _SlowLogin(BaseHTTPRequestHandler):
    """What MLflow's basic-auth app does with a bad login on a busy machine: a request without
    credentials is refused at once, a password is checked for LOGIN_CHECK_S and then refused."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if self.headers.get("Authorization"):
            time.sleep(LOGIN_CHECK_S)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()
        self.wfile.write(b"You are not authenticated.")

    def log_message(self, *_args: object) -> None:
        pass


LOGIN_CHECK_S = 7  # over the 5 s the store check waits for a server that may be dead


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, *_args: object) -> None:
        pass  # a client that gave up on a slow answer: its broken pipe is expected


def test_login_refused_slowly_is_named_as_the_401(capsys, no_training, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # An earlier in-process run may have moved a URI's user:password into the environment.
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    server = _QuietServer(("127.0.0.1", 0), _SlowLogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # Bounds far below MLflow's ~100 s of retries, loose enough for a loaded CI box.
        assert_store_rejected(capsys, url, "needs credentials (HTTP 401)", 45)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-her-password")
        started = time.monotonic()
        assert_store_rejected(capsys, url, "wrong credentials (HTTP 401)", 55)
        assert time.monotonic() - started > LOGIN_CHECK_S  # it waited for the answer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mount_artifacts(store):
    """Mount a tmpfs on the store's artifact folder (root and mount rights needed, else skip)."""
    folder = Path(store.removeprefix("sqlite:///")).parent / "artifacts"
    folder.mkdir()

    def mount(options: str) -> Path:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return folder

    yield mount
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def test_read_only_artifact_store_is_one_line_before_training(
    capsys, no_training, store, mount_artifacts
):
    folder = mount_artifacts("ro,size=64k")
    assert_store_rejected(capsys, store, f"artifact store {folder}: cannot write (Read-only")


def test_artifact_store_full_mid_run_is_one_line_and_loses_nothing(
    store,
    mount_artifacts,
    bnpipe_process,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    folder = mount_artifacts("size=64k")  # a cell's history fits, its ~200 KB of weights do not
    grid = ["train.engine=fused", "train.epochs=1", "grid.batch_sizes=[64]", "grid.seeds=[0,1]"]
    assert bnpipe_process(_set_args(store, grid), "full").wait(timeout=300) == EXIT_FAILED_CELLS
    err = (tmp_path / "full.err").read_text()
    assert "Traceback" not in err and "Retry" not in err, err[-3000:]
    # Everything else on stderr is TensorFlow's start banner and Prefect's INFO progress.
    noise = ("I0000 ", "WARNING: All log messages before absl")
    lines = [s for s in err.splitlines() if s and not s.startswith(noise) and "| INFO " not in s]
    assert lines == [
        f"bnpipe: error: artifact store {folder.as_uri()}: cannot write (No space left on device); "
        "cells finished before are kept, rerun when it takes writes again"
    ], err[-3000:]
    runs = search(store, "bnpipe-bn-ablation")
    assert set(runs["status"]) == {"FAILED"}  # the parent and the claimed cells: none RUNNING
    cells = runs[runs["tags.mlflow.parentRunId"].notna()]
    # No cell passes for finished without its artifacts: the next run trains them all.
    assert set(cells["tags.bnpipe.failure_reason"]) == {"interrupted"}


def test_interrupted_run_leaves_nothing_running(monkeypatch, tiny_mnist, store):

    real = engines.train_group

    def interrupted_at_second_group(spec, *args, **kwargs):
        if spec.architecture.bn:
            raise KeyboardInterrupt  # Ctrl-C while the second group trains
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engines, "train_group", interrupted_at_second_group)
    with pytest.raises(KeyboardInterrupt):
        run_flow(monkeypatch, tiny_mnist, store, [*GRID, "grid.batch_sizes=[32]"])
    runs = search(store, "bnpipe-bn-ablation")
    assert "RUNNING" not in set(runs["status"])
    cells = runs[runs["tags.mlflow.parentRunId"].notna()]
    finished = cells[cells["status"] == "FINISHED"]
    assert sorted(finished["tags.mlflow.runName"]) == [f"bn=off bs=32 seed={s}" for s in range(3)]
    interrupted = cells[cells["status"] == "FAILED"]
    assert len(interrupted) == 3
    assert set(interrupted["tags.bnpipe.failure_reason"]) == {"interrupted"}


def test_a_signal_carried_by_another_exception_still_stops_the_run_as_interrupted(
    monkeypatch, tiny_mnist, store
):
    # Ctrl-C landing in Prefect's task engine before its task run exists comes out of the task
    # call as ValueError("Task run is not set"); the flow's handler heard the signal first.
    real = flows.pipeline.log_outcome

    def signal_then_prefects_error(tracker, run_id, cell, *args, **kwargs):
        if cell["bn"]:
            trainer.request_stop(signal.SIGINT)  # what the flow's chained handler does
            raise ValueError("Task run is not set")
        return real(tracker, run_id, cell, *args, **kwargs)

    monkeypatch.setattr(flows.pipeline, "log_outcome", signal_then_prefects_error)
    with pytest.raises(KeyboardInterrupt, match="signal 2: 3 open cell run"):
        run_flow(
            monkeypatch,
            tiny_mnist,
            store,
            [*GRID, "grid.batch_sizes=[32]", "orchestration.retries=0"],
        )
    runs = search(store, "bnpipe-bn-ablation")
    assert "RUNNING" not in set(runs["status"])
    cells = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(cells[cells["status"] == "FAILED"]["tags.bnpipe.failure_reason"]) == {"interrupted"}
    assert trainer.stop_signal() is None  # a warm session's next run does not inherit it


# -- two real runs at once on one store ---------------------------------------------------------
SMOKE = [
    "grid.seeds=[0,1]",
    "train.epochs=1",
    "data.limit_train=1000",
    "data.limit_test=300",
    "grid.batch_sizes=[64,128]",  # 4 groups: the runs meet more than once
    "stats.n_resamples=199",
]


@pytest.mark.slow
@requires_mnist
def test_two_real_runs_at_once_train_each_cell_once_and_print_no_traceback(tmp_path, prefect_api):
    """Two ``bnpipe run`` commands started together on one new store, as two users (or a cron
    job and a user) start them, on one Prefect API (the session's: two temporary servers
    started at once on one new PREFECT_HOME are tests/test_interrupt.py's subject, and each
    start here cost 20-40 s of CPU). They share the grid: each cell is trained once, by one of
    them, and both report it."""
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    sets = [f"tracking.uri={store}", f"tracking.reports_dir={tmp_path / 'reports'}", *SMOKE]
    argv = [str(Path(sys.executable).with_name("bnpipe")), "run"]
    argv += [a for s in sets for a in ("--set", s)]
    drop = ("MLFLOW_TRACKING_URI", "PREFECT_PROFILE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_API_URL"] = prefect_api
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n---\n".join(t[-3000:] for t in texts)
    trained = 0
    for text in texts:
        assert "Traceback" not in text and "database is locked" not in text, text[-4000:]
        # The contention is one line at most, however the other run's cells come in.
        assert text.count("another bnpipe run is training") <= 1, text[-4000:]
        trained += int(re.search(r"\(8 cells: (\d) trained, \d reused", text).group(1))
    assert trained == 8  # between them, every cell once
    runs = search(store, "bnpipe-bn-ablation")
    runs = runs[runs["tags.bnpipe.role"] != "arm"]  # each parent's 4 arm summaries
    cells = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(cells) == 8 and cells["tags.bnpipe.cell_key"].nunique() == 8
    assert set(runs["status"]) == {"FINISHED"}
    # The two runs shared the grid: what each trained is disjoint, together every cell, and
    # both parents' results name the same cell runs with the same numbers.
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 2
    client = mlflow.MlflowClient(store)
    tables = [
        pd.read_csv(client.download_artifacts(pid, "results.csv", str(tmp_path))).sort_values(
            ["batch_size", "bn", "seed"]
        )
        for pid in parents["run_id"]
    ]
    mine = [set(t.loc[~t["reused"], "run_id"]) for t in tables]
    assert not (mine[0] & mine[1]) and mine[0] | mine[1] == set(cells["run_id"])
    assert tables[0]["run_id"].tolist() == tables[1]["run_id"].tolist()
    assert tables[0]["test_accuracy"].tolist() == tables[1]["test_accuracy"].tolist()
