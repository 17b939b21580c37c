"""Markdown report and figures for a paired ablation over any grid factors.

One factor is compared (its two levels paired per seed; the first is the control); every other
grid factor defines the strata, one comparison each. Every table and figure is faceted on the
strata: figures get one panel per level combination of the non-compared factors, and labels come
from ``bnpipe.factors`` (``bn=on``, ``learning_rate=0.1``), so nothing here names a factor.

Pure functions: data frames in, files out, paths returned. Figures are drawn on
``matplotlib.figure.Figure`` objects (Agg canvas) rather than pyplot, so building a report
never touches matplotlib's global backend or state.
"""

from __future__ import annotations

import base64
import html
import itertools
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
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

from bnpipe import stats
from bnpipe.analysis import Analysis, Comparison, analyze, analyze_frames
from bnpipe.config import Config
from bnpipe.factors import (
    factor,
    factor_columns,
    level_text,
    strata_phrase,
    stratum_label,
    stratum_phrase,
)
from bnpipe.stats import fmt_p

FIGSIZE = (7.0, 4.0)
MONITOR_COLUMNS = 4  # comparisons per row of the sequential monitoring figure
PANEL = (2.7, 2.3)  # inches per facet panel; figures with many panels grow past FIGSIZE
DPI = 100
ARM_COLORS = ("#1f77b4", "#d62728")  # control, treatment: a colour-blind-safe pair
FIGURE_FILES = {
    "learning_curves": "learning_curves.png",
    "paired_seeds": "paired_seeds.png",
    "sequential_monitoring": "sequential_monitoring.png",
}  # plus accuracy_vs_<first stratum factor>.png and <compare>_difference.png, named per grid


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


# -------------------------------------------------------------------------------- filters


def _stratum_mask(frame: pd.DataFrame, stratum: Sequence[tuple[str, Any]]) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for name, level in stratum:
        mask &= frame[name] == level
    return mask


# -------------------------------------------------------------------------------- helpers


def _new_figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, np.ndarray]:
    size = (max(FIGSIZE[0], PANEL[0] * ncols), max(FIGSIZE[1], PANEL[1] * nrows + 1.0))
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _wrap_shape(k: int) -> tuple[int, int]:
    """Up to 3 panels side by side, more in a near-square grid (4 -> 2 x 2, 6 -> 2 x 3)."""
    if k <= 3:
        return 1, max(k, 1)
    ncols = math.ceil(math.sqrt(k))
    return math.ceil(k / ncols), ncols


def facets(
    names: Sequence[str], levels: Mapping[str, Sequence[Any]]
) -> tuple[int, int, list[tuple[int, int, tuple[tuple[str, Any], ...]]]]:
    """Panel layout for strata of ``names``: one panel per level combination.

    One factor: its levels side by side (a near-square grid past 3). Two or more: columns are
    the last factor's levels, rows the combinations of the others (a 2-factor stratum is rows
    x columns).

    Returns:
        ``(nrows, ncols, [(row, col, stratum), ...])``; no names gives one panel, stratum ().
    """
    if not names:
        return 1, 1, [(0, 0, ())]
    if len(names) == 1:
        lv = list(levels[names[0]])
        nrows, ncols = _wrap_shape(len(lv))
        return nrows, ncols, [(i // ncols, i % ncols, ((names[0], v),)) for i, v in enumerate(lv)]
    head, last = list(names[:-1]), names[-1]
    rows = list(itertools.product(*(levels[n] for n in head)))
    panels = [
        (i, j, (*zip(head, combo, strict=True), (last, v)))
        for i, combo in enumerate(rows)
        for j, v in enumerate(levels[last])
    ]
    return len(rows), len(levels[last]), panels


def _hide_unused(axes: np.ndarray, used: set[tuple[int, int]]) -> None:
    for (i, j), ax in np.ndenumerate(axes):
        if (i, j) not in used:
            ax.set_visible(False)


def _xlabel_bottom(axes: np.ndarray, panels: Sequence[tuple[int, int, Any]], text: str) -> None:
    """The x label under the lowest used panel of each column (a figure-level label would
    collide with the legend below the panels)."""
    bottom: dict[int, int] = {}
    for i, j, _ in panels:
        bottom[j] = max(bottom.get(j, 0), i)
    for j, i in bottom.items():
        axes[i, j].set_xlabel(text, fontsize=9)


def _clamp_accuracy(ax: Any) -> None:
    """Keep an accuracy axis inside [0, 1]: a t interval of few seeds can reach past either end,
    where no accuracy lies."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))


def _panel_title(stratum: Sequence[tuple[str, Any]]) -> str:
    """A panel's stratum in the run-name spelling (``bs=32, lr=0.1``): full names would not fit
    above a panel once the strata have two or more factors."""
    return ", ".join(level_text(n, v) for n, v in stratum)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def _log_axis(name: str, levels: Sequence[Any]) -> bool:
    """Positive numeric factors are explored on multiplicative scales: plot them on log x."""
    return stats.trend_x(name, levels) is not None


# -------------------------------------------------------------------------------- figures


def plot_learning_curves(curves: pd.DataFrame, cmp: Comparison, path: Path, *, alpha=0.05) -> Path:
    """Validation accuracy per epoch: mean over seeds with a t-based band, one panel per stratum
    (``curves``: ``stats.epoch_curves`` of the finished cells, as the statistics use)."""
    if curves.empty:
        fig, axes = _new_figure()
        axes[0, 0].set_axis_off()
        _no_data(axes[0, 0], "no per-epoch history recorded")
        return _save(fig, path)
    nrows, ncols, panels = facets(cmp.strata, cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharex=True, sharey=True)
    for i, j, stratum in panels:
        ax = axes[i, j]
        sub = curves.loc[_stratum_mask(curves, stratum)]
        counts: list[str] = []
        for color, lv in zip(ARM_COLORS, cmp.arms, strict=True):
            cell = sub.loc[sub[cmp.compare] == lv].sort_values("epoch")
            if cell.empty:
                counts.append("0")
                continue
            epochs, means, halves, ns = (
                cell[c].to_numpy(dtype=float) for c in ("epoch", "mean", "half", "n")
            )
            if len(epochs) > 1:
                ax.plot(epochs, means, color=color, marker="o", ms=3, lw=1.5)
                ax.fill_between(epochs, means - halves, means + halves, color=color, alpha=0.2)
            else:  # a band over one epoch has no width: CI bars, side by side
                shift = -0.06 if lv == cmp.control else 0.06
                ax.errorbar(
                    epochs + shift,
                    means,
                    yerr=np.nan_to_num(halves),
                    color=color,
                    fmt="o",
                    ms=3,
                    capsize=3,
                )
            counts.append(f"{int(ns.max())}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_title(_panel_title(stratum), fontsize=8)
        # Seeds per arm (control/treatment): they differ from the grid's when cells failed.
        ax.text(
            0.98,
            0.03,
            "n = " + "/".join(counts),
            transform=ax.transAxes,
            fontsize=7,
            ha="right",
            va="bottom",
            color="0.3",
        )
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
        ax.tick_params(labelsize=7)
    _hide_unused(axes, {(i, j) for i, j, _ in panels})
    _clamp_accuracy(axes[0, 0])  # the panels share their y axis
    epochs_seen = curves["epoch"].astype(int)
    axes[0, 0].set_xlim(epochs_seen.min() - 0.5, epochs_seen.max() + 0.5)
    handles = [
        axes[0, 0].plot([], [], color=c, marker="o", ms=3, label=cmp.arm_label(lv))[0]
        for c, lv in zip(ARM_COLORS, cmp.arms, strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    _xlabel_bottom(axes, panels, "epoch")
    fig.supylabel("val accuracy", fontsize=9)
    fig.suptitle(
        f"Validation accuracy per epoch (mean, {_level(alpha)} CI over seeds)", fontsize=10
    )
    return _save(fig, path)


def _x_positions(name: str | None, levels: Sequence[Any]) -> tuple[np.ndarray, bool]:
    if name is not None and _log_axis(name, levels):
        return np.asarray(levels, dtype=float), True
    return np.arange(len(levels), dtype=float), False


def _gap(x: np.ndarray, log: bool) -> float:
    """The smallest distance between adjacent levels (in log2 units on a log axis)."""
    if x.size < 2:
        return 1.0
    return float(np.min(np.diff(np.log2(np.sort(x)) if log else np.sort(x))))


def _shift(x: np.ndarray, log: bool, frac: Any, gap: float) -> np.ndarray:
    """Move points sideways by ``frac`` of ``gap``: the arms side by side, seeds jittered."""
    return x * 2.0 ** (np.asarray(frac) * gap) if log else x + np.asarray(frac) * gap


def _level_axis(ax: Any, name: str | None, levels: Sequence[Any], x: np.ndarray, log: bool) -> None:
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(x))
        ax.xaxis.set_minor_locator(NullLocator())
        pad = 2.0 ** (0.55 * _gap(x, log))
        ax.set_xlim(x.min() / pad, x.max() * pad)
    else:
        ax.xaxis.set_major_locator(FixedLocator(x))
        ax.set_xlim(-0.6, len(levels) - 0.4)
    labels = [factor(name).format(v) for v in levels] if name else [""] * len(levels)
    ax.set_xticklabels(labels, fontsize=7)


def accuracy_figure_name(cmp: Comparison) -> str:
    """``accuracy_vs_<first stratum factor>.png`` (``accuracy.png`` with no strata)."""
    return f"accuracy_vs_{cmp.strata[0]}.png" if cmp.strata else "accuracy.png"


def plot_accuracy_vs_factor(
    results: pd.DataFrame, arms: pd.DataFrame, cmp: Comparison, path: Path, *, alpha: float = 0.05
) -> Path:
    """Test accuracy against the first non-compared factor, the two arms side by side (the
    arm's mean with its t-based CI from ``arms``, dots for seeds); one panel per level
    combination of the other factors. Positive numeric factors (batch size, learning rate, init
    scale) are on a log x axis."""
    done = stats.finished_cells(results)
    xname = cmp.strata[0] if cmp.strata else None
    xlevels = list(cmp.levels[xname]) if xname else [None]
    x, log = _x_positions(xname, xlevels)
    nrows, ncols, panels = facets(cmp.strata[1:], cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for i, j, stratum in panels:
        ax = axes[i, j]
        sub = done.loc[_stratum_mask(done, stratum)]
        means = arms.loc[_stratum_mask(arms, stratum)]
        gap = _gap(x, log)
        for color, lv, offset in zip(ARM_COLORS, cmp.arms, (-0.15, 0.15), strict=True):
            arm = sub.loc[sub[cmp.compare] == lv]
            xs = _shift(x, log, offset, gap)
            vals = [
                arm.loc[arm[xname] == v, "test_accuracy"] if xname else arm["test_accuracy"]
                for v in xlevels
            ]
            mine = means.loc[means[cmp.compare] == lv]
            mine = mine.set_index(xname).reindex(xlevels) if xname else mine
            mean = mine["mean"].to_numpy(float) if len(mine) else np.full(len(xlevels), np.nan)
            half = mine["ci_high"].to_numpy(float) - mean if len(mine) else mean
            for xk, v in zip(xs, vals, strict=True):
                spread = _shift(np.full(v.size, xk), log, rng.uniform(-0.06, 0.06, v.size), gap)
                ax.scatter(spread, v, s=8, color=color, alpha=0.35, lw=0)
            ax.errorbar(
                xs,
                mean,
                yerr=np.nan_to_num(half),
                fmt="o",
                color=color,
                capsize=3,
                ms=5,
                label=f"{cmp.arm_label(lv)}: mean ± {_level(alpha)} CI",
            )
        _level_axis(ax, xname, xlevels, x, log)
        ax.set_title(_panel_title(stratum), fontsize=8)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=2))
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, {(i, j) for i, j, _ in panels})
    _clamp_accuracy(axes[0, 0])  # the panels share their y axis
    _xlabel_bottom(axes, panels, xname or "")
    fig.supylabel("test accuracy", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    what = f"by {xname}" if xname else f"by {cmp.compare}"
    fig.suptitle(f"Test accuracy {what} (dots: individual seeds)", fontsize=10)
    return _save(fig, path)


def difference_figure_name(cmp: Comparison) -> str:
    """``<compare>_difference.png``."""
    return f"{cmp.compare}_difference.png"


def plot_difference(analysis: Analysis, path: Path) -> Path:
    """Treatment − control test accuracy per comparison with the interval it was decided on
    (the repeated CI of a sequential design, else the CI), the zero line and the ±margin band,
    each labelled with its decision: x = the first non-compared factor, one panel per
    combination of the others."""
    cmp, decisions = analysis.comparison, analysis.decisions
    low_col, high_col, interval = analysis.interval
    xname = cmp.strata[0] if cmp.strata else None
    xlevels = list(cmp.levels[xname]) if xname else [None]
    x, log = _x_positions(xname, xlevels)
    nrows, ncols, panels = facets(cmp.strata[1:], cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    pp = 100.0
    margin = pp * analysis.margin
    for i, j, stratum in panels:
        ax = axes[i, j]
        sub = decisions.loc[_stratum_mask(decisions, stratum)]
        if xname:
            sub = sub.set_index(xname).reindex(xlevels)
        mean, low, high = (
            pp * sub[c].to_numpy(dtype=float) for c in ("mean_diff", low_col, high_col)
        )
        ax.axhspan(-margin, margin, color="0.85", label=f"equivalence band ±{margin:.2f} pp")
        ax.axhline(0.0, color="0.3", lw=1)
        ax.errorbar(
            x,
            mean,
            yerr=np.nan_to_num(np.vstack([mean - low, high - mean])),
            fmt="o",
            color="k",
            capsize=4,
            ms=5,
            label=f"mean paired difference ± {interval}",
        )
        _level_axis(ax, xname, xlevels, x, log)
        labels = []
        for v, r in zip(xlevels, sub.itertuples(index=False), strict=True):
            head = factor(xname).format(v) if xname else ""
            n = int(r.n_pairs) if np.isfinite(r.n_pairs) else 0
            labels.append(f"{head}\nn={n}\n{r.decision}" if n else f"{head}\nn=0")
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(_panel_title(stratum), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, {(i, j) for i, j, _ in panels})
    _xlabel_bottom(axes, panels, xname or "")
    fig.supylabel(f"{cmp.diff_label} test accuracy (pp)", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    design = "sequential design" if analysis.sequential else "paired by seed"
    fig.suptitle(f"Effect of {cmp.words} {strata_phrase(cmp.strata)} ({design})", fontsize=10)
    return _save(fig, path)


def plot_paired_seeds(pairs: pd.DataFrame, cmp: Comparison, path: Path) -> Path:
    """Per-seed control vs treatment test accuracy joined by a line, one panel per stratum
    (``pairs``: ``stats.paired_frame``)."""
    nrows, ncols, panels = facets(cmp.strata, cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    colors = {True: "#2ca02c", False: "#9467bd"}
    for i, j, stratum in panels:
        ax = axes[i, j]
        p = pairs.loc[_stratum_mask(pairs, stratum)]
        for r in p.itertuples(index=False):
            ax.plot(
                [0, 1],
                [r.control, r.treatment],
                color=colors[r.diff > 0],
                alpha=0.6,
                lw=1,
                marker="o",
                ms=3,
            )
        head = _panel_title(stratum)
        if p.empty:
            ax.set_title(f"{head}\nno complete pair".strip(), fontsize=8)
            _no_data(ax, "no seed finished in both arms")
        else:
            up = int((p["diff"] > 0).sum())
            ax.set_title(
                f"{head}\n{cmp.arm_label(cmp.treatment)} higher in {up}/{len(p)}".strip(),
                fontsize=8,
            )
        ax.set_xticks([0, 1], [cmp.arm_label(lv) for lv in cmp.arms], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=2))
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, {(i, j) for i, j, _ in panels})
    _clamp_accuracy(axes[0, 0])  # the panels share their y axis
    fig.supylabel("test accuracy", fontsize=9)
    treat = cmp.arm_label(cmp.treatment)
    handles = [
        axes[0, 0].plot([], [], color=colors[k], marker="o", ms=3, label=lab)[0]
        for k, lab in ((True, f"{treat} higher"), (False, f"{treat} lower or equal"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Per-seed pairs (same data order and initial weights)", fontsize=10)
    return _save(fig, path)


SEQUENTIAL_COLORS = {
    "benefit": "#2ca02c",
    "harm": "#d62728",
    "equivalent": "#1f77b4",
    "undecided": "0.45",
    "continue": "0.45",
}
EQ_COLOR = "#9467bd"  # the equivalence interval of a TOST design, beside the repeated CI


def plot_sequential_monitoring(
    looks: pd.DataFrame, path: Path, *, margin: float, diff_label: str = "treatment − control"
) -> Path:
    """Group-sequential monitoring: one column per comparison (four to a row), x = seed pairs.

    Top row: the repeated CI at every look against 0 and the shaded ±margin band, the last
    look coloured by the decision. Bottom row: the t statistic against the look's boundary
    ±t_crit (crossing it is what "the interval excludes 0" means). ``looks`` is
    ``stats.looks_frame`` output (``comparison`` plus ``stats.LOOK_COLUMNS``); ``diff_label``
    names the difference (``bn=on − bn=off``).

    Raises:
        ValueError: If ``looks`` lacks a needed column.
    """
    need = ["comparison", "n", "mean", "rci_low", "rci_high", "t_stat", "t_crit", "decision"]
    missing = [c for c in need if c not in looks.columns]
    if missing:
        raise ValueError(f"looks frame lacks columns {missing}")
    comparisons = list(pd.unique(looks["comparison"]))
    strata = factor_columns(looks.columns)  # the looks of a stratum carry its levels
    ncols = min(max(len(comparisons), 1), MONITOR_COLUMNS)
    if len(strata) >= 2:  # a row per level of the other factors, as the other figures facet
        ncols = min(looks[strata[-1]].nunique(), MONITOR_COLUMNS)
    blocks = max(math.ceil(len(comparisons) / ncols), 1)
    fig, axes = _new_figure(2 * blocks, ncols, height_ratios=[3, 2] * blocks)
    fig.set_size_inches(max(FIGSIZE[0], 2.4 * ncols), 1.0 + 4.5 * blocks)
    pp, band = 100.0, 100.0 * margin
    # The first O'Brien-Fleming looks have huge intervals; clip them rather than flatten the rest.
    last = looks.groupby("comparison", sort=False).tail(1)
    span = np.abs(pp * last[["rci_low", "rci_high"]].to_numpy(dtype=float))
    ylim = 1.25 * max(2 * band, float(np.nanmax(span, initial=0.0)))
    tlim = 1.3 * max(3.0, float(np.nanmax(np.abs(looks["t_stat"]), initial=0.0)))
    for j, name in enumerate(comparisons):
        g = looks.loc[looks["comparison"] == name].sort_values("n")
        top, bottom = axes[2 * (j // ncols), j % ncols], axes[2 * (j // ncols) + 1, j % ncols]
        title = _panel_title([(f, g[f].iloc[0]) for f in strata]) if strata else name
        n = g["n"].to_numpy(dtype=float)
        mean, low, high = (pp * g[c].to_numpy(dtype=float) for c in ("mean", "rci_low", "rci_high"))
        decision = str(g["decision"].iloc[-1])
        color = SEQUENTIAL_COLORS.get(decision, "k")
        top.axhspan(-band, band, color="0.85", lw=0)
        top.axhline(0.0, color="0.3", lw=1)
        colors = ["k"] * (len(g) - 1) + [color]
        for x, m, lo, hi, c in zip(n, mean, low, high, colors, strict=True):
            top.errorbar(x, m, yerr=[[m - lo], [hi - m]], fmt="o", color=c, capsize=3, ms=4)
        if _separate_equivalence(g):  # TOST: the narrower interval that decides equivalence
            e_low, e_high = (pp * g[c].to_numpy(dtype=float) for c in ("eq_low", "eq_high"))
            bars = [mean - e_low, e_high - mean]
            top.errorbar(n, mean, yerr=bars, fmt="none", color=EQ_COLOR, lw=3, alpha=0.5)
        top.set_ylim(-ylim, ylim)
        top.set_title(f"{title}\n{decision} at n = {int(n[-1])}", fontsize=9, color=color)
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
    _hide_unused(
        axes, {(2 * (j // ncols) + k, j % ncols) for j in range(len(comparisons)) for k in (0, 1)}
    )
    for b in range(blocks):
        axes[2 * b, 0].set_ylabel(f"{diff_label} (pp)", fontsize=9)
        axes[2 * b + 1, 0].set_ylabel("t statistic", fontsize=9)
    tost = []
    if _separate_equivalence(looks):
        label = "equivalence interval (two one-sided tests)"
        tost = [axes[0, 0].errorbar([], [], yerr=[], fmt="none", color=EQ_COLOR, lw=3, label=label)]
    handles = [
        axes[0, 0].errorbar([], [], yerr=[], fmt="o", color="k", ms=4, label="repeated CI"),
        *tost,
        axes[0, 0].fill_between([], [], color="0.85", label=f"equivalence band ±{band:.2f} pp"),
        axes[1, 0].plot(
            [], [], color="#ff7f0e", ls="--", label="boundary ±t_crit (benefit or harm beyond it)"
        )[0],
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle("Group-sequential monitoring: repeated CI and boundary at every look", fontsize=10)
    return _save(fig, path)


def _separate_equivalence(looks: pd.DataFrame) -> bool:
    """Looks whose equivalence interval is not the repeated CI itself (a TOST design)."""
    if not {"eq_low", "eq_high"} <= set(looks.columns) or not len(looks):
        return False
    eq, rci = (
        looks[c].to_numpy(dtype=float) for c in (["eq_low", "eq_high"], ["rci_low", "rci_high"])
    )
    return not np.allclose(eq, rci, equal_nan=True)


# -------------------------------------------------------------------------------- markdown


def _fmt(x: float, spec: str = ".4f") -> str:
    return format(x, spec) if np.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if np.isfinite(x) else "n/a"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}" if np.isfinite(x) else "n/a"


def _p_text(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return "< 0.001" if x < 0.001 else f"= {x:.3f}"


def _words(name: str) -> str:
    return factor(name).words


def _row_stratum(row: Any, cmp: Comparison) -> tuple[tuple[str, Any], ...]:
    get = row.get if isinstance(row, Mapping | pd.Series) else lambda k: getattr(row, k)
    return tuple((n, get(n)) for n in cmp.strata)


def _level_cells(row: Any, cmp: Comparison) -> list[str]:
    return [factor(n).format(v) for n, v in _row_stratum(row, cmp)]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _stratum_headers(cmp: Comparison) -> list[str]:
    return [_words(n) for n in cmp.strata] or ["comparison"]


def _stratum_cells(row: Any, cmp: Comparison) -> list[str]:
    return _level_cells(row, cmp) or ["all"]


def verdict_table(summary: pd.DataFrame, cmp: Comparison) -> str:
    """The per-stratum fixed-sample table (differences in percentage points); its ``verdict``
    column only where the summary has one (a fixed design, where it is the decision)."""
    verdicts = "verdict" in summary.columns
    level = _level(float(summary["alpha"].iloc[0])) if len(summary) else "95%"
    headers = [
        *_stratum_headers(cmp),
        "n",
        f"mean {cmp.arm_label(cmp.control)}",
        f"mean {cmp.arm_label(cmp.treatment)}",
        f"diff pp [{level} CI]",
        "p (t)",
        "p Holm",
        "TOST p",
        "d_z",
        *(["verdict"] if verdicts else []),
    ]
    rows = [
        [
            *_stratum_cells(r, cmp),
            int(r["n_pairs"]),
            _pct(r["acc_control"]),
            _pct(r["acc_treatment"]),
            f"{_pp(r['mean_diff'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]",
            fmt_p(r["t_pvalue"]),
            fmt_p(r["p_holm"]),
            fmt_p(r["tost_pvalue"]),
            _fmt(r["cohens_dz"], ".2f"),
            *([r["verdict"]] if verdicts else []),
        ]
        for _, r in summary.iterrows()
    ]
    return md_table(headers, rows)


def verdict_sentence(row: Mapping[str, Any] | pd.Series, cmp: Comparison) -> str:
    """Plain-language sentence for one stratum of ``summarize``: every number and the
    conclusion come from the row; nothing is hard-coded."""
    where, n = stratum_phrase(_row_stratum(row, cmp)), int(row["n_pairs"])
    treat, ctrl = cmp.arm_phrase(cmp.treatment), cmp.arm_phrase(cmp.control)
    if n == 0:
        return (
            f"At {where}, no seed finished in both arms, so {treat} and {ctrl} cannot be compared."
        )
    margin = float(row["equivalence_margin"])
    head = f"At {where} (n = {n} seed pairs), {treat} instead of {ctrl} changed test accuracy by "
    head += f"{_pp(float(row['mean_diff']))} pp"
    if np.isfinite(row["ci_low"]):
        level = 100 * (1 - float(row["alpha"]))
        head += f" ({level:g}% CI {_pp(row['ci_low'])} to {_pp(row['ci_high'])} pp)"
    v = row.get("verdict")
    if v is None:  # after a sequential design: descriptive, the decision is elsewhere
        tail = (
            f"; paired t p {_p_text(row['t_pvalue'])} (Holm-adjusted {_p_text(row['p_holm'])}), "
            f"TOST p {_p_text(row['tost_pvalue'])} against ±{100 * margin:.2f} pp."
        )
    elif v in stats.VERDICTS[:2]:
        tail = f": a {v} (Holm-adjusted p {_p_text(row['p_holm'])})."
    elif v == stats.VERDICTS[2]:
        tail = (
            f": equivalent within ±{100 * margin:.2f} pp (TOST p {_p_text(row['tost_pvalue'])}; "
            f"Holm-adjusted p {_p_text(row['p_holm'])})."
        )
    else:
        tail = (
            f": inconclusive, neither significant (Holm-adjusted p {_p_text(row['p_holm'])}) "
            f"nor shown equivalent within ±{100 * margin:.2f} pp "
            f"(TOST p {_p_text(row['tost_pvalue'])})."
        )
    # No "seeds needed" from the observed effect here: post-hoc power says nothing the CI does
    # not; the sequential design's expected seeds (at a planning SD) are the design quantity.
    return head + tail


def decision_table(analysis: Analysis) -> str:
    """The run's decisions (differences in percentage points): a sequential design's with its
    repeated CI and looks, a fixed design's verdicts with their CI."""
    cmp, decisions = analysis.comparison, analysis.decisions
    low, high, interval = analysis.interval
    by_factor = all(n in decisions.columns for n in cmp.strata) and cmp.strata
    rows = [
        [
            *(_stratum_cells(r, cmp) if by_factor else [r["comparison"]]),
            "open: next look due" if r["decision"] == "continue" else f"**{r['decision']}**",
            int(r["n_pairs"]),
            *([int(r["looks"])] if analysis.sequential else []),
            f"{_pp(r['mean_diff'])} [{_pp(r[low])}, {_pp(r[high])}]",
            f"{r['alpha']:.4g}",
        ]
        for _, r in decisions.iterrows()
    ]
    headers = [
        *(_stratum_headers(cmp) if by_factor else ["comparison"]),
        "decision",
        "pairs used",
        *(["looks"] if analysis.sequential else []),
        f"{cmp.diff_label} pp [{interval}]",
        "alpha" if analysis.sequential else "alpha (Holm)",
    ]
    return md_table(headers, rows)


def answer_markdown(analysis: Analysis) -> str:
    """The decided table with one line saying what it is: the parent run's description."""
    cmp = analysis.comparison
    how = "sequential design" if analysis.sequential else "fixed design, Holm across strata"
    return f"Decided ({how}): {cmp.diff_label} test accuracy\n\n" + decision_table(analysis)


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


def design_section(analysis: Analysis) -> list[str]:
    """Markdown lines: the decided verdicts, how to read them, and the design's quantities."""
    design, cmp = analysis.design, analysis.comparison
    plan = design.plan
    margin = _pp(plan.margin).lstrip("+")
    lines = [
        f"## Decision {strata_phrase(cmp.strata)} (sequential design)",
        "",
        f"The {plan.describe()}. At each look the repeated confidence interval (RCI) of the "
        f"mean {cmp.contrast} difference is compared with 0 and with the equivalence band "
        f"±{margin} pp: **benefit** / **harm** when it excludes 0, **equivalent** when "
        + (
            f"the equivalence interval (two one-sided tests at {plan.alpha_per_comparison:.4g} "
            "each; the interval shown for an equivalent decision) lies inside the band"
            if plan.equivalence == "tost"
            else "it lies inside the band"
        )
        + ", else more seeds; **undecided** at the cap. The RCIs hold their coverage at every "
        f"look, so the family-wise error rate is at most {plan.alpha:g} across comparisons, "
        "looks and scheduled runs of this design, fixed before its data.",
        "",
        decision_table(analysis),
        "",
    ]
    undecided = design.decisions.loc[design.decisions["decision"] == "undecided"]
    for _, r in undecided.iterrows():
        lines.append(
            f"- {r['comparison']}: undecided after {int(r['n_pairs'])} pairs; the "
            f"difference lies in [{_pp(r['rci_low'])}, {_pp(r['rci_high'])}] pp."
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
    """The N-way RM-ANOVA table: every main effect and interaction."""
    rows = [
        [
            " × ".join(_words(n) for n in r.effect.split(":")),
            f"F({int(r.df)}, {int(r.df_error)}) = {_fmt(r.F, '.2f')}"
            if np.isfinite(r.F)
            else "n/a",
            fmt_p(r.p),
            _fmt(r.gg_epsilon, ".3f"),
            fmt_p(r.p_gg),
            _fmt(r.partial_eta_sq, ".3f"),
        ]
        for r in anova.itertuples(index=False)
    ]
    return md_table(["effect", "F", "p", "GG ε", "p (GG)", "partial η²"], rows)


def factor_effects_table(effects: pd.DataFrame, cmp: Comparison) -> str:
    """One-way RM-ANOVA, Friedman and trend of each non-compared factor within each arm."""
    rows = []
    for r in effects.itertuples(index=False):
        trend = (
            f"{_pp(r.trend_slope)} [{_pp(r.trend_ci_low)}, {_pp(r.trend_ci_high)}]"
            if np.isfinite(r.trend_slope)
            else "n/a"
        )
        rows.append(
            [
                _words(r.factor),
                cmp.arm_label(r.compare_level),
                int(r.n_seeds),
                f"F({_fmt(r.df, '.0f')}, {_fmt(r.df_error, '.0f')}) = {_fmt(r.F, '.2f')}",
                fmt_p(r.p),
                fmt_p(r.p_gg),
                f"χ² = {r.friedman_stat:.2f}" if np.isfinite(r.friedman_stat) else "n/a",
                fmt_p(r.friedman_p),
                trend,
                fmt_p(r.trend_p),
            ]
        )
    headers = [
        "factor",
        "arm",
        "seeds",
        "RM-ANOVA",
        "p",
        "p (GG)",
        "Friedman",
        "Friedman p",
        "trend pp per doubling [CI]",
        "trend p",
    ]
    return md_table(headers, rows)


def dynamics_table(summary: pd.DataFrame, cmp: Comparison, threshold: float) -> str:
    """Training-dynamics means per stratum and arm."""
    rows = [
        [
            cmp.arm_label(r[cmp.compare]),
            *_stratum_cells(r, cmp),
            int(r["n"]),
            f"{int(r['n_reached'])}/{int(r['n'])}",
            _fmt(r["epochs_to_threshold"], ".1f"),
            _fmt(100 * r["stability"], ".3f"),
            _fmt(100 * r["generalization_gap"], ".2f"),
            _fmt(r["time_per_epoch"], ".2f"),
        ]
        for _, r in summary.sort_values([*cmp.strata, cmp.compare]).iterrows()
    ]
    headers = [
        "arm",
        *_stratum_headers(cmp),
        "n",
        f"reached {100 * threshold:g}%",
        "epochs to threshold",
        f"stability (SD pp, last {stats.STABILITY_EPOCHS})",
        "train − test (pp)",
        "s / epoch",
    ]
    return md_table(headers, rows)


def _factors_of(effect: str) -> set[str]:
    return set(effect.split(":"))


def anova_sentences(anova: pd.DataFrame, cmp: Comparison, alpha: float) -> list[str]:
    """Plain-language readings of the two-way interactions of the compared factor: does its
    effect depend on each other factor?"""
    two_way = [len(_factors_of(e)) == 2 and cmp.compare in _factors_of(e) for e in anova["effect"]]
    rows = anova.loc[two_way]
    if rows.empty:
        return [
            f"With no other factor in the grid, the effect of {cmp.words} has nothing to "
            "interact with."
        ]
    out = []
    for _, row in rows.iterrows():
        other = _words(next(iter(_factors_of(row["effect"]) - {cmp.compare})))
        if not np.isfinite(row["F"]):
            out.append(
                f"Whether the effect of {cmp.words} depends on {other} could not be tested "
                f"({int(row['n_seeds'])} seed(s) complete across all cells, at least 2 needed, "
                "and at least 2 levels of each factor)."
            )
            continue
        p = row["p_gg"] if np.isfinite(row["p_gg"]) else row["p"]
        does = "does" if p < alpha else "does not detectably"
        out.append(
            f"Across {int(row['n_seeds'])} seeds complete in every cell, the effect of "
            f"{cmp.words} {does} depend on {other} (interaction F({int(row['df'])}, "
            f"{int(row['df_error'])}) = {row['F']:.2f}, Greenhouse-Geisser p {_p_text(p)})."
        )
    return out


def methods_note(analysis: Analysis) -> str:
    """Which tests ran, with how many pairs, and which pairs were dropped and why."""
    summary, cmp = analysis.summary, analysis.comparison
    alpha, n_resamples = analysis.alpha, analysis.n_resamples
    k = int((summary["n_pairs"] > 0).sum())
    treat, ctrl = cmp.arm_phrase(cmp.treatment), cmp.arm_phrase(cmp.control)
    margin = 100 * float(summary["equivalence_margin"].iloc[0]) if len(summary) else 0.0
    lines = [
        f"Each seed pairs a {treat} and a {ctrl} cell of the same stratum (same data order, "
        f"same initial-weight draw), so every comparison is on per-seed differences ({treat} − "
        f"{ctrl} test accuracy). Only cells with status `finished` and a finite test accuracy "
        "are used.",
        "",
        f"- Paired t-test (scipy `ttest_rel`) with a t-based {_level(alpha)} CI; BCa bootstrap "
        f"CI ({n_resamples} resamples); Wilcoxon signed-rank; sign-flip permutation test of the "
        "mean (exact when 2^n ≤ resamples).",
        f"- Holm-Bonferroni across the {k} stratum(s) with at least one pair (on the t-test p); "
        f"equivalence by TOST (two one-sided paired t-tests) against ±{margin:.2f} pp.",
        "- Effect sizes: Cohen's d_z = mean/SD of differences; Hedges' g_z with the exact "
        "gamma-function small-sample correction.",
        (
            "- Decision: the sequential design's (above); these fixed-sample tests are descriptive."
            if analysis.sequential
            else "- Verdict: significant if Holm p < alpha (sign gives improvement/harm), else "
            "equivalent if TOST p < alpha, else inconclusive."
        ),
        f"- Across the grid: {stats.ANOVA_METHOD}. Each other factor within each arm: one-way "
        "RM-ANOVA on the seeds' means over the remaining factors, Friedman's test, and for a "
        "numeric factor the mean per-seed slope per doubling of its level (t CI).",
        "",
        "Pairs used per comparison:",
        "",
    ]
    for _, r in summary.iterrows():
        lines.append(
            f"- {stratum_phrase(_row_stratum(r, cmp))}: n = {int(r['n_pairs'])} pairs "
            f"(Wilcoxon: {r['wilcoxon_method']}; permutation: {r['permutation_method']})"
        )
    lines += ["", "Dropped pairs:", ""]
    dropped = analysis.dropped
    if dropped.empty:
        lines.append("- none: every seed finished in both arms in every stratum.")
    phrases = {stratum_label(s): stratum_phrase(s) for s in cmp.strata_cells()}
    for label, group in dropped.groupby("stratum", sort=False):
        n = len(group)
        lines.append(
            f"- {n} pair{'s' if n != 1 else ''} dropped at {phrases.get(label, label)}: "
            + "; ".join(group["reason"])
        )
    return "\n".join(lines)


def render_markdown(
    analysis: Analysis, *, title: str, run_info: Mapping[str, Any], figures: Sequence[Path]
) -> str:
    """Assemble report.md from an analysis (figure links relative to the report)."""
    cmp, summary, alpha = analysis.comparison, analysis.summary, analysis.alpha
    parts = [f"# {title}", "", "## Run", ""]
    parts += [f"- **{k}**: {v}" for k, v in run_info.items()] or ["- (no run info)"]
    parts += [""]
    sequential = analysis.sequential
    if sequential:
        parts += design_section(analysis)
    parts += [
        "## Fixed-sample tests on the same pairs (descriptive)"
        if sequential
        else f"## Verdict {strata_phrase(cmp.strata)}",
        "",
        f"Differences are {cmp.contrast} ({cmp.diff_label} in the tables and figures), in "
        "percentage points (pp) of test accuracy.",
        "",
    ]
    if sequential:
        parts += [
            "_These seeds were added until a decision, so the p-values below are not "
            "error-controlled and decide nothing: the decision table above is the result._",
            "",
        ]
    parts += [verdict_table(summary, cmp), ""]
    parts += [f"- {verdict_sentence(row, cmp)}" for _, row in summary.iterrows()]
    others = " and ".join(_words(n) for n in cmp.strata) or "the grid"
    does = "Does" if len(cmp.strata) == 1 else "Do"
    parts += [
        "",
        f"## {does} {others} change the effect of {cmp.words}? (exploratory)",
        "",
        "_Secondary analyses on the seeds complete in every cell; not error-controlled._",
        "",
        *[f"- {s}" for s in anova_sentences(analysis.anova, cmp, alpha)],
        "",
        anova_table(analysis.anova),
        "",
        f"_{stats.ANOVA_METHOD}._",
        "",
    ]
    if len(analysis.effects):
        parts += [
            f"Effect of each other factor within each {cmp.words} arm (trend: change in test "
            "accuracy per doubling of the level, mean of the per-seed slopes):",
            "",
            factor_effects_table(analysis.effects, cmp),
            "",
        ]
    parts += [
        "## Training dynamics",
        "",
        f"Means over finished cells; epochs to threshold = first epoch with val accuracy ≥ "
        f"{100 * analysis.threshold:g}% (averaged over the cells that reached it). s / epoch is "
        "the wall time per model: with the fused engine a group's shards are timed together, so "
        "its cells (both BN arms) share one figure; `studies/compute.yaml` times BN's cost with "
        "one `model.fit` per cell.",
        "",
        dynamics_table(analysis.dynamics_summary, cmp, analysis.threshold),
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in figures]
    parts += ["## Methods", "", methods_note(analysis), ""]
    return "\n".join(parts)


def write_report(
    analysis: Analysis, out_dir: Path, *, title: str, run_info: Mapping[str, Any] | None = None
) -> ReportOutput:
    """Draw the figures of ``analysis`` and write ``out_dir/report.md`` and ``report.html``.

    Args:
        analysis: The run's analysis (``bnpipe.analysis.analyze``).
        out_dir: Directory for report.md and the PNG figures (created if needed).
        title: Report title.
        run_info: Key facts shown at the top (run id, config digest, versions, ...).

    Returns:
        A ``ReportOutput`` with the written paths and the analysis.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    text = render_markdown(analysis, title=title, run_info=dict(run_info or {}), figures=figures)
    report_path = out_dir / "report.md"
    report_path.write_text(text, encoding="utf-8")
    return ReportOutput(
        report_path,
        figures,
        analysis,
        answer_markdown=answer_markdown(analysis),
        html_path=write_html_report(report_path),
    )


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
