"""bnpipe.bench.engines on tiny data: every engine per cell, consistent ratios, the JAX peer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnpipe.bench.engines import flops_per_model_epoch, run_bench
from bnpipe.bench.report import format_report


def test_flops_grow_with_the_data():
    assert flops_per_model_epoch(2000, 100) > flops_per_model_epoch(1000, 100) > 0


def test_bench_reports_all_engines_and_ratios(tiny_mnist, tmp_path):
    report = run_bench(
        tiny_mnist,
        batch_sizes=[64],
        seeds=2,
        keras_seeds=1,
        epochs=2,
        probe_seconds=0.2,
        log=lambda *_: None,
    )
    (row,) = report["cells"]
    assert row["batch_size"] == 64
    for engine in ("reference", "keras", "fused"):
        assert row[engine]["s_per_model_epoch"] > 0
    assert row["speedup_fused"] == pytest.approx(
        row["reference"]["s_per_model_epoch"] / row["fused"]["s_per_model_epoch"]
    )
    every = report["all_cells"]
    assert (
        every["speedup_fused"]
        == pytest.approx(every["reference_s"] / every["fused_s"])
        == pytest.approx(row["speedup_fused"])
    )  # one cell: the grid ratio is the cell's
    assert report["floor_s"] > 0 and report["peak_rss_mib"] > 0
    # compile = first epoch's extra wall time over a steady one (group walls: share x 2 models);
    # the whole run holds that, both epochs and the setup
    fused = row["fused"]
    steady_wall = fused["steady_s_per_model_epoch"] * 2
    assert fused["compile_s"] > 0 and fused["compile_s"] + 2 * steady_wall <= fused["total_s"]
    text = format_report(report)
    assert "(c) fused" in text and "peak RSS" in text and "fused compile s" in text
    # the JSON the CLI writes must be serialisable
    (tmp_path / "b.json").write_text(json.dumps(report, default=str))


def test_fused_only_bench_says_what_was_not_run(tiny_mnist, tmp_path):
    report = run_bench(
        tiny_mnist,
        batch_sizes=[64],
        seeds=2,
        keras_seeds=0,
        reference_seeds=0,
        epochs=2,
        probe_seconds=0.2,
        log=lambda *_: None,
    )
    (row,) = report["cells"]
    assert report["not_run"] == ["reference", "keras"]
    assert row["reference"] is None and row["keras"] is None
    assert row["fused"]["s_per_model_epoch"] > 0 and row["fused_floor_ratio"] > 0
    assert row["speedup_fused"] is None and report["all_cells"]["speedup_keras"] is None
    text = format_report(report)
    assert "not run (0 models asked): reference, keras" in text
    assert f"{row['fused']['s_per_model_epoch']:.3f}" in text
    saved = json.loads(json.dumps(report, default=str))
    assert saved["not_run"] == ["reference", "keras"] and saved["cells"][0]["keras"] is None


@pytest.mark.parametrize("bn", [False, True])
def test_jax_peer_learns_what_the_fused_engine_learns(tiny_mnist, bn):
    pytest.importorskip("jax")  # optional group: make bench-peers
    from bnpipe.bench.peers.jax_peer import time_group
    from bnpipe.train.fused import train_fused

    d = tiny_mnist
    peer = time_group(d, bn, 64, 2, 3, shard_size=1)
    from bnpipe.train.common import TrainSpec

    fused = train_fused(TrainSpec.of([0, 1], bn=bn, batch_size=64, epochs=3), d)
    fused_acc = np.mean([r.history[-1]["val_accuracy"] for r in fused])
    # Same init, data order and update rule: the frameworks' float rounding is all that differs.
    assert peer["val_accuracy"] == pytest.approx(fused_acc, abs=0.02)
    assert peer["val_accuracy"] > 0.5 and peer["steady_s_per_model_epoch"] > 0
    assert len(peer["epoch_walls_s"]) == 3
