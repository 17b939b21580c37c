"""report.md's text: tables, sentences and sections rendered from an ``Analysis``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnpipe import stats
from bnpipe.analysis import Analysis, Comparison
from bnpipe.config import DIGITS, TEST_SET
from bnpipe.factors import (
    factor,
    strata_phrase,
    stratum_label,
    stratum_phrase,
)
from bnpipe.stats import fmt_p


def ci_level(alpha: float) -> str:
    """A confidence level as the report prints it (``95%``)."""
    return f"{100 * (1 - alpha):g}%"


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
    level = ci_level(float(summary["alpha"].iloc[0])) if len(summary) else "95%"
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
    about = analysis.population_text
    return f"Decided ({how}): {cmp.diff_label} test accuracy, about {about}\n\n" + (
        decision_table(analysis)
    )


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


# What population a decision is about, in the report's words (README "Result").
POPULATION_NOTE = {
    DIGITS: "**What these decisions are about: handwritten digits like MNIST's test set.** "
    "Seeds and test examples are crossed random factors: each interval counts the noise of "
    "training (the seed) and of which 10,000 images were drawn to test on, so it says what a "
    'reader means by "BN helps": on new digits from the same source, not only on these '
    "images. The test examples' part of the noise does not shrink with more seeds.",
    TEST_SET: "**What these decisions are about: these test images only** "
    "(`stats.population: test_set`). Each interval counts the seeds' noise alone, treating the "
    "test set as fixed: another set of seeds scored on the same images would agree, new digits "
    "may not.",
}


FIXED_POPULATION_NOTE = (
    "**What these decisions are about: these test images only.** A fixed design's t-tests count "
    "the seeds' noise alone, treating the test set as fixed (the sequential design's "
    "`stats.population: digits` counts the test examples' too): another set of seeds scored on "
    "the same images would agree, new digits may not."
)
BOOTSTRAP_NOTE = (
    "Each seed trained on its own bootstrap resample of the training images "
    "(`data.bootstrap_train: true`), shared by both arms of its pair: the seeds' noise includes "
    "which training images were drawn, so the decisions are about "
    "{population}. Cells trained this way are never reused as plain ones (their cell keys "
    "differ)."
)


def population_note(analysis: Analysis) -> str:
    """The report's paragraph on what the decisions are about."""
    note = POPULATION_NOTE[analysis.population] if analysis.sequential else FIXED_POPULATION_NOTE
    if analysis.plan is not None and analysis.plan.bootstrap_train:
        note += " " + BOOTSTRAP_NOTE.format(population=analysis.population_text)
    return note


def noise_table(noise: pd.DataFrame) -> str:
    """Per comparison: the variance components, their shares of the mean's variance and the
    interval both ways (``design.noise_table``), differences in pp."""
    headers = [
        "comparison",
        "pairs",
        "s²seed",
        "s²example",
        "s²resid",
        "shares seed / example / resid",
        "SE digits",
        "SE test set",
        "ratio",
        "interval about digits",
        "interval about these images",
    ]
    rows = [
        [
            r["comparison"],
            int(r["n_seeds"]),
            f"{r['s2_seed']:.2e}",
            f"{r['s2_example']:.2e}",
            f"{r['s2_resid']:.2e}",
            " / ".join(f"{100 * r[f'share_{p}']:.0f}%" for p in ("seed", "example", "resid")),
            f"{100 * r['se_digits']:.3f} pp",
            f"{100 * r['se_test_set']:.3f} pp",
            f"{r['se_ratio']:.2f}x",
            f"[{_pp(r['digits_low'])}, {_pp(r['digits_high'])}] pp",
            f"[{_pp(r['test_set_low'])}, {_pp(r['test_set_high'])}] pp",
        ]
        for _, r in noise.iterrows()
    ]
    return md_table(headers, rows)


def noise_section(noise: pd.DataFrame) -> list[str]:
    """Where the noise comes from: the table and how to read it."""
    return [
        "### Where the noise comes from (seeds x test examples)",
        "",
        "Per comparison, at the pairs its decision used: the method-of-moments variance "
        "components of the per-example paired differences (treatment minus control "
        "correctness, −1 / 0 / 1) for seeds, test examples and their residual, each one's share "
        "of the mean's variance (s²seed/S, s²example/E, s²resid/(S·E)), and the interval at the "
        "deciding look's boundary both ways: about digits (crossed SE, Satterthwaite df) and "
        "about these test images (seed-only SE, S − 1 df).",
        "",
        noise_table(noise),
        "",
    ]


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
        why = (
            " (stopped before the cap: no decision was in reach by adding seeds, the "
            "test examples' noise does not shrink with them)"
            if r.get("stop_reason") == stats.FLOOR
            else ""
        )
        lines.append(
            f"- {r['comparison']}: undecided after {int(r['n_pairs'])} pairs{why}; the "
            f"difference lies in [{_pp(r['rci_low'])}, {_pp(r['rci_high'])}] pp."
        )
    lines += ["", population_note(analysis)]
    if len(design.noise):
        lines += ["", *noise_section(design.noise)]
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
        f"- Paired t-test (scipy `ttest_rel`) with a t-based {ci_level(alpha)} CI; BCa bootstrap "
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
    if not sequential:
        parts += ["", population_note(analysis)]
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
    parts += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in figures] or [
        "_Not drawn: this run set `report.figures: false` (the tables above are complete; "
        "`bnpipe report <run id> --set report.figures=true` draws them)._",
        "",
    ]
    parts += ["## Methods", "", methods_note(analysis), ""]
    return "\n".join(parts)
