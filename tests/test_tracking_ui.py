"""What the MLflow UI and API show of a run: LoggedModels, datasets, description, names a
comparison can use, report.html; and runs recorded under the names used before still reused."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from bnpipe.grid import cell_key_for, cell_params, grid_cells, strata
from bnpipe.report import markdown_to_html, write_html_report
from bnpipe.reproduce import recorded_settings
from bnpipe.tracking import (
    CELL_KEY_TAG,
    KIND_TAG,
    NOTE_TAG,
    PARENT_TAG,
    STATUS_TAG,
    Tracker,
    metric_name,
)
from bnpipe.train.common import HISTORY_KEYS, Cell
from tests.conftest import make_tiny_mnist
from tests.test_resume import TrainCounter, accuracies, flow_config, run_flow

pytestmark = pytest.mark.usefixtures("prefect_api")
GRID = [
    "train.epochs=1",
    "grid.seeds=[0,1]",
    "grid.batch_sizes=[64]",
    "tracking.log_models=true",
]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, prefect_api):
    """One small flow run: (store URI, flow output, data)."""
    import flows.pipeline as pipeline

    tmp = tmp_path_factory.mktemp("logged")
    store = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    data = make_tiny_mnist()
    # report.html with its figures inside is checked below (the shared settings leave them out).
    cfg = flow_config(store, [*GRID, "report.figures=true"])
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(pipeline, "load_mnist", lambda *_a, **_k: data)
        out = pipeline.ablation(cfg.model_dump(mode="json"))
    return store, out, data


def _children(client: mlflow.MlflowClient, parent_id: str) -> list:
    """The parent's cell runs (its arm summary runs left out)."""
    exp = client.get_run(parent_id).info.experiment_id
    cells = f"tags.`{PARENT_TAG}` = '{parent_id}' AND tags.`bnpipe.role` = 'cell'"
    return client.search_runs([exp], cells)


def test_every_cell_is_a_logged_model_that_pyfunc_loads(logged):
    store, out, data = logged
    client = mlflow.MlflowClient(store)
    children = _children(client, out["parent_run_id"])
    assert len(children) == 4
    mlflow.set_tracking_uri(store)
    try:
        for run in children:
            (output,) = run.outputs.model_outputs
            model = client.get_logged_model(output.model_id)
            assert model.source_run_id == run.info.run_id and model.status == "READY"
            # The test metrics name the model they measured.
            linked = {m.key: m.value for m in model.metrics}
            assert {m.dataset_name for m in model.metrics} == {"mnist-test"}
            recorded = run.data.metrics["test/accuracy"]
            assert linked["test/accuracy"] == recorded
            loaded = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
            assert loaded.metadata.signature is not None
            probs = np.asarray(loaded.predict(data.x_test))
            assert probs.shape == (len(data.y_test), 10)
            assert float((probs.argmax(axis=1) == data.y_test).mean()) == recorded
    finally:
        mlflow.set_tracking_uri(None)


def test_runs_show_datasets_description_and_comparable_names(logged):
    store, out, data = logged
    client = mlflow.MlflowClient(store)
    parent = client.get_run(out["parent_run_id"])
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags[KIND_TAG] == "custom_model_development" and exp.tags[NOTE_TAG]
    # The description is the decided table (a fixed design's verdicts), one row per batch size.
    note = parent.data.tags[NOTE_TAG]
    assert note.startswith("Decided (fixed design")
    assert "| batch size | decision |" in note and "| 64 | **" in note
    children = _children(client, parent.info.run_id)
    for run in [parent, *children]:
        inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"mnist-train", "mnist-test"}
        # The digest is the data's own, and the shapes are the full arrays' (never uploaded).
        assert {d.digest for d in inputs.values()} == {data.digest[:32]}
        profile = json.loads(inputs["mnist-train"].profile)
        assert profile["features_shape"] == list(data.x_train.shape)
    for run in children:
        # Params spelled as on the parent, with the parent's values; bn as on/off.
        shared = {k: v for k, v in run.data.params.items() if k not in ("bn", "batch_size", "seed")}
        assert shared and all(parent.data.params[k] == v for k, v in shared.items()), shared
        assert run.data.params["bn"] in ("on", "off")
        assert run.info.run_name.startswith(f"bn={run.data.params['bn']} ")
        # Sectioned metrics, and no metric named like a param.
        assert {"train/loss", "val/accuracy", "test/accuracy", "test/loss"} <= set(run.data.metrics)
        assert not set(run.data.metrics) & set(run.data.params)
    # history.csv keeps the names the statistics read.
    path = client.download_artifacts(children[0].info.run_id, "history.csv")
    assert list(pd.read_csv(path).columns) == ["epoch", *HISTORY_KEYS]
    assert out["parent_url"] == Tracker(store, exp.name).run_url(parent.info.run_id)


def test_report_html_is_logged_with_its_figures_inside(logged, tmp_path):
    store, out, _ = logged
    client = mlflow.MlflowClient(store)
    path = client.download_artifacts(out["parent_run_id"], "report/report.html", str(tmp_path))
    page = Path(path).read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in page and "verdict" in page


def test_markdown_to_html_embeds_local_images_only(tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "fig.png").write_bytes(png)
    md = tmp_path / "report.md"
    md.write_text(
        "# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![fig](fig.png)\n![web](http://x/y.png)\n"
    )
    page = write_html_report(md).read_text()
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert 'src="http://x/y.png"' in page and "<td>1</td>" in page.replace(
        ' style="text-align: right;"', ""
    )
    with pytest.raises(FileNotFoundError):
        markdown_to_html("![gone](missing.png)", tmp_path)


def _log_legacy_cell(client, exp_id: str, key: str, cell: Cell, acc: float, params: dict) -> str:
    """A finished child run as bnpipe wrote it before the renaming (names, bn True/False)."""
    run = client.create_run(exp_id, run_name=cell.name, tags={CELL_KEY_TAG: key})
    rid = run.info.run_id
    for k, v in params.items():
        client.log_param(rid, k, v)
    client.log_metric(rid, "test_accuracy", acc)
    client.log_metric(rid, "test_loss", 1.0 - acc)
    client.log_metric(rid, "val_accuracy", acc, step=1)
    history = pd.DataFrame([[1, 0.5, 0.8, 0.6, acc, 0.1]], columns=["epoch", *HISTORY_KEYS])
    client.log_text(rid, history.to_csv(index=False), "history.csv")
    client.set_tag(rid, STATUS_TAG, "finished")
    client.set_terminated(rid, "FINISHED")
    return rid


def test_runs_recorded_under_the_old_names_are_still_reused(monkeypatch, store):
    data = make_tiny_mnist()
    cfg = flow_config(store, GRID)
    tracker = Tracker(store, cfg.tracking.experiment)
    exp_id = tracker.check()
    client = mlflow.MlflowClient(store)
    recorded = {}
    for i, cell in enumerate(grid_cells(cfg, dict.fromkeys(strata(cfg), cfg.grid.seeds))):
        recorded[cell] = 0.5 + i / 100
        params = cell_params(cfg, cell, data.digest)  # the keys and spelling of the old runs
        key = cell_key_for(cfg, cell, data.digest)
        rid = _log_legacy_cell(client, exp_id, key, cell, recorded[cell], params)
        old = tracker.cell_run(rid)
        assert old.reusable and old.test_accuracy == recorded[cell]
        assert old.metrics[metric_name("val_accuracy")] == recorded[cell]
        assert recorded_settings(old).cell == cell  # bnpipe reproduce reads the old params too
    counter = TrainCounter(monkeypatch)
    out, _ = run_flow(monkeypatch, data, store, GRID)
    assert counter.take() == set()
    assert out["reused"] == len(recorded)
    assert accuracies(out) == recorded
