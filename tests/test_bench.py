"""`bnpipe bench` on tiny data: the report has every engine per cell and consistent ratios."""

from __future__ import annotations

import json

import pytest

from bnpipe.bench import flops_per_model_epoch, format_report, run_bench


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
    text = format_report(report)
    assert "(c) fused" in text and "peak RSS" in text
    # the JSON the CLI writes must be serialisable
    (tmp_path / "b.json").write_text(json.dumps(report, default=str))
