"""Resume, reproduce, concurrency: no finished cell is trained twice and no result is lost.

In-process flows count trainings by wrapping ``bnpipe.train.engines.train_group``; the kill test
runs a real ``bnpipe run`` process (on generated data, against the session's Prefect API) and
reads the truth back from the MLflow store. Two real processes on one store: tests/test_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import pytest

# Imported at collection, before any test captures output: importing it later, inside a test
# that captures stderr (capsys), leaves TensorFlow's log handler on a stream pytest then closes.
import flows.pipeline
from bnpipe.config import Config, load_config
from bnpipe.data import MnistData
from bnpipe.tracking import CELL_KEY_TAG, PARENT_TAG
from bnpipe.train import engines
from bnpipe.train.common import Cell
from tests.conftest import bs_cell

pytestmark = pytest.mark.usefixtures("prefect_api")
ROOT = Path(__file__).resolve().parents[1]
STATS = ["stats.n_resamples=199"]
# Flow runs whose subject is not the report's figures write the tables only: drawing a run's 4-6
# figures is 0.4-1.1 s of CPU, in every test's flow run (~7% of those tests' CPU, README). The
# figures are drawn and checked in tests/test_report*.py, test_flow's parent-record test,
# test_tracking_ui, test_test_correct and the UI tests; a test that checks them sets
# report.figures=true after these.
QUICK_REPORT = ["report.figures=false"]
VERDICT = ["batch_size", "n_pairs", "mean_diff", "ci_low", "ci_high", "t_pvalue", "p_holm"]


def store_overrides(store: str) -> list[str]:
    """The store, and reports beside its folder (never in the working directory)."""
    reports = Path(store.removeprefix("sqlite:///")).parent.parent / "reports"
    return [f"tracking.uri={store}", f"tracking.reports_dir={reports}", *STATS, *QUICK_REPORT]


def flow_config(store: str, overrides: list[str]) -> Config:
    return load_config(None, [*store_overrides(store), *overrides])


def use_data(monkeypatch: pytest.MonkeyPatch, data: MnistData) -> None:
    """Generated data stands in for MNIST (the real loader insists on the canonical checksums)."""
    import bnpipe.data
    import bnpipe.reproduce

    for module in (bnpipe.data, bnpipe.reproduce, flows.pipeline):
        monkeypatch.setattr(module, "load_mnist", lambda *_a, **_k: data)


def run_flow(monkeypatch, data, store, overrides, *, fresh=False) -> tuple[dict, Config]:
    import flows.pipeline as pipeline

    use_data(monkeypatch, data)
    cfg = flow_config(store, overrides)
    return pipeline.ablation(cfg.model_dump(mode="json"), fresh=fresh), cfg


class TrainCounter:
    """Wraps bnpipe.train.engines.train_group and records every cell it trains."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:

        self.cells: list[Cell] = []
        real = engines.train_group

        def counting(spec, *args, **kwargs):
            self.cells += list(spec.cells)
            return real(spec, *args, **kwargs)

        monkeypatch.setattr(engines, "train_group", counting)

    def take(self) -> set[Cell]:
        out, self.cells = self.cells, []
        assert len(out) == len(set(out)), f"a cell trained twice: {sorted(out)}"
        return set(out)


def grid_cells(bn=(False, True), batch_sizes=(32, 64), seeds=(0, 1)) -> set[Cell]:
    return {bs_cell(b, bs, s) for b in bn for bs in batch_sizes for s in seeds}


def accuracies(out: dict) -> dict[Cell, float]:
    return {
        bs_cell(bool(r["bn"]), int(r["batch_size"]), int(r["seed"])): r["test_accuracy"]
        for r in out["results"]
    }


def search(store: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(store)
    try:
        return mlflow.search_runs(experiment_names=[experiment], max_results=5000)
    finally:
        mlflow.set_tracking_uri(None)


def test_rerun_reuses_finished_cells_and_added_seeds_train_only_new_ones(
    monkeypatch, tiny_mnist, store
):
    base = ["train.engine=fused", "train.epochs=2", "grid.batch_sizes=[32,64]"]
    counter = TrainCounter(monkeypatch)
    first, cfg = run_flow(monkeypatch, tiny_mnist, store, [*base, "grid.seeds=[0,1]"])
    assert counter.take() == grid_cells(seeds=(0, 1))

    # Seed 2 added to the grid: only its 4 cells train; the 8 finished ones are reused.
    second, _ = run_flow(monkeypatch, tiny_mnist, store, [*base, "grid.seeds=[0,1,2]"])
    assert counter.take() == grid_cells(seeds=(2,))
    assert (second["trained"], second["reused"]) == (4, 8)
    results = pd.DataFrame(second["results"])
    assert len(results) == 12 and set(results["status"]) == {"finished"}
    assert results["reused"].tolist() == [r["seed"] != 2 for r in second["results"]]
    first_ids = {r["run_id"] for r in first["results"]}
    assert set(results.loc[results["reused"], "run_id"]) == first_ids
    assert pd.DataFrame(second["summary"])["n_pairs"].tolist() == [3, 3]
    # The parent links the reused runs (without re-parenting them) and carries their histories.
    client = mlflow.MlflowClient(store)
    parent = client.get_run(second["parent_run_id"])
    assert parent.data.tags["bnpipe.cells_reused"] == "8"
    path = client.download_artifacts(second["parent_run_id"], "reused.csv", str(store_dir(store)))
    reused = pd.read_csv(path)
    assert set(reused["run_id"]) == first_ids
    assert set(reused["parent_run_id"]) == {first["parent_run_id"]}
    for run_id in first_ids:
        assert client.get_run(run_id).data.tags[PARENT_TAG] == first["parent_run_id"]
    histories = pd.read_csv(
        client.download_artifacts(second["parent_run_id"], "histories.csv", str(store_dir(store)))
    )
    assert len(histories) == 12 * 2

    # Everything finished: a third run trains nothing and reports the same numbers.
    third, _ = run_flow(monkeypatch, tiny_mnist, store, [*base, "grid.seeds=[0,1,2]"])
    assert counter.take() == set()
    assert accuracies(third) == accuracies(second)

    # --fresh: everything trains (seeds 0-2 in one group each), and per-cell accuracies agree
    # exactly with the resumed run, whose seed 2 trained alone (a lone fused seed trains exactly
    # as inside its group). One --fresh proves it: a second only repeated this run.
    fresh, _ = run_flow(monkeypatch, tiny_mnist, store, [*base, "grid.seeds=[0,1,2]"], fresh=True)
    assert counter.take() == grid_cells(seeds=(0, 1, 2))
    assert fresh["reused"] == 0 and accuracies(fresh) == accuracies(second)
    pd.testing.assert_frame_equal(
        pd.DataFrame(fresh["summary"])[VERDICT], pd.DataFrame(second["summary"])[VERDICT]
    )
    # --fresh adds a run per cell key and leaves the earlier one in place.
    runs = search(store, cfg.tracking.experiment)
    cells = runs[runs[f"tags.{CELL_KEY_TAG}"].notna()]
    assert cells.groupby(f"tags.{CELL_KEY_TAG}").size().max() == 2  # first/second + the fresh


def store_dir(store: str) -> Path:
    return Path(store.removeprefix("sqlite:///")).parent


# -- a real process killed mid-grid ---------------------------------------------------------------
CHILD = """
import sys
from tests.conftest import make_tiny_mnist
import bnpipe.data, flows.pipeline
data = make_tiny_mnist()
bnpipe.data.load_mnist = flows.pipeline.load_mnist = lambda *a, **k: data
from bnpipe.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def bnpipe_process(tmp_path, prefect_api):
    """Start ``bnpipe run`` on generated data in a real process (sharing the test Prefect API)."""
    script = tmp_path / "bnpipe_on_tiny_data.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": prefect_api,
        "TF_CPP_MIN_LOG_LEVEL": "3",  # what the CLI sets by default
    }
    started: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(script), "run", *args],
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / f"{name}.out").open("w"),
            stderr=(tmp_path / f"{name}.err").open("w"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _set_args(store: str, overrides: list[str]) -> list[str]:
    items = [*store_overrides(store), *overrides]
    return [arg for item in items for arg in ("--set", item)]


def finished_cells_in(store: str) -> set[Cell]:
    """Cells with a FINISHED child run, read straight from SQLite (read-only).

    Not through MLflow: opening a store that another process is still creating would make this
    process race it to create the tables.
    """
    db = store.removeprefix("sqlite:///")
    if not Path(db).exists():
        return set()
    query = """
        SELECT p.key, p.value, r.run_uuid FROM runs r
        JOIN params p ON p.run_uuid = r.run_uuid
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'bnpipe.cell_key'
        WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active'
          AND p.key IN ('bn', 'batch_size', 'seed')
    """
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute(query).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return set()
    by_run: dict[str, dict[str, str]] = {}
    for key, value, run in rows:
        by_run.setdefault(run, {})[key] = value
    return {
        bs_cell(p["bn"] in ("True", "on"), int(p["batch_size"]), int(p["seed"]))
        for p in by_run.values()
        if len(p) == 3
    }


def test_killed_run_is_resumed_training_exactly_the_missing_cells(
    monkeypatch, tiny_mnist, store, tmp_path, bnpipe_process
):
    # Two groups (the keras engine's: BN off, BN on) of 2 cells: killed once the first group is
    # in, while the second trains. Two seeds are enough for a group to be half done or done;
    # each cell more was one more training in each of the three runs below.
    grid = [
        "train.engine=keras",
        "train.epochs=2",
        "grid.batch_sizes=[32]",
        "grid.seeds=[0,1]",
    ]
    cfg = flow_config(store, grid)
    proc = bnpipe_process(_set_args(store, grid), "killed")
    deadline = time.monotonic() + 240
    while len(finished_cells_in(store)) < 2:
        assert proc.poll() is None, (tmp_path / "killed.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never finished 2 cells"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind: what a power cut leaves
    proc.wait()
    done_cells = finished_cells_in(store)
    everything = grid_cells(batch_sizes=(32,), seeds=(0, 1))
    assert 2 <= len(done_cells) < len(everything)
    left_running = search(store, cfg.tracking.experiment).query("status == 'RUNNING'")
    assert len(left_running) >= 1  # at least the parent

    counter = TrainCounter(monkeypatch)
    resumed, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == everything - done_cells
    assert resumed["reused"] == len(done_cells)
    assert set(resumed["abandoned"]) == set(left_running["run_id"])
    client = mlflow.MlflowClient(store)
    for run_id in left_running["run_id"]:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["bnpipe.failure_reason"] == "abandoned"
        assert "ended before the run finished" in run.data.tags["bnpipe.error"]
    assert search(store, cfg.tracking.experiment).query("status == 'RUNNING'").empty

    # The resumed analysis equals that of a run that was never interrupted.
    other_store = store.replace("/mlruns/", "/mlruns-uninterrupted/")
    Path(other_store.removeprefix("sqlite:///")).parent.mkdir()
    whole, _ = run_flow(monkeypatch, tiny_mnist, other_store, grid)
    assert counter.take() == everything
    assert accuracies(resumed) == accuracies(whole)
    pd.testing.assert_frame_equal(pd.DataFrame(resumed["summary"]), pd.DataFrame(whole["summary"]))


# Two real processes on one store sharing the grid: tests/test_faults.py
# (test_two_real_runs_at_once_train_each_cell_once_and_print_no_traceback), on real MNIST, on
# the session's Prefect API.


# -- reproduce ------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["keras", "fused"])
def test_reproduce_matches_exactly_and_reports_what_differs(
    monkeypatch, tiny_mnist, store, capsys, engine
):
    from bnpipe.cli import main

    out, _ = run_flow(
        monkeypatch,
        tiny_mnist,
        store,
        [f"train.engine={engine}", "train.epochs=2", "grid.batch_sizes=[64]", "grid.seeds=[0,1]"],
    )
    cell = next(r for r in out["results"] if r["bn"] and r["seed"] == 1)  # the group's second
    argv = ["reproduce", cell["run_id"], "--set", f"tracking.uri={store}"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "MATCH: every metric and every weight is identical" in text
    assert "same versions, bnpipe code and machine facts" in text

    # A recorded value that no longer matches, and a recorded fact that differs now.
    client = mlflow.MlflowClient(store)
    client.log_metric(cell["run_id"], "test/accuracy", cell["test_accuracy"] + 0.01)
    client.set_tag(cell["run_id"], "bnpipe.version.keras", "2.0.0")
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "MISMATCH: 1 metric(s) and 0 weight array(s) differ" in text
    assert "test_accuracy" in text
    assert "version.keras  recorded 2.0.0, now" in text

    parent = ["reproduce", out["parent_run_id"], "--set", f"tracking.uri={store}"]
    assert main(parent) == 2
    assert "is not a grid cell" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["keras", "fused"])
def test_reproduce_of_a_diverged_cell_diverges_again_the_same_way(
    monkeypatch, tiny_mnist, store, capsys, engine
):
    from bnpipe.cli import main

    grid = [f"train.engine={engine}", "train.epochs=3", "train.learning_rate=1e30",
            "grid.batch_sizes=[64]", "grid.bn=[true]", "grid.seeds=[0]"]  # fmt: skip
    out, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    (cell,) = out["results"]
    assert cell["status"] == "diverged"
    assert main(["reproduce", cell["run_id"], "--set", f"tracking.uri={store}"]) == 0
    text = capsys.readouterr().out
    # Same status, same (single) epoch, same weights as far as it got.
    assert "MATCH: every metric and every weight is identical" in text


def artifact_file(store: str, run_id: str, name: str) -> Path:
    uri = mlflow.MlflowClient(store).get_run(run_id).info.artifact_uri
    return Path(unquote(urlparse(uri).path)) / name


def test_finished_cells_with_unreadable_artifacts_are_retrained_and_never_picked_again(
    monkeypatch, tiny_mnist, store, capsys
):
    grid = ["train.engine=fused", "train.epochs=1", "grid.batch_sizes=[64]", "grid.seeds=[0,1]"]
    counter = TrainCounter(monkeypatch)
    first, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    counter.take()
    runs = {
        bs_cell(bool(r["bn"]), r["batch_size"], r["seed"]): r["run_id"] for r in first["results"]
    }
    no_history, no_weights = bs_cell(True, 64, 1), bs_cell(False, 64, 0)
    artifact_file(store, runs[no_history], "history.csv").unlink()
    # Reuse needs the metrics and the history only: a cell without weights is still a result.
    artifact_file(store, runs[no_weights], "weights.npz").unlink()
    capsys.readouterr()

    second, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == {no_history}
    assert (second["trained"], second["reused"]) == (1, 3)
    notes = [line for line in capsys.readouterr().out.splitlines() if "not reusable" in line]
    assert notes == [
        f"run {runs[no_history][:8]} ({no_history.name}) is not reusable: history.csv is missing "
        "from the artifact store; training the cell again (tag bnpipe.unusable_reason)"
    ]
    tags = mlflow.MlflowClient(store).get_run(runs[no_history]).data.tags
    assert tags["bnpipe.unusable_reason"] == "history.csv is missing from the artifact store"
    assert accuracies(second) == accuracies(first)

    third, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == set()
    assert third["reused"] == 4 and "not reusable" not in capsys.readouterr().out


def test_reproduce_is_no_match_when_something_could_not_be_compared(
    monkeypatch, tiny_mnist, store, capsys
):
    from bnpipe.cli import main

    grid = ["train.engine=fused", "train.epochs=1", "grid.batch_sizes=[64]", "grid.seeds=[0]"]
    out, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    run_id = out["results"][0]["run_id"]
    argv = ["reproduce", run_id, "--set", f"tracking.uri={store}"]
    artifact_file(store, run_id, "weights.npz").unlink()
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "metrics and 0 weight arrays" in text
    assert "MATCH" not in text and "environment: same versions" in text
    assert "INCOMPLETE: what was compared is identical, but not everything could be:" in text
    assert "weights.npz: gone from the artifact store (the run logged it)" in text

    artifact_file(store, run_id, "history.csv").unlink()
    assert main(argv) == 1
    assert "history.csv is missing from the artifact store" in capsys.readouterr().out

    off, _ = run_flow(monkeypatch, tiny_mnist, store, [*grid, "tracking.log_weights=false"])
    argv[1] = off["results"][0]["run_id"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "weights: not logged (tracking.log_weights was off for this run)" in text
    assert "MATCH" not in text and "INCOMPLETE" in text


# The real-MNIST rerun (trains nothing) and reproduce (MATCH), as a user types them, follow the
# acceptance run in tests/test_e2e.py: one real grid serves both.
