"""Tests for bnpipe.stats.sequential: published boundaries, decisions, resuming, operating
characteristics by simulation."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnpipe import report
from bnpipe.stats import (
    FLOOR,
    LOOK_COLUMNS,
    SEQUENTIAL_SUMMARY_COLUMNS,
    alpha_spent,
    average_sample_number,
    crossed_variance,
    look_sizes,
    looks_frame,
    sequential_bounds,
    sequential_decide,
    sequential_decide_crossed,
    sequential_plan,
    sequential_summary,
    t_critical,
)

# gsDesign, K = 5 equally spaced looks, one-sided alpha 0.025 per side (Lan-DeMets spending).
GSDESIGN_OBF = [4.877, 3.357, 2.680, 2.290, 2.031]
GSDESIGN_POCOCK = [2.438, 2.427, 2.410, 2.397, 2.385]


@pytest.mark.parametrize(
    ("spending", "expected"), [("obf", GSDESIGN_OBF), ("pocock", GSDESIGN_POCOCK)]
)
def test_bounds_match_gsdesign(spending: str, expected: list[float]) -> None:
    np.testing.assert_allclose(sequential_bounds(5, 0.05, spending), expected, atol=5e-3)


def test_hsd_bounds_match_gsdesign() -> None:
    # gsDesign() with its defaults (k = 3, alpha 0.025 one-sided, sfu = sfHSD, sfupar = -4)
    # prints efficacy bounds 3.01, 2.55, 2.00; its non-binding futility bound does not change
    # them, and the lower side's crossing here moves them by less than 1e-4.
    np.testing.assert_allclose(
        sequential_bounds(3, 0.05, "hsd", gamma=-4), [3.0107, 2.5465, 1.9992], atol=5e-4
    )
    # sfHSD's limits: gamma 0 spends linearly; the spent alpha ends at alpha for any gamma.
    t = np.array([0.2, 0.5, 1.0])
    np.testing.assert_allclose(alpha_spent(t, 0.05, "hsd", gamma=0), 0.05 * t)
    for g in (-4.0, 1.0, 2.0):
        spent = alpha_spent(t, 0.05, "hsd", gamma=g)
        assert spent[-1] == pytest.approx(0.05) and np.all(np.diff(spent) > 0)
    # Positive gamma spends early (Pocock-like): a lower first boundary than OBF-like -4.
    assert sequential_bounds(5, 0.05, "hsd", gamma=1)[0] < sequential_bounds(5, 0.05, "hsd")[0]
    with pytest.raises(ValueError, match="gamma"):
        sequential_bounds(3, 0.05, "hsd", gamma=50)


def test_bounds_single_look_is_fixed_design_and_timing_matters() -> None:
    assert sequential_bounds(1, 0.05)[0] == pytest.approx(sps.norm.isf(0.025), abs=1e-9)
    # Unequal timing: an early look at 10% spends almost nothing under OBF.
    uneven = sequential_bounds(3, 0.05, "obf", timing=[0.1, 0.5, 1.0])
    assert uneven[0] > sequential_bounds(3, 0.05, "obf")[0]
    assert np.all(np.diff(uneven) < 0)


def test_bounds_spend_exactly_alpha_by_simulation() -> None:
    # Crossing probability of the canonical process under H0 equals the spent alpha per look.
    c = sequential_bounds(4, 0.05, "pocock")
    rng = np.random.default_rng(3)
    steps = rng.standard_normal((200_000, 4))
    z = np.cumsum(steps, axis=1) / np.sqrt(np.arange(1, 5))
    crossed = np.abs(z) >= c
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    cum = [np.mean((first >= 0) & (first <= k)) for k in range(4)]
    np.testing.assert_allclose(cum, alpha_spent(np.arange(1, 5) / 4, 0.05, "pocock"), atol=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_looks": 0}, "n_looks"),
        ({"n_looks": 3, "alpha": 1.5}, "alpha"),
        ({"n_looks": 3, "spending": "haybittle"}, "spending"),
        ({"n_looks": 2, "timing": [0.6, 0.5]}, "timing"),
        ({"n_looks": 2, "timing": [0.5, 0.9]}, "timing"),
    ],
)
def test_bounds_reject_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sequential_bounds(**kwargs)


def test_t_conversion_keeps_tail_probability() -> None:
    z = np.array([4.877, 2.031])
    n = np.array([10, 50])
    t = t_critical(z, n)
    np.testing.assert_allclose(t, sps.t.ppf(sps.norm.cdf(z), n - 1), rtol=1e-8)
    np.testing.assert_allclose(sps.t.sf(t, n - 1), sps.norm.sf(z), rtol=1e-8)
    assert np.all(t > z)
    assert math.isnan(t_critical(2.0, 1))


def test_table_uses_t_converted_boundaries() -> None:
    d = np.random.default_rng(0).normal(0.0, 0.003, 30)
    res = sequential_decide(d, look_every=10, max_n=30, margin=0.0)
    tab = res.table
    assert list(tab.columns) == LOOK_COLUMNS
    np.testing.assert_allclose(tab["z_crit"], sequential_bounds(3, 0.05, "obf"))
    np.testing.assert_allclose(tab["t_crit"], sps.t.ppf(sps.norm.cdf(tab["z_crit"]), tab["n"] - 1))
    for row in tab.itertuples():
        x = d[: row.n]
        half = row.t_crit * x.std(ddof=1) / math.sqrt(row.n)
        assert row.rci_low == pytest.approx(x.mean() - half)
        assert row.rci_high == pytest.approx(x.mean() + half)
        assert row.t_stat == pytest.approx(sps.ttest_1samp(x, 0.0).statistic)
    np.testing.assert_allclose(tab["alpha_spent"], alpha_spent([1 / 3, 2 / 3, 1], 0.05))
    assert tab["alpha_spent"].iloc[-1] == pytest.approx(0.05)
    plan = sequential_plan(look_every=10, max_n=30)
    pd.testing.assert_frame_equal(
        plan[["look", "n", "z_crit", "alpha_spent"]], tab[["look", "n", "z_crit", "alpha_spent"]]
    )


def _noisy(mean: float, n: int, sd: float = 0.003, seed: int = 0) -> np.ndarray:
    """Differences with exactly this sample mean and sd (so decisions are known in advance)."""
    x = np.random.default_rng(seed).standard_normal(n)
    return mean + sd * (x - x.mean()) / x.std(ddof=1)


@pytest.mark.parametrize(
    ("mean", "decision"), [(0.004, "benefit"), (-0.004, "harm"), (0.0, "equivalent")]
)
def test_each_decision_reached(mean: float, decision: str) -> None:
    # Same sample mean/sd at each look of 40 pairs -> decided at the first look that allows it.
    d = np.concatenate([_noisy(mean, 10, seed=s) for s in range(10)])
    res = sequential_decide(d, look_every=10, max_n=100, margin=0.002)
    assert res.decision == decision
    assert res.table["decision"].iloc[-1] == decision
    assert (res.table["decision"].iloc[:-1] == "continue").all()
    assert res.n == 10 * res.looks == res.table["n"].iloc[-1]
    assert res.looks < 10
    if decision == "benefit":
        assert res.rci_low > 0
    elif decision == "harm":
        assert res.rci_high < 0
    else:
        assert -0.002 < res.rci_low < res.rci_high < 0.002


def test_continue_versus_undecided() -> None:
    # Mean 0.0015 with sd 0.02: neither excludes 0 nor fits within +/-0.002 by 40 pairs.
    d = _noisy(0.0015, 40, sd=0.02)
    short = sequential_decide(d[:25], look_every=10, max_n=40)
    assert (short.decision, short.n, short.looks, short.planned_looks) == ("continue", 20, 2, 4)
    assert not short.decided
    full = sequential_decide(d, look_every=10, max_n=40)
    assert (full.decision, full.n, full.looks) == ("undecided", 40, 4)
    assert full.decided
    assert full.rci_low < 0 < full.rci_high
    # Too few pairs for a first look: nothing to report yet.
    none = sequential_decide(d[:9], look_every=10, max_n=40)
    assert (none.decision, none.n, none.looks, len(none.table)) == ("continue", 0, 0, 0)
    assert math.isnan(none.rci_low)


def test_last_look_at_max_n_when_not_a_multiple() -> None:
    res = sequential_decide(_noisy(0.0, 25, sd=0.05), look_every=10, max_n=25, margin=0.0)
    assert res.table["n"].tolist() == [10, 20, 25]
    assert res.decision == "undecided"


def test_resumed_run_equals_straight_run() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        d = rng.normal(rng.choice([-0.002, 0.0, 0.0015]), 0.003, 100)
        straight = sequential_decide(d)
        # A scheduled run sees 10 more seeds each time, stopping once decided.
        for n in range(10, 101, 10):
            step = sequential_decide(d[:n])
            if step.decided:
                break
        assert step.to_dict() == straight.to_dict()
        pd.testing.assert_frame_equal(step.table, straight.table)
        # Extra seeds trained past the deciding look change nothing.
        assert sequential_decide(d[: straight.n]).to_dict() == straight.to_dict()


def test_look_schedule_first_look_then_every() -> None:
    np.testing.assert_array_equal(look_sizes(5, 100, 20), [20, *range(25, 101, 5)])
    np.testing.assert_array_equal(look_sizes(10, 100), np.arange(10, 101, 10))  # as before
    np.testing.assert_array_equal(look_sizes(5, 22, 20), [20, 22])
    np.testing.assert_array_equal(look_sizes(5, 20, 20), [20])
    with pytest.raises(ValueError, match="first_look"):
        look_sizes(5, 10, 20)
    res = sequential_decide(_noisy(0.0, 30, sd=0.05), look_every=5, max_n=30, first_look=20)
    assert res.table["n"].tolist() == [20, 25, 30] and res.planned_looks == 3
    # Timing follows the looks: the first look's boundary is that of a 3-look design at 2/3.
    np.testing.assert_allclose(
        res.table["z_crit"], sequential_bounds(3, 0.05, "obf", timing=[20 / 30, 25 / 30, 1])
    )


def test_tost_equivalence_has_its_own_interval() -> None:
    # Two one-sided tests at alpha each: the equivalence interval is the two-sided 2 alpha RCI,
    # inside the benefit / harm one at every look (what makes a wrong "harm" at a true effect
    # beyond the margin also an equivalence-side miss, so one budget covers both).
    kw = {"look_every": 5, "max_n": 100, "alpha": 0.0125, "spending": "pocock", "first_look": 20}
    plan = sequential_plan(**kw, equivalence_alpha=0.025)
    np.testing.assert_allclose(
        plan["z_crit_eq"], sequential_bounds(17, 0.025, "pocock", timing=plan["timing"])
    )
    assert np.all(plan["z_crit_eq"] < plan["z_crit"])
    # Mean 0.0007, sd 0.003 at one look of 40 pairs: the shared interval (half-width 0.00136)
    # does not fit in +/-0.002, the TOST one (0.00123) does.
    d = _noisy(0.0007, 40, sd=0.003)
    kw["first_look"] = 40
    shared = sequential_decide(d, margin=0.002, **kw)
    tost = sequential_decide(d, margin=0.002, equivalence_alpha=0.025, **kw)
    assert shared.decision == "continue" and tost.decision == "equivalent"
    last = tost.table.iloc[-1]
    assert last["rci_low"] < last["eq_low"] < last["eq_high"] < last["rci_high"]
    assert last["eq_low"] > -0.002 and last["eq_high"] < 0.002
    assert tost.equivalence_alpha == 0.025 and shared.equivalence_alpha is None
    # The shared design's table: equivalence columns equal the benefit / harm interval's.
    np.testing.assert_allclose(shared.table["eq_low"], shared.table["rci_low"])
    with pytest.raises(ValueError, match="equivalence_alpha"):
        sequential_decide(d, equivalence_alpha=0.01, **kw)


def test_zero_sd_and_single_pair_looks() -> None:
    assert sequential_decide([0.125] * 10).decision == "benefit"
    assert sequential_decide([-0.125] * 10).decision == "harm"
    same = sequential_decide([0.0] * 10)
    assert same.decision == "equivalent"
    assert same.rci_low == same.rci_high == 0.0
    one = sequential_decide([0.5, 0.5], look_every=1, max_n=2)
    assert one.table["decision"].tolist() == ["continue", "benefit"]
    assert math.isnan(one.table["t_crit"].iloc[0])


@pytest.mark.parametrize(
    ("diffs", "kwargs", "field"),
    [
        ([0.1, np.nan, 0.2, np.inf], {}, r"positions \[1, 3\]"),
        ([0.1] * 10, {"look_every": 0}, "look_every"),
        ([0.1] * 10, {"max_n": 2.5}, "max_n"),
        ([0.1] * 10, {"margin": -1.0}, "margin"),
        ([0.1] * 10, {"alpha": 0.0}, "alpha"),
        ([0.1] * 10, {"spending": "OBF"}, "spending"),
    ],
)
def test_decide_rejects_bad_input(diffs: list[float], kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sequential_decide(diffs, **kwargs)


def test_operating_characteristics() -> None:
    """The issue's proof: sd 0.003, margin 0.002, looks every 10 up to 100, alpha 0.05."""
    design = {"look_every": 10, "max_n": 100, "alpha": 0.05, "margin": 0.002}
    oc = {eff: average_sample_number(eff, 0.003, **design) for eff in (0.0, 0.002, -0.002, 0.0015)}
    for eff, r in oc.items():
        print(f"effect {eff:+.4f}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
        total = r["p_benefit"] + r["p_harm"] + r["p_equivalent"] + r["p_undecided"]
        assert total == pytest.approx(1.0)
        assert 10 <= r["asn"] <= 100
    assert oc[0.0]["p_benefit"] + oc[0.0]["p_harm"] <= 0.05
    assert oc[0.002]["p_equivalent"] <= 0.05
    assert oc[-0.002]["p_equivalent"] <= 0.05
    assert oc[0.0015]["p_benefit"] >= 0.8


def test_simulation_follows_decide() -> None:
    # The vectorised simulation applies the same rule as sequential_decide, draw for draw.
    kw = {"look_every": 5, "max_n": 20, "alpha": 0.1, "margin": 0.003, "spending": "pocock"}
    sim = average_sample_number(0.001, 0.003, n_sim=300, seed=5, **kw)
    y = np.random.default_rng(5).normal(0.0, 0.003, (300, 20))
    runs = [sequential_decide(0.001 + row, **kw) for row in y]
    assert sim["asn"] == pytest.approx(np.mean([r.n for r in runs]))
    for d in ("benefit", "harm", "equivalent", "undecided"):
        assert sim[f"p_{d}"] == pytest.approx(np.mean([r.decision == d for r in runs]))
    assert sim == average_sample_number(0.001, 0.003, n_sim=300, seed=5, **kw)
    # The same with a later first look, hsd spending and a separate equivalence interval.
    kw |= {"first_look": 10, "spending": "hsd", "gamma": 1.0, "equivalence_alpha": 0.2}
    sim = average_sample_number(0.001, 0.003, n_sim=300, seed=5, **kw)
    runs = [sequential_decide(0.001 + row, **kw) for row in y]
    assert sim["asn"] == pytest.approx(np.mean([r.n for r in runs]))
    for d in ("benefit", "harm", "equivalent", "undecided"):
        assert sim[f"p_{d}"] == pytest.approx(np.mean([r.decision == d for r in runs]))


# ----------------------------------------------- seeds x test examples crossed (issue 28)

# A crossed layout where the test examples add twice as much to the mean's variance as the seeds
# at 20 seeds (s2_example / E = 2 s2_seed / 20; on the real default run about as much); Pocock
# looks at 10, 15, ... 30 pairs; alpha 0.05 per comparison, so error rates show in 500 draws.
CROSSED = {"sd_seed": 0.2, "sd_example": math.sqrt(0.8), "sd_resid": 1.0, "n_examples": 200}
CROSSED_DESIGN = {
    "look_every": 5,
    "first_look": 10,
    "max_n": 30,
    "alpha": 0.05,
    "margin": 0.3,
    "spending": "pocock",
    "equivalence_alpha": 0.1,
}


def _crossed_draws(effect: float, reps: int, seed: int) -> np.ndarray:
    """``reps`` seeds x examples layouts (max_n x E) around ``effect``, vectorised."""
    rng = np.random.default_rng(seed)
    s, e = CROSSED_DESIGN["max_n"], CROSSED["n_examples"]
    return (
        effect
        + rng.normal(0, CROSSED["sd_seed"], (reps, s, 1))
        + rng.normal(0, CROSSED["sd_example"], (reps, 1, e))
        + rng.normal(0, CROSSED["sd_resid"], (reps, s, e))
    )


def _rates(runs: list) -> dict[str, float]:
    return {d: float(np.mean([r.decision == d for r in runs])) for d in SEQUENTIAL_DECISIONS_4}


SEQUENTIAL_DECISIONS_4 = ("benefit", "harm", "equivalent", "undecided")


def test_crossed_design_controls_errors_where_the_seed_only_one_does_not() -> None:
    """On a crossed layout, the same design errs at its alpha with the crossed SE and well
    above it with the seed-only SE (the test examples' noise left out). 400 draws: a rate
    near 0.05 has Monte Carlo SE 0.011; the bounds are 3 SE either way."""
    reps, alpha = 400, CROSSED_DESIGN["alpha"]
    mc = 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # A margin that equivalence reaches late, so benefit / harm have every look to err at.
    design = {**CROSSED_DESIGN, "margin": 0.2}
    null = _crossed_draws(0.0, reps, 1)
    crossed = _rates([sequential_decide_crossed(d, **design) for d in null])
    seed_only = _rates([sequential_decide(d.mean(axis=1), **design) for d in null])
    assert crossed["benefit"] + crossed["harm"] <= alpha + mc, crossed
    assert seed_only["benefit"] + seed_only["harm"] >= 2 * alpha, seed_only
    # At a true difference of one margin, a false "equivalent" is the other error: TOST at
    # alpha per side (equivalence_alpha = 2 alpha).
    edge = _crossed_draws(CROSSED_DESIGN["margin"], reps, 2)
    crossed = _rates([sequential_decide_crossed(d, **CROSSED_DESIGN) for d in edge])
    assert crossed["equivalent"] <= alpha + mc, crossed


def test_crossed_looks_use_the_crossed_estimate() -> None:
    d = _crossed_draws(0.1, 1, 3)[0]
    r = sequential_decide_crossed(d, **{**CROSSED_DESIGN, "alpha": 0.001, "margin": 0.5})
    assert r.n == r.table["n"].iloc[-1]
    for row in r.table.itertuples():
        cv = crossed_variance(d[: row.n])
        assert (row.mean, row.se, row.df) == pytest.approx((cv.mean, cv.se, cv.df))
        assert row.sd == pytest.approx(cv.se * math.sqrt(row.n))
        assert row.floor_se == pytest.approx(math.sqrt(cv.s2_example / 200))
        half = float(sps.t.isf(sps.norm.sf(row.z_crit), cv.df)) * cv.se
        assert (row.rci_low, row.rci_high) == pytest.approx((cv.mean - half, cv.mean + half))
    with pytest.raises(ValueError, match="examples"):
        sequential_decide_crossed(np.zeros(5), **CROSSED_DESIGN)
    with pytest.raises(ValueError, match="rows"):
        sequential_decide_crossed(np.where(np.eye(30, 4) > 0, np.nan, 0.0), **CROSSED_DESIGN)


def test_floor_stops_a_comparison_that_seeds_cannot_decide() -> None:
    # The examples' noise alone puts the equivalence interval at max_n past the margin: at a
    # true difference of 0 the comparison stops undecided at its first look, reason floor,
    # instead of spending seeds up to max_n; a large effect is still decided.
    wide = {**CROSSED_DESIGN, "margin": 0.1}
    r = sequential_decide_crossed(_crossed_draws(0.0, 1, 4)[0], **wide)
    assert (r.decision, r.stop_reason, r.n) == ("undecided", FLOOR, 10)
    r = sequential_decide_crossed(_crossed_draws(1.0, 1, 5)[0], **wide)
    assert r.decision == "benefit"
    # The planning simulation knows the floor the same way; without one it is today's.
    kw = dict(wide)
    floor = math.sqrt(0.8 / 200)
    plan = average_sample_number(0.0, 0.2, floor_se=floor, n_sim=2000, **kw)
    assert plan["p_undecided"] > 0.95 and plan["asn"] < 12
    assert average_sample_number(0.0, 0.2, n_sim=2000, **kw) == average_sample_number(
        0.0, 0.2, floor_se=0.0, n_sim=2000, **kw
    )


def test_planning_simulation_of_the_crossed_design_controls_errors() -> None:
    # Known floor, as bnpipe plan simulates the digits design: error rates at alpha.
    design = {**CROSSED_DESIGN, "max_n": 60}
    floor, n = 0.05, 10_000
    mc = 3 * math.sqrt(0.05 * 0.95 / n)
    null = average_sample_number(0.0, 0.3, floor_se=floor, n_sim=n, seed=1, **design)
    assert null["p_benefit"] + null["p_harm"] <= 0.05 + mc, null
    edge = average_sample_number(0.3, 0.3, floor_se=floor, n_sim=n, seed=2, **design)
    assert edge["p_equivalent"] <= 0.05 + mc, edge
    with pytest.raises(ValueError, match="floor_se"):
        average_sample_number(0.0, 0.3, floor_se=-1.0, **design)


def test_summary_and_looks_frame() -> None:
    per = {
        16: sequential_decide(_noisy(0.004, 40)),
        32: sequential_decide(_noisy(0.0015, 40, sd=0.02)),
        64: sequential_decide([]),
    }
    summ = sequential_summary(per)
    assert list(summ.columns[: len(SEQUENTIAL_SUMMARY_COLUMNS)]) == SEQUENTIAL_SUMMARY_COLUMNS
    assert summ["label"].tolist() == [16, 32, 64]
    assert summ["decision"].tolist() == [per[k].decision for k in per]
    assert summ["n"].tolist() == [per[k].n for k in per]
    looks = looks_frame(per)
    assert looks["comparison"].tolist() == [16] * per[16].looks + [32] * per[32].looks
    assert set(LOOK_COLUMNS) <= set(looks.columns)
    assert (
        looks.groupby("comparison")["final"].first() == summ.set_index("label")["decision"][:2]
    ).all()
    assert looks_frame({64: per[64]}).empty


def test_monitoring_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    per = {
        "bs 16": sequential_decide(rng.normal(0.0015, 0.003, 100)),
        "bs 32": sequential_decide(_noisy(0.0015, 40, sd=0.02), max_n=40),
        "bs 64": sequential_decide(_noisy(0.0, 40, sd=0.0025)),
        "bs 128": sequential_decide(rng.normal(-0.0022, 0.003, 100)),
    }
    assert [r.decision for r in per.values()] == ["benefit", "undecided", "equivalent", "harm"]
    out = report.plot_sequential_monitoring(looks_frame(per), tmp_path / "m.png", margin=0.002)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[1] > img.shape[0] > 300  # four columns, two rows
    assert img[..., :3].std() > 0.05  # something was drawn
    with pytest.raises(ValueError, match="t_crit"):
        report.plot_sequential_monitoring(
            looks_frame(per).drop(columns="t_crit"), tmp_path / "x.png", margin=0.002
        )
    assert not (tmp_path / "x.png").exists()
