"""bnpipe.report.markdown: report.md's tables and sentences from the numbers."""

from __future__ import annotations

import pandas as pd

from bnpipe import report
from bnpipe.analysis import analyze_frames
from tests.report_frames import make_frames


def test_verdict_sentence_is_built_from_the_row() -> None:
    results, _ = make_frames()
    results.loc[(results["batch_size"] == 32) & results["bn"], "status"] = "failed"
    analysis = analyze_frames(results, pd.DataFrame(), compare="bn", n_resamples=99)
    cmp, summary = analysis.comparison, analysis.summary
    row = summary.iloc[0]
    s16 = report.verdict_sentence(row, cmp)
    assert "significant improvement" in s16 and f"{100 * row['mean_diff']:+.2f} pp" in s16
    assert "seed pairs would" not in s16 and "power" not in s16  # no post-hoc power
    assert "cannot be compared" in report.verdict_sentence(summary.iloc[1], cmp)
    fake = row.copy()
    fake["verdict"], fake["tost_pvalue"] = "inconclusive", 0.2
    assert "inconclusive" in report.verdict_sentence(fake, cmp)
    assert "TOST p = 0.200" in report.verdict_sentence(fake, cmp)


def test_md_table_shape() -> None:
    table = report.md_table(["a", "b"], [[1, 2], [3, 4]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
