"""bnpipe.claims.checks: each claim's test on synthetic study frames, read by its verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bnpipe import claims as C
from tests.claims_frames import (
    ACC_GRID,
    INIT_GRID,
    LR_GRID,
    SB_GRID,
    SEEDS,
    bn_effect,
    curve_outcome,
    frames,
    init_outcome,
    lr_outcome,
    small_batch_outcome,
)

# The claims' level at 7 tests (alpha / 7), fewer resamples than a run's for speed.
SETTINGS = C.Settings(alpha=0.05 / 7, n_resamples=999)


@pytest.mark.parametrize(
    ("effect", "noise", "expected"),
    [
        (0.003, 0.001, "supported"),
        (-0.003, 0.001, "contradicted"),
        (0.0, 0.0002, "no meaningful difference"),
        (0.0, 0.01, "undecided"),
    ],
)
def test_accuracy_verdicts(effect: float, noise: float, expected: str) -> None:
    results, _ = frames(ACC_GRID, SEEDS, bn_effect(effect, noise))
    t = C.paired_outcome(
        C.StudyData(results, equivalence_margin=0.002), C.Settings(alpha=0.05 / 7, n_resamples=999)
    )
    assert t.n == 10  # seeds are the unit, not seed x batch size
    assert t.effect == pytest.approx(effect, abs=max(4 * noise, 1e-4))
    assert C.verdict_of(t, +1) == expected


def test_paired_outcome_is_a_paired_t_on_seed_means() -> None:
    results, _ = frames(ACC_GRID, SEEDS, bn_effect(0.002, 0.002))
    t = C.paired_outcome(C.StudyData(results), C.Settings(alpha=0.01, n_resamples=999))
    bn = results.loc[results["bn"]].groupby("seed")["test_accuracy"].mean()
    no = results.loc[~results["bn"]].groupby("seed")["test_accuracy"].mean()
    d = (bn - no).to_numpy()
    half = sps.t.ppf(1 - 0.005, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    assert (t.ci_low, t.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert t.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert len(t.detail) == 4 and set(t.detail["n"]) == {10}


def test_failed_and_diverged_cells_leave_the_accuracy_pairs() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        if seed == 0 and lv["bn"] and lv["batch_size"] == 16:
            return {"status": "failed", "test_accuracy": math.nan}
        if seed == 1 and not lv["bn"]:
            return {"status": "diverged", "test_accuracy": math.nan}
        return bn_effect(0.003, 0.001)(lv, seed, rng)

    results, _ = frames(ACC_GRID, SEEDS, out)
    t = C.paired_outcome(C.StudyData(results), C.Settings(n_resamples=999))
    assert t.n == 8  # seed 0 lacks one stratum, seed 1 lacks its no-BN arm


def test_bn_diverging_less_supports_the_learning_rate_claim() -> None:
    results, _ = frames(LR_GRID, list(range(20)), lr_outcome(False, True))
    t = C.diverged_share(C.StudyData(results), C.Settings(alpha=0.05 / 7))
    assert t.n == 60  # diverged cells are outcomes: every (lr, seed) pair counts
    assert t.effect == pytest.approx(-20 / 60)
    assert t.p == pytest.approx(2 * 0.5**20)
    assert t.ci_low < t.effect < t.ci_high < 0
    assert C.verdict_of(t, -1) == "supported"


@pytest.mark.parametrize(
    ("bn_div", "no_div", "expected"),
    [(True, True, "no meaningful difference"), (True, False, "contradicted")],
)
def test_bn_not_diverging_less_does_not_support_it(bn_div: bool, no_div: bool, expected: str):
    results, _ = frames(LR_GRID, list(range(20)), lr_outcome(bn_div, no_div))
    t = C.diverged_share(C.StudyData(results), C.Settings(alpha=0.05 / 7))
    assert t.n == 60
    assert C.verdict_of(t, -1) == expected


def test_a_few_discordant_pairs_are_undecided_and_collapse_counts_as_diverged() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        if lv["learning_rate"] == 0.1 and not lv["bn"] and seed < 3:
            return {"test_accuracy": 0.1135}  # finite loss, but predicts one class
        return {"test_accuracy": 0.96}

    results, _ = frames(LR_GRID, SEEDS, out)
    t = C.diverged_share(C.StudyData(results), C.Settings(alpha=0.05 / 7))
    assert t.secondary["control_only"] == 3 and t.secondary["treatment_only"] == 0
    assert t.p == pytest.approx(0.25)  # exact McNemar: 2 * 0.5**3
    assert C.verdict_of(t, -1) == "undecided"


def test_spread_across_init_scales() -> None:
    results, _ = frames(INIT_GRID, SEEDS, init_outcome(bn_flat=True))
    t = C.spread_across(C.StudyData(results), SETTINGS, across="init_scale")
    # No-BN's diverged cells at scale 4 count (chance accuracy) instead of dropping 5 seeds.
    assert t.n == 10
    assert C.verdict_of(t, -1) == "supported"
    results, _ = frames(INIT_GRID, SEEDS, init_outcome(bn_flat=False))
    t = C.spread_across(C.StudyData(results), SETTINGS, across="init_scale")
    assert t.n == 10
    assert C.verdict_of(t, -1) == "contradicted"


def test_epochs_to_threshold() -> None:
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(2, 4))
    t = C.epochs_to_threshold(
        C.StudyData(results, histories, epochs=5, val_threshold=0.97), C.Settings(alpha=0.05 / 7)
    )
    assert t.effect == pytest.approx(-2.0)
    assert C.verdict_of(t, -1) == "supported"
    # Never reaching counts as epochs + 1 = 6, not as a dropped pair.
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(2, None))
    t = C.epochs_to_threshold(
        C.StudyData(results, histories, epochs=5, val_threshold=0.97), C.Settings(alpha=0.05 / 7)
    )
    assert t.n == 10
    assert t.effect == pytest.approx(2.5 - 6.0)


def test_train_test_gap() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        test = 0.975 + 0.001 * rng.normal()
        gap = (0.005 if lv["bn"] else 0.015) + 0.001 * rng.normal()
        return {"test_accuracy": test, "train_accuracy": test + gap}

    results, _ = frames(ACC_GRID, SEEDS, out)
    t = C.train_test_gap(C.StudyData(results), SETTINGS)
    assert t.effect == pytest.approx(-0.01, abs=0.001)
    assert C.verdict_of(t, -1) == "supported"


def test_time_ratio_skips_the_compile_epoch() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        per = (1.2 if lv["bn"] else 1.0) * (1 + 0.01 * rng.normal())
        first = 3.0 if lv["bn"] else 9.0  # compile: would make BN look cheaper
        return {"test_accuracy": 0.97, "times": [first] + [per] * 4, "val": [0.97] * 5}

    results, histories = frames({"bn": [False, True], "batch_size": [32]}, SEEDS, out)
    t = C.time_ratio(C.StudyData(results, histories), SETTINGS)
    assert t.effect == pytest.approx(1.2, rel=0.02)
    assert t.null == 1.0 and t.ci_low > 1.0
    assert C.verdict_of(t, +1) == "supported"
    rng = np.random.default_rng(1)
    equal = results.assign(epoch_time_s=1.0 + 0.002 * rng.normal(size=len(results)))
    t = C.time_ratio(C.StudyData(equal), SETTINGS)  # no histories: results' means
    assert t.effect == pytest.approx(1.0, abs=0.005)
    assert C.verdict_of(t, +1) == "no meaningful difference"


def test_small_batch_interaction_counts_diverged_cells() -> None:
    results, histories = frames(SB_GRID, SEEDS, small_batch_outcome(True))
    t = C.interaction_contrast(C.StudyData(results, histories), SETTINGS, across="batch_size")
    assert t.n == 10  # the 3 diverged seeds are outcomes (chance accuracy), not dropped
    assert C.verdict_of(t, -1) == "supported"
    row = t.detail.set_index("batch_size").loc[2]
    assert row["diverged_treatment"] == 3 and row["diverged_control"] == 0
    assert row["treatment"] < 0.9  # chance accuracy pulled the BN mean down
    assert row["val_sd_treatment"] > row["val_sd_control"]
    results, histories = frames(SB_GRID, SEEDS, small_batch_outcome(False))
    t = C.interaction_contrast(C.StudyData(results), SETTINGS, across="batch_size")
    assert C.verdict_of(t, -1) != "supported"


def test_diverged_share_detail_has_accuracy_at_chance() -> None:
    results, _ = frames(LR_GRID, SEEDS, lr_outcome(False, True))
    detail = C.diverged_share(C.StudyData(results)).detail.set_index("learning_rate")
    assert detail.loc[0.1, "diverged_control"] == 1.0 and detail.loc[0.1, "diverged_treatment"] == 0
    assert detail.loc[0.1, "acc_control"] == pytest.approx(0.1)  # chance, not dropped
    assert detail.loc[0.001, "acc_diff"] == pytest.approx(0.0, abs=0.002)


def test_no_cell_reaching_the_threshold_decides_nothing() -> None:
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(99, 99))  # never 0.98
    t = C.epochs_to_threshold(
        C.StudyData(results, histories, epochs=5, val_threshold=0.97), C.Settings(alpha=0.05 / 7)
    )
    assert t.n == 10 and t.effect == 0.0
    assert C.verdict_of(t, -1) == "undecided"  # not "no meaningful difference"
    assert "no cell reached" in t.method


def test_an_infinite_interval_is_shown_as_such() -> None:
    results, _ = frames(SB_GRID, [0, 1, 2], small_batch_outcome(True))
    t = C.interaction_contrast(
        C.StudyData(results), C.Settings(alpha=0.05 / 7), across="batch_size"
    )
    assert (t.ci_low, t.ci_high) == (-math.inf, math.inf)
    assert C.verdict_of(t, -1) == "undecided"
    assert C.format_effect(t.ci_low, t.unit) == "-inf"
