"""The arm summary runs as a user meets them: the link ``bnpipe run`` prints for them, opened in
headless Chromium over a store with more cells than MLflow's runs table loads on its first page.

The cells are logged straight through MlflowClient (no training); the oldest seeds score lower,
so the 100 newest runs (the first page) average differently from all of them.
"""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from bnpipe import stats
from bnpipe.factors import Cell
from bnpipe.tracking import (
    CELL_KEY_TAG,
    LOCAL_UI,
    PARENT_TAG,
    ROLE_TAG,
    STATUS_TAG,
    Tracker,
    logged_params,
)
from tests.browser import browser_test_marks, chromium, mlflow_ui, open_page, wait_for

pytestmark = browser_test_marks()
EXPERIMENT = "arms-ui"
BATCH_SIZES, SEEDS = (16, 32), range(26)  # 104 cells: more than the 100 of a first page
PAGE = 100
NAME_COL, ACC_COL = "attributes.`Run Name`", "metrics.`test/accuracy`"


def log_cells(tracker: Tracker, parent_id: str) -> None:
    """One FINISHED cell run per (batch size, BN, seed), seed blocks in order, as a grid logs."""
    client, start = tracker.client, int(time.time() * 1000) - 3_600_000
    rng = np.random.default_rng(0)
    for i, (seed, bs, bn) in enumerate(
        (s, bs, bn) for s in SEEDS for bs in BATCH_SIZES for bn in (False, True)
    ):
        cell = Cell.of(seed, bn=bn, batch_size=bs)
        ts = start + 1000 * i
        # The oldest seeds (off the first page) lower: all seeds average differently.
        acc = 0.97 + 0.002 * bn - 0.01 * (seed < 2) + rng.normal(0, 0.0005)
        run_id = client.create_run(
            tracker.experiment_id,
            run_name=cell.name,
            start_time=ts,
            tags={
                PARENT_TAG: parent_id,
                ROLE_TAG: "cell",
                CELL_KEY_TAG: f"key-{cell.name}",
                STATUS_TAG: "finished",
            },
        ).info.run_id
        params = logged_params({"bn": bn, "batch_size": bs, "seed": seed})
        client.log_batch(
            run_id,
            metrics=[Metric("test/accuracy", acc, ts, 0)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run_id, "FINISHED", end_time=ts + 500)


@pytest.fixture(scope="module")
def arms_store(tmp_path_factory):
    """A store with one parent, 104 cells and their arm runs; (UI URL, tracker, parent id)."""
    tmp = tmp_path_factory.mktemp("arms-ui")
    tracker = Tracker(f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", EXPERIMENT)
    tracker.check()
    parent_id = tracker.start_run("calm-fox", params={}, tags={ROLE_TAG: "parent"})
    log_cells(tracker, parent_id)
    tracker.client.set_terminated(parent_id, "FINISHED")
    cells = tracker.children(parent_id)
    results = pd.DataFrame(
        {
            "bn": cells["params.bn"],
            "batch_size": cells["params.batch_size"],
            "seed": cells["params.seed"],
            "status": "finished",
            "test_accuracy": cells["metrics.test/accuracy"],
        }
    )
    arms = stats.arm_summary(results, "bn", [False, True], ["batch_size"])
    tracker.log_arm_runs(parent_id, arms, alpha=0.05)
    with mlflow_ui(tmp / "mlruns", tmp / "mlflow-ui.log") as url:
        yield url, tracker, parent_id


def shown_rows(driver) -> dict[str, dict[str, str]]:
    """Run id -> {column id: the cell's text} for every row the runs table rendered (the pinned
    name column and the scrolling metric columns are separate rows of one row id)."""
    out: dict[str, dict[str, str]] = {}
    for row in driver.find_elements("css selector", ".ag-row[row-id]"):
        cells = out.setdefault(row.get_attribute("row-id"), {})
        for cell in row.find_elements("css selector", ".ag-cell[col-id]"):
            cells[cell.get_attribute("col-id")] = cell.get_attribute("textContent").strip()
    return out


def test_the_printed_arms_link_shows_every_seeds_mean_at_first_paint(arms_store):
    url, tracker, parent_id = arms_store
    mlflow.set_tracking_uri(tracker.uri)
    try:
        runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], max_results=5000)
    finally:
        mlflow.set_tracking_uri(None)
    cells = runs[runs["tags.bnpipe.role"] == "cell"]
    assert len(cells) == len(SEEDS) * len(BATCH_SIZES) * 2 > PAGE
    by_arm = cells.groupby(["params.bn", "params.batch_size"])["metrics.test/accuracy"]
    arms = runs[runs["tags.bnpipe.role"] == "arm"].set_index("run_id")
    truth = {  # arm run id -> its cells' mean over every seed, from the store itself
        run_id: by_arm.mean()[(arm["params.bn"], arm["params.batch_size"])]
        for run_id, arm in arms.iterrows()
    }
    assert len(truth) == 2 * len(BATCH_SIZES)
    # What the table's first page (the newest 100 runs) would average: not the truth.
    first_page = runs.sort_values("start_time", ascending=False).head(PAGE)
    paged = first_page[first_page["tags.bnpipe.role"] == "cell"].groupby(
        ["params.bn", "params.batch_size"]
    )["metrics.test/accuracy"]
    assert all(abs(m - by_arm.mean()[k]) > 5e-4 for k, m in paged.mean().items())

    link = tracker.arms_url(parent_id)
    assert link.startswith(LOCAL_UI + "/#/experiments/")
    with chromium() as driver:
        open_page(driver, url + link.removeprefix(LOCAL_UI), "Run Name", 240)

        def arms_shown() -> dict[str, dict[str, str]] | None:
            rows = shown_rows(driver)
            return (
                rows
                if set(rows) >= set(truth) and all(r.get(ACC_COL) for r in rows.values())
                else None
            )

        rows = wait_for(arms_shown, 60, "the arm rows with their test/accuracy")
        body = driver.find_element("tag name", "body").text
    assert set(rows) == set(truth), rows  # the arm runs only: no cell, no parent
    assert f"{len(truth)} matching runs" in body
    for run_id, mean in truth.items():
        name = arms.loc[run_id, "tags.mlflow.runName"]
        assert name.endswith(f"(mean of {len(SEEDS)} seeds)") and name in body
        assert float(rows[run_id][ACC_COL]) == pytest.approx(mean, abs=1e-9), name
