"""Markdown report and figures for the BN ablation.

Pure functions: data frames in, files out, paths returned. Figures are drawn on
``matplotlib.figure.Figure`` objects (Agg canvas) rather than pyplot, so building a report
never touches matplotlib's global backend or state.
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from scipy import stats as sps

from bnpipe import stats
from bnpipe.config import Config
from bnpipe.design import DesignOutcome, Plan, design_outcome, plan_of
from bnpipe.factors import factor_columns, stratum_phrase

FIGSIZE = (7.0, 4.0)
DPI = 100
COLORS = {False: "#1f77b4", True: "#d62728"}  # no BN / BN, colour-blind-safe pair
LABELS = {False: "no BN", True: "BN"}
FIGURE_FILES = {
    "learning_curves": "learning_curves.png",
    "accuracy_vs_batch_size": "accuracy_vs_batch_size.png",
    "bn_difference": "bn_difference.png",
    "paired_seeds": "paired_seeds.png",
    "sequential_monitoring": "sequential_monitoring.png",
}


@dataclass(frozen=True)
class ReportOutput:
    """What ``build_report`` wrote and computed."""

    report_path: Path
    figures: list[Path]
    summary: pd.DataFrame
    anova: pd.DataFrame
    batch_effect: pd.DataFrame
    dynamics: pd.DataFrame
    design: DesignOutcome | None = None
    verdict_markdown: str = ""  # the verdict table alone (the parent run's description)
    html_path: Path | None = None  # report.html: the report with its figures embedded


# -------------------------------------------------------------------------------- helpers


def _new_figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def mean_ci(values: np.ndarray | pd.Series, alpha: float = 0.05) -> tuple[float, float, int]:
    """Mean and t-based CI half-width of the finite values; half-width NaN when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(x.mean()), math.nan, 1
    half = sps.t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    results = stats.normalize_results(results)
    ok = (results["status"] == stats.FINISHED) & np.isfinite(results["test_accuracy"])
    return results.loc[ok]


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _grid_shape(k: int) -> tuple[int, int]:
    return (1, k) if k <= 2 else (2, math.ceil(k / 2))


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# -------------------------------------------------------------------------------- figures


def plot_learning_curves(
    histories: pd.DataFrame, results: pd.DataFrame, path: Path, *, alpha: float = 0.05
) -> Path:
    """Validation accuracy per epoch: mean over seeds with a t-based band, panel per batch size.

    Only finished cells are drawn, matching the cells the statistics use.
    """
    done = _finished(results)[["bn", "batch_size", "seed"]]
    h = stats.normalize_histories(histories).merge(done, on=["bn", "batch_size", "seed"])
    sizes = sorted(int(b) for b in pd.unique(results["batch_size"]))
    if h.empty:
        fig, axes = _new_figure()
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no per-epoch history recorded", ha="center", va="center")
        return _save(fig, path)
    nrows, ncols = _grid_shape(max(len(sizes), 1))
    fig, axes = _new_figure(nrows, ncols, sharex=True, sharey=True)
    for ax, bs in zip(axes.flat, sizes, strict=False):
        for bn in (False, True):
            cell = h.loc[(h["batch_size"] == bs) & (h["bn"] == bn)]
            if cell.empty:
                continue
            agg = [(e, *mean_ci(g["val_accuracy"], alpha)) for e, g in cell.groupby("epoch")]
            epochs, means, halves, ns = (np.array(v) for v in zip(*agg, strict=True))
            ax.plot(epochs, means, color=COLORS[bn], marker="o", ms=3, lw=1.5)
            ax.fill_between(epochs, means - halves, means + halves, color=COLORS[bn], alpha=0.2)
            ax.plot([], [], color=COLORS[bn], label=f"{LABELS[bn]} (n={int(ns.max())})")
        ax.set_title(f"batch size {bs}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    _hide_unused(axes, len(sizes))
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("val accuracy", fontsize=9)
    fig.suptitle(
        f"Validation accuracy per epoch (mean, {_level(alpha)} CI over seeds)", fontsize=10
    )
    return _save(fig, path)


def plot_accuracy_vs_batch_size(results: pd.DataFrame, path: Path, *, alpha: float = 0.05) -> Path:
    """Test accuracy per batch size, BN and no BN dodged, mean with t-based CI and seed dots."""
    done = _finished(results)
    sizes = sorted(int(b) for b in pd.unique(results["batch_size"]))
    fig, axes = _new_figure()
    ax = axes[0, 0]
    x = np.arange(len(sizes))
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for bn, offset in ((False, -0.15), (True, 0.15)):
        arm = done.loc[done["bn"] == bn]
        stats_per = [
            mean_ci(arm.loc[arm["batch_size"] == bs, "test_accuracy"], alpha) for bs in sizes
        ]
        means = np.array([s[0] for s in stats_per])
        halves = np.array([s[1] for s in stats_per])
        for i, bs in enumerate(sizes):
            vals = arm.loc[arm["batch_size"] == bs, "test_accuracy"].to_numpy()
            jitter = rng.uniform(-0.05, 0.05, vals.size)
            ax.scatter(x[i] + offset + jitter, vals, s=9, color=COLORS[bn], alpha=0.35, lw=0)
        ax.errorbar(
            x + offset,
            means,
            yerr=np.nan_to_num(halves),
            fmt="o",
            color=COLORS[bn],
            capsize=4,
            ms=6,
            label=f"{LABELS[bn]}: mean ± {_level(alpha)} CI",
        )
    ax.set_xticks(x, [str(b) for b in sizes])
    ax.set_xlim(-0.6, len(sizes) - 0.4)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=2))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Test accuracy by batch size (dots: individual seeds)", fontsize=10)
    return _save(fig, path)


def plot_bn_difference(summary: pd.DataFrame, path: Path, *, equivalence_margin: float) -> Path:
    """BN minus no-BN test accuracy per batch size with its CI, zero line and ±margin band."""
    fig, axes = _new_figure()
    ax = axes[0, 0]
    x = np.arange(len(summary))
    pp = 100.0
    margin = pp * equivalence_margin
    ax.axhspan(-margin, margin, color="0.85", label=f"equivalence band ±{margin:.2f} pp")
    ax.axhline(0.0, color="0.3", lw=1)
    mean = pp * summary["mean_diff"].to_numpy(dtype=float)
    low = pp * summary["ci_low"].to_numpy(dtype=float)
    high = pp * summary["ci_high"].to_numpy(dtype=float)
    alpha = float(summary["alpha"].iloc[0]) if len(summary) else 0.05
    ax.errorbar(
        x,
        mean,
        yerr=np.nan_to_num(np.vstack([mean - low, high - mean])),
        fmt="o",
        color="k",
        capsize=5,
        ms=6,
        label=f"mean paired difference ± {_level(alpha)} CI",
    )
    labels = [
        f"{int(r.batch_size)}\nn={int(r.n_pairs)}, p_Holm{_p_label(r.p_holm)}"
        for r in summary.itertuples(index=False)
    ]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlim(-0.6, len(summary) - 0.4)
    ax.set_xlabel("batch size")
    ax.set_ylabel("BN − no BN test accuracy (pp)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Effect of BN per batch size (paired by seed)", fontsize=10)
    return _save(fig, path)


def plot_paired_seeds(results: pd.DataFrame, path: Path) -> Path:
    """Per-seed no-BN vs BN test accuracy joined by a line, panel per batch size."""
    pairs = stats.paired_frame(results, treatment_bn=True)
    sizes = sorted(int(b) for b in pd.unique(results["batch_size"]))
    nrows, ncols = _grid_shape(max(len(sizes), 1))
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    colors = {True: "#2ca02c", False: "#9467bd"}
    for ax, bs in zip(axes.flat, sizes, strict=False):
        p = pairs.loc[pairs["batch_size"] == bs]
        for r in p.itertuples(index=False):
            up = r.diff > 0
            ax.plot(
                [0, 1],
                [r.control, r.treatment],
                color=colors[up],
                alpha=0.6,
                lw=1,
                marker="o",
                ms=3,
            )
        n_up = int((p["diff"] > 0).sum())
        if p.empty:
            ax.set_title(f"batch size {bs}: no complete pair", fontsize=9)
            ax.text(
                0.5,
                0.5,
                "no seed finished in both arms",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
        else:
            ax.set_title(f"batch size {bs}: BN higher in {n_up}/{len(p)}", fontsize=9)
        ax.set_xticks([0, 1], [LABELS[False], LABELS[True]], fontsize=8)
        ax.set_xlim(-0.3, 1.3)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=2))
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, len(sizes))
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy", fontsize=9)
    handles = [
        axes.flat[0].plot([], [], color=colors[k], marker="o", ms=3, label=lab)[0]
        for k, lab in ((True, "BN higher"), (False, "BN lower or equal"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Per-seed pairs (same data order and Dense init)", fontsize=10)
    return _save(fig, path)


SEQUENTIAL_COLORS = {
    "benefit": "#2ca02c",
    "harm": "#d62728",
    "equivalent": "#1f77b4",
    "undecided": "0.45",
    "continue": "0.45",
}


def plot_sequential_monitoring(looks: pd.DataFrame, path: Path, *, margin: float) -> Path:
    """Group-sequential monitoring: one column per comparison, x = seed pairs used.

    Top row: the repeated CI at every look against 0 and the shaded ±margin band, the last
    look coloured by the decision. Bottom row: the t statistic against the look's boundary
    ±t_crit (crossing it is what "the interval excludes 0" means). ``looks`` is
    ``stats.looks_frame`` output (``comparison`` plus ``stats.LOOK_COLUMNS``).

    Raises:
        ValueError: If ``looks`` lacks a needed column.
    """
    need = ["comparison", "n", "mean", "rci_low", "rci_high", "t_stat", "t_crit", "decision"]
    missing = [c for c in need if c not in looks.columns]
    if missing:
        raise ValueError(f"looks frame lacks columns {missing}")
    comparisons = list(pd.unique(looks["comparison"]))
    ncols = max(len(comparisons), 1)
    fig, axes = _new_figure(2, ncols, sharex="col", sharey="row", height_ratios=[3, 2])
    fig.set_size_inches(max(FIGSIZE[0], 2.4 * ncols), 5.5)
    pp, band = 100.0, 100.0 * margin
    # The first O'Brien-Fleming looks have huge intervals; clip them rather than flatten the rest.
    last = looks.groupby("comparison", sort=False).tail(1)
    span = np.abs(pp * last[["rci_low", "rci_high"]].to_numpy(dtype=float))
    ylim = 1.25 * max(2 * band, float(np.nanmax(span, initial=0.0)))
    tlim = 1.3 * max(3.0, float(np.nanmax(np.abs(looks["t_stat"]), initial=0.0)))
    for j, name in enumerate(comparisons):
        g = looks.loc[looks["comparison"] == name].sort_values("n")
        top, bottom = axes[0, j], axes[1, j]
        n = g["n"].to_numpy(dtype=float)
        mean, low, high = (pp * g[c].to_numpy(dtype=float) for c in ("mean", "rci_low", "rci_high"))
        decision = str(g["decision"].iloc[-1])
        color = SEQUENTIAL_COLORS.get(decision, "k")
        top.axhspan(-band, band, color="0.85", lw=0)
        top.axhline(0.0, color="0.3", lw=1)
        colors = ["k"] * (len(g) - 1) + [color]
        for x, m, lo, hi, c in zip(n, mean, low, high, colors, strict=True):
            top.errorbar(x, m, yerr=[[m - lo], [hi - m]], fmt="o", color=c, capsize=3, ms=4)
        top.set_ylim(-ylim, ylim)
        top.set_title(f"{name}\n{decision} at n = {int(n[-1])}", fontsize=9, color=color)
        top.grid(axis="y", alpha=0.3)
        # Boundaries exist only at the looks; the lines between them just guide the eye.
        bottom.fill_between(n, -g["t_crit"], g["t_crit"], color="0.92", lw=0)
        for sign in (1, -1):
            bottom.plot(n, sign * g["t_crit"], color="#ff7f0e", ls="--", lw=1.2, marker="_", ms=8)
        bottom.plot(n, g["t_stat"], color="k", marker="o", ms=4, lw=1)
        bottom.plot(n[-1], g["t_stat"].iloc[-1], "o", color=color, ms=6)
        bottom.axhline(0.0, color="0.3", lw=0.8)
        bottom.set_ylim(-tlim, tlim)
        bottom.set_xlabel("seed pairs used", fontsize=9)
        bottom.grid(axis="y", alpha=0.3)
        for ax in (top, bottom):
            ax.tick_params(labelsize=8)
            ax.set_xlim(0, n[-1] + max(n[0], 1))
    axes[0, 0].set_ylabel("BN − no BN (pp)", fontsize=9)
    axes[1, 0].set_ylabel("t statistic", fontsize=9)
    handles = [
        axes[0, 0].errorbar([], [], yerr=[], fmt="o", color="k", ms=4, label="repeated CI"),
        axes[0, 0].fill_between([], [], color="0.85", label=f"equivalence band ±{band:.2f} pp"),
        axes[1, 0].plot(
            [], [], color="#ff7f0e", ls="--", label="boundary ±t_crit (benefit or harm beyond it)"
        )[0],
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle("Group-sequential monitoring: repeated CI and boundary at every look", fontsize=10)
    return _save(fig, path)


# -------------------------------------------------------------------------------- markdown


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_label(p: float) -> str:
    """p for inline labels: '<0.001', '=0.042' or ' n/a'."""
    text = _fmt_p(p)
    return text if text.startswith("<") else (" n/a" if text == "n/a" else f"={text}")


def _fmt(x: float, spec: str = ".4f") -> str:
    return format(x, spec) if np.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if np.isfinite(x) else "n/a"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}" if np.isfinite(x) else "n/a"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _by_batch_size(frame: pd.DataFrame) -> bool:
    """The reference grid's tables: one comparison per batch size (else per stratum label)."""
    return [c for c in factor_columns(frame.columns) if c != "bn"] == ["batch_size"]


def _where(frame: pd.DataFrame, r: Any, label: str = "stratum") -> Any:
    return int(r.batch_size) if _by_batch_size(frame) else getattr(r, label)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def verdict_table(summary: pd.DataFrame) -> str:
    """The per-comparison verdict table (differences in percentage points)."""
    level = _level(float(summary["alpha"].iloc[0])) if len(summary) else "95%"
    headers = [
        "batch size" if _by_batch_size(summary) else "comparison",
        "n",
        "mean no BN",
        "mean BN",
        f"diff pp [{level} CI]",
        "p (t)",
        "p Holm",
        "TOST p",
        "d_z",
        "verdict",
    ]
    rows = [
        [
            _where(summary, r),
            int(r.n_pairs),
            _pct(r.acc_no_bn),
            _pct(r.acc_bn),
            f"{_pp(r.mean_diff)} [{_pp(r.ci_low)}, {_pp(r.ci_high)}]",
            _fmt_p(r.t_pvalue),
            _fmt_p(r.p_holm),
            _fmt_p(r.tost_pvalue),
            _fmt(r.cohens_dz, ".2f"),
            r.verdict,
        ]
        for r in summary.itertuples(index=False)
    ]
    return md_table(headers, rows)


def decision_table(decisions: pd.DataFrame) -> str:
    """The sequential design's decided verdicts (differences in percentage points)."""
    rows = [
        [
            _where(decisions, r, "comparison"),
            "open: next look due" if r.decision == "continue" else f"**{r.decision}**",
            int(r.n_pairs),
            int(r.looks),
            f"{_pp(r.mean_diff)} [{_pp(r.rci_low)}, {_pp(r.rci_high)}]",
            f"{r.alpha:.4g}",
        ]
        for r in decisions.itertuples(index=False)
    ]
    first = "batch size" if _by_batch_size(decisions) else "comparison"
    headers = [first, "decision", "pairs used", "looks", "BN − no BN pp [RCI]", "alpha"]
    return md_table(headers, rows)


def characteristics_table(oc: pd.DataFrame) -> str:
    """Design quantities at the planning SD: expected pairs to a decision and decision rates."""
    rows = [
        [
            _pp(r.effect),
            _pp(r.sd).lstrip("+"),
            f"{r.asn:.1f}",
            _pct(r.p_benefit),
            _pct(r.p_harm),
            _pct(r.p_equivalent),
            _pct(r.p_undecided),
        ]
        for r in oc.itertuples(index=False)
    ]
    headers = [
        "true diff (pp)",
        "SD (pp)",
        "expected pairs",
        "P(benefit)",
        "P(harm)",
        "P(equivalent)",
        "P(undecided)",
    ]
    return md_table(headers, rows)


def design_section(design: DesignOutcome) -> list[str]:
    """Markdown lines: the decided verdicts, how to read them, and the design's quantities."""
    plan = design.plan
    margin = _pp(plan.margin).lstrip("+")
    lines = [
        "## Decision per batch size (sequential design)",
        "",
        f"The {plan.describe()}. At each look the repeated confidence interval (RCI) of the "
        "mean BN − no BN difference is compared with 0 and with the equivalence band "
        f"±{margin} pp: **benefit** / **harm** when it excludes 0, **equivalent** when it lies "
        "inside the band, else more seeds; **undecided** at the cap. The RCIs hold their "
        f"coverage at every look, so the family-wise error rate is at most {plan.alpha:g} "
        "across comparisons, looks and scheduled runs.",
        "",
        decision_table(design.decisions),
        "",
    ]
    undecided = design.decisions.loc[design.decisions["decision"] == "undecided"]
    for r in undecided.itertuples(index=False):
        lines.append(
            f"- {r.comparison}: undecided after {int(r.n_pairs)} pairs; the "
            f"difference lies in [{_pp(r.rci_low)}, {_pp(r.rci_high)}] pp."
        )
    lines += [
        "",
        f"Design quantities at the planning SD ({_pp(plan.planning_sd).lstrip('+')} pp per pair; "
        "simulated, not estimated from this run's effect):",
        "",
        characteristics_table(design.characteristics),
        "",
    ]
    return lines


def anova_table(anova: pd.DataFrame) -> str:
    """Two-way RM-ANOVA table."""
    rows = [
        [
            r.effect,
            f"F({int(r.df)}, {int(r.df_error)}) = {_fmt(r.F, '.2f')}"
            if np.isfinite(r.F)
            else "n/a",
            _fmt_p(r.p),
            _fmt(r.gg_epsilon, ".3f"),
            _fmt_p(r.p_gg),
            _fmt(r.partial_eta_sq, ".3f"),
        ]
        for r in anova.itertuples(index=False)
    ]
    return md_table(["effect", "F", "p", "GG ε", "p (GG)", "partial η²"], rows)


def batch_effect_table(effect: pd.DataFrame) -> str:
    """One-way RM-ANOVA over batch size within each BN setting, with Friedman."""
    rows = [
        [
            LABELS[bool(r.bn)],
            int(r.n_seeds),
            f"F({_fmt(r.df, '.0f')}, {_fmt(r.df_error, '.0f')}) = {_fmt(r.F, '.2f')}",
            _fmt_p(r.p),
            _fmt_p(r.p_gg),
            f"χ² = {_fmt(r.friedman_stat, '.2f')}",
            _fmt_p(r.friedman_p),
        ]
        for r in effect.itertuples(index=False)
    ]
    headers = ["BN", "seeds", "RM-ANOVA", "p", "p (GG)", "Friedman", "Friedman p"]
    return md_table(headers, rows)


def dynamics_table(summary: pd.DataFrame, threshold: float) -> str:
    """Per (BN, batch size) training-dynamics means."""
    rows = [
        [
            LABELS[bool(r.bn)],
            int(r.batch_size),
            int(r.n),
            f"{int(r.n_reached)}/{int(r.n)}",
            _fmt(r.epochs_to_threshold, ".1f"),
            _fmt(100 * r.stability, ".3f"),
            _fmt(100 * r.generalization_gap, ".2f"),
            _fmt(r.time_per_epoch, ".2f"),
        ]
        for r in summary.itertuples(index=False)
    ]
    headers = [
        "BN",
        "batch size",
        "n",
        f"reached {100 * threshold:g}%",
        "epochs to threshold",
        "stability (SD pp, last 3)",
        "train − test (pp)",
        "s / epoch",
    ]
    return md_table(headers, rows)


def anova_sentence(anova: pd.DataFrame, alpha: float) -> str:
    """Plain-language reading of the interaction term."""
    row = anova.set_index("effect").loc["bn:batch_size"]
    if not np.isfinite(row["F"]):
        return (
            f"The BN x batch-size interaction could not be tested "
            f"({int(row['n_seeds'])} seed(s) complete across all cells; at least 2 are needed)."
        )
    p = row["p_gg"] if np.isfinite(row["p_gg"]) else row["p"]
    does = "does" if p < alpha else "does not detectably"
    return (
        f"Across {int(row['n_seeds'])} seeds complete in every cell, the effect of BN "
        f"{does} depend on batch size (interaction F({int(row['df'])}, {int(row['df_error'])}) "
        f"= {row['F']:.2f}, Greenhouse-Geisser p = {_fmt_p(p)})."
    )


def methods_note(
    results: pd.DataFrame, summary: pd.DataFrame, *, alpha: float, n_resamples: int
) -> str:
    """Which tests ran, with how many pairs, and which pairs were dropped and why."""
    k = int((summary["n_pairs"] > 0).sum())
    lines = [
        "Each seed pairs a BN and a no-BN cell (same data order, same Dense init), so every "
        "comparison is on per-seed differences (BN − no BN test accuracy). Only cells with "
        "status `finished` and a finite test accuracy are used.",
        "",
        f"- Paired t-test (scipy `ttest_rel`) with a t-based {_level(alpha)} CI; BCa bootstrap "
        f"CI ({n_resamples} resamples); Wilcoxon signed-rank; sign-flip permutation test of the "
        "mean (exact when 2^n ≤ resamples).",
        f"- Holm-Bonferroni across the {k} batch size(s) with at least one pair (on the t-test "
        "p); equivalence by TOST (two one-sided paired t-tests) against "
        f"±{100 * float(summary['equivalence_margin'].iloc[0]) if len(summary) else 0:.2f} pp.",
        "- Effect sizes: Cohen's d_z = mean/SD of differences; Hedges' g_z with the exact "
        "gamma-function small-sample correction.",
        "- Verdict: significant if Holm p < alpha (sign gives improvement/harm), else equivalent "
        "if TOST p < alpha, else inconclusive.",
        f"- Interaction: {stats.ANOVA_METHOD}. Batch-size effect within each BN setting: "
        "one-way RM-ANOVA plus Friedman's test.",
        "",
        "Pairs used per comparison:",
        "",
    ]
    for r in summary.itertuples(index=False):
        lines.append(
            f"- {r.stratum}: n = {int(r.n_pairs)} pairs "
            f"(Wilcoxon: {r.wilcoxon_method}; permutation: {r.permutation_method})"
        )
    lines += ["", "Dropped pairs:", ""]
    compare = str(summary["compare"].iloc[0]) if len(summary) else "bn"
    dropped = stats.dropped_pairs(results, compare)
    if dropped.empty:
        lines.append("- none: every seed finished in both arms in every comparison.")
    strata = stats.stratum_factors(dropped, compare)
    for _, group in dropped.groupby("stratum", sort=False):
        first = group.iloc[0]
        where = stratum_phrase(tuple((n, _py(first[n])) for n in strata))
        n = len(group)
        lines.append(
            f"- {n} pair{'s' if n != 1 else ''} dropped at {where}: " + "; ".join(group["reason"])
        )
    return "\n".join(lines)


def render_markdown(
    *,
    title: str,
    run_info: Mapping[str, Any],
    summary: pd.DataFrame,
    anova: pd.DataFrame,
    batch_effect: pd.DataFrame,
    dyn_summary: pd.DataFrame,
    figures: Sequence[Path],
    methods: str,
    alpha: float,
    threshold: float,
    design: DesignOutcome | None = None,
    reference: bool = True,
) -> str:
    """Assemble report.md from computed tables (figure links relative to the report).

    ``reference``: the grid is BN compared per batch size, which the exploratory sections
    (interaction ANOVA, batch-size effect, dynamics) are written for; other grids get the
    paired comparisons, the design and the figures only.
    """
    parts = [f"# {title}", "", "## Run", ""]
    parts += [f"- **{k}**: {v}" for k, v in run_info.items()] or ["- (no run info)"]
    parts += [""]
    sequential = design is not None and design.plan.sequential
    if sequential:
        parts += design_section(design)
    parts += [
        "## Fixed-sample tests on the same pairs (descriptive)"
        if sequential
        else "## Verdict per batch size"
        if reference
        else "## Verdict per comparison",
        "",
        "Differences are BN minus no BN, in percentage points (pp) of test accuracy."
        if reference
        else "Differences are the compared factor's second level minus its first (control), "
        "in percentage points (pp) of test accuracy; the mean columns are control and treatment.",
        "",
    ]
    if sequential:
        parts += [
            "_These seeds were added until a decision, so the p-values and verdicts below are "
            "not error-controlled: the decision table above is the result._",
            "",
        ]
    parts += [verdict_table(summary), ""]
    parts += [f"- {stats.verdict_sentence(row)}" for _, row in summary.iterrows()]
    if not reference:
        parts += ["", "## Figures", ""]
        parts += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in figures]
        parts += ["## Methods", "", methods, ""]
        return "\n".join(parts)
    parts += [
        "",
        "## Does batch size change the effect of BN? (exploratory)",
        "",
        "_Secondary analyses on the seeds complete in every cell; not error-controlled._",
        "",
        anova_sentence(anova, alpha),
        "",
        anova_table(anova),
        "",
        f"_{stats.ANOVA_METHOD}._",
        "",
        "Batch-size effect within each BN setting:",
        "",
        batch_effect_table(batch_effect),
        "",
        "## Training dynamics",
        "",
        f"Means over finished cells; epochs to threshold = first epoch with val accuracy ≥ "
        f"{100 * threshold:g}% (averaged over the cells that reached it).",
        "",
        dynamics_table(dyn_summary, threshold),
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in figures]
    parts += ["## Methods", "", methods, ""]
    return "\n".join(parts)


def build_report(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    threshold: float = 0.97,
    n_resamples: int = 9999,
    run_info: Mapping[str, Any] | None = None,
    plan: Plan | None = None,
) -> ReportOutput:
    """Compute the statistics, draw the figures and write ``out_dir/report.md``.

    Args:
        results: Results frame (one row per grid cell).
        histories: Per-epoch histories (one row per cell per epoch).
        out_dir: Directory for report.md and the PNG figures (created if needed).
        title: Report title.
        alpha: Significance level (also sets the CI level).
        equivalence_margin: TOST margin on test accuracy (fraction, e.g. 0.002 = 0.2 pp).
        threshold: Validation accuracy threshold for epochs-to-threshold.
        n_resamples: Bootstrap/permutation budget.
        run_info: Key facts shown at the top (run id, config digest, versions, ...).
        plan: The run's design; a sequential one adds its decisions, monitoring figure and
            design quantities, and labels the fixed-sample tests descriptive.

    Returns:
        A ``ReportOutput`` with the written paths and the computed tables.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = stats.normalize_results(results)
    histories = stats.normalize_histories(histories)
    compare = plan.compare if plan is not None else "bn"
    levels = tuple(plan.levels) if plan is not None and len(plan.levels) == 2 else None
    summary = stats.summarize_by_stratum(
        results,
        compare,
        levels,
        alpha=alpha,
        equivalence_margin=equivalence_margin,
        n_resamples=n_resamples,
    )
    # The exploratory analyses and their figures are written for BN compared per batch size;
    # other grids get the paired comparisons and the design (their faceting comes separately).
    reference = compare == "bn" and stats.stratum_factors(results, compare) == ["batch_size"]
    design = design_outcome(results, plan) if plan is not None else None
    if not reference:
        empty = pd.DataFrame()
        figures: list[Path] = []
        if design is not None and plan is not None and plan.sequential and len(design.looks):
            monitoring = out_dir / FIGURE_FILES["sequential_monitoring"]
            figures.append(plot_sequential_monitoring(design.looks, monitoring, margin=plan.margin))
        text = render_markdown(
            title=title,
            run_info=dict(run_info or {}),
            summary=summary,
            anova=empty,
            batch_effect=empty,
            dyn_summary=empty,
            figures=figures,
            methods=methods_note(results, summary, alpha=alpha, n_resamples=n_resamples),
            alpha=alpha,
            threshold=threshold,
            design=design,
            reference=False,
        )
        report_path = out_dir / "report.md"
        report_path.write_text(text, encoding="utf-8")
        return ReportOutput(
            report_path,
            figures,
            summary,
            empty,
            empty,
            empty,
            design,
            verdict_markdown=(
                "Decided (sequential design)\n\n" + decision_table(design.decisions)
                if design is not None and design.plan.sequential and len(design.decisions)
                else verdict_table(summary)
            ),
            html_path=write_html_report(report_path),
        )
    anova = stats.interaction_anova(results)
    batch_effect = stats.batch_size_effect(results)
    dyn = stats.dynamics(histories, results, threshold)
    dyn_summary = stats.dynamics_summary(histories, results, threshold)
    figures = [
        plot_learning_curves(
            histories, results, out_dir / FIGURE_FILES["learning_curves"], alpha=alpha
        ),
        plot_accuracy_vs_batch_size(
            results, out_dir / FIGURE_FILES["accuracy_vs_batch_size"], alpha=alpha
        ),
        plot_bn_difference(
            summary, out_dir / FIGURE_FILES["bn_difference"], equivalence_margin=equivalence_margin
        ),
        plot_paired_seeds(results, out_dir / FIGURE_FILES["paired_seeds"]),
    ]
    if design is not None and plan is not None and plan.sequential and len(design.looks):
        monitoring = out_dir / FIGURE_FILES["sequential_monitoring"]
        figures.insert(0, plot_sequential_monitoring(design.looks, monitoring, margin=plan.margin))
    text = render_markdown(
        title=title,
        run_info=dict(run_info or {}),
        summary=summary,
        anova=anova,
        batch_effect=batch_effect,
        dyn_summary=dyn_summary,
        figures=figures,
        methods=methods_note(results, summary, alpha=alpha, n_resamples=n_resamples),
        alpha=alpha,
        threshold=threshold,
        design=design,
    )
    report_path = out_dir / "report.md"
    report_path.write_text(text, encoding="utf-8")
    return ReportOutput(
        report_path,
        figures,
        summary,
        anova,
        batch_effect,
        dyn,
        design,
        # A sequential run's answer is its decided table; the fixed-sample table is descriptive.
        verdict_markdown=(
            "Decided (sequential design): BN − no BN test accuracy\n\n"
            + decision_table(design.decisions)
            if design is not None and design.plan.sequential and len(design.decisions)
            else verdict_table(summary)
        ),
        html_path=write_html_report(report_path),
    )


def build_run_report(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    cfg: Config,
    run_name: str,
    run_info: Mapping[str, Any],
) -> ReportOutput:
    """``build_report`` with the settings of ``cfg``, into ``<reports_dir>/<run name>/``."""
    return build_report(
        results,
        histories,
        Path(cfg.tracking.reports_dir) / run_name,
        title=f"BN ablation: {run_name}",
        alpha=cfg.stats.alpha,
        equivalence_margin=cfg.stats.equivalence_margin,
        threshold=cfg.stats.val_threshold,
        n_resamples=cfg.stats.n_resamples,
        run_info=run_info,
        plan=plan_of(cfg),
    )


# -------------------------------------------------------------------------------- HTML

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; max-width: 1100px;
       margin: 1.5em auto; padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _embedded(match: re.Match[str], folder: Path) -> str:
    src = html.unescape(match.group(2))
    if ":" in src:  # data:, http: and the like are left as they are
        return match.group(0)
    path = folder / src
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"{match.group(1)}data:{mime};base64,{data}{match.group(3)}"


def markdown_to_html(text: str, folder: Path, title: str = "report") -> str:
    """A self-contained HTML page from Markdown: images under ``folder`` embedded as data URIs.

    MLflow's artifact viewer shows HTML in a sandboxed frame and does not resolve relative image
    links (neither in Markdown nor in HTML), so the figures must travel inside the page.
    """
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"])
    body = re.sub(r'(<img[^>]*\ssrc=")([^"]+)(")', lambda m: _embedded(m, folder), body)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_html_report(report_md: Path) -> Path:
    """Write ``report.html`` beside ``report_md`` (figures embedded); its path."""
    text = report_md.read_text(encoding="utf-8")
    title = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), report_md.stem)
    out = report_md.with_suffix(".html")
    out.write_text(markdown_to_html(text, report_md.parent, title), encoding="utf-8")
    return out
