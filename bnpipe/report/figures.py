"""The report's figures, one function each: frames in, a PNG out, its path returned.

Every figure is faceted on the strata (one panel per level combination of the non-compared
factors) and drawn on a ``matplotlib.figure.Figure`` with an Agg canvas rather than pyplot, so
building a report never touches matplotlib's global backend or state.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

from bnpipe import stats
from bnpipe.analysis import Analysis, Comparison
from bnpipe.factors import (
    factor,
    factor_columns,
    level_text,
    strata_phrase,
)
from bnpipe.report.markdown import ci_level

FIGSIZE = (7.0, 4.0)
MONITOR_COLUMNS = 4  # comparisons per row of the sequential monitoring figure
PANEL = (2.7, 2.3)  # inches per facet panel; figures with many panels grow past FIGSIZE
DPI = 100
ARM_COLORS = ("#1f77b4", "#d62728")  # control, treatment: a colour-blind-safe pair
FIGURE_FILES = {
    "learning_curves": "learning_curves.png",
    "paired_seeds": "paired_seeds.png",
    "sequential_monitoring": "sequential_monitoring.png",
    "noise_sources": "noise_sources.png",
}  # plus accuracy_vs_<first stratum factor>.png and <compare>_difference.png, named per grid


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


# PNGs this process drew, by a digest of what they were drawn from, or None (every figure is
# drawn). A warm session (bnpipe.session) keeps them: a rerun that reuses every cell has the same
# analysis, and drawing its figures again was half of that rerun.
_drawn: OrderedDict[str, bytes] | None = None
_DRAWN_MAX = 64


def keep_figures() -> None:
    """Keep the figures this process draws, for later reports drawn from the same inputs."""
    global _drawn
    if _drawn is None:
        _drawn = OrderedDict()


# Results columns no figure draws: whether a cell was trained by this run or reused from an
# earlier one is all that differs between a run and its rerun.
_UNDRAWN = ["reused"]


def _drawn_from(value: Any) -> Any:
    """``value`` without what no figure draws, for the digest of a figure's inputs."""
    if isinstance(value, pd.DataFrame):
        return value.drop(columns=_UNDRAWN, errors="ignore")
    if isinstance(value, Analysis):
        return dataclasses.replace(value, results=_drawn_from(value.results))
    return value


def _drawn_once(plot: Callable[..., Path]) -> Callable[..., Path]:
    """``plot`` (frames in, a PNG at its one Path argument out), drawn once per input when the
    process keeps figures: the same inputs give the same picture, so its bytes are copied."""

    @functools.wraps(plot)
    def draw(*args: Any, **kwargs: Any) -> Path:
        if _drawn is None:
            return plot(*args, **kwargs)
        (path,) = [a for a in (*args, *kwargs.values()) if isinstance(a, Path)]
        inputs = (
            plot.__name__,
            path.name,
            [_drawn_from(a) for a in args if a is not path],
            {k: _drawn_from(v) for k, v in kwargs.items() if v is not path},
        )
        try:
            key = hashlib.sha256(pickle.dumps(inputs, protocol=5)).hexdigest()
        except (pickle.PicklingError, TypeError, AttributeError):
            return plot(*args, **kwargs)  # not comparable: draw it
        if key in _drawn:
            _drawn.move_to_end(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_drawn[key])
            return path
        out = plot(*args, **kwargs)
        _drawn[key] = out.read_bytes()
        while len(_drawn) > _DRAWN_MAX:
            _drawn.popitem(last=False)
        return out

    return draw


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


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


@_drawn_once
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
        f"Validation accuracy per epoch (mean, {ci_level(alpha)} CI over seeds)", fontsize=10
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


@_drawn_once
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
                label=f"{cmp.arm_label(lv)}: mean ± {ci_level(alpha)} CI",
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


@_drawn_once
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


@_drawn_once
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


@_drawn_once
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


# Seed, test-example and residual shares of the mean's variance (a colour-blind-safe trio).
NOISE_COLORS = {"seed": "#0072b2", "example": "#e69f00", "resid": "#999999"}


@_drawn_once
def plot_noise_sources(
    noise: pd.DataFrame, path: Path, *, margin: float, diff_label: str = "treatment − control"
) -> Path:
    """Where each comparison's noise comes from (``design.noise_table``): left, the seed,
    test-example and residual shares of the mean's variance; right, the interval at the
    deciding look both ways, about digits (crossed SE, thick) and about these test images
    (seed-only SE, thin), against 0 and the ±margin band.

    Raises:
        ValueError: If ``noise`` lacks a needed column.
    """
    need = ["comparison", "share_seed", "share_example", "share_resid", "mean_diff"]
    need += ["digits_low", "digits_high", "test_set_low", "test_set_high"]
    missing = [c for c in need if c not in noise.columns]
    if missing:
        raise ValueError(f"noise table lacks columns {missing}")
    k = len(noise)
    fig = Figure(
        figsize=(FIGSIZE[0] + 1.5, max(2.2, 0.55 * k + 1.4)), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.4], sharey=True)
    y = np.arange(k)[::-1]
    start = np.zeros(k)
    for part, color in NOISE_COLORS.items():
        share = noise[f"share_{part}"].to_numpy(dtype=float)
        label = {"seed": "seeds", "example": "test examples", "resid": "residual"}[part]
        left.barh(y, share, left=start, color=color, label=label, height=0.6)
        start = start + share
    left.set_xlim(0, 1)
    left.xaxis.set_major_formatter(PercentFormatter(1.0))
    left.set_yticks(y, noise["comparison"].tolist())
    left.set_xlabel("share of the mean's variance")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, fontsize=8, frameon=False)
    pp, band = 100.0, 100.0 * margin
    right.axvspan(-band, band, color="0.88", lw=0)
    right.axvline(0, color="k", lw=0.8)
    for (name, lo, hi), dy, lw in (
        (("about digits", "digits_low", "digits_high"), 0.12, 3.0),
        (("about these test images", "test_set_low", "test_set_high"), -0.12, 1.2),
    ):
        lows, highs = (pp * noise[c].to_numpy(dtype=float) for c in (lo, hi))
        right.hlines(y + dy, lows, highs, color="k" if lw > 2 else "0.35", lw=lw, label=name)
    right.plot(pp * noise["mean_diff"].to_numpy(dtype=float), y, "o", color="k", ms=4)
    right.set_xlabel(f"{diff_label}, test accuracy (pp); band ±{band:g} pp")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Where the noise comes from, and the interval both ways", fontsize=10)
    return _save(fig, path)
