"""The MLflow UI as a user meets it, in headless Chromium over a small real run.

A real ``mlflow ui`` serves a temp store that one small flow run filled (generated data, 2 seeds,
1 epoch, 2 batch sizes); selenium drives the distribution's chromium and chromedriver.
"""

from __future__ import annotations

import pytest

from bnpipe.config import POPULATIONS, TEST_SET
from bnpipe.tracking import LOCAL_UI
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
    """One small real flow run in a temp store, served by `mlflow ui`; (UI URL, flow output)."""
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
        yield url, out


@pytest.fixture(scope="module")
def driver():
    with chromium() as d:
        yield d


def test_printed_link_opens_the_parent_in_model_training_mode(ui_run, driver):
    url, out = ui_run
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
    url, out = ui_run
    open_page(driver, url + out["parent_url"].removeprefix(LOCAL_UI), "Description")
    driver.find_element("link text", "Runs").click()
    open_page(driver, driver.current_url, out["run_name"])
    mlflow_group_by(driver, ["bn", "batch_size"])
    rows = wait_for(lambda: group_rows(driver), 30, "group rows")
    expected = {f"Group: bn: {bn}, batch_size: {bs}" for bn in ("on", "off") for bs in BATCH_SIZES}
    assert set(rows) == expected and len(rows) == len(expected), rows


def test_report_html_shows_its_figures_in_the_artifact_viewer(ui_run, driver):
    url, out = ui_run
    run_page = (
        out["parent_url"].removeprefix(LOCAL_UI).replace("?", "/artifacts/report/report.html?")
    )
    open_page(driver, url + run_page, "report.html")
    widths = report_images(driver)
    assert len(widths) == 4  # the report's four figures
    assert all(w > 0 for w in widths), widths
