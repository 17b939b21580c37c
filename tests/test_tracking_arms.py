"""bnpipe.tracking.arms: what arm summary runs record, and that nothing that finds, claims,
reuses or closes cells ever takes one for a cell (no training)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from bnpipe import stats
from bnpipe.tracking import (
    ARM_ORDER_TAG,
    NOTE_TAG,
    OWNER_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SHARED_VIEW_PREFIX,
    Owner,
    Tracker,
    arms_view_key,
    recorded_cell,
)

EXPERIMENT = "arms"


def synthetic_results(seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        [
            {
                "bn": bn,
                "batch_size": bs,
                "seed": s,
                "status": "finished",
                "test_accuracy": 0.97 + 0.002 * bn + rng.normal(0, 0.001),
            }
            for bs in (16, 32)
            for bn in (False, True)
            for s in range(seeds)
        ]
    )


def test_arm_runs_record_each_arm_under_its_parent(store):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    parent = tracker.start_run("calm-fox", params={}, tags={ROLE_TAG: "parent"})
    results = synthetic_results()
    arms = stats.arm_summary(results, "bn", [False, True], ["batch_size"], 0.05)
    ids = tracker.log_arm_runs(parent, arms, alpha=0.05)
    client = mlflow.MlflowClient(store)
    runs = [client.get_run(i) for i in ids]
    assert [r.info.run_name for r in runs] == [
        "bn=off bs=16 (mean of 5 seeds)",
        "bn=on bs=16 (mean of 5 seeds)",
        "bn=off bs=32 (mean of 5 seeds)",
        "bn=on bs=32 (mean of 5 seeds)",
    ]
    for run, arm in zip(runs, arms.itertuples(index=False), strict=True):
        assert run.info.status == "FINISHED"
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags[PARENT_TAG] == parent and tags[ROLE_TAG] == "arm"
        assert OWNER_TAG not in tags and "not a trained cell" in tags[NOTE_TAG]
        # Spelled as the cells' params (bn on/off, batch size as its number): Group by joins them.
        assert params["bn"] == ("on" if arm.bn else "off")
        assert params["batch_size"] == str(arm.batch_size)
        cells = results[(results["bn"] == arm.bn) & (results["batch_size"] == arm.batch_size)]
        assert metrics["test/accuracy"] == pytest.approx(cells["test_accuracy"].mean(), abs=1e-12)
        assert metrics["test/accuracy_sd"] == pytest.approx(cells["test_accuracy"].std(), abs=1e-12)
        assert metrics["test/accuracy_ci_low"] == pytest.approx(arm.ci_low, abs=1e-12)
        assert metrics["test/accuracy_ci_high"] == pytest.approx(arm.ci_high, abs=1e-12)
        assert metrics["n_seeds"] == 5
    # Newest first lists them first, in the summary's order.
    starts = [r.info.start_time for r in runs]
    assert starts == sorted(starts, reverse=True)
    # The link's view: this parent's arm runs only, ordered, their numbers shown.
    exp = client.get_experiment_by_name(EXPERIMENT)
    view = json.loads(exp.tags[SHARED_VIEW_PREFIX + arms_view_key(parent)])
    assert f"tags.`{PARENT_TAG}` = '{parent}'" in view["searchFilter"]
    assert view["orderByKey"] == f"tags.`{ARM_ORDER_TAG}`" and view["orderByAsc"] is True
    assert "metrics.`test/accuracy`" in view["selectedColumns"]
    assert tracker.arms_url(parent).endswith(
        f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={arms_view_key(parent)}"
    )
    # Published again (bnpipe report): replaced, not doubled.
    again = tracker.log_arm_runs(parent, arms, alpha=0.05)
    assert list(tracker.arm_runs(parent)["run_id"]) == again
    assert {client.get_run(i).info.lifecycle_stage for i in ids} == {"deleted"}
    assert tracker.children(parent).empty


def test_an_arm_run_is_never_a_cell(store):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    parent = tracker.start_run("calm-fox", params={}, tags={ROLE_TAG: "parent"})
    arms = stats.arm_summary(synthetic_results(2), "bn", [False, True], ["batch_size"])
    (arm_id, *_) = tracker.log_arm_runs(parent, arms, alpha=0.05)
    run = tracker.cell_run(arm_id)
    assert run.is_arm and not run.reusable and run.key == ""
    with pytest.raises(ValueError, match="not a cell's"):
        recorded_cell(run.params)  # no seed among them
    # Even a RUNNING arm run whose owner is gone (as a cell's claim would be) is no claim: the
    # abandoned-run marking leaves it alone.
    client = mlflow.MlflowClient(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client.set_terminated(arm_id, "RUNNING")
    client.set_tag(arm_id, OWNER_TAG, f"{socket.gethostname()}|{dead.pid}|gone")
    assert Owner.parse(client.get_run(arm_id).data.tags[OWNER_TAG]).is_gone()
    assert tracker.fail_abandoned_runs() == []
    assert client.get_run(arm_id).info.status == "RUNNING"
    assert tracker.finished_cells([""]) == {}
