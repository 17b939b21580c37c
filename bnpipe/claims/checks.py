"""The claims' tests: each takes a study's data and the family's settings, returns a ClaimTest.

Every test has the signature ``(data: StudyData, how: Settings, ...) -> ClaimTest``: the study
says what was measured (its frames, epochs, threshold, classes, margin), the settings how the
family is tested (the per-claim level, resamples, the compared factor and its levels). The
statistics themselves are ``bnpipe.stats``'s; here a study's cells become their inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from bnpipe import stats
from bnpipe.claims.outcomes import (
    cell_outcomes,
    history_cells,
    n_strata,
    pair_cells,
    per_cell,
    seed_means,
    stratum_detail,
)
from bnpipe.factors import factor_columns
from bnpipe.stats import (
    Estimate,
    median_estimate,
    paired_counts,
    paired_proportion_estimate,
    paired_t_estimate,
)

TIME_MARGIN = 0.05  # seconds per epoch within +-5% of each other: no meaningful cost
EPOCH_MARGIN = 0.5  # half an epoch to the threshold: below the resolution of a 10-epoch run
SHARE_MARGIN = 0.10  # diverged share within +-10 percentage points of cells


@dataclass(frozen=True)
class StudyData:
    """A study's frames and the settings its claims need."""

    results: pd.DataFrame
    histories: pd.DataFrame = field(default_factory=pd.DataFrame)
    epochs: int = 10
    val_threshold: float = 0.97
    num_classes: int = 10
    equivalence_margin: float = 0.002


@dataclass(frozen=True)
class Settings:
    """How every claim of the family is tested.

    Attributes:
        alpha: the claim's own level (the family's alpha / m: ``stats.bonferroni_alpha``).
        n_resamples: for the permutation p-values behind the t tests.
        compare: the compared factor; ``levels`` = (control, treatment).
    """

    alpha: float = 0.05
    n_resamples: int = 9999
    compare: str = "bn"
    levels: tuple[Any, Any] = (False, True)


@dataclass(frozen=True)
class ClaimTest:
    """The primary test of one claim: effect, simultaneous interval, p, and the detail behind it.

    ``effect``/``ci_low``/``ci_high`` are in the claim's units (``unit``); ``null`` is "no
    effect" (0, or 1 for a ratio) and ``band`` the interval of no meaningful difference.
    """

    n: int
    n_label: str
    effect: float
    ci_low: float
    ci_high: float
    p: float
    null: float
    band: tuple[float, float]
    unit: str
    method: str
    detail: pd.DataFrame = field(default_factory=pd.DataFrame)
    secondary: dict[str, Any] = field(default_factory=dict)


def _claim_test(
    est: Estimate,
    *,
    margin: float,
    unit: str,
    n_label: str,
    method: str,
    detail: pd.DataFrame,
    secondary: dict[str, Any] | None = None,
) -> ClaimTest:
    """A ``stats`` estimate as a ClaimTest (null 0, band +-margin); its note ends the method."""
    return ClaimTest(
        n=est.n,
        n_label=n_label,
        effect=est.effect,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        p=est.p,
        null=0.0,
        band=(-margin, margin),
        unit=unit,
        method=method + (f"; {est.note}" if est.note else ""),
        detail=detail,
        secondary=secondary or {},
    )


def _sign_test(diffs: np.ndarray, *, alpha: float, method: str, **claim: Any) -> ClaimTest:
    """``stats.median_estimate`` at ``alpha`` as a ClaimTest (``claim``: ``_claim_test``'s).

    Used where diverged cells are outcomes: a few chance-level cells make the differences a
    mixture of small and huge values, where the t interval's normal theory fails (ten seeds
    all pointing one way can come out undecided) and the median's interval needs no model.
    """
    est = median_estimate(diffs, alpha)
    return _claim_test(est, method=method + " (median; exact sign-test interval)", **claim)


def _seeds_label(seeds: int, strata: int) -> str:
    return f"{seeds} seeds" + (f" x {strata} strata" if strata > 1 else "")


def paired_outcome(
    data: StudyData,
    how: Settings = Settings(),
    outcome: str = "test_accuracy",
    *,
    margin: float | None = None,
    diverged: str = "drop",
    unit: str = "accuracy",
) -> ClaimTest:
    """Paired difference of a per-cell outcome, per seed averaged over the strata; paired t.

    ``margin`` defaults to the study's equivalence margin.

    Returns:
        ``n`` = seeds complete in every stratum; the detail has one row per stratum.
    """
    margin = data.equivalence_margin if margin is None else margin
    cells = cell_outcomes(data.results, outcome, diverged=diverged, num_classes=data.num_classes)
    pairs = pair_cells(cells, how.compare, how.levels)
    per_seed = seed_means(pairs)
    est = paired_t_estimate(
        per_seed["treatment"].to_numpy(float),
        per_seed["control"].to_numpy(float),
        alpha=how.alpha,
        margin=margin,
        n_resamples=how.n_resamples,
    )
    return _claim_test(
        est,
        margin=margin,
        unit=unit,
        n_label=_seeds_label(len(per_seed), n_strata(pairs)),
        method="paired t on per-seed means over strata",
        detail=stratum_detail(pairs),
    )


def train_test_gap(data: StudyData, how: Settings = Settings()) -> ClaimTest:
    """Train minus test accuracy (overfitting), BN - no BN: ``paired_outcome`` on the gap."""
    results = data.results
    frame = results.assign(
        gap=pd.to_numeric(results["train_accuracy"], errors="coerce")
        - pd.to_numeric(results["test_accuracy"], errors="coerce")
    )
    return paired_outcome(replace(data, results=frame), how, "gap")


def diverged_share(
    data: StudyData, how: Settings = Settings(), *, margin: float = SHARE_MARGIN
) -> ClaimTest:
    """Share of diverged cells, BN - no BN, over all (stratum, seed) pairs of cells.

    Each pair is a paired 0/1 outcome (diverged or not), tested by
    ``stats.paired_proportion_estimate`` (exact McNemar p, Newcombe interval). Pairs at
    different strata of one seed are taken as independent: a learning rate changes the whole
    training trajectory. Diverged cells are outcomes here, not dropped pairs; ``n`` counts them.
    """
    compare, levels = how.compare, how.levels
    cells = cell_outcomes(
        data.results, "test_accuracy", diverged="chance", num_classes=data.num_classes
    )
    pairs = pair_cells(cells.assign(value=cells["diverged"].astype(float)), compare, levels)
    # b: only the treatment (BN) diverged; c: only the control (no BN).
    a, b, c, d = paired_counts(pairs["treatment"].astype(int), pairs["control"].astype(int))
    est = paired_proportion_estimate(a, b, c, d, how.alpha)
    return _claim_test(
        est,
        margin=margin,
        n_label=f"{est.n} cell pairs ({pairs['seed'].nunique() if est.n else 0} seeds x "
        f"{n_strata(pairs)} strata)",
        unit="share",
        method=f"exact McNemar ({b} BN-only vs {c} no-BN-only diverged pairs); Newcombe interval",
        detail=_with_accuracy(
            stratum_detail(pairs).rename(
                columns={
                    "control": "diverged_control",
                    "treatment": "diverged_treatment",
                    "diff": "diverged_diff",
                }
            ),
            pair_cells(cells, compare, levels),
        ),
        secondary={"both": a, "treatment_only": b, "control_only": c, "neither": d},
    )


def _with_accuracy(detail: pd.DataFrame, acc_pairs: pd.DataFrame) -> pd.DataFrame:
    """``detail`` with each stratum's mean test accuracy per arm (diverged cells at chance)."""
    acc = stratum_detail(acc_pairs).rename(
        columns={"control": "acc_control", "treatment": "acc_treatment", "diff": "acc_diff"}
    )
    keys = [c for c in detail.columns if c in acc.columns and c != "n"]
    return detail.merge(acc.drop(columns=["n"]), on=keys, how="left")


def spread_across(
    data: StudyData,
    how: Settings = Settings(),
    *,
    across: str,
    outcome: str = "test_accuracy",
    diverged: str = "chance",
) -> ClaimTest:
    """Sensitivity to a factor: per seed and arm, the SD of the outcome across ``across``'s
    levels (other strata averaged); BN - no BN, paired by seed.

    Only seeds with every level in both arms count. Diverged cells count as chance by default:
    a scale at which training breaks is the strongest sensitivity there is.
    """
    compare, levels = how.compare, how.levels
    cells = cell_outcomes(data.results, outcome, diverged=diverged, num_classes=data.num_classes)
    others = [c for c in factor_columns(cells.columns) if c not in (compare, across)]
    n_levels = cells[across].nunique() if across in cells else 0
    if across not in cells:
        raise ValueError(f"results frame has no column for factor {across!r}")
    keys = [compare, *others, "seed"]
    g = cells.groupby(keys)["value"]
    spread = g.std(ddof=1).where(g.size() == n_levels).dropna().rename("value").reset_index()
    pairs = pair_cells(spread, compare, levels)
    per_seed = seed_means(pairs)
    detail = cells.groupby([across, compare])["value"].agg(["mean", "std", "size"]).unstack(compare)
    detail.columns = [f"{stat}_{'treatment' if lvl == levels[1] else 'control'}"
                      for stat, lvl in detail.columns]  # fmt: skip
    return _sign_test(
        per_seed["diff"].to_numpy(float),
        alpha=how.alpha,
        margin=data.equivalence_margin,
        unit="accuracy",
        n_label=f"{len(per_seed)} seeds x {n_levels} {across} levels",
        method=f"per-seed SD across {across}, BN - no BN",
        detail=detail.reset_index(),
    )


def epochs_to_threshold(data: StudyData, how: Settings = Settings()) -> ClaimTest:
    """Epochs until validation accuracy first reaches the study's ``val_threshold``, BN - no BN,
    per seed averaged over the strata; a cell that never reaches it counts as ``epochs + 1`` (the
    least it could have needed, so the difference is if anything shrunk towards 0).

    The secondary numbers are the epoch-to-epoch SD of validation accuracy over the last
    ``STABILITY_EPOCHS`` epochs ("stabilises"), BN - no BN, same pairing.
    """
    threshold, epochs = data.val_threshold, data.epochs
    h = history_cells(data.histories)
    keys = [*factor_columns(h.columns), "seed"]
    # Never reached: epochs + 1, the least it could have needed.
    per = stats.convergence(h, threshold, censor_at=epochs + 1)
    frame = per_cell(h, data.results, "to_threshold", per)
    frame = frame.merge(per[[*keys, "stability"]], on=keys, how="left")
    cells = replace(data, results=frame)
    test = paired_outcome(cells, how, "to_threshold", margin=EPOCH_MARGIN, unit="epochs")
    # Only its effect, interval and pairs are read: none depends on the margin.
    stab = paired_outcome(cells, how, "stability", margin=0.002)
    if not (per["to_threshold"] <= epochs).any():
        # Nothing reached it: every cell is censored at epochs + 1, which says nothing.
        test = replace(test, ci_low=math.nan, ci_high=math.nan, p=math.nan)
    return replace(
        test,
        method=f"paired t on per-seed mean epochs to val accuracy >= {threshold:g}"
        + ("" if (per["to_threshold"] <= epochs).any() else "; no cell reached it"),
        secondary={
            "val-accuracy SD (last epochs) BN - no BN": stab.effect,
            "its interval": (stab.ci_low, stab.ci_high),
            "its pairs": stab.n,
        },
    )


def time_ratio(
    data: StudyData, how: Settings = Settings(), *, skip_first: bool = True
) -> ClaimTest:
    """Seconds per epoch, BN / no BN: paired t on log seconds, per seed averaged over strata.

    Epoch 1 holds the compile and the first-call costs, so with histories it is left out
    (``skip_first``); without them the results' mean ``epoch_time_s`` is used. The effect and
    interval are ratios (1 = same cost); the band is ``1 / (1 + margin)`` to ``1 + margin``.
    """
    margin = TIME_MARGIN
    frame = data.results
    if len(data.histories):
        h = history_cells(data.histories)
        if skip_first and h["epoch"].max() > 1:
            h = h.loc[h["epoch"] > 1]
        keys = [*factor_columns(h.columns), "seed"]
        per = h.groupby(keys)["epoch_time_s"].mean().reset_index()
        frame = per_cell(h, frame, "epoch_time_s", per)
    t = pd.to_numeric(frame["epoch_time_s"], errors="coerce")
    frame = frame.assign(log_time=np.log(t.where(t > 0)))
    test = paired_outcome(
        replace(data, results=frame), how, "log_time", margin=math.log1p(margin), unit="ratio"
    )
    # Back from logs: a mean log difference is the log of the geometric mean ratio.
    detail = test.detail.assign(
        control=np.exp(test.detail["control"]),
        treatment=np.exp(test.detail["treatment"]),
        diff=np.exp(test.detail["diff"]),
    ).rename(columns={"control": "s_control", "treatment": "s_treatment", "diff": "ratio"})
    return replace(
        test,
        effect=math.exp(test.effect),
        ci_low=math.exp(test.ci_low),
        ci_high=math.exp(test.ci_high),
        null=1.0,
        band=(1 / (1 + margin), 1 + margin),
        method="paired t on log seconds per epoch (geometric mean ratio)",
        detail=detail,
    )


def interaction_contrast(
    data: StudyData,
    how: Settings = Settings(),
    *,
    across: str,
    outcome: str = "test_accuracy",
    diverged: str = "chance",
) -> ClaimTest:
    """Does the BN effect depend on ``across``? Per seed, the BN - no BN difference at the
    smallest level minus that at the largest, paired t.

    Diverged cells count (chance accuracy): instability is the point. The detail has, per
    level, the arms' mean outcome, their diverged cells and (with histories) the
    epoch-to-epoch SD of validation accuracy over the last ``STABILITY_EPOCHS`` epochs.
    """
    compare, levels = how.compare, how.levels
    cells = cell_outcomes(data.results, outcome, diverged=diverged, num_classes=data.num_classes)
    if across not in cells:
        raise ValueError(f"results frame has no column for factor {across!r}")
    pairs = pair_cells(cells, compare, levels)
    lo_level, hi_level = pairs[across].min(), pairs[across].max()
    others = [c for c in pairs.columns if c not in (across, "seed", "control", "treatment", "diff")]
    wide = pairs.pivot_table(index=[*others, "seed"], columns=across, values="diff")
    contrast = (wide[lo_level] - wide[hi_level]).dropna() if len(wide) else pd.Series(dtype=float)
    per_seed = contrast.groupby(level="seed").mean()
    detail = stratum_detail(pairs.loc[:, [across, "seed", "control", "treatment", "diff"]])
    div = cells.groupby([across, compare])["diverged"].sum().unstack(compare)
    detail["diverged_control"] = detail[across].map(div.get(levels[0], {})).fillna(0).astype(int)
    detail["diverged_treatment"] = detail[across].map(div.get(levels[1], {})).fillna(0).astype(int)
    if len(data.histories):
        stab = _stability(data.histories, compare, across, levels)
        detail = detail.merge(stab, on=across, how="left")
    return _sign_test(
        per_seed.to_numpy(float),
        alpha=how.alpha,
        margin=data.equivalence_margin,
        unit="accuracy",
        n_label=f"{len(per_seed)} seeds ({across} {lo_level:g} vs {hi_level:g})",
        method=f"per seed, (BN - no BN at {across} {lo_level:g}) - (at {hi_level:g})",
        detail=detail,
    )


def _stability(
    histories: pd.DataFrame, compare: str, across: str, levels: tuple[Any, Any]
) -> pd.DataFrame:
    """Mean epoch-to-epoch SD of val accuracy over the last epochs, per level of ``across``."""
    h = history_cells(histories)
    keys = [*factor_columns(h.columns), "seed"]
    # Stability only: no threshold is ever reached at infinity.
    per = stats.convergence(h, threshold=math.inf, censor_at=math.nan)
    sd = per.sort_values(keys).set_index(keys)["stability"]
    out = sd.groupby(level=[across, compare]).mean().unstack(compare)
    return pd.DataFrame(
        {
            across: out.index,
            "val_sd_control": out.get(levels[0], pd.Series(math.nan, out.index)).to_numpy(),
            "val_sd_treatment": out.get(levels[1], pd.Series(math.nan, out.index)).to_numpy(),
        }
    )
