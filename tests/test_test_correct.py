"""Per-example test outcomes (issue 28): recorded with every cell, read back for the crossed
analysis, and filled in from the weights of cells recorded before they were."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pytest

from bnpipe.config import POPULATIONS
from bnpipe.evaluate import metrics_from_probs, pack_correct, unpack_correct
from bnpipe.tracking import PARENT_TAG
from bnpipe.tracking.cell_record import TEST_CORRECT
from bnpipe.tracking.names import metric_name
from tests.test_resume import TrainCounter, run_flow, search

pytestmark = pytest.mark.usefixtures("prefect_api")

# A digits design on tiny data: 2 batch sizes, looks at 2 and 4 pairs. With 200 test images the
# examples' noise is large, so a comparison may stop at its first look (the floor): either way
# the crossed looks, the per-example artifacts and the surfaces are what is checked.
DIGITS = [
    "train.engine=fused",
    "train.epochs=1",
    "grid.batch_sizes=[32,64]",
    "stats.first_look=2",
    "stats.look_every=2",
    "stats.max_seeds=4",
    "stats.equivalence_margin=0.05",
    "stats.population=digits",
]


def test_pack_round_trip_and_bad_text() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 10_000):
        bits = rng.random(n) < 0.9
        text = pack_correct(bits)
        assert np.array_equal(unpack_correct(text), bits)
    assert len(pack_correct(np.ones(10_000, bool)).partition(":")[2]) == 1668  # 1,250 bytes
    assert pack_correct(np.zeros(0, bool)) == "" and unpack_correct("") is None
    assert unpack_correct(float("nan")) is None  # an empty cell read back from CSV
    for bad in ("12:AAAA", "x:AA==", "3:not base64!"):
        with pytest.raises(ValueError, match="test_correct"):
            unpack_correct(bad)
    # The evaluation's outcomes are what its accuracy counts.
    probs = rng.dirichlet(np.ones(10), size=500)
    y = rng.integers(0, 10, 500)
    ev = metrics_from_probs(probs, y)
    assert ev.correct.dtype == bool and ev.correct.mean() == ev.test_accuracy


def _artifact_file(store: str, run_id: str) -> Path:
    mlflow.set_tracking_uri(store)
    try:
        uri = mlflow.get_run(run_id).info.artifact_uri
    finally:
        mlflow.set_tracking_uri(None)
    return Path(unquote(urlparse(uri).path)) / TEST_CORRECT


def _outcomes(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return np.unpackbits(f["packed"], count=int(f["n"])).astype(bool)


def test_digits_run_records_outcomes_and_fills_in_earlier_cells(
    monkeypatch, tiny_mnist, store, capsys
) -> None:
    # its noise-sources figure is checked below (the shared settings leave figures out)
    first, cfg = run_flow(monkeypatch, tiny_mnist, store, [*DIGITS, "report.figures=true"])
    finished = [r for r in first["results"] if r["status"] == "finished"]
    assert finished
    for r in finished:
        bits = _outcomes(_artifact_file(store, r["run_id"]))
        assert bits.size == len(tiny_mnist.y_test) and bits.mean() == r["test_accuracy"]
        assert np.array_equal(unpack_correct(r["test_correct"]), bits)
    # Every surface says what the decisions are about.
    assert {d["population"] for d in first["decisions"]} == {"digits"}
    runs = search(store, cfg.tracking.experiment)
    parent = runs.loc[runs["run_id"] == first["parent_run_id"]].iloc[0]
    assert parent["tags.bnpipe.population"] == POPULATIONS["digits"]
    assert parent["params.stats.population"] == "digits"
    from bnpipe.cli import format_run_summary

    assert f"about {POPULATIONS['digits']}:" in format_run_summary(first)
    report = Path(first["report"]).read_text()
    assert "handwritten digits like MNIST's test set" in report
    assert "Where the noise comes from" in report
    assert (Path(first["report"]).parent / "noise_sources.png").exists()

    # Cells recorded before issue 28 have no outcomes: remove them, and make one cell's logged
    # accuracy disagree with its weights. The next run trains nothing, fills the others in from
    # their weights (exactly their logged accuracy) and names the one that does not reproduce.
    for r in finished:
        _artifact_file(store, r["run_id"]).unlink()
    odd = finished[0]
    mlflow.set_tracking_uri(store)
    try:
        mlflow.MlflowClient().log_metric(
            odd["run_id"],
            metric_name("test_accuracy"),
            0.5,
            timestamp=int(time.time() * 1e3) + 10**6,
        )
    finally:
        mlflow.set_tracking_uri(None)
    capsys.readouterr()
    counter = TrainCounter(monkeypatch)
    again, _ = run_flow(monkeypatch, tiny_mnist, store, DIGITS)
    out = capsys.readouterr().out
    # None of them trains again (the odd cell's pair has no outcomes now, so its comparison
    # may need new seeds).
    before = {(r["bn"], r["batch_size"], r["seed"]) for r in first["results"]}
    assert not {(c.levels[0][1], c.levels[1][1], c.seed) for c in counter.take()} & before
    assert again["reused"] == len(first["results"])
    assert "filled in" in out and f"per-example outcomes of {len(finished) - 1} earlier" in out
    name = next(c for c in out.splitlines() if "warning:" in c and odd["run_id"][:8] in c)
    assert "not the logged 0.5" in name
    assert not _artifact_file(store, odd["run_id"]).exists()
    for r in finished[1:]:
        assert _outcomes(_artifact_file(store, r["run_id"])).mean() == r["test_accuracy"]
    assert all(
        runs.loc[runs["run_id"] == r["run_id"], f"tags.{PARENT_TAG}"].iloc[0]
        == first["parent_run_id"]
        for r in finished
    )


def test_a_process_that_keeps_reads_reads_back_what_it_wrote_without_the_store(
    store, monkeypatch
) -> None:
    """A warm session (cell_record.keep_reads) keeps a finished cell's history and outcomes as
    it logs them: its next run reads them back equal to the store's files, without the store."""
    import pandas as pd

    from bnpipe.tracking import Tracker, cell_record

    monkeypatch.setattr(cell_record, "_kept", None)
    tracker = Tracker(store, "kept-reads")
    history = pd.DataFrame(
        {"epoch": [1, 2], "loss": [0.1 / 3, 0.2 / 7], "val_accuracy": [0.9, 1 / 3]}
    )
    bits = np.random.default_rng(1).random(999) < 0.8

    def logged(status: str) -> str:
        run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
        tracker.log_cell(
            run_id, tags={}, history=history, final_metrics={}, confusion=None,
            weights=None, status=status, correct=bits,
        )  # fmt: skip
        return run_id

    plain = logged("FINISHED")  # not kept: this process does not keep reads
    from_store = tracker.history(plain), tracker.test_correct(plain)
    cell_record.keep_reads()
    finished, failed = logged("FINISHED"), logged("FAILED")
    # The store's files are gone: what comes back was kept when it was written.
    for run_id in (finished, failed):
        for name in (cell_record.HISTORY, TEST_CORRECT):
            _artifact_file(store, run_id).with_name(name).unlink()
    pd.testing.assert_frame_equal(tracker.history(finished), from_store[0], check_exact=True)
    assert np.array_equal(tracker.test_correct(finished), from_store[1])
    assert np.array_equal(from_store[1], bits)
    # A copy each time: a caller changing it changes nothing kept.
    changed = tracker.history(finished)
    changed.loc[0, "loss"] = 5.0
    assert tracker.history(finished)["loss"].iloc[0] == from_store[0]["loss"].iloc[0]
    # A failed cell is never reused, so nothing of it was kept.
    assert tracker.test_correct(failed) is None
