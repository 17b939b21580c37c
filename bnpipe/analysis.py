"""One run's answer, computed once: ``analyze(results, histories, cfg) -> Analysis``.

Every surface (the terminal summary, report.md / report.html and their figures, the MLflow
parent run, the Prefect artifacts and log lines, the claims report) renders an ``Analysis`` and
computes nothing, so they cannot disagree. ``Analysis.decisions`` is the run's answer: the
sequential design's decisions (``design.design_outcome``, the same code path as the runner's
looks), or in a fixed design the fixed-sample verdicts. After a sequential design the
fixed-sample tests are descriptive: they carry no verdict column, only their numbers.

Plain values only: no Prefect, no MLflow, no matplotlib.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bnpipe import stats
from bnpipe.config import DEFAULT_COMPARE, TEST_SET, Config, population_text
from bnpipe.design import DesignOutcome, Plan, design_outcome, plan_of
from bnpipe.factors import (
    factor,
    factor_columns,
    level_phrase,
    level_text,
    stratum_key,
)


@dataclass(frozen=True)
class Comparison:
    """What a run compares: ``compare``'s two levels (control first) within each stratum of
    the ``strata`` factors, whose levels (sorted) span the grid."""

    compare: str
    control: Any
    treatment: Any
    strata: tuple[str, ...]
    levels: Mapping[str, tuple[Any, ...]]

    @property
    def arms(self) -> tuple[Any, Any]:
        return (self.control, self.treatment)

    @property
    def paired_levels(self) -> tuple[Any, Any] | None:
        """The (control, treatment) levels to pair, or None when the grid has no treatment."""
        return self.arms if self.treatment is not None else None

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
class Analysis:
    """Everything a run reports, computed once (see the module docstring).

    ``decisions`` is the answer, one row per comparison: ``comparison`` (the stratum's label),
    one column per stratum factor, ``decision``, ``n_pairs``, ``looks``, ``mean_diff``, the
    interval (``rci_low``/``rci_high`` after a sequential design, ``ci_low``/``ci_high`` in a
    fixed one: see ``interval``) and ``alpha``. ``summary`` holds the fixed-sample tests (with a
    ``verdict`` column only in a fixed design, where it is the decision).
    """

    comparison: Comparison
    plan: Plan | None  # None: no design known (a frame analysed outside a run)
    results: pd.DataFrame  # normalised: typed levels, finished and failed cells alike
    histories: pd.DataFrame
    decisions: pd.DataFrame
    summary: pd.DataFrame
    design: DesignOutcome | None
    anova: pd.DataFrame
    effects: pd.DataFrame
    dynamics: pd.DataFrame
    dynamics_summary: pd.DataFrame
    pairs: pd.DataFrame  # stats.paired_frame: one row per complete seed pair
    dropped: pd.DataFrame  # stats.dropped_pairs: which pairs left the statistics, and why
    curves: pd.DataFrame  # stats.epoch_curves: val accuracy per stratum, arm and epoch
    arms: pd.DataFrame  # stats.arm_summary: test accuracy per stratum and arm, every seed
    alpha: float
    margin: float
    threshold: float
    n_resamples: int

    @property
    def sequential(self) -> bool:
        return self.plan is not None and self.plan.sequential

    @property
    def population(self) -> str:
        """What the decisions are about (issue 28): a sequential design's setting; a fixed
        design's t-tests treat the test set as fixed, so theirs are about these images."""
        return self.plan.population if self.sequential else TEST_SET

    @property
    def population_text(self) -> str:
        return population_text(self.population, self.plan is not None and self.plan.bootstrap_train)

    @property
    def interval(self) -> tuple[str, str, str]:
        """The decisions' interval columns and its name: the repeated CI of the sequential
        design, or the fixed design's CI."""
        if self.sequential:
            return "rci_low", "rci_high", "repeated CI"
        return "ci_low", "ci_high", f"{100 * (1 - self.alpha):g}% CI"

    def record(self) -> dict[str, dict[str, Any]]:
        """The parent run's tags and metrics: per comparison the decision (tag
        ``decision.<stratum>``), its interval, and the fixed-sample numbers (metrics)."""
        tags: dict[str, Any] = {
            "design": self.plan.kind if self.plan else "fixed",
            "population": self.population_text,
        }
        metrics: dict[str, float] = {}
        if self.design is not None:
            tags |= self.design.record["tags"]
            metrics |= self.design.record["metrics"]
        names = {
            "mean_diff": "diff",
            "ci_low": "ci_low",
            "ci_high": "ci_high",
            "t_pvalue": "p",
            "p_holm": "p_holm",
            "acc_treatment": "acc_treatment",
            "acc_control": "acc_control",
            "n_pairs": "n_pairs",
        }
        for _, row in self.summary.iterrows():
            key = stratum_key(tuple((n, _py(row[n])) for n in self.comparison.strata))
            metrics |= {f"{short}_{key}": float(row[c]) for c, short in names.items() if c in row}
        if not self.sequential:
            for _, row in self.decisions.iterrows():
                key = stratum_key(tuple((n, _py(row[n])) for n in self.comparison.strata))
                tags[f"decision.{key}"] = row["decision"]
        return {"tags": tags, "metrics": metrics}


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _fixed_decisions(
    summary: pd.DataFrame, cmp: Comparison, alpha: float, about: str
) -> pd.DataFrame:
    """A fixed design's answer in the decisions' shape: its verdicts (Holm across strata)."""
    return pd.DataFrame(
        {
            "comparison": summary["stratum"],
            **{n: summary[n] for n in cmp.strata},
            "decision": summary["verdict"],
            "n_pairs": summary["n_pairs"].astype(int),
            "looks": 1,
            "mean_diff": summary["mean_diff"],
            "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"],
            "p_holm": summary["p_holm"],
            "tost_pvalue": summary["tost_pvalue"],
            "alpha": alpha,
            "population": TEST_SET,  # the t-tests' noise is the seeds' alone
            "population_text": about,
        }
    )


def analyze_frames(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    *,
    compare: str | None = None,
    levels: Sequence[Any] | None = None,
    alpha: float = 0.05,
    equivalence_margin: float = 0.002,
    threshold: float = 0.97,
    n_resamples: int = 9999,
    plan: Plan | None = None,
) -> Analysis:
    """:func:`analyze` with its settings spelled out (tests and ``build_report`` call this).

    Args:
        results: One row per cell with one column per grid factor.
        histories: Per-epoch histories (one row per cell per epoch).
        compare: The compared factor (default ``config.DEFAULT_COMPARE``).
        levels: Its (control, treatment) levels (default: its two sorted levels).
        alpha: Family-wise significance level (also sets the CI level).
        equivalence_margin: Equivalence margin on test accuracy (fraction: 0.002 = 0.2 pp).
        threshold: Validation accuracy threshold for epochs-to-threshold.
        n_resamples: Bootstrap/permutation budget.
        plan: The run's design; a sequential one makes its decisions the answer.
    """
    results = stats.normalize_results(results)
    histories = stats.normalize_histories(histories)
    cmp = comparison_of(results, compare, levels)
    summary = stats.summarize_by_stratum(
        results,
        cmp.compare,
        cmp.paired_levels,
        alpha=alpha,
        equivalence_margin=equivalence_margin,
        n_resamples=n_resamples,
    )
    design = design_outcome(results, plan) if plan is not None and plan.sequential else None
    if design is not None:
        decisions = design.decisions
        # Seeds were added until decided: these tests are not error-controlled, so their
        # outcome must not read as a verdict anywhere.
        summary = summary.drop(columns="verdict")
    else:
        bootstrap = plan is not None and plan.bootstrap_train
        decisions = _fixed_decisions(summary, cmp, alpha, population_text(TEST_SET, bootstrap))
    return Analysis(
        comparison=cmp,
        plan=plan,
        results=results,
        histories=histories,
        decisions=decisions,
        summary=summary,
        design=design,
        anova=stats.interaction_anova(results),
        effects=stats.factor_effects(results, cmp.compare, alpha=alpha),
        dynamics=stats.dynamics(histories, results, threshold),
        dynamics_summary=stats.dynamics_summary(histories, results, threshold, compare=cmp.compare),
        pairs=stats.paired_frame(results, cmp.compare, cmp.paired_levels),
        dropped=stats.dropped_pairs(results, cmp.compare, cmp.paired_levels),
        curves=stats.epoch_curves(histories, results, cmp.compare, alpha=alpha),
        arms=stats.arm_summary(
            results, cmp.compare, [lv for lv in cmp.arms if lv is not None], cmp.strata, alpha
        ),
        alpha=alpha,
        margin=equivalence_margin,
        threshold=threshold,
        n_resamples=n_resamples,
    )


def analyze(results: pd.DataFrame, histories: pd.DataFrame, cfg: Config) -> Analysis:
    """A run's analysis under the settings and design of ``cfg``."""
    levels = tuple(cfg.grid.compare_levels)
    return analyze_frames(
        results,
        histories,
        compare=cfg.grid.compare,
        # The config's order says which level is the control; a one-level grid has no pair.
        levels=levels if len(levels) == 2 else None,
        alpha=cfg.stats.alpha,
        equivalence_margin=cfg.stats.equivalence_margin,
        threshold=cfg.stats.val_threshold,
        n_resamples=cfg.stats.n_resamples,
        plan=plan_of(cfg),
    )
