"""The notebook's claims about BatchNormalization, each put to a paired test.

The notebook trained the MLP once with and once without BN and wrote six claims next to the
single accuracy difference. Each claim here has one study (a params file under ``studies/``),
one outcome and one primary test, paired by seed (a seed's BN and no-BN cells share data order
and initial weights). Pure functions: results/histories frames in, a ``ClaimTest`` out; the
claims table and the report are built from those. No tracking or orchestration imports.

Error control across claims (one family, ``alpha``): every claim's interval is a Bonferroni
``1 - alpha/m`` interval (m = claims tested), so all m intervals cover their true effects at
once with probability >= 1 - alpha. A verdict is read off its interval: it excludes "no effect"
on the claimed side (supported) or the other (contradicted), or lies inside the claim's margin
of no meaningful difference, or neither (undecided). Every verdict in the table is then right
with probability >= 1 - alpha, whichever kind it is (as the sequential design's Bonferroni
RCIs, README). Holm-adjusted p-values of the directional tests are shown beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnpipe import stats
from bnpipe.factors import factor, factor_columns
from bnpipe.stats import (
    FINISHED,
    Estimate,
    fmt_p,
    holm,
    median_estimate,
    paired_counts,
    paired_frame,
    paired_proportion_estimate,
    paired_t_estimate,
)

DIVERGED = "diverged"
# A finished network below this test accuracy did not learn the task (the recipe reaches ~0.97,
# chance is 0.1): what "diverge" means to a user even when the loss stayed finite. Measured on
# full MNIST: Adam at lr 0.1 without BN ends at 0.19-0.20 with a finite loss (BN: 0.94-0.96).
FAILED_ACCURACY = 0.5
VERDICTS = ("supported", "contradicted", "no meaningful difference", "undecided", "not run")
# Beside a directional verdict whose interval lies inside the band of no meaningful difference.
NEGLIGIBLE = ", but inside the margin of no meaningful difference"
TIME_MARGIN = 0.05  # seconds per epoch within +-5% of each other: no meaningful cost
EPOCH_MARGIN = 0.5  # half an epoch to the threshold: below the resolution of a 10-epoch run
SHARE_MARGIN = 0.10  # diverged share within +-10 percentage points of cells


@dataclass(frozen=True)
class Claim:
    """One claim of the notebook and how it is tested.

    Attributes:
        key: short id (``learning_rate``).
        words: the claim in the notebook's words.
        study: the study file (stem under ``studies/``) the data comes from.
        test: what is compared, in one line.
        direction: +1 when the claim predicts the outcome is larger with BN, -1 smaller.
    """

    key: str
    words: str
    study: str
    test: str
    direction: int


CLAIMS: tuple[Claim, ...] = (
    Claim("accuracy", 'BN is "better by 0.0013" (0.9764 vs 0.9751, one run each)', "accuracy",
          "test accuracy, BN - no BN, per seed averaged over batch sizes 16-128", +1),
    Claim("convergence", "BN speeds up and stabilises convergence", "accuracy",
          "epochs to reach the validation threshold, BN - no BN (never reached: epochs + 1)", -1),
    Claim("init_scale", "BN makes training less sensitive to the initial weights", "init_scale",
          "spread (SD) of test accuracy across init scales per seed, BN - no BN", -1),
    Claim("learning_rate", "BN enables the use of higher learning rates without causing the "
          "network to diverge", "learning_rate",
          "share of diverged cells over all learning rates, BN - no BN (paired 0/1)", -1),
    Claim("regularisation", "BN regularises (less overfitting)", "accuracy",
          "train - test accuracy gap, BN - no BN, per seed averaged over batch sizes", -1),
    Claim("compute", "BN costs extra computation", "compute",
          "seconds per epoch (after the first), BN / no BN, keras fit", +1),
    Claim("small_batch", 'BN depends on batch size: "very small batch sizes (e.g. 1 or 2)" are '
          "unstable", "small_batch",
          "BN effect on test accuracy at the smallest batch minus at the largest (diverged = "
          "chance)", -1),
)  # fmt: skip
CLAIM_BY_KEY = {c.key: c for c in CLAIMS}


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


# ---------------------------------------------------------------------------------- cells


def _as_level(name: str, s: pd.Series) -> pd.Series:
    if factor(name).kind is bool:
        if s.dtype == bool:
            return s
        return s.map(lambda v: str(v).strip().lower() in ("true", "1", "on", "yes")).astype(bool)
    return s.astype(factor(name).kind)


def cell_outcomes(
    results: pd.DataFrame,
    outcome: str = "test_accuracy",
    *,
    diverged: str = "drop",
    num_classes: int = 10,
) -> pd.DataFrame:
    """One row per cell with typed factor columns, ``seed``, ``diverged`` (0/1) and ``value``.

    Args:
        results: a results frame (factor columns, seed, status, test_accuracy, ...).
        outcome: the column taken as ``value``.
        diverged: ``"drop"``: only finished cells that trained count (as in the ablation's
            statistics); ``"chance"``: diverged cells count, with their measured accuracy or,
            when there is none (non-finite loss), chance accuracy ``1 / num_classes``.
        num_classes: for chance accuracy.

    A cell is diverged when its loss went non-finite (status ``diverged``) or it finished below
    ``FAILED_ACCURACY`` test accuracy. Failed cells (errors) are never outcomes.
    """
    if diverged not in ("drop", "chance"):
        raise ValueError(f"diverged must be 'drop' or 'chance', not {diverged!r}")
    missing = [c for c in ("seed", "status", "test_accuracy") if c not in results.columns]
    if missing:
        raise ValueError(f"results frame lacks columns {missing}")
    out = results.copy()
    for name in factor_columns(out.columns):
        out[name] = _as_level(name, out[name])
    out["seed"] = out["seed"].astype(int)
    acc = pd.to_numeric(out["test_accuracy"], errors="coerce").astype(float)
    chance = 1.0 / num_classes
    collapsed = (out["status"] == FINISHED) & (acc < FAILED_ACCURACY)
    out["diverged"] = ((out["status"] == DIVERGED) | collapsed).astype(int)
    if outcome not in out.columns:
        raise ValueError(f"results frame has no outcome column {outcome!r}")
    value = pd.to_numeric(out[outcome], errors="coerce").astype(float)
    if diverged == "chance":
        keep = (out["status"] == FINISHED) | (out["status"] == DIVERGED)
        if outcome == "test_accuracy":
            value = value.where(np.isfinite(value) | (out["status"] != DIVERGED), chance)
    else:
        keep = (out["status"] == FINISHED) & (out["diverged"] == 0)
    out["value"] = value
    out = out.loc[keep & np.isfinite(out["value"])]
    return out[[*factor_columns(out.columns), "seed", "diverged", "value"]].reset_index(drop=True)


def pair_cells(
    cells: pd.DataFrame, compare: str = "bn", levels: Sequence[Any] = (False, True)
) -> pd.DataFrame:
    """Join control and treatment cells of the same stratum and seed (``stats.paired_frame``).

    Args:
        cells: ``cell_outcomes`` output (any per-cell ``value`` column): every row is an
            outcome, so each is handed to ``paired_frame`` as a finished cell.
        compare: the compared factor; ``levels`` = (control, treatment).

    Returns:
        Columns: the stratum factors, ``seed``, ``control``, ``treatment``, ``diff``
        (treatment - control); only seeds present in both arms.

    Raises:
        ValueError: a cell appears twice (the pairing would be ambiguous).
    """
    as_finished = cells.assign(status=FINISHED, test_accuracy=cells["value"])
    pairs = paired_frame(as_finished, compare, tuple(levels), outcome="value")
    return pairs.drop(columns=["stratum"])


def seed_means(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the mean of control and treatment over the strata, for seeds in every stratum.

    A seed's cells across batch sizes are not independent replicates (same initial weights),
    so the seed, not the (stratum, seed) pair, is the unit of a claim pooled over strata.
    """
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    if pairs.empty:
        return pd.DataFrame(columns=["seed", "control", "treatment", "diff", "strata"])
    n_strata = len(pairs[strata].drop_duplicates()) if strata else 1
    g = pairs.groupby("seed")
    out = g[["control", "treatment", "diff"]].mean()
    out["strata"] = g.size()
    return out.loc[out["strata"] == n_strata].reset_index()


def stratum_detail(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per stratum: pairs, mean control, mean treatment, mean diff."""
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    if not strata:
        pairs = pairs.assign(stratum="all")
        strata = ["stratum"]
    g = pairs.groupby(strata, sort=True)
    return g.agg(
        n=("seed", "size"),
        control=("control", "mean"),
        treatment=("treatment", "mean"),
        diff=("diff", "mean"),
    ).reset_index()


# ---------------------------------------------------------------------------------- tests


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


def _paired_test(
    treatment: np.ndarray,
    control: np.ndarray,
    *,
    alpha: float,
    margin: float,
    n_resamples: int,
    **claim: Any,
) -> ClaimTest:
    """``stats.paired_t_estimate`` at ``alpha`` as a ClaimTest (``claim``: ``_claim_test``'s)."""
    est = paired_t_estimate(treatment, control, alpha=alpha, margin=margin, n_resamples=n_resamples)
    return _claim_test(est, margin=margin, **claim)


def _sign_test(diffs: np.ndarray, *, alpha: float, method: str, **claim: Any) -> ClaimTest:
    """``stats.median_estimate`` at ``alpha`` as a ClaimTest (``claim``: ``_claim_test``'s).

    Used where diverged cells are outcomes: a few chance-level cells make the differences a
    mixture of small and huge values, where the t interval's normal theory fails (ten seeds
    all pointing one way can come out undecided) and the median's interval needs no model.
    """
    est = median_estimate(diffs, alpha)
    return _claim_test(est, method=method + " (median; exact sign-test interval)", **claim)


def paired_outcome(
    results: pd.DataFrame,
    outcome: str = "test_accuracy",
    *,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = 0.002,
    n_resamples: int = 9999,
    diverged: str = "drop",
    num_classes: int = 10,
    unit: str = "accuracy",
) -> ClaimTest:
    """Paired difference of a per-cell outcome, per seed averaged over the strata; paired t.

    Returns:
        ``n`` = seeds complete in every stratum; the detail has one row per stratum.
    """
    cells = cell_outcomes(results, outcome, diverged=diverged, num_classes=num_classes)
    pairs = pair_cells(cells, compare, levels)
    per_seed = seed_means(pairs)
    return _paired_test(
        per_seed["treatment"].to_numpy(float),
        per_seed["control"].to_numpy(float),
        alpha=alpha,
        margin=margin,
        n_resamples=n_resamples,
        unit=unit,
        n_label=_seeds_label(len(per_seed), _n_strata(pairs)),
        method="paired t on per-seed means over strata",
        detail=stratum_detail(pairs),
    )


def _seeds_label(seeds: int, strata: int) -> str:
    return f"{seeds} seeds" + (f" x {strata} strata" if strata > 1 else "")


def train_test_gap(results: pd.DataFrame, **kw: Any) -> ClaimTest:
    """Train minus test accuracy (overfitting), BN - no BN: ``paired_outcome`` on the gap."""
    frame = results.assign(
        gap=pd.to_numeric(results["train_accuracy"], errors="coerce")
        - pd.to_numeric(results["test_accuracy"], errors="coerce")
    )
    return paired_outcome(frame, "gap", **kw)


def _n_strata(pairs: pd.DataFrame) -> int:
    strata = [c for c in pairs.columns if c not in ("seed", "control", "treatment", "diff")]
    return len(pairs[strata].drop_duplicates()) if strata and len(pairs) else 1


def diverged_share(
    results: pd.DataFrame,
    *,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = SHARE_MARGIN,
    num_classes: int = 10,
) -> ClaimTest:
    """Share of diverged cells, BN - no BN, over all (stratum, seed) pairs of cells.

    Each pair is a paired 0/1 outcome (diverged or not), tested by
    ``stats.paired_proportion_estimate`` (exact McNemar p, Newcombe interval). Pairs at
    different strata of one seed are taken as independent: a learning rate changes the whole
    training trajectory. Diverged cells are outcomes here, not dropped pairs; ``n`` counts them.
    """
    cells = cell_outcomes(results, "test_accuracy", diverged="chance", num_classes=num_classes)
    pairs = pair_cells(cells.assign(value=cells["diverged"].astype(float)), compare, levels)
    # b: only the treatment (BN) diverged; c: only the control (no BN).
    a, b, c, d = paired_counts(pairs["treatment"].astype(int), pairs["control"].astype(int))
    est = paired_proportion_estimate(a, b, c, d, alpha)
    return _claim_test(
        est,
        margin=margin,
        n_label=f"{est.n} cell pairs ({pairs['seed'].nunique() if est.n else 0} seeds x "
        f"{_n_strata(pairs)} strata)",
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
    results: pd.DataFrame,
    across: str,
    outcome: str = "test_accuracy",
    *,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = 0.002,
    n_resamples: int = 9999,
    diverged: str = "chance",
    num_classes: int = 10,
) -> ClaimTest:
    """Sensitivity to a factor: per seed and arm, the SD of the outcome across ``across``'s
    levels (other strata averaged); BN - no BN, paired by seed.

    Only seeds with every level in both arms count. Diverged cells count as chance by default:
    a scale at which training breaks is the strongest sensitivity there is.
    """
    cells = cell_outcomes(results, outcome, diverged=diverged, num_classes=num_classes)
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
        alpha=alpha,
        margin=margin,
        unit="accuracy",
        n_label=f"{len(per_seed)} seeds x {n_levels} {across} levels",
        method=f"per-seed SD across {across}, BN - no BN",
        detail=detail.reset_index(),
    )


def _history_cells(histories: pd.DataFrame) -> pd.DataFrame:
    h = histories.copy()
    for name in factor_columns(h.columns):
        h[name] = _as_level(name, h[name])
    h["seed"] = h["seed"].astype(int)
    h["epoch"] = h["epoch"].astype(int)
    return h


def _per_cell(
    histories: pd.DataFrame, results: pd.DataFrame, column: str, values: pd.DataFrame
) -> pd.DataFrame:
    """``results`` with ``column`` taken from a per-cell frame keyed like the histories."""
    keys = [*factor_columns(results.columns), "seed"]
    typed = results.copy()
    for name in factor_columns(typed.columns):
        typed[name] = _as_level(name, typed[name])
    typed["seed"] = typed["seed"].astype(int)
    typed = typed.drop(columns=[column], errors="ignore")
    return typed.merge(values[[*keys, column]], on=keys, how="left")


def epochs_to_threshold(
    histories: pd.DataFrame,
    results: pd.DataFrame,
    *,
    threshold: float = 0.97,
    epochs: int = 10,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = EPOCH_MARGIN,
    n_resamples: int = 9999,
) -> ClaimTest:
    """Epochs until validation accuracy first reaches ``threshold``, BN - no BN, per seed
    averaged over the strata; a cell that never reaches it counts as ``epochs + 1`` (the least
    it could have needed, so the difference is if anything shrunk towards 0).

    The secondary numbers are the epoch-to-epoch SD of validation accuracy over the last
    ``STABILITY_EPOCHS`` epochs ("stabilises"), BN - no BN, same pairing.
    """
    h = _history_cells(histories)
    keys = [*factor_columns(h.columns), "seed"]
    # Never reached: epochs + 1, the least it could have needed.
    per = stats.convergence(h, threshold, censor_at=epochs + 1)
    frame = _per_cell(h, results, "to_threshold", per)
    frame = frame.merge(per[[*keys, "stability"]], on=keys, how="left")
    test = paired_outcome(
        frame,
        "to_threshold",
        compare=compare,
        levels=levels,
        alpha=alpha,
        margin=margin,
        n_resamples=n_resamples,
        unit="epochs",
    )
    stab = paired_outcome(
        frame, "stability", compare=compare, levels=levels, alpha=alpha, n_resamples=n_resamples
    )
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
    results: pd.DataFrame,
    histories: pd.DataFrame | None = None,
    *,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = TIME_MARGIN,
    n_resamples: int = 9999,
    skip_first: bool = True,
) -> ClaimTest:
    """Seconds per epoch, BN / no BN: paired t on log seconds, per seed averaged over strata.

    Epoch 1 holds the compile and the first-call costs, so with histories it is left out
    (``skip_first``); without them the results' mean ``epoch_time_s`` is used. The effect and
    interval are ratios (1 = same cost); the band is ``1 / (1 + margin)`` to ``1 + margin``.
    """
    frame = results
    if histories is not None and len(histories):
        h = _history_cells(histories)
        if skip_first and h["epoch"].max() > 1:
            h = h.loc[h["epoch"] > 1]
        keys = [*factor_columns(h.columns), "seed"]
        per = h.groupby(keys)["epoch_time_s"].mean().reset_index()
        frame = _per_cell(h, results, "epoch_time_s", per)
    t = pd.to_numeric(frame["epoch_time_s"], errors="coerce")
    frame = frame.assign(log_time=np.log(t.where(t > 0)))
    test = paired_outcome(
        frame,
        "log_time",
        compare=compare,
        levels=levels,
        alpha=alpha,
        margin=math.log1p(margin),
        n_resamples=n_resamples,
        unit="ratio",
    )
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
    results: pd.DataFrame,
    across: str = "batch_size",
    outcome: str = "test_accuracy",
    *,
    compare: str = "bn",
    levels: Sequence[Any] = (False, True),
    alpha: float = 0.05,
    margin: float = 0.002,
    n_resamples: int = 9999,
    diverged: str = "chance",
    num_classes: int = 10,
    histories: pd.DataFrame | None = None,
) -> ClaimTest:
    """Does the BN effect depend on ``across``? Per seed, the BN - no BN difference at the
    smallest level minus that at the largest, paired t.

    Diverged cells count (chance accuracy): instability is the point. The detail has, per
    level, the arms' mean outcome, their diverged cells and (with ``histories``) the
    epoch-to-epoch SD of validation accuracy over the last ``STABILITY_EPOCHS`` epochs.
    """
    cells = cell_outcomes(results, outcome, diverged=diverged, num_classes=num_classes)
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
    if histories is not None and len(histories):
        stab = _stability(histories, compare, across, levels)
        detail = detail.merge(stab, on=across, how="left")
    return _sign_test(
        per_seed.to_numpy(float),
        alpha=alpha,
        margin=margin,
        unit="accuracy",
        n_label=f"{len(per_seed)} seeds ({across} {lo_level:g} vs {hi_level:g})",
        method=f"per seed, (BN - no BN at {across} {lo_level:g}) - (at {hi_level:g})",
        detail=detail,
    )


def _stability(
    histories: pd.DataFrame, compare: str, across: str, levels: Sequence[Any]
) -> pd.DataFrame:
    """Mean epoch-to-epoch SD of val accuracy over the last epochs, per level of ``across``."""
    h = _history_cells(histories)
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


# ---------------------------------------------------------------------------------- verdicts


def verdict_of(test: ClaimTest | None, direction: int) -> str:
    """``supported`` / ``contradicted`` when the interval excludes the null on the claimed /
    other side, ``no meaningful difference`` inside the band, else ``undecided``."""
    if test is None:
        return VERDICTS[4]
    lo, hi = test.ci_low, test.ci_high
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return VERDICTS[3]
    if lo > test.null or hi < test.null:
        above = lo > test.null
        return VERDICTS[0] if above == (direction > 0) else VERDICTS[1]
    if test.band[0] <= lo and hi <= test.band[1]:
        return VERDICTS[2]
    return VERDICTS[3]


CLAIM_COLUMNS = [
    "claim",
    "words",
    "test",
    "study",
    "n",
    "n_label",
    "effect",
    "ci_low",
    "ci_high",
    "unit",
    "p",
    "p_holm",
    "verdict",
    "within_band",
    "method",
]


def claims_table(tests: Mapping[str, ClaimTest | None], alpha: float = 0.05) -> pd.DataFrame:
    """One row per claim of ``CLAIMS``, in their order; verdicts from the intervals.

    ``tests`` maps claim keys to their ClaimTest, computed at ``alpha / m`` (``claim_alpha``);
    a claim missing or None is "not run". ``p_holm`` adjusts the directional p-values across
    the claims that were tested (Holm).
    """
    rows = []
    for claim in CLAIMS:
        t = tests.get(claim.key)
        rows.append(
            {
                "claim": claim.key,
                "words": claim.words,
                "test": claim.test,
                "study": claim.study,
                "n": t.n if t else 0,
                "n_label": t.n_label if t else "",
                "effect": t.effect if t else math.nan,
                "ci_low": t.ci_low if t else math.nan,
                "ci_high": t.ci_high if t else math.nan,
                "unit": t.unit if t else "",
                "p": t.p if t else math.nan,
                "verdict": verdict_of(t, claim.direction),
                # A nonzero effect whose whole interval is inside the margin is real but too
                # small to matter: the report says so beside "supported" / "contradicted".
                "within_band": bool(
                    t is not None and t.band[0] <= t.ci_low and t.ci_high <= t.band[1]
                ),
                "method": t.method if t else "",
            }
        )
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy(float))
    return out[CLAIM_COLUMNS]


def claim_alpha(alpha: float, tested: int) -> float:
    """Per-claim level of the simultaneous (Bonferroni) intervals."""
    return alpha / max(1, tested)


@dataclass(frozen=True)
class StudyData:
    """A study's frames and the settings its claims need."""

    results: pd.DataFrame
    histories: pd.DataFrame
    epochs: int = 10
    val_threshold: float = 0.97
    num_classes: int = 10
    equivalence_margin: float = 0.002


def check_claims(
    studies: Mapping[str, StudyData], *, alpha: float = 0.05, n_resamples: int = 9999
) -> dict[str, ClaimTest]:
    """Every claim whose study is in ``studies``, at the simultaneous level ``alpha / m``."""
    todo = [c for c in CLAIMS if c.study in studies]
    a = claim_alpha(alpha, len(todo))
    out: dict[str, ClaimTest] = {}
    for claim in todo:
        s = studies[claim.study]
        kw = {"alpha": a, "n_resamples": n_resamples}
        if claim.key == "accuracy":
            t = paired_outcome(s.results, margin=s.equivalence_margin, **kw)
        elif claim.key == "convergence":
            t = epochs_to_threshold(
                s.histories, s.results, threshold=s.val_threshold, epochs=s.epochs, **kw
            )
        elif claim.key == "init_scale":
            t = spread_across(
                s.results,
                "init_scale",
                margin=s.equivalence_margin,
                num_classes=s.num_classes,
                **kw,
            )
        elif claim.key == "learning_rate":
            t = diverged_share(s.results, alpha=a, num_classes=s.num_classes)
        elif claim.key == "regularisation":
            t = train_test_gap(s.results, margin=s.equivalence_margin, **kw)
        elif claim.key == "compute":
            t = time_ratio(s.results, s.histories, **kw)
        elif claim.key == "small_batch":
            t = interaction_contrast(
                s.results,
                "batch_size",
                margin=s.equivalence_margin,
                num_classes=s.num_classes,
                histories=s.histories,
                **kw,
            )
        else:  # pragma: no cover - CLAIMS and this dispatch are edited together
            raise KeyError(claim.key)
        out[claim.key] = t
    return out


# ---------------------------------------------------------------------------------- report


def format_effect(x: float, unit: str) -> str:
    """An effect in its claim's units: pp of accuracy, epochs, a ratio, or pp of cells."""
    if np.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if not np.isfinite(x):
        return "n/a"
    if unit in ("accuracy", "share"):
        return f"{100 * x:+.2f} pp"
    if unit == "ratio":
        return f"{x:.3f}x"
    return f"{x:+.2f} {unit}"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def claims_markdown_table(table: pd.DataFrame, alpha: float) -> str:
    """The claims table as Markdown (also the MLflow run's description)."""
    tested = int((table["verdict"] != VERDICTS[4]).sum())
    level = 100 * (1 - claim_alpha(alpha, tested))
    rows = [
        [
            r.words,
            r.test,
            r.n_label or r.n,
            format_effect(r.effect, r.unit),
            f"[{format_effect(r.ci_low, r.unit)}, {format_effect(r.ci_high, r.unit)}]",
            fmt_p(r.p_holm),
            f"**{r.verdict}**"
            + (NEGLIGIBLE if r.within_band and r.verdict in VERDICTS[:2] else ""),
            f"`studies/{r.study}.yaml`",
        ]
        for r in table.itertuples(index=False)
    ]
    heads = ["claim (notebook)", "test", "n", "effect", f"{level:.2f}% CI (simultaneous)",
             "p Holm", "verdict", "study"]  # fmt: skip
    return _md_table(heads, rows)


def plot_claims(table: pd.DataFrame, tests: Mapping[str, ClaimTest], path: Path) -> Path:
    """One panel per tested claim: the effect, its simultaneous interval, no effect, the band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in table.itertuples(index=False) if r.claim in tests]
    fig = Figure(figsize=(7.0, 1.1 * max(1, len(rows)) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(rows)), 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, rows, strict=False):
        t = tests[r.claim]
        scale = 100.0 if t.unit in ("accuracy", "share") else 1.0
        lo, hi = t.band
        ax.axvspan(lo * scale, hi * scale, color="0.9")
        ax.axvline(t.null * scale, color="0.4", lw=1)
        if np.isfinite(t.ci_low) and np.isfinite(t.ci_high):
            ax.plot([t.ci_low * scale, t.ci_high * scale], [0, 0], color="#d62728", lw=3)
        else:
            ax.text(0.99, 0.5, "no finite interval (too few seeds)", transform=ax.transAxes,
                    ha="right", va="center", fontsize=8, color="0.3")  # fmt: skip
        ax.plot([t.effect * scale], [0], "o", color="#d62728")
        unit = {"accuracy": "BN - no BN, pp accuracy", "share": "BN - no BN, pp of cells",
                "ratio": "BN / no BN"}.get(t.unit, f"BN - no BN, {t.unit}")  # fmt: skip
        ax.set_title(f"{r.claim}: {r.verdict}", fontsize=9, loc="left")
        ax.set_yticks([])
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# Per claim, the detail columns drawn against the stratum factor (control, treatment, label).
DETAIL_FIGURES = {
    "learning_rate": ("learning_rate", "diverged_control", "diverged_treatment", "share diverged"),
    "small_batch": ("batch_size", "control", "treatment", "test accuracy (diverged = chance)"),
    "init_scale": ("init_scale", "mean_control", "mean_treatment", "test accuracy"),
}


def plot_detail(claim: str, test: ClaimTest, path: Path) -> Path | None:
    """The claim's per-level numbers, no BN vs BN, against the study's factor (log x axis)."""
    spec = DETAIL_FIGURES.get(claim)
    if spec is None or test.detail.empty or spec[0] not in test.detail:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, control, treatment, label = spec
    d = test.detail.sort_values(x)
    fig = Figure(figsize=(6.0, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(d[x], d[control], "o-", color="#1f77b4", label="no BN")
    ax.plot(d[x], d[treatment], "s-", color="#d62728", label="BN")
    ax.set_xscale("log")
    ax.set_xticks(d[x].tolist(), [f"{v:g}" for v in d[x]])
    ax.set_xticks([], minor=True)  # log-axis minor labels (3x10^0 ...) would overlap the levels
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.set_title(f"{claim}: mean over seeds per level", fontsize=9, loc="left")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _detail_table(detail: pd.DataFrame) -> str:
    if detail is None or detail.empty:
        return "(no detail)"
    rows = [
        [f"{v:.4g}" if isinstance(v, float) else v for v in r]
        for r in detail.itertuples(index=False)
    ]
    return _md_table([str(c) for c in detail.columns], rows)


def render_markdown(
    table: pd.DataFrame,
    tests: Mapping[str, ClaimTest],
    *,
    alpha: float,
    studies: Mapping[str, Mapping[str, str]],
    figure: str | None = None,
    details: Mapping[str, str] | None = None,
) -> str:
    """The claims report as Markdown: the table, how errors are controlled, each claim's detail.

    Args:
        studies: per study name, facts to print (parent run, cells, wall time, ...).
    """
    tested = int((table["verdict"] != VERDICTS[4]).sum())
    per = claim_alpha(alpha, tested)
    out = [
        "# Claims of the notebook, checked",
        "",
        "The notebook trained the MLP once with and once without BatchNormalization (test "
        "accuracy 0.9751 vs 0.9764) and made the claims below. Each claim is tested on its own "
        "study, paired by seed (a seed's BN and no-BN cells share the data order and the "
        "initial weights). Effects are BN minus no BN (BN / no BN for time).",
        "",
        claims_markdown_table(table, alpha),
        "",
        "## How the error rate is controlled across claims",
        "",
        f"The {tested} claims tested are one family at alpha = {alpha:g}. Each claim has one "
        f"primary test, and its interval is a simultaneous Bonferroni interval at "
        f"{100 * (1 - per):.2f}% (alpha / {tested} = {per:.4g} each): all {tested} intervals "
        "cover their true effects together with probability at least "
        f"{100 * (1 - alpha):g}%. The verdict is read off the interval: **supported** when it "
        "excludes no effect on the side the notebook claims, **contradicted** on the other "
        "side, **no meaningful difference** when it lies inside the claim's margin (grey band "
        "in the figure), **undecided** otherwise. So the chance that any verdict in the "
        f"table is wrong is at most {alpha:g}, whichever kind. *p Holm* is the directional "
        "test's p adjusted across the claims (Holm); it is shown for reference: a claim can "
        "have p Holm below alpha and still be undecided, because Holm alone does not cover "
        "the no-meaningful-difference verdicts.",
        "",
        "Diverged cells (a non-finite loss, or a finished network below "
        f"{FAILED_ACCURACY:g} test accuracy, which did not learn the task) are outcomes, not "
        "dropped pairs, where "
        "divergence is the point: the learning-rate study (diverged = 1) and the small-batch "
        "and init-scale studies (their accuracy as measured, chance when there is none). In "
        "the accuracy study they leave the statistics, as in `bnpipe run`.",
        "",
    ]
    if figure:
        out += [f"![claims]({figure})", ""]
    out += ["## Each claim", ""]
    for r in table.itertuples(index=False):
        out += [f"### {r.claim}: {r.verdict}", "", f"*{r.words}*", ""]
        t = tests.get(r.claim)
        if t is None:
            out += [f"Not run: `studies/{r.study}.yaml` was not part of this run.", ""]
            continue
        out += [
            f"Test: {r.test}. Method: {t.method}. n = {t.n_label}. Effect "
            f"{format_effect(t.effect, t.unit)}, simultaneous interval "
            f"[{format_effect(t.ci_low, t.unit)}, {format_effect(t.ci_high, t.unit)}], "
            f"band of no meaningful difference [{format_effect(t.band[0], t.unit)}, "
            f"{format_effect(t.band[1], t.unit)}], p {fmt_p(t.p)} (Holm {fmt_p(r.p_holm)}).",
            "",
        ]
        if t.secondary:
            out += [
                "Secondary: "
                + ", ".join(f"{k} {_fmt_secondary(v)}" for k, v in t.secondary.items())
                + ".",
                "",
            ]
        out += [_detail_table(t.detail), ""]
        if details and r.claim in details:
            out += [f"![{r.claim}]({details[r.claim]})", ""]
    if studies:
        out += ["## Studies", ""]
        keys = sorted({k for info in studies.values() for k in info})
        rows = [[name, *(info.get(k, "") for k in keys)] for name, info in studies.items()]
        out += [_md_table(["study", *keys], rows), ""]
    return "\n".join(out)


def _fmt_secondary(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    return str(v)


@dataclass(frozen=True)
class ClaimsReport:
    """What ``write_report`` wrote."""

    table: pd.DataFrame
    markdown_path: Path
    html_path: Path
    figures: list[Path]
    description: str


def write_report(
    tests: Mapping[str, ClaimTest],
    folder: Path,
    *,
    alpha: float = 0.05,
    studies: Mapping[str, Mapping[str, str]] | None = None,
) -> ClaimsReport:
    """Write claims.md, claims.html (figures embedded), claims.png and claims.csv to ``folder``."""
    from bnpipe.report import markdown_to_html

    folder.mkdir(parents=True, exist_ok=True)
    table = claims_table(tests, alpha)
    figures = [plot_claims(table, tests, folder / "claims.png")] if tests else []
    details = {}
    for key, t in tests.items():
        made = plot_detail(key, t, folder / f"claim_{key}.png")
        if made is not None:
            figures.append(made)
            details[key] = made.name
    text = render_markdown(
        table,
        tests,
        alpha=alpha,
        studies=studies or {},
        figure="claims.png" if tests else None,
        details=details,
    )
    md = folder / "claims.md"
    md.write_text(text, encoding="utf-8")
    html_path = folder / "claims.html"
    html_path.write_text(
        markdown_to_html(text, folder, "Claims of the notebook, checked"), encoding="utf-8"
    )
    table.to_csv(folder / "claims.csv", index=False)
    return ClaimsReport(
        table=table,
        markdown_path=md,
        html_path=html_path,
        figures=figures,
        description=claims_markdown_table(table, alpha),
    )
