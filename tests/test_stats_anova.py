"""N-way repeated-measures ANOVA: published worked examples, identities, the grid wrappers."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnpipe import stats as S
from tests.stats_frames import make_results, set_cell

# Field, Discovering Statistics Using SPSS (3rd ed., ch. 13) "Bushtucker" data: 8 subjects x 4.
BUSHTUCKER = np.array(
    [
        [8, 9, 6, 5, 8, 7, 10, 12],
        [7, 5, 2, 3, 4, 5, 2, 6],
        [1, 2, 3, 1, 5, 6, 7, 8],
        [6, 5, 8, 9, 8, 7, 2, 1],
    ],
    dtype=float,
).T


def _rm_f_by_regression(y: np.ndarray) -> float:
    """One-way RM F via nested OLS models (subject + level vs subject only)."""
    n, k = y.shape
    subj = np.kron(np.eye(n), np.ones((k, 1)))
    level = np.kron(np.ones((n, 1)), np.eye(k))[:, 1:]
    yy = y.reshape(-1)

    def rss(x: np.ndarray) -> float:
        beta, *_ = np.linalg.lstsq(x, yy, rcond=None)
        return float(np.sum((yy - x @ beta) ** 2))

    full, reduced = rss(np.hstack([subj, level])), rss(subj)
    df_err = n * k - n - (k - 1)
    return ((reduced - full) / (k - 1)) / (full / df_err)


def _grid_array(results: pd.DataFrame) -> np.ndarray:
    wide = results.pivot_table(index="seed", columns=["bn", "batch_size"], values="test_accuracy")
    return wide.to_numpy().reshape(len(wide), 2, -1)


def _batch_size_effect(results: pd.DataFrame) -> pd.DataFrame:
    out = S.factor_effects(results, "bn")
    return out.loc[out["factor"] == "batch_size"].reset_index(drop=True)


# pingouin's `rm_anova2` data set (datasets/rm_anova2.csv): 10 subjects x Time (Pre, Post) x
# Metric (Product, Client, Action); rows are Subject 1..10 within each (Time, Metric).
PINGOUIN_RM_ANOVA2 = {
    ("Pre", "Product"): [13, 12, 17, 12, 19, 6, 17, 18, 23, 18],
    ("Pre", "Client"): [12, 19, 19, 25, 27, 12, 18, 29, 30, 12],
    ("Pre", "Action"): [17, 18, 24, 25, 19, 6, 30, 36, 24, 24],
    ("Post", "Product"): [18, 6, 21, 18, 18, 6, 24, 22, 18, 24],
    ("Post", "Client"): [30, 18, 31, 39, 28, 18, 36, 36, 38, 25],
    ("Post", "Action"): [34, 30, 32, 40, 27, 23, 38, 40, 32, 34],
}
# statsmodels' AnovaRM test data (stats/tests/results/anova-rm-test-data.csv): 8 subjects x
# A (a, b) x B (a, b, c) x D (a, b); DV in blocks of 8 subjects, D slowest, then A, then B.
STATSMODELS_DV = [
    7, 3, 6, 6, 5, 8, 6, 7, 7, 11, 9, 11, 10, 10, 11, 11, 8, 14, 10, 11, 12, 10, 11, 12,
    16, 7, 11, 9, 10, 11, 8, 8, 16, 10, 13, 10, 10, 14, 11, 12, 24, 29, 10, 22, 25, 28, 22, 24,
    1, 3, 5, 8, 3, 5, 6, 8, 9, 18, 19, 1, 12, 15, 2, 3, 3, 4, 13, 21, 2, 11, 18, 2,
    12, 7, 12, 3, 19, 1, 4, 13, 13, 14, 3, 4, 8, 19, 21, 2, 4, 9, 12, 2, 5, 8, 2, 4,
]  # fmt: skip


def _pingouin_frame() -> pd.DataFrame:
    rows = [
        {"Subject": s + 1, "Time": t, "Metric": m, "Performance": v}
        for (t, m), values in PINGOUIN_RM_ANOVA2.items()
        for s, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def _statsmodels_frame() -> pd.DataFrame:
    cells = itertools.product("ab", "ab", "abc", range(1, 9))  # D, A, B, subject
    rows = [
        {"id": s, "A": a, "B": b, "D": d, "DV": v}
        for (d, a, b, s), v in zip(cells, STATSMODELS_DV, strict=True)
    ]
    return pd.DataFrame(rows)


def test_two_way_matches_pingouin_and_jamovi() -> None:
    # pingouin tests/test_parametric.py::test_rm_anova2, checked there against JAMOVI.
    out = S.rm_anova(_pingouin_frame(), "Performance", ["Time", "Metric"], subject="Subject")
    assert out["effect"].tolist() == ["Time", "Metric", "Time:Metric"]
    np.testing.assert_allclose(out["ss"] / out["df"], [828.81667, 682.61667, 112.21667], atol=5e-6)
    np.testing.assert_allclose(out["F"], [33.85228, 26.95919, 12.63227], atol=5e-6)
    np.testing.assert_allclose(out["gg_epsilon"], [1.0, 0.96910, 0.72717], atol=5e-6)
    np.testing.assert_allclose(out["partial_eta_sq"], [0.78998, 0.74972, 0.58395], atol=5e-6)
    assert out["df"].tolist() == [1, 2, 2] and out["df_error"].tolist() == [9, 18, 18]
    assert (out["n_seeds"] == 10).all()


def test_three_way_matches_r_ezanova() -> None:
    # statsmodels test_anova_rm.py::test_three_factors_repeated_measures_anova (R ezANOVA).
    out = S.rm_anova(_statsmodels_frame(), "DV", ["A", "B", "D"], subject="id")
    assert out["effect"].tolist() == ["A", "B", "D", "A:B", "A:D", "B:D", "A:B:D"]
    assert out["df"].tolist() == [1, 2, 1, 2, 1, 2, 2]
    assert out["df_error"].tolist() == [7, 14, 7, 14, 7, 14, 14]
    f = [8.7650709, 8.4985785, 20.5076546, 0.8457797, 21.7593382, 6.2416695, 5.4253359]
    p = [0.021087505, 0.003833921, 0.002704428, 0.450021759, 0.002301792, 0.011536846,
         0.018010647]  # fmt: skip
    np.testing.assert_allclose(out["F"], f, atol=5e-7)
    np.testing.assert_allclose(out["p"], p, atol=5e-9)


def test_three_way_epsilon_equals_reduced_one_way() -> None:
    # With A and D at two levels, A:B:D is a one-way ANOVA over B on the per-subject double
    # differences, and B:D one over B on the D differences averaged over A: same F and epsilon.
    frame = _statsmodels_frame()
    out = S.rm_anova(frame, "DV", ["A", "B", "D"], subject="id").set_index("effect")
    y = frame.pivot_table(index="id", columns=["A", "B", "D"], values="DV").to_numpy()
    y = y.reshape(8, 2, 3, 2)
    d = y[..., 1] - y[..., 0]  # subjects x A x B
    for effect, reduced in (("A:B:D", d[:, 1] - d[:, 0]), ("B:D", d.mean(axis=1))):
        one = S.rm_anova_oneway(reduced)
        assert out.loc[effect, "F"] == pytest.approx(one["F"], rel=1e-10)
        assert out.loc[effect, "gg_epsilon"] == pytest.approx(one["gg_epsilon"], rel=1e-10)
        assert 0.5 <= out.loc[effect, "gg_epsilon"] <= 1.0


def _ols_f(y: np.ndarray, effect: tuple[int, ...]) -> float:
    """An effect's F from nested least squares: the subject-by-effect stratum as the error."""
    n, shape = y.shape[0], y.shape[1:]
    c = S.effect_contrasts(shape, effect)
    z = y.reshape(n, -1) @ c.T  # the effect's scores; the test is a one-sample multivariate mean
    ones = np.ones((n, 1))
    beta, *_ = np.linalg.lstsq(ones, z, rcond=None)
    rss_full = float(np.sum((z - ones @ beta) ** 2))
    rss_null = float(np.sum(z**2))
    q = c.shape[0]
    return ((rss_null - rss_full) / q) / (rss_full / (q * (n - 1)))


def test_four_way_sums_of_squares_partition_the_total() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(6, 2, 3, 2, 2)) + rng.normal(size=(6, 1, 1, 1, 1))
    out = S.rm_anova_array(y, ["a", "b", "c", "d"])
    assert len(out) == 15  # 2^4 - 1 effects
    subjects = y.shape[1:]
    g = y.mean()
    ss_subject = np.prod(subjects) * np.sum((y.mean(axis=(1, 2, 3, 4)) - g) ** 2)
    total = np.sum((y - g) ** 2)
    assert out["ss"].sum() + out["ss_error"].sum() + ss_subject == pytest.approx(total, rel=1e-10)
    for i, row in enumerate(out.itertuples(index=False)):
        effect = tuple(j for j, name in enumerate("abcd") if name in row.effect.split(":"))
        assert pytest.approx(_ols_f(y, effect), rel=1e-9) == row.F, i


def test_rm_anova_drops_incomplete_subjects_and_rejects_duplicates() -> None:
    frame = _pingouin_frame()
    gap = frame.copy()
    gap.loc[(gap["Subject"] == 3) & (gap["Time"] == "Post"), "Performance"] = np.nan
    out = S.rm_anova(gap, "Performance", ["Time", "Metric"], subject="Subject")
    ref = S.rm_anova(frame[frame["Subject"] != 3], "Performance", ["Time", "Metric"], "Subject")
    assert (out["n_seeds"] == 9).all()
    np.testing.assert_allclose(out["F"], ref["F"])
    with pytest.raises(ValueError, match="repeat"):
        S.rm_anova(pd.concat([frame, frame.head(1)]), "Performance", ["Time"], "Subject")
    with pytest.raises(ValueError, match="lacks columns"):
        S.rm_anova(frame, "nope", ["Time"], "Subject")


# ------------------------------------------------------------------ the grid wrappers


def make_grid(
    factors: dict[str, list], seeds: int = 6, effect=None, noise: float = 0.001, seed: int = 0
) -> pd.DataFrame:
    """A results frame over any factors: accuracy = 0.97 + effect(levels) + seed + noise."""
    rng = np.random.default_rng(seed)
    names = list(factors)
    rows = []
    for s in range(seeds):
        base = 0.97 + rng.normal(0, 0.002)
        for levels in itertools.product(*factors.values()):
            cell = dict(zip(names, levels, strict=True))
            acc = base + (effect(cell) if effect else 0.0) + rng.normal(0, noise)
            rows.append(
                {
                    **cell,
                    "seed": s,
                    "status": "finished",
                    "test_accuracy": acc,
                    "train_accuracy": acc + 0.01,
                    "epoch_time_s": 1.0,
                }
            )
    return pd.DataFrame(rows)


THREE = {"bn": [False, True], "batch_size": [16, 64], "learning_rate": [0.001, 0.01, 0.1]}


def test_interaction_anova_runs_over_every_grid_factor() -> None:
    r = make_grid(THREE, effect=lambda c: 0.004 * c["bn"] * (c["learning_rate"] > 0.005))
    out = S.interaction_anova(r).set_index("effect")
    assert out.index.tolist() == [
        "bn", "batch_size", "learning_rate", "bn:batch_size", "bn:learning_rate",
        "batch_size:learning_rate", "bn:batch_size:learning_rate",
    ]  # fmt: skip
    assert out.loc["bn:learning_rate", "p_gg"] < 0.001  # the built-in interaction is found
    assert out.loc["bn:batch_size", "p"] > 0.01
    ref = S.rm_anova(r, "test_accuracy", ["bn", "batch_size", "learning_rate"])
    np.testing.assert_allclose(out["F"], ref["F"])
    # Column order in the frame does not matter: effects follow the registry's factor order.
    shuffled = r[["learning_rate", "seed", "batch_size", "status", "test_accuracy", "bn"]]
    pd.testing.assert_frame_equal(S.interaction_anova(shuffled), S.interaction_anova(r))


def test_interaction_anova_counts_failed_cells_as_incomplete() -> None:
    r = make_grid(THREE)
    r.loc[(r.seed == 2) & r.bn & (r.learning_rate == 0.1) & (r.batch_size == 16), "status"] = (
        "diverged"
    )
    r = r[~((r.seed == 4) & (r.batch_size == 64) & ~r.bn & (r.learning_rate == 0.01))]  # missing
    out = S.interaction_anova(r)
    assert (out["n_seeds"] == 4).all()
    ref = S.interaction_anova(r[~r.seed.isin([2, 4])])
    np.testing.assert_allclose(out["F"], ref["F"])


def test_interaction_anova_reads_csv_strings() -> None:
    r = make_grid(THREE)
    as_text = r.assign(bn=r["bn"].map({True: "True", False: "False"}))
    pd.testing.assert_frame_equal(S.interaction_anova(as_text), S.interaction_anova(r))


def test_factor_effects_one_way_friedman_and_trend() -> None:
    # Accuracy falls 0.3 pp per doubling of the learning rate without BN, not at all with it.
    def eff(c):
        return 0.0 if c["bn"] else -0.003 * np.log2(c["learning_rate"] / 0.001)

    factors = {"bn": [False, True], "batch_size": [32, 64], "learning_rate": [0.001, 0.002, 0.004]}
    r = make_grid(factors, seeds=8, effect=eff, noise=0.0005)
    out = S.factor_effects(r, "bn")
    assert list(out.columns) == S.FACTOR_EFFECT_COLUMNS
    assert out[["factor", "compare_level"]].values.tolist() == [
        ["batch_size", False], ["batch_size", True],
        ["learning_rate", False], ["learning_rate", True],
    ]  # fmt: skip
    lr = out.set_index(["factor", "compare_level"]).loc["learning_rate"]
    assert lr.loc[False, "trend_slope"] == pytest.approx(-0.003, abs=0.0005)
    assert lr.loc[False, "trend_ci_low"] < -0.003 < lr.loc[False, "trend_ci_high"]
    assert lr.loc[False, "trend_p"] < 0.001 and lr.loc[True, "trend_p"] > 0.001
    # By hand: the seeds' means over batch size, one-way RM-ANOVA and Friedman over lr.
    arm = r[~r.bn].groupby(["seed", "learning_rate"])["test_accuracy"].mean().unstack()
    one = S.rm_anova_oneway(arm.to_numpy())
    assert lr.loc[False, "F"] == pytest.approx(one["F"], rel=1e-10)
    fr = sps.friedmanchisquare(*arm.to_numpy().T)
    assert lr.loc[False, "friedman_p"] == pytest.approx(fr.pvalue)
    slopes = [np.polyfit(np.log2(arm.columns), row, 1)[0] for row in arm.to_numpy()]
    assert lr.loc[False, "trend_slope"] == pytest.approx(np.mean(slopes), rel=1e-9)
    assert lr.loc[False, "trend_p"] == pytest.approx(sps.ttest_1samp(slopes, 0).pvalue, rel=1e-9)
    bs = out.set_index(["factor", "compare_level"]).loc["batch_size"]
    assert bs["friedman_p"].isna().all()  # two levels: no Friedman


def test_factor_effects_string_factor_has_no_trend_and_grid_with_one_factor() -> None:
    r = make_grid({"bn": [False, True], "bn_position": ["after_relu", "before_relu"]}, seeds=4)
    out = S.factor_effects(r, "bn")
    assert out["factor"].unique().tolist() == ["bn_position"]
    assert out["trend_slope"].isna().all() and out["F"].notna().all()
    assert S.factor_effects(make_grid({"bn": [False, True]}), "bn").empty


def test_no_complete_seed_gives_nan_rows() -> None:
    r = make_grid(THREE, seeds=2)
    r.loc[r.bn & (r.batch_size == 16), "status"] = "failed"
    out = S.interaction_anova(r)
    assert len(out) == 7 and (out["n_seeds"] == 0).all() and out["F"].isna().all()


def test_rm_anova_oneway_matches_field_bushtucker() -> None:
    # Field reports F(3, 21) = 3.79, p = .026, SS_M = 83.13, SS_R = 153.38,
    # Greenhouse-Geisser epsilon = .533, corrected p = .063.
    res = S.rm_anova_oneway(BUSHTUCKER)
    assert (res["df"], res["df_error"]) == (3, 21)
    assert res["ss"] == pytest.approx(83.125)
    assert res["ss_error"] == pytest.approx(153.375)
    assert res["F"] == pytest.approx(3.79, abs=0.005)
    assert res["p"] == pytest.approx(0.026, abs=0.0005)
    assert res["gg_epsilon"] == pytest.approx(0.533, abs=0.0005)
    assert res["p_gg"] == pytest.approx(0.063, abs=0.0005)


def test_rm_anova_oneway_matches_regression_and_t_squared() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=(7, 4)) + rng.normal(size=(7, 1)) + np.array([0, 0.3, 0.5, 0.2])
    assert S.rm_anova_oneway(y)["F"] == pytest.approx(_rm_f_by_regression(y), rel=1e-9)
    two = y[:, :2]
    t = sps.ttest_rel(two[:, 1], two[:, 0])
    res = S.rm_anova_oneway(two)
    assert res["F"] == pytest.approx(t.statistic**2, rel=1e-9)
    assert res["p"] == pytest.approx(t.pvalue, abs=1e-9)
    assert res["gg_epsilon"] == 1.0


def test_interaction_anova_identities() -> None:
    r = make_results(effect={16: 0.002, 32: 0.001, 64: 0.0, 128: -0.001})
    out = S.interaction_anova(r).set_index("effect")
    assert list(S.interaction_anova(r).columns) == S.ANOVA_COLUMNS
    y = _grid_array(r)  # seeds x bn x batch size
    # With two BN levels the interaction is a one-way RM-ANOVA on the per-seed BN differences.
    diff = y[:, 1, :] - y[:, 0, :]
    one = S.rm_anova_oneway(diff)
    inter = out.loc["bn:batch_size"]
    assert inter["F"] == pytest.approx(one["F"], rel=1e-9)
    assert inter["p"] == pytest.approx(one["p"], abs=1e-9)
    assert inter["gg_epsilon"] == pytest.approx(one["gg_epsilon"], rel=1e-9)
    assert (inter["df"], inter["df_error"]) == (3, 27)
    # The BN main effect is the paired t-test on seed means, squared.
    t = sps.ttest_rel(y[:, 1, :].mean(axis=1), y[:, 0, :].mean(axis=1))
    assert out.loc["bn", "F"] == pytest.approx(t.statistic**2, rel=1e-9)
    assert out.loc["bn", "p"] == pytest.approx(t.pvalue, abs=1e-9)
    # The batch-size main effect is a one-way RM-ANOVA on the BN-averaged cells.
    bs = S.rm_anova_oneway(y.mean(axis=1))
    assert out.loc["batch_size", "F"] == pytest.approx(bs["F"], rel=1e-9)
    assert out.loc["batch_size", "gg_epsilon"] == pytest.approx(bs["gg_epsilon"], rel=1e-9)
    assert (out["n_seeds"] == 10).all()
    assert "Greenhouse-Geisser" in out["method"].iloc[0]


def test_interaction_anova_uses_only_complete_seeds() -> None:
    r = make_results(sizes=(16, 32, 64), seeds=6)
    set_cell(r, True, 32, 2, status="diverged", test_accuracy=np.nan)
    set_cell(r, False, 64, 5, test_accuracy=np.nan)
    out = S.interaction_anova(r)
    assert (out["n_seeds"] == 4).all()
    ref = S.interaction_anova(r[~r.seed.isin([2, 5])])
    np.testing.assert_allclose(out["F"], ref["F"])


def test_interaction_anova_degenerate_returns_nan() -> None:
    r = make_results(sizes=(16,), seeds=3)
    out = S.interaction_anova(r)
    assert out["effect"].tolist() == ["bn", "batch_size", "bn:batch_size"]
    # One batch size: only the effects involving it are untestable; BN's is the paired t^2.
    assert out["F"].iloc[1:].isna().all() and np.isfinite(out["F"].iloc[0])
    assert S.interaction_anova(make_results(seeds=1))["F"].isna().all()


def test_batch_size_effect_matches_scipy_friedman() -> None:
    r = make_results(seeds=8)
    set_cell(r, True, 64, 0, status="failed")
    out = _batch_size_effect(r)
    assert list(out.columns) == S.FACTOR_EFFECT_COLUMNS
    assert out["compare_level"].tolist() == [False, True]
    assert out["n_seeds"].tolist() == [8, 7]
    for _, row in out.iterrows():
        arm = r[(r.bn == row["compare_level"]) & (r.status == "finished")]
        wide = arm.pivot_table(index="seed", columns="batch_size", values="test_accuracy").dropna()
        fr = sps.friedmanchisquare(*wide.to_numpy().T)
        assert row["friedman_stat"] == pytest.approx(fr.statistic, abs=1e-6)
        assert row["friedman_p"] == pytest.approx(fr.pvalue, abs=1e-6)
        assert row["F"] == pytest.approx(_rm_f_by_regression(wide.to_numpy()), rel=1e-9)


def test_batch_size_effect_two_sizes_has_no_friedman() -> None:
    out = _batch_size_effect(make_results(sizes=(16, 32), seeds=4))
    assert out["friedman_p"].isna().all() and out["F"].notna().all()
