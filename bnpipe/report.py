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
from scipy import stats as sps

from bnpipe import stats
from bnpipe.config import DEFAULT_COMPARE, Config
from bnpipe.design import DesignOutcome, Plan, design_outcome, plan_of
from bnpipe.factors import (
    factor,
    factor_columns,
    level_phrase,
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
class Comparison:
    """What a report compares: ``compare``'s two levels (control first) within each stratum of
    the ``strata`` factors, whose levels (sorted) span the grid."""

    compare: str
    control: Any
    treatment: Any
    strata: tuple[str, ...]
    levels: Mapping[str, tuple[Any, ...]]

    @property
    def arms(self) -> tuple[Any, Any]:
        return (self.control, self.treatment)

    def arm_label(self, level: Any) -> str:
        """``bn=on``: one arm as tables and legends show it."""
        if level is None:  # a grid with one level of the compared factor has no treatment
            return f"{factor(self.compare).label}=(not in grid)"
        return level_text(self.compare, level)

    @property
    def diff_label(self) -> str:
        """``bn=on − bn=off``: the sign convention of every difference, in figures and tables."""
        return f"{self.arm_label(self.treatment)} − {self.arm_label(self.control)}"

    def arm_phrase(self, level: Any) -> str:
        """``BN on``: one arm in a sentence."""
        if level is None:
            return f"a second {factor(self.compare).words} level (not in the grid)"
        return level_phrase(self.compare, level)

    @property
    def words(self) -> str:
        """The compared factor in a sentence: ``BN``."""
        return factor(self.compare).words

    @property
    def contrast(self) -> str:
        """``BN on minus BN off``: the sign convention in a sentence."""
        return f"{self.arm_phrase(self.treatment)} minus {self.arm_phrase(self.control)}"

    def strata_cells(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every stratum of the grid, in sorted level order."""
        combos = itertools.product(*(self.levels[n] for n in self.strata))
        return [tuple(zip(self.strata, c, strict=True)) for c in combos]


def comparison_of(
    results: pd.DataFrame, compare: str | None = None, levels: Sequence[Any] | None = None
) -> Comparison:
    """The comparison a results frame holds.

    Args:
        results: One row per cell with one column per grid factor.
        compare: The compared factor (default ``config.DEFAULT_COMPARE``).
        levels: Its (control, treatment) levels; default: its two sorted levels in the frame
            (a frame with one level gets no treatment: every stratum has 0 pairs).

    Raises:
        ValueError: If ``compare`` is not a column or ``levels`` are not two (or more than
            two are found).
    """
    compare = compare or DEFAULT_COMPARE
    results = stats.normalize_results(results)  # levels read back from CSV come as strings
    factors = factor_columns(results.columns)
    if compare not in factors:
        raise ValueError(f"results frame has no column for the compared factor {compare!r}")
    found = stats.levels_of(results, compare)
    arms = tuple(levels) if levels is not None else tuple(found)
    if levels is None and len(arms) == 1:
        arms = (arms[0], None)
    if len(arms) != 2:
        raise ValueError(f"{compare}: a paired comparison needs 2 levels, found {list(arms)}")
    strata = tuple(f for f in factors if f != compare)
    return Comparison(
        compare,
        arms[0],
        arms[1],
        strata,
        {f: tuple(stats.levels_of(results, f)) for f in strata},
    )


@dataclass(frozen=True)
class ReportOutput:
    """What ``build_report`` wrote and computed."""

    report_path: Path
    figures: list[Path]
    summary: pd.DataFrame
    anova: pd.DataFrame
    factor_effects: pd.DataFrame
    dynamics: pd.DataFrame
    design: DesignOutcome | None = None
    verdict_markdown: str = ""  # the verdict table alone (the parent run's description)
    html_path: Path | None = None  # report.html: the report with its figures embedded


# -------------------------------------------------------------------------------- the numbers


def _stratum_mask(frame: pd.DataFrame, stratum: Sequence[tuple[str, Any]]) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for name, level in stratum:
        mask &= frame[name] == level
    return mask


def paired_by_stratum(results: pd.DataFrame, cmp: Comparison) -> pd.DataFrame:
    """``stats.paired_frame`` of this comparison: ``stratum``, its factor columns, ``seed``,
    ``control``, ``treatment``, ``diff`` (treatment − control); empty without a treatment."""
    return stats.paired_frame(results, cmp.compare, cmp.arms if cmp.treatment is not None else None)


def summarize(
    results: pd.DataFrame,
    cmp: Comparison,
    *,
    alpha: float,
    equivalence_margin: float,
    n_resamples: int,
) -> pd.DataFrame:
    """``stats.summarize_by_stratum`` of this comparison (one row per stratum: ``stratum``, its
    factor columns, the paired statistics, ``p_holm`` across strata, ``verdict``), plus each
    arm's mean over its finished cells as ``acc_control`` / ``acc_treatment``."""
    out = stats.summarize_by_stratum(
        results,
        cmp.compare,
        cmp.arms if cmp.treatment is not None else None,
        alpha=alpha,
        equivalence_margin=equivalence_margin,
        n_resamples=n_resamples,
    )
    done = stats.finished_cells(results)
    for column, level in (("acc_control", cmp.control), ("acc_treatment", cmp.treatment)):
        means = [
            done.loc[_stratum_mask(done, st) & (done[cmp.compare] == level), "test_accuracy"].mean()
            for st in (_row_stratum(r, cmp) for _, r in out.iterrows())
        ]
        out[column] = np.asarray(means, dtype=float)
    return out


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


def plot_learning_curves(
    histories: pd.DataFrame, results: pd.DataFrame, cmp: Comparison, path: Path, *, alpha=0.05
) -> Path:
    """Validation accuracy per epoch: mean over seeds with a t-based band, one panel per stratum.

    Only finished cells are drawn, matching the cells the statistics use.
    """
    keys = [*cmp.strata, cmp.compare, "seed"]
    done = stats.finished_cells(results)[keys]
    h = stats.normalize_histories(histories) if len(histories) else pd.DataFrame(columns=keys)
    h = h.merge(done, on=keys) if len(h) else h
    if h.empty:
        fig, axes = _new_figure()
        axes[0, 0].set_axis_off()
        _no_data(axes[0, 0], "no per-epoch history recorded")
        return _save(fig, path)
    nrows, ncols, panels = facets(cmp.strata, cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharex=True, sharey=True)
    for i, j, stratum in panels:
        ax = axes[i, j]
        sub = h.loc[_stratum_mask(h, stratum)]
        counts: list[str] = []
        for color, lv in zip(ARM_COLORS, cmp.arms, strict=True):
            cell = sub.loc[sub[cmp.compare] == lv]
            if cell.empty:
                counts.append("0")
                continue
            agg = [(e, *mean_ci(g["val_accuracy"], alpha)) for e, g in cell.groupby("epoch")]
            epochs, means, halves, ns = (np.array(v) for v in zip(*agg, strict=True))
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
    epochs_seen = h["epoch"].astype(int)
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
    results: pd.DataFrame, cmp: Comparison, path: Path, *, alpha: float = 0.05
) -> Path:
    """Test accuracy against the first non-compared factor, the two arms side by side (mean
    with t-based CI, dots for seeds); one panel per level combination of the other factors.
    Positive numeric factors (batch size, learning rate, init scale) are on a log x axis."""
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
        gap = _gap(x, log)
        for color, lv, offset in zip(ARM_COLORS, cmp.arms, (-0.15, 0.15), strict=True):
            arm = sub.loc[sub[cmp.compare] == lv]
            xs = _shift(x, log, offset, gap)
            vals = [
                arm.loc[arm[xname] == v, "test_accuracy"] if xname else arm["test_accuracy"]
                for v in xlevels
            ]
            ci = [mean_ci(v, alpha) for v in vals]
            for xk, v in zip(xs, vals, strict=True):
                spread = _shift(np.full(v.size, xk), log, rng.uniform(-0.06, 0.06, v.size), gap)
                ax.scatter(spread, v, s=8, color=color, alpha=0.35, lw=0)
            ax.errorbar(
                xs,
                [c[0] for c in ci],
                yerr=np.nan_to_num([c[1] for c in ci]),
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


def plot_difference(
    summary: pd.DataFrame, cmp: Comparison, path: Path, *, equivalence_margin: float
) -> Path:
    """Treatment − control test accuracy per stratum with its CI, the zero line and the ±margin
    band: x = the first non-compared factor, one panel per combination of the others."""
    xname = cmp.strata[0] if cmp.strata else None
    xlevels = list(cmp.levels[xname]) if xname else [None]
    x, log = _x_positions(xname, xlevels)
    nrows, ncols, panels = facets(cmp.strata[1:], cmp.levels)
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    pp = 100.0
    margin = pp * equivalence_margin
    alpha = float(summary["alpha"].iloc[0]) if len(summary) else 0.05
    for i, j, stratum in panels:
        ax = axes[i, j]
        sub = summary.loc[_stratum_mask(summary, stratum)]
        if xname:
            sub = sub.set_index(xname).reindex(xlevels)
        mean, low, high = (
            pp * sub[c].to_numpy(dtype=float) for c in ("mean_diff", "ci_low", "ci_high")
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
            label=f"mean paired difference ± {_level(alpha)} CI",
        )
        _level_axis(ax, xname, xlevels, x, log)
        labels = []
        for v, r in zip(xlevels, sub.itertuples(index=False), strict=True):
            head = factor(xname).format(v) if xname else ""
            n = int(r.n_pairs) if np.isfinite(r.n_pairs) else 0
            labels.append(f"{head}\nn={n}\np_Holm{_p_label(r.p_holm)}" if n else f"{head}\nn=0")
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(_panel_title(stratum), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, {(i, j) for i, j, _ in panels})
    _xlabel_bottom(axes, panels, xname or "")
    fig.supylabel(f"{cmp.diff_label} test accuracy (pp)", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(f"Effect of {cmp.words} {strata_phrase(cmp.strata)} (paired by seed)", fontsize=10)
    return _save(fig, path)


def plot_paired_seeds(results: pd.DataFrame, cmp: Comparison, path: Path) -> Path:
    """Per-seed control vs treatment test accuracy joined by a line, one panel per stratum."""
    pairs = paired_by_stratum(results, cmp)
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


def _p_label(p: float) -> str:
    """p for inline labels: '<0.001', '=0.042' or ' n/a'."""
    text = fmt_p(p)
    return text if text.startswith("<") else (" n/a" if text == "n/a" else f"={text}")


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
    """The per-stratum verdict table (differences in percentage points)."""
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
        "verdict",
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
            r["verdict"],
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
    v = row["verdict"]
    if v in stats.VERDICTS[:2]:
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


def decision_table(decisions: pd.DataFrame, cmp: Comparison) -> str:
    """The sequential design's decided verdicts (differences in percentage points)."""
    by_factor = all(n in decisions.columns for n in cmp.strata) and cmp.strata
    rows = [
        [
            *(_stratum_cells(r, cmp) if by_factor else [r["comparison"]]),
            "open: next look due" if r["decision"] == "continue" else f"**{r['decision']}**",
            int(r["n_pairs"]),
            int(r["looks"]),
            f"{_pp(r['mean_diff'])} [{_pp(r['rci_low'])}, {_pp(r['rci_high'])}]",
            f"{r['alpha']:.4g}",
        ]
        for _, r in decisions.iterrows()
    ]
    headers = [
        *(_stratum_headers(cmp) if by_factor else ["comparison"]),
        "decision",
        "pairs used",
        "looks",
        f"{cmp.diff_label} pp [RCI]",
        "alpha",
    ]
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


def design_section(design: DesignOutcome, cmp: Comparison) -> list[str]:
    """Markdown lines: the decided verdicts, how to read them, and the design's quantities."""
    plan = design.plan
    margin = _pp(plan.margin).lstrip("+")
    lines = [
        f"## Decision {strata_phrase(cmp.strata)} (sequential design)",
        "",
        f"The {plan.describe()}. At each look the repeated confidence interval (RCI) of the "
        f"mean {cmp.contrast} difference is compared with 0 and with the equivalence band "
        f"±{margin} pp: **benefit** / **harm** when it excludes 0, **equivalent** when it lies "
        "inside the band, else more seeds; **undecided** at the cap. The RCIs hold their "
        f"coverage at every look, so the family-wise error rate is at most {plan.alpha:g} "
        "across comparisons, looks and scheduled runs.",
        "",
        decision_table(design.decisions, cmp),
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


def methods_note(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    cmp: Comparison,
    *,
    alpha: float,
    n_resamples: int,
) -> str:
    """Which tests ran, with how many pairs, and which pairs were dropped and why."""
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
        "- Verdict: significant if Holm p < alpha (sign gives improvement/harm), else equivalent "
        "if TOST p < alpha, else inconclusive.",
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
    dropped = stats.dropped_pairs(
        results, cmp.compare, cmp.arms if cmp.treatment is not None else None
    )
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
    *,
    title: str,
    run_info: Mapping[str, Any],
    cmp: Comparison,
    summary: pd.DataFrame,
    anova: pd.DataFrame,
    effects: pd.DataFrame,
    dyn_summary: pd.DataFrame,
    figures: Sequence[Path],
    methods: str,
    alpha: float,
    threshold: float,
    design: DesignOutcome | None = None,
) -> str:
    """Assemble report.md from computed tables (figure links relative to the report)."""
    parts = [f"# {title}", "", "## Run", ""]
    parts += [f"- **{k}**: {v}" for k, v in run_info.items()] or ["- (no run info)"]
    parts += [""]
    sequential = design is not None and design.plan.sequential
    if sequential:
        parts += design_section(design, cmp)
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
            "_These seeds were added until a decision, so the p-values and verdicts below are "
            "not error-controlled: the decision table above is the result._",
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
        *[f"- {s}" for s in anova_sentences(anova, cmp, alpha)],
        "",
        anova_table(anova),
        "",
        f"_{stats.ANOVA_METHOD}._",
        "",
    ]
    if len(effects):
        parts += [
            f"Effect of each other factor within each {cmp.words} arm (trend: change in test "
            "accuracy per doubling of the level, mean of the per-seed slopes):",
            "",
            factor_effects_table(effects, cmp),
            "",
        ]
    parts += [
        "## Training dynamics",
        "",
        f"Means over finished cells; epochs to threshold = first epoch with val accuracy ≥ "
        f"{100 * threshold:g}% (averaged over the cells that reached it). s / epoch is the wall "
        "time per model: with the fused engine a group's shards are timed together, so its "
        "cells (both BN arms) share one figure; `studies/compute.yaml` times BN's cost with one "
        "`model.fit` per cell.",
        "",
        dynamics_table(dyn_summary, cmp, threshold),
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
    compare: str | None = None,
    levels: Sequence[Any] | None = None,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    threshold: float = 0.97,
    n_resamples: int = 9999,
    run_info: Mapping[str, Any] | None = None,
    plan: Plan | None = None,
) -> ReportOutput:
    """Compute the statistics, draw the figures and write ``out_dir/report.md``.

    Args:
        results: Results frame (one row per grid cell, one column per grid factor).
        histories: Per-epoch histories (one row per cell per epoch).
        out_dir: Directory for report.md and the PNG figures (created if needed).
        title: Report title.
        compare: The compared factor (default ``config.DEFAULT_COMPARE``).
        levels: Its (control, treatment) levels (default: its two sorted levels).
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
    cmp = comparison_of(results, compare, levels)
    summary = summarize(
        results, cmp, alpha=alpha, equivalence_margin=equivalence_margin, n_resamples=n_resamples
    )
    anova = stats.interaction_anova(results)
    effects = stats.factor_effects(results, cmp.compare, alpha=alpha)
    dyn = stats.dynamics(histories, results, threshold)
    dyn_summary = stats.dynamics_summary(histories, results, threshold, compare=cmp.compare)
    figures = [
        plot_learning_curves(
            histories, results, cmp, out_dir / FIGURE_FILES["learning_curves"], alpha=alpha
        ),
        plot_accuracy_vs_factor(results, cmp, out_dir / accuracy_figure_name(cmp), alpha=alpha),
        plot_difference(
            summary,
            cmp,
            out_dir / difference_figure_name(cmp),
            equivalence_margin=equivalence_margin,
        ),
        plot_paired_seeds(results, cmp, out_dir / FIGURE_FILES["paired_seeds"]),
    ]
    design = design_outcome(results, plan) if plan is not None else None
    if design is not None and plan.sequential and len(design.looks):
        monitoring = out_dir / FIGURE_FILES["sequential_monitoring"]
        figures.insert(
            0,
            plot_sequential_monitoring(
                design.looks, monitoring, margin=plan.margin, diff_label=cmp.diff_label
            ),
        )
    text = render_markdown(
        title=title,
        run_info=dict(run_info or {}),
        cmp=cmp,
        summary=summary,
        anova=anova,
        effects=effects,
        dyn_summary=dyn_summary,
        figures=figures,
        methods=methods_note(results, summary, cmp, alpha=alpha, n_resamples=n_resamples),
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
        effects,
        dyn,
        design,
        # A sequential run's answer is its decided table; the fixed-sample table is descriptive.
        verdict_markdown=(
            f"Decided (sequential design): {cmp.diff_label} test accuracy\n\n"
            + decision_table(design.decisions, cmp)
            if design is not None and design.plan.sequential and len(design.decisions)
            else verdict_table(summary, cmp)
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
    levels = tuple(cfg.grid.compare_levels)
    return build_report(
        results,
        histories,
        Path(cfg.tracking.reports_dir) / run_name,
        title=f"{factor(cfg.grid.compare).words} ablation: {run_name}",
        compare=cfg.grid.compare,
        # The config's order says which level is the control; a one-level grid has no pair.
        levels=levels if len(levels) == 2 else None,
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
