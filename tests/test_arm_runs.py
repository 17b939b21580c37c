"""Arm summary runs end to end: a rerun reuses every cell and leaves the first run's arm runs alone
(what they record: tests/test_tracking_arms.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bnpipe.tracking import Tracker
from tests.test_resume import TrainCounter, grid_cells, run_flow


@pytest.mark.usefixtures("prefect_api")
def test_a_rerun_reuses_every_cell_and_leaves_the_arm_runs_alone(monkeypatch, tiny_mnist, store):
    grid = ["train.epochs=1", "grid.seeds=[0,1]", "grid.batch_sizes=[32,64]"]
    counter = TrainCounter(monkeypatch)
    first, cfg = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == grid_cells(seeds=(0, 1))
    tracker = Tracker(store, cfg.tracking.experiment)
    arms = tracker.arm_runs(first["parent_run_id"])
    assert list(arms["tags.mlflow.runName"]) == [
        f"bn={bn} bs={bs} (mean of 2 seeds)" for bs in (32, 64) for bn in ("off", "on")
    ]
    results = pd.DataFrame(first["results"])
    means = results.groupby(["batch_size", "bn"])["test_accuracy"].mean().to_numpy()
    np.testing.assert_allclose(arms["metrics.test/accuracy"], means, rtol=0, atol=1e-12)
    assert len(tracker.children(first["parent_run_id"])) == 8  # the cells, not the arms

    second, _ = run_flow(monkeypatch, tiny_mnist, store, grid)
    assert counter.take() == set()
    assert (second["trained"], second["reused"]) == (0, 8)
    reused = {r["run_id"] for r in second["results"]}
    assert reused == {r["run_id"] for r in first["results"]}
    assert not reused & set(arms["run_id"])
    # The first run's arm runs are untouched; the second parent has its own.
    again = tracker.arm_runs(first["parent_run_id"])
    assert list(again["run_id"]) == list(arms["run_id"])
    assert set(again["run_status"]) == {"FINISHED"}
    assert len(tracker.arm_runs(second["parent_run_id"])) == 4
    assert tracker.fail_abandoned_runs() == []
