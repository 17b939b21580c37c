"""The flow end to end on tiny generated data, against a real temporary Prefect API and a real
SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from bnpipe.config import load_config
from bnpipe.tracking import PARENT_TAG, Tracker
from tests.test_resume import QUICK_REPORT

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_flow(monkeypatch, tiny_mnist, store, overrides):
    import flows.pipeline as pipeline

    # The flow's own loader insists on the canonical MNIST checksums; tiny data stands in here.
    monkeypatch.setattr(pipeline, "load_mnist", lambda _dir: tiny_mnist)
    reports = store.removeprefix("sqlite:///").replace("mlruns/mlflow.db", "reports")
    cfg = load_config(
        None,
        [f"tracking.uri={store}", f"tracking.reports_dir={reports}", *QUICK_REPORT, *overrides],
    )
    return pipeline.ablation(cfg.model_dump(mode="json")), cfg


def _search(store: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(store)
    try:
        return mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("engine", ["keras", "fused"])
def test_flow_logs_parent_and_one_child_per_cell(monkeypatch, tiny_mnist, store, engine):
    out, cfg = run_flow(
        monkeypatch,
        tiny_mnist,
        store,
        [
            f"train.engine={engine}",
            "train.epochs=2",
            "grid.seeds=[0,1,2]",
            "grid.batch_sizes=[32,64]",
            "stats.n_resamples=199",
            "report.figures=true",  # the report's figures are logged with it (below)
        ],
    )
    runs = _search(store, cfg.tracking.experiment)
    parent = runs[runs["run_id"] == out["parent_run_id"]]
    children = runs[
        (runs[f"tags.{PARENT_TAG}"] == out["parent_run_id"]) & (runs["tags.bnpipe.role"] == "cell")
    ]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert len(children) == 2 * 2 * 3
    assert set(children["status"]) == {"FINISHED"}
    assert sorted(children["tags.mlflow.runName"])[0] == "bn=off bs=32 seed=0"
    # params, final metrics and provenance tags on every child
    for col in (
        "params.bn",
        "params.batch_size",
        "params.seed",
        "params.train.learning_rate",
        "params.data.digest",
        "metrics.test/accuracy",
        "metrics.val/accuracy",
        "tags.bnpipe.cell_key",
        "tags.bnpipe.data_digest",
        "tags.bnpipe.version.keras",
    ):
        assert children[col].notna().all(), col
    assert children["tags.bnpipe.cell_key"].nunique() == len(children)
    assert (children["tags.bnpipe.engine"] == engine).all()
    # the learnable fake data is learned: the pipeline really trains and evaluates
    acc = children["metrics.test/accuracy"].astype(float)
    assert acc.mean() > 0.5 and acc.min() > 0.15  # chance is 0.1
    # per-epoch metrics carry their step
    client = mlflow.MlflowClient(store)
    hist = client.get_metric_history(children["run_id"].iloc[0], "val/accuracy")
    assert sorted(m.step for m in hist) == [1, 2]
    # analysis: one row per batch size, all pairs used, parent carries the key numbers
    summary = pd.DataFrame(out["summary"])
    assert summary["batch_size"].tolist() == [32, 64]
    assert summary["n_pairs"].tolist() == [3, 3]
    assert np.isfinite(parent["metrics.diff_batch_size_32"].iloc[0])
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"])}
    assert {"summary.csv", "results.csv"} <= artifacts
    child_artifacts = {a.path for a in client.list_artifacts(children["run_id"].iloc[0])}
    assert {"history.csv", "confusion_matrix.csv", "weights.npz"} <= child_artifacts
    report_files = {a.path for a in client.list_artifacts(out["parent_run_id"], "report")}
    assert "report/report.md" in report_files and len(report_files) >= 5
    assert Path(out["report"]).read_text().count("| 32 ") >= 1


def test_report_command_rebuilds_from_mlflow(monkeypatch, tiny_mnist, store, tmp_path, capsys):
    from bnpipe.cli import main

    out, cfg = run_flow(
        monkeypatch,
        tiny_mnist,
        store,
        [
            "train.engine=keras",
            "train.epochs=1",
            "grid.seeds=[0,1]",
            "grid.batch_sizes=[64]",
            "stats.n_resamples=199",
        ],
    )
    first = Path(out["report"])
    first.unlink()
    rebuilt = tmp_path / "rebuilt"
    code = main(
        [
            "report",
            out["parent_run_id"],
            "--set",
            f"tracking.uri={store}",
            "--set",
            f"tracking.reports_dir={rebuilt}",
        ]
    )
    assert code == 0
    text = (rebuilt / first.parent.name / "report.md").read_text()
    assert "| 64 " in text
    assert out["parent_run_id"] in text
    # The arm summaries published again from the parent's results: replaced, not doubled.
    tracker = Tracker(store, cfg.tracking.experiment)
    arms = tracker.arm_runs(out["parent_run_id"])
    assert list(arms["tags.mlflow.runName"]) == [
        "bn=off bs=64 (mean of 2 seeds)",
        "bn=on bs=64 (mean of 2 seeds)",
    ]
    assert tracker.arms_url(out["parent_run_id"]) in capsys.readouterr().out
    assert main(["report", "0" * 32, "--set", f"tracking.uri={store}"]) == 2
    assert "bnpipe: error: run 0000" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["keras", "fused"])
def test_diverged_cell_is_an_outcome_trained_once_and_reused(
    monkeypatch, tiny_mnist, store, tmp_path, engine
):
    from tests.test_resume import TrainCounter

    grid = [
        f"train.engine={engine}",
        "train.epochs=3",
        "train.learning_rate=1e30",  # a non-finite loss in the first epoch, in both engines
        "grid.seeds=[0]",
        "grid.batch_sizes=[64]",
        "grid.bn=[false]",
        "stats.n_resamples=199",
    ]
    counter = TrainCounter(monkeypatch)
    out, cfg = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert len(counter.take()) == 1
    results = pd.DataFrame(out["results"])
    assert results["status"].tolist() == ["diverged"]
    assert results["error"].tolist() == ["non-finite training loss"]
    assert out["summary"][0]["n_pairs"] == 0
    runs = _search(store, cfg.tracking.experiment)
    child = runs[
        (runs[f"tags.{PARENT_TAG}"] == out["parent_run_id"]) & (runs["tags.bnpipe.role"] == "cell")
    ].iloc[0]
    # FINISHED (an outcome, reused), its status and failure tags saying diverged for the UI.
    assert child["status"] == "FINISHED"
    assert child["tags.bnpipe.status"] == "diverged"
    assert child["tags.bnpipe.failure_reason"] == "diverged"
    client = mlflow.MlflowClient(store)
    history = pd.read_csv(client.download_artifacts(child["run_id"], "history.csv", str(tmp_path)))
    assert len(history) == 1  # stopped at the epoch it diverged
    assert "weights.npz" in {a.path for a in client.list_artifacts(child["run_id"])}

    # The rerun trains nothing: the diverged cell comes back diverged and still leaves the stats.
    again, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == set()
    assert (again["trained"], again["reused"]) == (0, 1)
    reused = pd.DataFrame(again["results"])
    assert reused["status"].tolist() == ["diverged"] and reused["reused"].tolist() == [True]
    assert reused["run_id"].tolist() == [child["run_id"]]
    assert reused["error"].tolist() == ["non-finite training loss"]
    assert again["summary"][0]["n_pairs"] == 0

    # A store from before diverged cells were outcomes (the run FAILED): it trains once more.
    client.set_terminated(child["run_id"], "FAILED")
    third, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert len(counter.take()) == 1 and third["trained"] == 1
    assert pd.DataFrame(third["results"])["status"].tolist() == ["diverged"]


def test_flow_runs_a_bn_x_learning_rate_grid_and_reuses_it(monkeypatch, tiny_mnist, store):
    grid = [
        "grid.factors={bn: [false, true], learning_rate: [0.001, 0.01]}",
        "grid.seeds=[0,1]",
        "train.epochs=1",
        "stats.n_resamples=199",
    ]
    out, cfg = run_flow(monkeypatch, tiny_mnist, store, grid)
    results = pd.DataFrame(out["results"])
    assert list(results.columns[:3]) == ["bn", "learning_rate", "seed"]
    assert set(results["status"]) == {"finished"} and len(results) == 8
    runs = _search(store, cfg.tracking.experiment)
    children = runs[runs[f"tags.{PARENT_TAG}"] == out["parent_run_id"]]
    assert "bn=on lr=0.01 seed=1" in set(children["tags.mlflow.runName"])
    child = children[children["tags.mlflow.runName"] == "bn=on lr=0.01 seed=1"].iloc[0]
    assert child["params.bn"] == "on" and float(child["params.train.learning_rate"]) == 0.01
    assert child["params.batch_size"] == "32"  # train.batch_size: not a factor of this grid
    parent = runs[runs["run_id"] == out["parent_run_id"]].iloc[0]
    assert np.isfinite(parent["metrics.diff_learning_rate_0.01"])
    assert [r["stratum"] for r in out["summary"]] == ["learning_rate=0.001", "learning_rate=0.01"]
    again, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert again["trained"] == 0 and again["reused"] == 8
    assert (
        pd.DataFrame(again["results"])["test_accuracy"].tolist()
        == results["test_accuracy"].tolist()
    )


def test_a_signal_reaches_the_training_calls_whoever_handles_it() -> None:
    """During a flow run, a SIGTERM that Prefect's handler takes (its exception can be dropped)
    still asks the training calls to stop; after the run, the handler is the one it was."""
    import os
    import signal
    import time

    from bnpipe import trainer
    from flows.pipeline import _signals_stop_training

    taken: list[int] = []

    def swallowing(signum: int, _frame: object) -> None:  # as Prefect's, when Python drops it
        taken.append(signum)

    before = signal.signal(signal.SIGTERM, swallowing)
    trainer.clear_stop()
    try:
        with _signals_stop_training():
            assert trainer.stop_signal() is None
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs in this thread, between two bytecodes
            assert trainer.stop_signal() == signal.SIGTERM
        assert trainer.stop_signal() is None  # the request was this run's (a session's next run)
        assert taken == [signal.SIGTERM]  # the handler it wraps still ran
        assert signal.getsignal(signal.SIGTERM) is swallowing
    finally:
        signal.signal(signal.SIGTERM, before)
        trainer.clear_stop()
