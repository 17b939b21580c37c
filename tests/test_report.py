"""Tests for bnpipe.report on small synthetic results/histories frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bnpipe import report, stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# BN minus no-BN per seed: clearly positive at 16, tiny at 32 (inside a 0.2 pp margin).
DIFFS = {16: [0.010, 0.011, 0.012], 32: [0.0001, -0.0001, 0.0]}
BASE = [0.9751, 0.9760, 0.9744]


def make_frames(epochs: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 seeds x 2 batch sizes x 2 BN settings x ``epochs`` epochs, deterministic."""
    rows, hist = [], []
    for bs, diffs in DIFFS.items():
        for seed, (base, d) in enumerate(zip(BASE, diffs, strict=True)):
            for bn in (False, True):
                acc = base + (d if bn else 0.0)
                rows.append(
                    {
                        "bn": bn,
                        "batch_size": bs,
                        "seed": seed,
                        "status": "finished",
                        "test_accuracy": acc,
                        "test_loss": 0.08,
                        "train_accuracy": acc + 0.01,
                        "epoch_time_s": 2.0 if bs == 16 else 1.0,
                        "run_id": f"{bs}-{seed}-{int(bn)}",
                    }
                )
                for e in range(1, epochs + 1):
                    val = acc - 0.01 * (epochs - e)
                    hist.append(
                        {
                            "bn": bn,
                            "batch_size": bs,
                            "seed": seed,
                            "epoch": e,
                            "loss": 0.1,
                            "accuracy": val + 0.01,
                            "val_loss": 0.1,
                            "val_accuracy": val,
                            "epoch_time_s": 1.0,
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(hist)


def _build(tmp_path: Path, results: pd.DataFrame, histories: pd.DataFrame) -> report.ReportOutput:
    return report.build_report(
        results,
        histories,
        tmp_path / "out",
        title="Synthetic BN report",
        alpha=0.05,
        equivalence_margin=0.002,
        threshold=0.96,
        n_resamples=199,
        run_info={"parent run": "run-abc", "seeds": 3},
    )


def test_build_report_writes_files_and_verdicts(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    results, histories = make_frames()
    out = _build(tmp_path, results, histories)
    assert matplotlib.get_backend() == backend  # no global backend switch

    assert out.report_path == tmp_path / "out" / "report.md"
    assert len(out.figures) == 4
    for fig in out.figures:
        data = fig.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert 5_000 < len(data) < 200_000

    text = out.report_path.read_text(encoding="utf-8")
    assert text.startswith("# Synthetic BN report")
    assert "**parent run**: run-abc" in text
    rows = [line for line in text.splitlines() if line.startswith("| 16 |")]
    assert len(rows) == 1 and "significant improvement" in rows[0]
    rows = [line for line in text.splitlines() if line.startswith("| 32 |")]
    assert len(rows) == 1 and "equivalent within margin" in rows[0]
    # The plain-language sentences carry the computed numbers.
    s16 = out.summary.set_index("batch_size").loc[16]
    assert f"by {100 * s16['mean_diff']:+.2f} pp" in text
    assert "At batch size 16 (n = 3 seed pairs)" in text
    assert "At batch size 32 (n = 3 seed pairs)" in text
    for fig in out.figures:
        assert f"]({fig.name})" in text  # relative links
    assert "## Methods" in text and "none: every seed finished" in text
    assert "interaction F(1, 2)" in text
    assert list(out.summary["verdict"]) == ["significant improvement", "equivalent within margin"]
    assert list(out.dynamics.columns) == stats.DYNAMICS_COLUMNS


def test_report_reflects_numbers_not_templates(tmp_path: Path) -> None:
    # Flip the sign at batch size 16: the same code must now report harm.
    results, histories = make_frames()
    bn16 = (results["batch_size"] == 16) & results["bn"]
    results.loc[bn16, "test_accuracy"] -= 0.022
    text = _build(tmp_path, results, histories).report_path.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| 16 |"))
    assert "significant harm" in row and "significant improvement" not in text


def test_report_explains_dropped_pairs_and_missing_comparisons(tmp_path: Path) -> None:
    results, histories = make_frames()
    sel = (results["batch_size"] == 32) & results["bn"]
    results.loc[sel, "status"] = "diverged"
    results.loc[sel, "test_accuracy"] = np.nan
    histories = pd.DataFrame()  # no histories at all must not break the report
    out = _build(tmp_path, results, histories)
    text = out.report_path.read_text(encoding="utf-8")
    assert "3 pairs dropped at batch size 32" in text
    assert "seed 0 diverged (BN on)" in text
    assert "At batch size 32, no seed finished in both arms" in text
    row = next(line for line in text.splitlines() if line.startswith("| 32 |"))
    assert "| 0 |" in row and "inconclusive" in row
    assert all(p.stat().st_size > 0 for p in out.figures)


def test_md_table_shape() -> None:
    table = report.md_table(["a", "b"], [[1, 2], [3, 4]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


def test_mean_ci_matches_t_interval() -> None:
    mean, half, n = report.mean_ci([1.0, 2.0, 3.0, np.nan])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)
    assert np.isnan(report.mean_ci([1.0])[1])


def test_report_from_csv_round_trip(tmp_path: Path) -> None:
    # The CLI rebuilds reports from CSV artifacts; keys come back as strings/ints.
    results, histories = make_frames()
    results.to_csv(tmp_path / "r.csv", index=False)
    histories.to_csv(tmp_path / "h.csv", index=False)
    r = pd.read_csv(tmp_path / "r.csv").astype({"bn": str})
    h = pd.read_csv(tmp_path / "h.csv")
    out = _build(tmp_path, r, h)
    expected = _build(tmp_path / "direct", results, histories)
    pd.testing.assert_frame_equal(out.summary, expected.summary)
    assert out.dynamics["n_epochs"].tolist() == [3] * len(results)
