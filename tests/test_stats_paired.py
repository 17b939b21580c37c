"""bnpipe.stats.paired: scipy cross-checks, published worked examples, edge cases, paired frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bnpipe import stats as S
from tests.stats_frames import SLEEP_DRUG1, SLEEP_DRUG2, make_results, set_cell

# Darwin's Zea mays cross- minus self-fertilised heights (Fisher 1935), scipy.stats.wilcoxon docs.
CORN = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis)


# ------------------------------------------------------------------ worked examples


def test_sleep_paired_t_matches_published_values() -> None:
    cmp = S.compare_paired(SLEEP_DRUG2, SLEEP_DRUG1)
    assert cmp.n == 10
    assert cmp.mean_diff == pytest.approx(1.58)
    assert cmp.t_stat == pytest.approx(4.0621, abs=5e-5)
    assert cmp.t_pvalue == pytest.approx(0.002833, abs=5e-7)
    # R: t.test(extra ~ group, paired = TRUE) 95% CI 0.7001142 2.4598858
    assert cmp.ci_low == pytest.approx(0.7001142, abs=1e-7)
    assert cmp.ci_high == pytest.approx(2.4598858, abs=1e-7)


def test_sleep_wilcoxon_with_zero_and_ties_is_exact_conditional() -> None:
    # One zero (dropped) and a tie at 1.3; the 9 non-zero diffs are all positive, so the exact
    # two-sided conditional p is 2 / 2**9 by hand.
    cmp = S.compare_paired(SLEEP_DRUG2, SLEEP_DRUG1)
    assert cmp.wilcoxon_stat == 0.0
    assert cmp.wilcoxon_pvalue == pytest.approx(2 / 2**9, abs=1e-12)
    assert "exact permutation" in cmp.wilcoxon_method
    # Sign-flip test on the mean: only the all-positive and all-negative flips (x2 for the
    # zero's sign) are as extreme, so p = 4 / 2**10.
    assert cmp.permutation_pvalue == pytest.approx(4 / 2**10, abs=1e-12)
    assert cmp.permutation_method.startswith("exact")


def test_corn_wilcoxon_matches_textbook_exact_answer() -> None:
    cmp = S.compare_paired(CORN, np.zeros_like(CORN))
    assert cmp.wilcoxon_method == "exact"
    assert cmp.wilcoxon_stat == 24.0
    assert cmp.wilcoxon_pvalue == pytest.approx(0.041259765625, abs=1e-12)


def test_holm_wikipedia_example_hand_computed() -> None:
    # Wikipedia "Holm-Bonferroni method" example: p = .01, .04, .03, .005, alpha .05.
    # Sorted .005, .01, .03, .04 -> 4*.005=.02, 3*.01=.03, 2*.03=.06, max(.06, 1*.04)=.06.
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02], atol=1e-12)
    assert list(adj < 0.05) == [True, False, False, True]  # H1 and H4 rejected, as published


def test_holm_step_down_monotonicity_and_cap() -> None:
    np.testing.assert_allclose(S.holm([0.01, 0.011, 0.5]), [0.03, 0.03, 0.5])
    np.testing.assert_allclose(S.holm([0.4, 0.6]), [0.8, 0.8])
    np.testing.assert_allclose(S.holm([0.7, 0.9]), [1.0, 1.0])


def test_holm_nan_pass_through_and_excluded_from_family() -> None:
    adj = S.holm([0.01, np.nan, 0.04])
    assert np.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.04])
    assert np.isnan(S.holm([np.nan, np.nan])).all()
    assert S.holm([]).shape == (0,)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_holm_properties(p: list[float]) -> None:
    raw = np.array(p)
    adj = S.holm(raw)
    assert np.all(adj >= raw - 1e-15)
    assert np.all(adj <= 1.0)
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)
    assert np.all(adj <= np.minimum(raw * len(raw), 1.0) + 1e-15)  # never worse than Bonferroni


def test_seeds_needed_matches_gpower() -> None:
    # G*Power 3, one-sample/paired t, two-tailed alpha .05, power .80: d=.5 -> 34, d=.8 -> 15,
    # d=.2 -> 199.
    assert S.seeds_needed(0.5, 1.0) == 34
    assert S.seeds_needed(0.8, 1.0) == 15
    assert S.seeds_needed(-0.2, 1.0) == 199
    assert S.seeds_needed(0.001, 0.002) == S.seeds_needed(0.5, 1.0)  # scale-free


def test_seeds_needed_is_the_smallest_n_reaching_power() -> None:
    for d in (0.3, 0.7, 1.5):
        n = int(S.seeds_needed(d, 1.0, alpha=0.05, power=0.9))
        assert S._t_power(n, d, 0.05) >= 0.9
        assert n == 2 or S._t_power(n - 1, d, 0.05) < 0.9


def test_seeds_needed_undefined_cases() -> None:
    assert math.isnan(S.seeds_needed(0.0, 1.0))
    assert math.isnan(S.seeds_needed(1.0, 0.0))
    assert math.isnan(S.seeds_needed(np.nan, 1.0))
    assert S.seeds_needed(1e-6, 1.0) == math.inf
    assert S.seeds_needed(100.0, 1.0) == 2


# ------------------------------------------------------------------ against scipy


@pytest.fixture
def arms() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    control = 0.975 + rng.normal(0, 0.001, 10)
    treatment = control + 0.0008 + rng.normal(0, 0.0009, 10)
    return treatment, control


def test_compare_paired_matches_scipy(arms: tuple[np.ndarray, np.ndarray]) -> None:
    t, c = arms
    d = t - c
    cmp = S.compare_paired(t, c, alpha=0.05, equivalence_margin=0.002, n_resamples=2000)
    ref = sps.ttest_rel(t, c)
    assert cmp.t_stat == pytest.approx(ref.statistic, abs=1e-6)
    assert cmp.t_pvalue == pytest.approx(ref.pvalue, abs=1e-6)
    ci = ref.confidence_interval(0.95)
    assert (cmp.ci_low, cmp.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert cmp.sd_diff == pytest.approx(np.std(d, ddof=1), abs=1e-12)
    assert cmp.se_diff == pytest.approx(sps.sem(d), abs=1e-12)

    wil = sps.wilcoxon(np.round(d, 12), method="exact")
    assert cmp.wilcoxon_method == "exact"
    assert cmp.wilcoxon_stat == pytest.approx(wil.statistic)
    assert cmp.wilcoxon_pvalue == pytest.approx(wil.pvalue, abs=1e-6)

    perm = sps.permutation_test((d,), _mean, permutation_type="samples", vectorized=True)
    assert cmp.permutation_pvalue == pytest.approx(perm.pvalue, abs=1e-12)

    boot = sps.bootstrap(
        (t, c),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=2000,
        method="BCa",
        rng=np.random.default_rng(0),
    )
    assert cmp.boot_ci_low == pytest.approx(boot.confidence_interval.low, abs=1e-6)
    assert cmp.boot_ci_high == pytest.approx(boot.confidence_interval.high, abs=1e-6)
    assert cmp.boot_ci_low < cmp.mean_diff < cmp.boot_ci_high

    lower = sps.ttest_1samp(d, -0.002, alternative="greater").pvalue
    upper = sps.ttest_1samp(d, 0.002, alternative="less").pvalue
    assert cmp.tost_pvalue == pytest.approx(max(lower, upper), abs=1e-9)
    assert cmp.equivalent == (max(lower, upper) < 0.05)

    assert cmp.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1), abs=1e-9)
    approx_j = 1 - 3 / (4 * (len(d) - 1) - 1)
    assert cmp.hedges_gz == pytest.approx(cmp.cohens_dz * approx_j, rel=2e-3)
    assert abs(cmp.hedges_gz) < abs(cmp.cohens_dz)


def test_hedges_correction_exact_form() -> None:
    # J(9) = Gamma(4.5) / (sqrt(4.5) Gamma(4)) = 11.6317284 / (2.1213203 * 6) = 0.9138749
    assert S.hedges_correction(9) == pytest.approx(0.9138749, abs=1e-6)
    assert S.hedges_correction(1) == 0.0
    assert S.hedges_correction(1000) == pytest.approx(1 - 3 / (4 * 1000 - 1), abs=1e-7)


def test_power_field_matches_seeds_needed(arms: tuple[np.ndarray, np.ndarray]) -> None:
    cmp = S.compare_paired(*arms)
    assert cmp.seeds_for_80pct_power == S.seeds_needed(cmp.mean_diff, cmp.sd_diff, 0.05, 0.8)
    assert cmp.seeds_needed() == cmp.seeds_for_80pct_power
    assert cmp.seeds_needed(delta=cmp.mean_diff / 2) > cmp.seeds_for_80pct_power


def test_permutation_switches_to_monte_carlo_beyond_budget() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(0.3, 1, 14)
    cmp = S.compare_paired(t, np.zeros(14), n_resamples=999)
    assert cmp.permutation_method.startswith("Monte Carlo")
    ref = sps.permutation_test(
        (t,),
        _mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=999,
        rng=np.random.default_rng(0),
    )
    assert cmp.permutation_pvalue == pytest.approx(ref.pvalue, abs=1e-12)


def test_to_dict_round_trips_fields(arms: tuple[np.ndarray, np.ndarray]) -> None:
    d = S.compare_paired(*arms).to_dict()
    assert d["n"] == 10 and isinstance(d["wilcoxon_method"], str)
    assert all(isinstance(v, (int, float, str, bool)) for v in d.values())


# ------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_pairs_gives_nans_not_errors(n: int) -> None:
    cmp = S.compare_paired(np.ones(n), np.zeros(n))
    assert cmp.n == n
    for field in ("t_pvalue", "ci_low", "wilcoxon_pvalue", "permutation_pvalue", "tost_pvalue"):
        assert math.isnan(getattr(cmp, field))
    assert not cmp.equivalent


def test_all_differences_zero() -> None:
    x = np.array([0.975, 0.976, 0.977, 0.978])
    cmp = S.compare_paired(x, x.copy())
    assert cmp.n == 4 and cmp.mean_diff == 0 and cmp.sd_diff == 0
    assert math.isnan(cmp.t_pvalue) and math.isnan(cmp.t_stat)
    assert math.isnan(cmp.wilcoxon_pvalue) and "all differences zero" in cmp.wilcoxon_method
    assert math.isnan(cmp.boot_ci_low) and math.isnan(cmp.seeds_for_80pct_power)
    assert cmp.permutation_pvalue == 1.0
    assert S.verdict(cmp, np.nan, 0.05, 0.002) == "inconclusive"


def test_constant_nonzero_differences_with_float_roundoff() -> None:
    # Every pair differs by exactly 12 test images (0.0012), but the float differences carry
    # ~1e-17 noise; scipy's ttest_rel reports t ~ 6e13 here. That is zero variance, not a t.
    c = np.array([0.9764, 0.9727, 0.9704, 0.9702, 0.9781, 0.9791])
    t = np.array([0.9776, 0.9739, 0.9716, 0.9714, 0.9793, 0.9803])
    assert np.std(t - c, ddof=1) > 0
    cmp = S.compare_paired(t, c)
    assert cmp.sd_diff == 0 and math.isnan(cmp.t_pvalue) and math.isnan(cmp.cohens_dz)
    assert cmp.mean_diff == pytest.approx(0.0012)


def test_wilcoxon_roundoff_example_from_scipy_docs() -> None:
    # scipy.stats.wilcoxon docs: x - y should be [-0.025, 0.05, 0.05, -0.05] but round-off
    # gives distinct magnitudes. Ranked as typed by hand: T = min(6, 4) = 4, two-sided p = 1.
    x = np.array([0.5, 0.825, 0.375, 0.5])
    y = np.array([0.525, 0.775, 0.325, 0.55])
    cmp = S.compare_paired(x, y)
    ref = sps.wilcoxon([-0.025, 0.05, 0.05, -0.05])
    assert "ties" in cmp.wilcoxon_method
    assert cmp.wilcoxon_stat == ref.statistic == 4.0
    assert cmp.wilcoxon_pvalue == pytest.approx(ref.pvalue, abs=1e-12)


def test_ties_from_accuracy_roundoff_are_treated_as_ties() -> None:
    control = np.array([0.9751, 0.9758, 0.9744, 0.9760, 0.9749, 0.9755, 0.9762, 0.9747])
    treatment = control + np.array([12, 12, 5, -3, 12, 7, 5, 9]) * 1e-4
    cmp = S.compare_paired(treatment, control)
    assert "ties" in cmp.wilcoxon_method
    ref = sps.wilcoxon(
        np.round(treatment - control, 12), method=sps.PermutationMethod(n_resamples=9999)
    )
    assert cmp.wilcoxon_pvalue == pytest.approx(ref.pvalue, abs=1e-12)
    assert np.isfinite(cmp.t_pvalue)


def test_nan_pairs_are_dropped() -> None:
    t = np.array([0.976, np.nan, 0.977, 0.978, 0.975])
    c = np.array([0.975, 0.975, np.nan, 0.976, 0.9745])
    cmp = S.compare_paired(t, c)
    ref = S.compare_paired(t[[0, 3, 4]], c[[0, 3, 4]])
    assert cmp.n == 3
    assert cmp.t_pvalue == ref.t_pvalue and cmp.mean_diff == ref.mean_diff


def test_unequal_lengths_raise() -> None:
    with pytest.raises(ValueError):
        S.compare_paired([1.0, 2.0], [1.0])


def test_n_two_works() -> None:
    cmp = S.compare_paired([0.977, 0.979], [0.975, 0.976])
    assert cmp.n == 2 and np.isfinite(cmp.t_pvalue) and math.isnan(cmp.boot_ci_low)
    assert cmp.hedges_gz == 0.0  # J(1) = 0 in the exact form


# ------------------------------------------------------------------ frames


def test_paired_frame_uses_only_finished_finite_cells() -> None:
    r = make_results(sizes=(16, 32), seeds=5)
    set_cell(r, True, 32, 4, status="diverged", test_accuracy=np.nan)
    set_cell(r, False, 16, 1, test_accuracy=np.nan)
    set_cell(r, False, 16, 2, status="failed")
    pf = S.paired_frame(r, "bn")
    assert list(pf.columns) == ["stratum", "batch_size", "seed", "control", "treatment", "diff"]
    assert pf.loc[pf.batch_size == 16, "stratum"].unique().tolist() == ["batch_size=16"]
    assert pf.loc[pf.batch_size == 16, "seed"].tolist() == [0, 3, 4]
    assert pf.loc[pf.batch_size == 32, "seed"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(pf["diff"], pf["treatment"] - pf["control"])
    swapped = S.paired_frame(r, "bn", (True, False))
    np.testing.assert_allclose(swapped["diff"], -pf["diff"])


def test_paired_frame_rejects_duplicate_finished_cells() -> None:
    r = make_results(sizes=(16,), seeds=3)
    with pytest.raises(ValueError, match="more than once"):
        S.paired_frame(pd.concat([r, r.iloc[[0]]]), "bn")
    # A failed earlier attempt next to a finished rerun is fine.
    failed = r.iloc[[0]].assign(status="failed", test_accuracy=np.nan)
    assert len(S.paired_frame(pd.concat([r, failed]), "bn")) == 3


def test_summarize_by_stratum_columns_holm_and_verdicts() -> None:
    r = make_results(effect={16: 0.003, 32: -0.003, 64: 0.0, 128: 0.0}, noise=0.0006)
    # Make 128 noisy enough to be inconclusive.
    noisy = np.random.default_rng(9).normal(0, 0.004, 10)
    r.loc[(r.batch_size == 128) & r.bn, "test_accuracy"] += noisy
    summary = S.summarize_by_stratum(r, "bn", n_resamples=999)
    assert list(summary.columns) == S.summary_columns(["batch_size"])
    assert summary["batch_size"].tolist() == [16, 32, 64, 128]
    assert summary["n_pairs"].tolist() == [10] * 4
    np.testing.assert_allclose(summary["p_holm"], S.holm(summary["t_pvalue"]))
    assert summary["verdict"].tolist() == [
        "significant improvement",
        "significant harm",
        "equivalent within margin",
        "inconclusive",
    ]
    bn16 = r[(r.batch_size == 16) & r.bn]["test_accuracy"].mean()
    assert summary.loc[0, "acc_treatment"] == pytest.approx(bn16)
    first = S.compare_paired(
        r[(r.batch_size == 16) & r.bn]["test_accuracy"].to_numpy(),
        r[(r.batch_size == 16) & ~r.bn]["test_accuracy"].to_numpy(),
        n_resamples=999,
    )
    assert summary.loc[0, "t_pvalue"] == first.t_pvalue
    assert summary.loc[0, "boot_ci_low"] == first.boot_ci_low


def test_summarize_stratum_without_complete_pair() -> None:
    r = make_results(sizes=(16, 32), seeds=4)
    r.loc[(r.batch_size == 32) & r.bn, "status"] = "diverged"
    summary = S.summarize_by_stratum(r, "bn", n_resamples=99)
    row = summary.set_index("batch_size").loc[32]
    assert row["n_pairs"] == 0 and row["n_treatment"] == 0 and row["n_control"] == 4
    assert math.isnan(row["acc_treatment"]) and math.isnan(row["t_pvalue"])
    assert math.isnan(row["p_holm"]) and row["verdict"] == "inconclusive"
    # The family for Holm is just the defined p-value.
    assert summary.set_index("batch_size").loc[16, "p_holm"] == pytest.approx(
        summary.set_index("batch_size").loc[16, "t_pvalue"]
    )


def test_summarize_empty_results_keeps_columns() -> None:
    empty = make_results().iloc[:0]
    assert list(S.summarize_by_stratum(empty, "bn").columns) == S.summary_columns(["batch_size"])


def test_verdict_uses_margin_argument() -> None:
    cmp = S.compare_paired(0.976 + np.array([1, 2, 0, 1, 2]) * 1e-4, np.full(5, 0.976))
    assert S.verdict(cmp, 0.5, 0.05, 0.002) == "equivalent within margin"
    assert S.verdict(cmp, 0.5, 0.05, 0.00005) == "inconclusive"
    assert S.verdict(cmp, 0.01, 0.05, 0.002) == "significant improvement"


def test_dropped_pairs_explains_each_missing_seed() -> None:
    r = make_results(sizes=(16, 32), seeds=5)
    set_cell(r, True, 32, 4, status="diverged", test_accuracy=np.nan)
    set_cell(r, False, 16, 1, status="failed")
    r = r[~((r.batch_size == 16) & (r.seed == 3) & r.bn)]
    dropped = S.dropped_pairs(r, "bn")
    assert dropped[["batch_size", "seed"]].values.tolist() == [[16, 1], [16, 3], [32, 4]]
    reasons = dropped["reason"].tolist()
    assert reasons == [
        "seed 1 failed (BN off)",
        "seed 3 missing (BN on)",
        "seed 4 diverged (BN on)",
    ]


# ------------------------------------------------------------------ ANOVA


# ------------------------------------------------------------------ exact (the claims' tests)


# ------------------------------------------------------------------ dynamics


def test_bn_flags_read_back_as_strings_are_parsed() -> None:
    r = make_results(sizes=(16,), seeds=4, effect={16: 0.003}, noise=0.0003)
    as_text = r.assign(bn=r["bn"].map({True: "True", False: "False"}))
    pd.testing.assert_frame_equal(S.paired_frame(as_text, "bn"), S.paired_frame(r, "bn"))
    assert S.normalize_results(as_text)["bn"].tolist() == r["bn"].tolist()
    with pytest.raises(ValueError, match="lacks columns"):
        S.normalize_results(r.drop(columns="status"))
    assert list(S.normalize_histories(pd.DataFrame()).columns) == list(S.HISTORY_COLUMNS)
