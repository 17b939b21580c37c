"""The MLflow UI as a user meets it, in headless Chromium: one ``mlflow ui`` over one temp store.

- A small real flow run (generated data, 2 seeds, 1 epoch, 2 batch sizes): the printed link, the
  runs table grouped by the factors, report.html's figures.
- The arm summary runs: the link ``bnpipe run`` prints for them, over an experiment with more
  cells than MLflow's runs table loads on its first page. Those cells are logged straight
  through MlflowClient (no training); the oldest seeds score lower, so the 100 newest runs (the
  first page) average differently from all of them.

Both in one module so that one ``mlflow ui`` start serves them; selenium drives the
distribution's chromium and chromedriver.
"""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from bnpipe import stats
from bnpipe.config import POPULATIONS, TEST_SET
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
from tests.browser import (
    browser_test_marks,
    chromium,
    group_rows,
    mlflow_group_by,
    mlflow_ui,
    open_page,
    report_images,
    wait_for,
)
from tests.conftest import make_tiny_mnist

pytestmark = browser_test_marks()
SEEDS, BATCH_SIZES = [0, 1], [32, 64]


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory, prefect_api):
    """One small real flow run in a temp store, served by `mlflow ui`; (UI URL, flow output, the
    store's folder: the arm-runs experiment below goes into the same store)."""
    import flows.pipeline as pipeline
    from bnpipe.config import load_config

    tmp = tmp_path_factory.mktemp("ui")
    data = make_tiny_mnist()
    cfg = load_config(
        None,
        [
            f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
            f"tracking.reports_dir={tmp / 'reports'}",
            "stats.n_resamples=199",
            "tracking.log_models=true",
            "train.epochs=1",
            f"grid.seeds={SEEDS}",
            f"grid.batch_sizes={BATCH_SIZES}",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(pipeline, "load_mnist", lambda *_a, **_k: data)
        out = pipeline.ablation(cfg.model_dump(mode="json"))
    with mlflow_ui(tmp / "mlruns", tmp / "mlflow-ui.log") as url:
        yield url, out, tmp / "mlruns"


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def test_printed_link_opens_the_parent_in_model_training_mode(ui_run, driver):
    url, out, _ = ui_run
    link = out["parent_url"]
    # The printed link points at `make ui`'s address for a local store; here the test's server.
    assert link.startswith(LOCAL_UI + "/#/experiments/")
    assert "workflowType=machine_learning" in link
    open_page(driver, url + link.removeprefix(LOCAL_UI), "Description")
    body = driver.find_element("tag name", "body").text
    assert out["run_name"] in body
    # The description is the decided table, rendered (a header cell and one row per batch size).
    assert "decision" in body and "pp [" in body and "pairs used" in body
    # Which population the decisions are about (issue 28), in the description and as the tag:
    # a fixed design's t-tests count the seeds' noise alone, so these test images.
    assert POPULATIONS[TEST_SET] in body and "bnpipe.population" in body, body
    assert "workflowType=genai" not in driver.current_url
    assert "/overview/usage" not in driver.current_url  # the GenAI landing page
    # The runs table, from the parent's breadcrumb, lists the parent, its cells and its arm
    # summary runs (one per BN level and batch size).
    driver.find_element("link text", "Runs").click()
    n_runs = 1 + 2 * len(BATCH_SIZES) * len(SEEDS) + 2 * len(BATCH_SIZES)
    open_page(driver, driver.current_url, f"{n_runs} matching runs")
    assert "workflowType=genai" not in driver.current_url


def test_grouping_by_bn_and_batch_size_shows_one_group_per_pair(ui_run, driver):
    url, out, _ = ui_run
    open_page(driver, url + out["parent_url"].removeprefix(LOCAL_UI), "Description")
    driver.find_element("link text", "Runs").click()
    open_page(driver, driver.current_url, out["run_name"])
    mlflow_group_by(driver, ["bn", "batch_size"])
    rows = wait_for(lambda: group_rows(driver), 30, "group rows")
    expected = {f"Group: bn: {bn}, batch_size: {bs}" for bn in ("on", "off") for bs in BATCH_SIZES}
    assert set(rows) == expected and len(rows) == len(expected), rows


def test_report_html_shows_its_figures_in_the_artifact_viewer(ui_run, driver):
    url, out, _ = ui_run
    run_page = (
        out["parent_url"].removeprefix(LOCAL_UI).replace("?", "/artifacts/report/report.html?")
    )
    open_page(driver, url + run_page, "report.html")
    widths = report_images(driver)
    assert len(widths) == 4  # the report's four figures
    assert all(w > 0 for w in widths), widths


# -- the arm summary runs --------------------------------------------------------------------
ARMS_EXPERIMENT = "arms-ui"
ARM_BATCH_SIZES, ARM_SEEDS = (16, 32), range(26)  # 104 cells: more than the 100 of a first page
PAGE = 100
NAME_COL, ACC_COL = "attributes.`Run Name`", "metrics.`test/accuracy`"


def log_cells(tracker: Tracker, parent_id: str) -> None:
    """One FINISHED cell run per (batch size, BN, seed), seed blocks in order, as a grid logs."""
    client, start = tracker.client, int(time.time() * 1000) - 3_600_000
    rng = np.random.default_rng(0)
    for i, (seed, bs, bn) in enumerate(
        (s, bs, bn) for s in ARM_SEEDS for bs in ARM_BATCH_SIZES for bn in (False, True)
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
def arms_store(ui_run):
    """An experiment of the UI's store with one parent, 104 cells and their arm runs; (UI URL,
    tracker, parent id). Logged while ``mlflow ui`` serves the store: one server start for both."""
    url, _, mlruns = ui_run
    tracker = Tracker(f"sqlite:///{mlruns / 'mlflow.db'}", ARMS_EXPERIMENT)
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
    return url, tracker, parent_id


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
    assert len(cells) == len(ARM_SEEDS) * len(ARM_BATCH_SIZES) * 2 > PAGE
    by_arm = cells.groupby(["params.bn", "params.batch_size"])["metrics.test/accuracy"]
    arms = runs[runs["tags.bnpipe.role"] == "arm"].set_index("run_id")
    truth = {  # arm run id -> its cells' mean over every seed, from the store itself
        run_id: by_arm.mean()[(arm["params.bn"], arm["params.batch_size"])]
        for run_id, arm in arms.iterrows()
    }
    assert len(truth) == 2 * len(ARM_BATCH_SIZES)
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
        assert name.endswith(f"(mean of {len(ARM_SEEDS)} seeds)") and name in body
        assert float(rows[run_id][ACC_COL]) == pytest.approx(mean, abs=1e-9), name
