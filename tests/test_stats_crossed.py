"""Crossed seeds x examples variance: a published example, independent implementations,
simulations with known components (bias, Satterthwaite df, coverage) and edge cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from bnpipe.stats import compare_paired, crossed_variance, rm_anova_array

# Shrout & Fleiss (1979), "Intraclass correlations: uses in assessing rater reliability",
# Psychological Bulletin 86(2):420-428, Table 2: 6 targets rated by the same 4 judges, a
# two-way crossed random-effects layout with one observation per cell (targets as rows).
# Their Table 3 ANOVA: between targets BMS = 11.24 (df 5), between judges JMS = 32.49 (df 3),
# residual EMS = 1.02 (df 15); ICC(2,1) = 0.29, ICC(3,1) = 0.71.
SHROUT_FLEISS = np.array(
    [
        [9, 2, 5, 8],
        [6, 1, 3, 2],
        [8, 4, 6, 8],
        [7, 1, 2, 6],
        [10, 5, 6, 9],
        [6, 2, 4, 7],
    ],
    dtype=float,
)


def _layout(
    rng: np.random.Generator,
    n_seeds: int,
    n_examples: int,
    sd: tuple[float, float, float],
    mu: float = 0.0,
) -> np.ndarray:
    """One draw of mu + a_i + b_j + e_ij with normal effects of SDs (seed, example, resid)."""
    a = sd[0] * rng.standard_normal((n_seeds, 1))
    b = sd[1] * rng.standard_normal((1, n_examples))
    return mu + a + b + sd[2] * rng.standard_normal((n_seeds, n_examples))


# ------------------------------------------------------------------- independent computations


def test_published_example_shrout_fleiss():
    cv = crossed_variance(SHROUT_FLEISS)
    n_targets, n_judges = SHROUT_FLEISS.shape
    assert cv.ms_seed == pytest.approx(11.24, abs=0.005)
    assert cv.ms_example == pytest.approx(32.49, abs=0.005)
    assert cv.ms_resid == pytest.approx(1.02, abs=0.005)
    assert (cv.df_seed, cv.df_example, cv.df_resid) == (5, 3, 15)
    # ICC(2,1) is the target component's share of one rating's variance: the published 0.29
    # checks all three components at once.
    icc21 = cv.s2_seed / (cv.s2_seed + cv.s2_example + cv.s2_resid)
    assert icc21 == pytest.approx(0.29, abs=0.005)
    assert cv.s2_seed == pytest.approx((cv.ms_seed - cv.ms_resid) / n_judges)
    assert cv.s2_example == pytest.approx((cv.ms_example - cv.ms_resid) / n_targets)
    # SE and Satterthwaite df by hand from the published mean squares (rounding only).
    n = n_targets * n_judges
    assert cv.se == pytest.approx(math.sqrt((11.24 + 32.49 - 1.02) / n), rel=1e-3)
    df = (11.24 + 32.49 - 1.02) ** 2 / (11.24**2 / 5 + 32.49**2 / 3 + 1.02**2 / 15)
    assert cv.df == pytest.approx(df, rel=1e-3)
    assert cv.mean == pytest.approx(SHROUT_FLEISS.mean())
    assert cv.floored == ()


def test_mean_squares_match_contrast_anova_and_least_squares():
    rng = np.random.default_rng(3)
    d = _layout(rng, 7, 5, (0.4, 0.8, 1.0), mu=2.0)
    cv = crossed_variance(d)
    # bnpipe's orthonormal-contrast RM-ANOVA: seeds as subjects gives the example effect and
    # the seed x example error; examples as subjects gives the seed effect.
    by_seed = rm_anova_array(d, ["example"]).iloc[0]
    by_example = rm_anova_array(d.T, ["seed"]).iloc[0]
    assert cv.ms_example == pytest.approx(by_seed["ss"] / by_seed["df"], rel=1e-10)
    assert cv.ms_resid == pytest.approx(by_seed["ss_error"] / by_seed["df_error"], rel=1e-10)
    assert cv.ms_seed == pytest.approx(by_example["ss"] / by_example["df"], rel=1e-10)
    # Least squares on dummy codings: each factor's SS is the drop in residual SS when it
    # enters the additive model (balanced, so the order does not matter).
    n_s, n_e = d.shape
    y = d.ravel()
    seed_x = np.kron(np.eye(n_s), np.ones((n_e, 1)))
    example_x = np.kron(np.ones((n_s, 1)), np.eye(n_e))

    def rss(x: np.ndarray) -> float:
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        return float(np.sum((y - x @ beta) ** 2))

    full = rss(np.hstack([seed_x, example_x]))
    assert cv.ms_resid == pytest.approx(full / ((n_s - 1) * (n_e - 1)), rel=1e-9)
    assert cv.ms_seed == pytest.approx((rss(example_x) - full) / (n_s - 1), rel=1e-9)
    assert cv.ms_example == pytest.approx((rss(seed_x) - full) / (n_e - 1), rel=1e-9)


def test_seed_only_interval_is_todays_paired_t_interval():
    # The pipeline pairs per-seed test accuracies; their difference is the per-seed mean of d.
    rng = np.random.default_rng(5)
    control = rng.random((12, 300)) < 0.9
    treatment = rng.random((12, 300)) < 0.92
    d = treatment.astype(float) - control.astype(float)
    cv = crossed_variance(d)
    today = compare_paired(treatment.mean(axis=1), control.mean(axis=1), n_resamples=99)
    assert cv.seed_only_se == pytest.approx(today.se_diff, rel=1e-12)
    assert cv.seed_only_interval(0.05) == pytest.approx((today.ci_low, today.ci_high), rel=1e-12)
    assert cv.mean == pytest.approx(today.mean_diff, abs=1e-15)


def test_location_shift_changes_only_the_mean():
    rng = np.random.default_rng(7)
    d = _layout(rng, 6, 40, (0.3, 0.5, 1.0))
    a, b = crossed_variance(d), crossed_variance(d + 1e6)
    assert b.mean == pytest.approx(a.mean + 1e6, abs=1e-6)
    for name in ("ms_seed", "ms_example", "ms_resid", "se", "df"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-6), name


# ------------------------------------------------------------------- simulations, known truth


def test_simulation_recovers_known_components():
    # 40 seeds x 2,000 examples, SDs 0.3 / 0.5 / 1.0: each estimate's mean over 200 reps is
    # within 4 Monte Carlo standard errors of the truth (the method of moments is unbiased).
    sd = (0.3, 0.5, 1.0)
    n_s, n_e, reps = 40, 2000, 200
    rng = np.random.default_rng(20261205)
    fits = [crossed_variance(_layout(rng, n_s, n_e, sd, mu=0.1)) for _ in range(reps)]
    true_var = sd[0] ** 2 / n_s + sd[1] ** 2 / n_e + sd[2] ** 2 / (n_s * n_e)
    truth = {
        "s2_seed": sd[0] ** 2,
        "s2_example": sd[1] ** 2,
        "s2_resid": sd[2] ** 2,
        "var_mean": true_var,
    }
    for name, value in truth.items():
        est = np.array([f.se**2 if name == "var_mean" else getattr(f, name) for f in fits])
        mc_se = est.std(ddof=1) / math.sqrt(reps)
        assert abs(est.mean() - value) < 4 * mc_se, (name, est.mean(), value, mc_se)
    # Satterthwaite: SE^2 is about Var(mean) * chi2_df / df, so its spread over reps is
    # 2 Var(mean)^2 / df; the sample variance of 200 draws is good to ~10%, so allow 30%.
    se2 = np.array([f.se**2 for f in fits])
    df = np.mean([f.df for f in fits])
    assert se2.var(ddof=1) / (2 * true_var**2 / df) == pytest.approx(1.0, abs=0.3)


def _coverage(draw, target: float, reps: int) -> tuple[float, float]:
    """Coverage of (seed-only, crossed) 95% intervals over ``reps`` arrays from ``draw()``."""
    hits = np.zeros(2)
    for _ in range(reps):
        cv = crossed_variance(draw())
        for k, (lo, hi) in enumerate((cv.seed_only_interval(0.05), cv.interval(0.05))):
            hits[k] += lo <= target <= hi
    return float(hits[0] / reps), float(hits[1] / reps)


# Coverage: the example term contributes as much to Var(mean) as the seed term
# (s2_example / E = s2_seed / S), as on the real default run (issue 28). With 2,000 reps a
# coverage near 0.95 has Monte Carlo SE 0.005, so 0.92-0.98 is six of them either side.
COVERAGE_REPS = 2000


def test_coverage_normal_layout_new_digits_each_rep():
    # The population is digits (and seeds) in general: every rep draws new seeds AND new
    # examples, so the target is the model mean mu, the difference on "digits like MNIST's
    # test set", not the mean over one fixed set of images.
    n_s, n_e, mu = 20, 500, 0.1
    sd = (0.2, 1.0, 1.0)  # 0.2^2 / 20 == 1.0^2 / 500
    rng = np.random.default_rng(28)
    start = time.perf_counter()
    seed_only, crossed = _coverage(lambda: _layout(rng, n_s, n_e, sd, mu), mu, COVERAGE_REPS)
    assert seed_only < 0.90, seed_only
    assert 0.92 <= crossed <= 0.98, crossed
    assert time.perf_counter() - start < 20


def test_coverage_finite_digit_population_of_ternary_differences():
    # As the resampling check: a fixed population of 400 seeds x 10,000 digits whose
    # cells are differences in {-1, 0, 1} (a latent crossed normal layout, thresholded); each
    # rep samples 20 seeds and 500 digits without replacement, and the target is the
    # population's mean difference. Sampling 5% of each without replacement makes the crossed
    # interval a little conservative (~0.96), which the band allows.
    rng = np.random.default_rng(1979)
    latent = _layout(rng, 400, 10_000, (0.2, 1.0, 1.0), mu=0.3)
    population = (latent > 1.5).astype(np.int8) - (latent < -1.5).astype(np.int8)
    del latent
    target = float(population.mean())

    def draw() -> np.ndarray:
        seeds = rng.choice(population.shape[0], 20, replace=False)
        digits = rng.choice(population.shape[1], 500, replace=False)
        return population[np.ix_(seeds, digits)]

    start = time.perf_counter()
    seed_only, crossed = _coverage(draw, target, COVERAGE_REPS)
    assert seed_only < 0.90, seed_only
    assert 0.92 <= crossed <= 0.98, crossed
    assert time.perf_counter() - start < 20


# ------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 10), "at least 2 seeds"), ((10, 1), "at least 2 examples"), ((0, 5), "2 seeds")],
)
def test_too_few_seeds_or_examples(shape, message):
    with pytest.raises(ValueError, match=message):
        crossed_variance(np.zeros(shape))


def test_not_two_dimensional_or_not_finite():
    with pytest.raises(ValueError, match="2-D"):
        crossed_variance(np.zeros(10))
    d = np.zeros((3, 4))
    d[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        crossed_variance(d)


def test_negative_seed_component_is_floored():
    # Every seed has the same mean, so MS_seed = 0 < MS_resid: the moment estimate is negative.
    d = np.array([[1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    cv = crossed_variance(d)
    assert cv.ms_seed < cv.ms_resid
    assert cv.s2_seed == 0.0
    assert cv.floored == ("seed",)
    # Floored, the SE is the example-only one (SD of the example means / sqrt(E), df E - 1),
    # larger than the unbiased combination and never below the seed-only SE.
    n_s, n_e = d.shape
    assert cv.se == pytest.approx(d.mean(axis=0).std(ddof=1) / math.sqrt(n_e))
    assert cv.df == pytest.approx(n_e - 1)
    unbiased = (cv.ms_seed + cv.ms_example - cv.ms_resid) / (n_s * n_e)
    assert cv.se**2 > unbiased
    assert cv.se >= cv.seed_only_se


def test_negative_example_component_is_floored():
    rng = np.random.default_rng(11)
    d = _layout(rng, 8, 30, (1.0, 0.0, 0.1))
    d -= d.mean(axis=0, keepdims=True) - d.mean()  # every example has the same mean
    cv = crossed_variance(d)
    assert cv.s2_example == 0.0
    assert cv.floored == ("example",)
    assert cv.se == pytest.approx(cv.seed_only_se)
    assert cv.df == pytest.approx(cv.df_seed)


def test_constant_array_has_zero_se():
    cv = crossed_variance(np.full((5, 7), 0.1))
    assert cv.mean == 0.1
    assert (cv.s2_seed, cv.s2_example, cv.s2_resid) == (0.0, 0.0, 0.0)
    assert cv.se == 0.0
    assert cv.seed_only_se == 0.0
    assert math.isnan(cv.df)
    assert cv.interval(0.05) == (0.1, 0.1)
    assert cv.floored == ()


def test_interval_alpha_and_dict():
    cv = crossed_variance(SHROUT_FLEISS)
    lo90, hi90 = cv.interval(0.10)
    lo95, hi95 = cv.interval(0.05)
    assert lo95 < lo90 < cv.mean < hi90 < hi95
    with pytest.raises(ValueError, match="alpha"):
        cv.interval(1.5)
    assert cv.to_dict()["se"] == cv.se


def test_fast_on_a_full_test_set():
    d = np.random.default_rng(0).choice([-1.0, 0.0, 1.0], p=[0.02, 0.96, 0.02], size=(100, 10_000))
    start = time.perf_counter()
    crossed_variance(d)
    # ~4 ms on a 2-core box; the bound only catches a loop over cells creeping in.
    assert time.perf_counter() - start < 1.0
