"""Markdown report and figures for a paired ablation over any grid factors.

One factor is compared (its two levels paired per seed; the first is the control); every other
grid factor defines the strata, one comparison each. Every table and figure is faceted on the
strata: figures get one panel per level combination of the non-compared factors, and labels come
from ``bnpipe.factors`` (``bn=on``, ``learning_rate=0.1``), so nothing here names a factor.

A surface: it renders an ``Analysis`` (``bnpipe.analysis``) and computes nothing. By job:
``figures`` (one PNG per function), ``markdown`` (report.md's tables and sentences), ``html``
(the self-contained page) and ``write`` (the entry points: figures, report.md, report.html).
"""

from bnpipe.report.figures import (
    ARM_COLORS,
    FIGSIZE,
    FIGURE_FILES,
    accuracy_figure_name,
    difference_figure_name,
    facets,
    plot_accuracy_vs_factor,
    plot_difference,
    plot_learning_curves,
    plot_noise_sources,
    plot_paired_seeds,
    plot_sequential_monitoring,
)
from bnpipe.report.html import (
    markdown_to_html,
    write_html_report,
)
from bnpipe.report.markdown import (
    anova_sentences,
    anova_table,
    answer_markdown,
    characteristics_table,
    decision_table,
    design_section,
    dynamics_table,
    factor_effects_table,
    md_table,
    methods_note,
    noise_table,
    render_markdown,
    verdict_sentence,
    verdict_table,
)
from bnpipe.report.write import (
    ReportOutput,
    build_report,
    build_run_report,
    write_report,
    write_run_report,
)

__all__ = [
    "ARM_COLORS",
    "FIGSIZE",
    "FIGURE_FILES",
    "ReportOutput",
    "accuracy_figure_name",
    "anova_sentences",
    "anova_table",
    "answer_markdown",
    "build_report",
    "build_run_report",
    "characteristics_table",
    "decision_table",
    "design_section",
    "difference_figure_name",
    "dynamics_table",
    "facets",
    "factor_effects_table",
    "markdown_to_html",
    "md_table",
    "methods_note",
    "noise_table",
    "plot_accuracy_vs_factor",
    "plot_difference",
    "plot_learning_curves",
    "plot_noise_sources",
    "plot_paired_seeds",
    "plot_sequential_monitoring",
    "render_markdown",
    "verdict_sentence",
    "verdict_table",
    "write_html_report",
    "write_report",
    "write_run_report",
]
