"""The report's entry points: draw the figures, write report.md and report.html, say where."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bnpipe.analysis import Analysis, analyze, analyze_frames
from bnpipe.config import Config
from bnpipe.factors import factor
from bnpipe.report.figures import (
    FIGURE_FILES,
    accuracy_figure_name,
    difference_figure_name,
    plot_accuracy_vs_factor,
    plot_difference,
    plot_learning_curves,
    plot_noise_sources,
    plot_paired_seeds,
    plot_sequential_monitoring,
)
from bnpipe.report.html import write_html_report
from bnpipe.report.markdown import answer_markdown, render_markdown


@dataclass(frozen=True)
class ReportOutput:
    """What ``write_report`` wrote, and the analysis it rendered."""

    report_path: Path
    figures: list[Path]
    analysis: Analysis
    answer_markdown: str = ""  # the decided table alone (the parent run's description)
    html_path: Path | None = None  # report.html: the report with its figures embedded

    @property
    def summary(self) -> pd.DataFrame:
        return self.analysis.summary


def write_report(
    analysis: Analysis,
    out_dir: Path,
    *,
    title: str,
    run_info: Mapping[str, Any] | None = None,
    figures: bool = True,
) -> ReportOutput:
    """Draw the figures of ``analysis`` and write ``out_dir/report.md`` and ``report.html``.

    Args:
        analysis: The run's analysis (``bnpipe.analysis.analyze``).
        out_dir: Directory for report.md and the PNG figures (created if needed).
        title: Report title.
        run_info: Key facts shown at the top (run id, config digest, versions, ...).
        figures: False writes the tables only and says so in the report (``report.figures``).

    Returns:
        A ``ReportOutput`` with the written paths and the analysis.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = _draw_figures(analysis, out_dir) if figures else []
    text = render_markdown(analysis, title=title, run_info=dict(run_info or {}), figures=drawn)
    report_path = out_dir / "report.md"
    report_path.write_text(text, encoding="utf-8")
    return ReportOutput(
        report_path,
        drawn,
        analysis,
        answer_markdown=answer_markdown(analysis),
        html_path=write_html_report(report_path),
    )


def _draw_figures(analysis: Analysis, out_dir: Path) -> list[Path]:
    """The report's PNGs in ``out_dir``, in the order the report shows them."""
    cmp, alpha = analysis.comparison, analysis.alpha
    figures = [
        plot_learning_curves(
            analysis.curves, cmp, out_dir / FIGURE_FILES["learning_curves"], alpha=alpha
        ),
        plot_accuracy_vs_factor(
            analysis.results, analysis.arms, cmp, out_dir / accuracy_figure_name(cmp), alpha=alpha
        ),
        plot_difference(analysis, out_dir / difference_figure_name(cmp)),
        plot_paired_seeds(analysis.pairs, cmp, out_dir / FIGURE_FILES["paired_seeds"]),
    ]
    design = analysis.design
    if design is not None and len(design.looks):
        monitoring = out_dir / FIGURE_FILES["sequential_monitoring"]
        figures.insert(
            0,
            plot_sequential_monitoring(
                design.looks, monitoring, margin=analysis.margin, diff_label=cmp.diff_label
            ),
        )
    if design is not None and len(design.noise):
        noise = out_dir / FIGURE_FILES["noise_sources"]
        figures.insert(
            1,
            plot_noise_sources(
                design.noise, noise, margin=analysis.margin, diff_label=cmp.diff_label
            ),
        )
    return figures


def build_report(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    run_info: Mapping[str, Any] | None = None,
    **settings: Any,
) -> ReportOutput:
    """``analyze_frames(results, histories, **settings)`` written as a report into
    ``out_dir`` (a notebook's or a test's shortcut; runs use ``write_run_report``)."""
    return write_report(
        analyze_frames(results, histories, **settings), out_dir, title=title, run_info=run_info
    )


def write_run_report(
    analysis: Analysis, cfg: Config, run_name: str, run_info: Mapping[str, Any]
) -> ReportOutput:
    """``write_report`` into ``<reports_dir>/<run name>/``, titled after the compared factor."""
    return write_report(
        analysis,
        Path(cfg.tracking.reports_dir) / run_name,
        title=f"{factor(cfg.grid.compare).words} ablation: {run_name}",
        run_info=run_info,
        figures=cfg.report.figures,
    )


def build_run_report(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    cfg: Config,
    run_name: str,
    run_info: Mapping[str, Any],
) -> ReportOutput:
    """The analysis of ``results`` under ``cfg``, written as the run's report."""
    return write_run_report(analyze(results, histories, cfg), cfg, run_name, run_info)
