"""What a user meets in the Prefect UI: the flow run named as its MLflow parent run, progress in
Prefect's logs and a progress artifact, links between the two runs, the report's figures; and
the live bar in a terminal.

The browser test starts ``prefect server start`` on a free 127.0.0.1 port, runs the flow on a
tiny real grid against it and drives headless Chromium over the flow run's page.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import mlflow
import pytest

from bnpipe.config import POPULATIONS, TEST_SET
from bnpipe.progress import Progress
from bnpipe.tracking import run_url
from tests.browser import browser_missing, chromium
from tests.conftest import bs_cell, requires_mnist


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(progress: Progress) -> None:
    progress.total += 2  # as a sequential design adds a look's cells
    progress.set_stage("look 1/2")
    progress.epoch(bs_cell(True, 32, 0), 1, {"val_accuracy": 0.9, "epoch_time_s": 1.0})
    progress.cell(bs_cell(True, 32, 0), "finished", 0.91)
    progress.cell(bs_cell(True, 32, 1), "finished", 0.92)
    progress.close()


def test_terminal_gets_a_live_bar_and_logs_get_plain_lines() -> None:
    tty, lines, counts = _Terminal(), [], []
    _drive(Progress(2, 3, stream=tty, sinks=[lines.append], on_cell=lambda d, t: counts.append(d)))
    shown = tty.getvalue()
    assert "\x1b[" in shown  # a terminal: rich redraws the bar with escape codes
    assert "2/4" in shown and "ETA" in shown and "look 1/2" in shown
    assert "bn=on bs=32 seed=1: finished" in shown  # finished cells still print above the bar
    assert counts == [1, 2]
    # What goes to Prefect's log: the stage, the epoch and each cell, as plain lines.
    assert [re.sub(r"^\[ *\d+/4\] [\d:]+ ", "", line) for line in lines] == [
        "look 1/2",
        "training bn=on bs=32 epoch 1/3 (val_accuracy 0.9000, 1.0s)",
        "bn=on bs=32 seed=0: finished, test_accuracy 0.9100",
        "bn=on bs=32 seed=1: finished, test_accuracy 0.9200",
    ]

    pipe = io.StringIO()
    _drive(Progress(2, 3, stream=pipe))
    plain = pipe.getvalue().splitlines()
    assert "\x1b[" not in pipe.getvalue() and len(plain) == 4
    assert plain[-1].startswith("[  2/4] 0:00:00 bn=on bs=32 seed=1: finished")


def test_run_url_points_at_the_server_or_the_local_ui() -> None:
    assert run_url("http://10.0.0.5:5000/", "3", "abc") == (
        "http://10.0.0.5:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert run_url("sqlite:////tmp/m/mlflow.db", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )


def test_report_images_are_embedded(tmp_path: Path) -> None:
    from flows.pipeline import embed_images

    png = b"\x89PNG\r\n\x1a\n-fake"
    (tmp_path / "fig_a.png").write_bytes(png)
    text = "# r\n![fig a](fig_a.png)\n![gone](missing.png)\n![web](http://x/y.png)\n"
    out = embed_images(text, tmp_path)
    embedded = out.split("(data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(embedded) == png
    assert "![gone](missing.png)" in out and "![web](http://x/y.png)" in out


# -- a real flow run on a temporary Prefect API ---------------------------------------------------
@pytest.mark.usefixtures("prefect_api")
def test_flow_run_is_named_linked_and_reports_progress(monkeypatch, tiny_mnist, store) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter
    from prefect.logging.handlers import APILogHandler

    import flows.pipeline as pipeline
    from bnpipe.config import load_config

    monkeypatch.setattr(pipeline, "load_mnist", lambda _dir: tiny_mnist)
    reports = store.removeprefix("sqlite:///").replace("mlruns/mlflow.db", "reports")
    cfg = load_config(
        None,
        [
            f"tracking.uri={store}",
            f"tracking.reports_dir={reports}",
            "train.epochs=1",
            "grid.seeds=[0,1]",
            "grid.batch_sizes=[64]",
            "stats.n_resamples=99",
        ],
    )
    state = pipeline.ablation(cfg, return_state=True)  # a Config, as the typed form sends
    out = state.result()
    parent = mlflow.MlflowClient(store).get_run(out["parent_run_id"])
    flow_run_id = parent.data.tags["bnpipe.prefect.flow_run_id"]
    assert flow_run_id == str(state.state_details.flow_run_id)

    async def read() -> tuple:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            by_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            artifacts = await client.read_artifacts(artifact_filter=by_run)
            logs = await client.read_logs(LogFilter(flow_run_id={"any_": [run.id]}))
            return run, artifacts, logs

    APILogHandler().flush()  # logs are sent in batches, in the background
    run, artifacts, logs = asyncio.run(read())
    assert run.name == out["run_name"] == parent.info.run_name
    by_key = {a.key: a for a in artifacts}
    assert by_key["bn-ablation-progress"].type == "progress"
    assert by_key["bn-ablation-progress"].data == 100.0
    link = run_url(store, parent.info.experiment_id, parent.info.run_id)
    assert f"]({link})" in by_key["bn-ablation-mlflow-run"].data
    assert by_key["bn-ablation-report"].data.count("](data:image/png;base64,") >= 4
    messages = [log.message for log in logs]
    assert sum(": finished, test_accuracy" in m for m in messages) == 4
    decided = [m for m in messages if m.startswith("Decided: BN on minus BN off test accuracy")]
    assert decided and "| batch size | decision |" in decided[-1], messages


# -- the UI in a real browser ---------------------------------------------------------------------
def _images_loaded(driver) -> list[int] | None:
    """Natural widths of the page's images once all have finished loading (0: broken)."""
    widths = driver.execute_script(
        "const imgs = [...document.images];"
        "return imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : null"
    )
    return widths or None


@pytest.mark.browser
@pytest.mark.server
@requires_mnist
@pytest.mark.skipif(browser_missing() is not None, reason=f"browser test: {browser_missing()}")
def test_prefect_ui_shows_progress_report_figures_and_the_run_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_db: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import flows.pipeline as pipeline
    from bnpipe.config import load_config
    from tests.test_servers import (
        BIN,
        EXPERIMENT,
        client_env,
        drain_prefect_workers,
        free_port,
        logs_on_failure,
        running,
        write_params,
    )

    port = free_port()
    ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    # The UI asks this address for its data; without it, it would call port 4200.
    env = client_env(tmp_path, prefect_db=prefect_db, PREFECT_API_URL=api, PREFECT_UI_API_URL=api)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # params.yaml's store
    server_log = tmp_path / "server.log"
    start = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    # Kept where BNPIPE_SCREENSHOTS says (to look at, or to refresh docs/screenshots/).
    shots = Path(os.environ.get("BNPIPE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    def text(selector: str = "body") -> str:
        return driver.find_element(By.CSS_SELECTOR, selector).text

    def click(label: str) -> None:
        xpath = f"//*[text()[normalize-space(.)='{label}']]"
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.XPATH, xpath))[0].click()

    def open_artifact(key: str) -> None:
        """Open one artifact as a user does: the flow run's Artifacts tab, then its card."""
        driver.get(url)
        click("Artifacts")
        click(key)

    with (
        chromium(1400, 1100) as driver,
        running(start, env=env, log=server_log, ready_url=f"{api}/health"),
        logs_on_failure(server=server_log),
    ):
        params = write_params(tmp_path, report={"figures": True})  # the report's images
        # The flow run in this process, on this server (what the UI shows of it is the subject,
        # not the command: a `bnpipe run` process and its training process cost ~8 s of CPU more).
        with temporary_settings(updates={PREFECT_API_URL: api}):
            pipeline.ablation(load_config(params).model_dump(mode="json"))
            drain_prefect_workers()
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        client = mlflow.MlflowClient(uri)
        (parent,) = client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id],
            filter_string="tags.`bnpipe.role` = 'parent'",
        )
        name = parent.info.run_name
        wait = WebDriverWait(driver, 60)

        # The MLflow parent's tag opens the flow run, which has the same name.
        url = parent.data.tags["bnpipe.prefect.flow_run_url"]
        assert url.startswith(f"{ui}/runs/flow-run/")
        driver.get(url)
        wait.until(lambda d: "4/4" in text())  # the progress lines in the Logs tab
        assert driver.title.startswith(f"Flow Run: {name} ")
        assert "bn=on bs=128 seed=1: finished" in text()
        driver.save_screenshot(str(shots / "prefect-flow-run-logs.png"))
        click("Artifacts")
        wait.until(lambda d: f"4 of 4 cells done ({name})" in text())
        driver.save_screenshot(str(shots / "prefect-flow-run-artifacts.png"))

        open_artifact("bn-ablation-progress")
        wait.until(lambda d: "Progress: 100%" in text())
        driver.save_screenshot(str(shots / "prefect-progress.png"))

        open_artifact("bn-ablation-mlflow-run")
        link = wait.until(lambda d: d.find_element(By.LINK_TEXT, f"MLflow parent run {name}"))
        want = run_url(uri, parent.info.experiment_id, parent.info.run_id)
        assert link.get_attribute("href") == want

        # The decided table, with the population it is about (a fixed design: these images).
        open_artifact("bn-ablation-report-table")
        wait.until(lambda d: "population" in text())
        assert "decision" in text() and "test_set" in text(), text()
        assert f"about {POPULATIONS[TEST_SET]} ({name})" in text(), text()  # its description
        driver.save_screenshot(str(shots / "prefect-decisions-table.png"))

        open_artifact("bn-ablation-report")
        widths = wait.until(_images_loaded)
        assert len(widths) >= 4 and min(widths) > 0, widths
        driver.set_window_size(1400, 2600)
        driver.save_screenshot(str(shots / "prefect-report.png"))
    print("screenshots:", shots)  # shown with -rP
