"""bnpipe.report.write: whole reports (figures, report.md, report.html) from small frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bnpipe import report, stats
from tests.report_frames import make_frames, make_grid_frames

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    assert list(out.analysis.dynamics.columns) == stats.dynamics_columns(["bn", "batch_size"])


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


def test_mean_ci_matches_t_interval() -> None:
    mean, half, n = stats.mean_ci([1.0, 2.0, 3.0, np.nan])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)
    assert np.isnan(stats.mean_ci([1.0])[1])


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
    assert out.analysis.dynamics["n_epochs"].tolist() == [3] * len(results)


def test_report_over_two_factors_names_its_figures_and_levels(tmp_path: Path) -> None:
    results, histories = make_grid_frames({"bn": [False, True], "learning_rate": [0.001, 0.1]})
    out = _build(tmp_path, results, histories)
    names = [p.name for p in out.figures]
    assert names == [
        "learning_curves.png",
        "accuracy_vs_learning_rate.png",
        "bn_difference.png",
        "paired_seeds.png",
    ]
    text = out.report_path.read_text(encoding="utf-8")
    assert "## Verdict per learning rate" in text and "| learning rate | n | mean bn=off |" in text
    assert "At learning rate 0.1 (n = 3 seed pairs), BN on instead of BN off changed" in text
    assert "depend on learning rate (interaction F(1, 2)" in text
    body = text.split("\n", 1)[1]  # below the title _build gives every report
    assert "batch" not in body.lower()  # nothing of the default grid
    assert out.summary["stratum"].tolist() == ["learning_rate=0.001", "learning_rate=0.1"]
    assert out.summary["verdict"].tolist()[1] == "significant improvement"


def test_report_over_three_factors(tmp_path: Path) -> None:
    factors = {"bn": [False, True], "batch_size": [32, 128], "init_scale": [0.5, 1.0, 2.0]}
    results, histories = make_grid_frames(factors)
    sel = (
        (results.seed == 2) & results.bn & (results.batch_size == 32) & (results.init_scale == 0.5)
    )
    results.loc[sel, "status"] = "diverged"
    out = _build(tmp_path, results, histories)
    text = out.report_path.read_text(encoding="utf-8")
    assert len(out.summary) == 6 and len(out.analysis.anova) == 7
    assert "| BN × batch size × init scale |" in text
    assert "1 pair dropped at batch size 32, init scale 0.5: seed 2 diverged (BN on)" in text
    assert "| 32 | 0.5 | 2 |" in text  # the verdict row of that stratum: 2 pairs left
    effects = out.analysis.effects.set_index(["factor", "compare_level"])
    assert effects.loc[("init_scale", True), "trend_slope"] > 0  # the gain at the largest level
    for fig in out.figures:
        assert fig.read_bytes().startswith(PNG_MAGIC)


def test_report_compares_any_factor_with_given_levels(tmp_path: Path) -> None:
    factors = {"bn_position": ["before_relu", "after_relu"], "learning_rate": [0.001, 0.01]}
    results, histories = make_grid_frames(factors)
    out = report.build_report(
        results,
        histories,
        tmp_path,
        title="pos",
        compare="bn_position",
        levels=["before_relu", "after_relu"],
        n_resamples=99,
    )
    text = out.report_path.read_text(encoding="utf-8")
    assert "Differences are BN position after_relu minus BN position before_relu" in text
    assert [p.name for p in out.figures][2] == "bn_position_difference.png"
    with pytest.raises(ValueError, match="2 levels"):
        report.build_report(
            results,
            histories,
            tmp_path,
            title="x",
            compare="learning_rate",
            levels=[0.001],
            n_resamples=99,
        )


def test_report_with_one_level_of_the_compared_factor(tmp_path: Path) -> None:
    results, histories = make_frames()
    results, histories = results[~results.bn], histories[~histories.bn]
    out = _build(tmp_path, results, histories)
    assert out.summary["n_pairs"].tolist() == [0, 0]
    text = out.report_path.read_text(encoding="utf-8")
    assert "At batch size 16, no seed finished in both arms" in text


def test_sequential_report_over_a_generic_grid(tmp_path: Path) -> None:
    from bnpipe.config import load_config
    from bnpipe.design import plan_of

    grid = "grid.factors={bn: [false, true], learning_rate: [0.001, 0.1]}"
    sequential = [
        "stats.design=sequential",
        "stats.first_look=5",
        "stats.look_every=5",
        "stats.max_seeds=10",
        "stats.population=test_set",  # synthetic accuracies, no per-example outcomes
    ]
    plan = plan_of(load_config(None, [grid, *sequential]))
    factors = {"bn": [False, True], "learning_rate": [0.001, 0.1]}
    results, histories = make_grid_frames(factors, seeds=10)
    out = report.build_report(results, histories, tmp_path, title="seq", plan=plan, n_resamples=99)
    assert out.figures[0].name == "sequential_monitoring.png"
    text = out.report_path.read_text(encoding="utf-8")
    assert "## Decision per learning rate (sequential design)" in text
    assert "| learning rate | decision | pairs used |" in text
    assert out.answer_markdown.startswith("Decided (sequential design): bn=on − bn=off")
    row = next(line for line in text.splitlines() if line.startswith("| 0.1 | **"))
    assert "**benefit**" in row  # +0.5 pp at the largest learning rate, tiny noise, last look


def test_a_process_that_keeps_figures_draws_each_set_of_inputs_once(tmp_path, monkeypatch):
    """A warm session keeps the PNGs it drew (bnpipe.report.figures.keep_figures): a report
    from the same inputs copies them, different inputs are drawn; the pictures are the same."""
    from bnpipe.report import figures

    results, histories = make_frames()
    plain = _build(tmp_path / "plain", results, histories)
    drawn: list[str] = []
    savefig = figures.Figure.savefig

    def counted(self, path, **kw):
        drawn.append(Path(path).name)
        return savefig(self, path, **kw)

    monkeypatch.setattr(figures.Figure, "savefig", counted)
    monkeypatch.setattr(figures, "_drawn", None)
    figures.keep_figures()
    first = _build(tmp_path / "first", results, histories)
    assert len(drawn) == len(first.figures) == 4
    # A rerun: the same cells, reused this time.
    again = _build(tmp_path / "again", results.assign(reused=True), histories)
    assert len(drawn) == 4  # nothing drawn: every figure copied
    for a, b, c in zip(plain.figures, first.figures, again.figures, strict=True):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes() and c.parent.name == "out"
    other = results.assign(test_accuracy=results["test_accuracy"] + 0.001)
    _build(tmp_path / "other", other, histories)
    assert len(drawn) > 4  # new numbers: drawn


def test_report_figures_false_writes_every_table_and_no_figure(tmp_path: Path) -> None:
    """``report.figures: false`` (a run's params) leaves the figures out and says so; the rest of
    the report is the same text, word for word."""
    from bnpipe.analysis import analyze_frames
    from bnpipe.config import load_config

    results, histories = make_frames()
    drawn = _build(tmp_path, results, histories)
    analysis = analyze_frames(
        results, histories, alpha=0.05, equivalence_margin=0.002, threshold=0.96, n_resamples=199
    )
    cfg = load_config(None, [f"tracking.reports_dir={tmp_path}", "report.figures=false"])
    info = {"parent run": "run-abc", "seeds": 3}  # as _build's
    out = report.write_run_report(analysis, cfg, "out-tables", info)
    assert out.figures == [] and not list(out.report_path.parent.glob("*.png"))
    text, full = out.report_path.read_text("utf-8"), drawn.report_path.read_text("utf-8")
    before, _, after = text.partition("## Figures")
    assert "report.figures: false" in after.partition("## Methods")[0]
    assert before.partition("## Run")[2] == full.partition("## Figures")[0].partition("## Run")[2]
    assert after.partition("## Methods")[2] == full.partition("## Methods")[2]
    assert out.html_path.exists() and "<img" not in out.html_path.read_text("utf-8")
    # The default draws them: the same call under default params.
    on = load_config(None, [f"tracking.reports_dir={tmp_path}"])
    assert len(report.write_run_report(analysis, on, "out-drawn", {}).figures) == 4
