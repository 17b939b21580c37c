"""bnpipe.stats.arm_summary against numbers computed independently (numpy, scipy.stats.t)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnpipe import stats

# Known accuracies per (batch size, BN): distinct lengths so a mix-up of arms shows.
ACC = {
    (16, False): [0.970, 0.972, 0.975, 0.971],
    (16, True): [0.974, 0.976, 0.973],
    (32, False): [0.968, 0.969],
    (32, True): [0.977, 0.979, 0.975, 0.978, 0.976],
}


def _results(extra: list[dict] | None = None) -> pd.DataFrame:
    rows = [
        {"bn": bn, "batch_size": bs, "seed": seed, "status": "finished", "test_accuracy": a}
        for (bs, bn), accs in ACC.items()
        for seed, a in enumerate(accs)
    ]
    return pd.DataFrame(rows + (extra or []))


def _expected(values: list[float], alpha: float) -> tuple[float, float, float, float]:
    a = np.asarray(values)
    sem = sps.sem(a)  # ddof=1
    low, high = sps.t.interval(1 - alpha, len(a) - 1, loc=a.mean(), scale=sem)
    return a.mean(), a.std(ddof=1), low, high


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_each_arm_matches_scipy_t_interval(alpha):
    out = stats.arm_summary(_results(), "bn", [False, True], ["batch_size"], alpha)
    assert list(out.columns) == ["batch_size", "bn", *stats.ARM_COLUMNS]
    assert list(zip(out["batch_size"], out["bn"], strict=True)) == [
        (16, False),
        (16, True),
        (32, False),
        (32, True),
    ]
    for row in out.itertuples(index=False):
        values = ACC[(row.batch_size, row.bn)]
        mean, sd, low, high = _expected(values, alpha)
        assert row.n == len(values)
        assert row.mean == pytest.approx(mean, abs=1e-12)
        assert row.sd == pytest.approx(sd, abs=1e-12)
        assert row.ci_low == pytest.approx(low, abs=1e-12)
        assert row.ci_high == pytest.approx(high, abs=1e-12)


def test_unfinished_and_nan_cells_are_left_out():
    extra = [
        {"bn": True, "batch_size": 16, "seed": 7, "status": "failed", "test_accuracy": 0.1},
        {"bn": True, "batch_size": 16, "seed": 8, "status": "diverged", "test_accuracy": math.nan},
        {"bn": True, "batch_size": 16, "seed": 9, "status": "finished", "test_accuracy": math.nan},
    ]
    out = stats.arm_summary(_results(extra), "bn", [False, True], ["batch_size"])
    row = out.loc[(out["batch_size"] == 16) & out["bn"]].iloc[0]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(np.mean(ACC[(16, True)]), abs=1e-12)


def test_levels_order_rows_and_default_strata_are_the_other_factors():
    out = stats.arm_summary(_results(), "bn", [True, False])
    assert list(out.columns[:2]) == ["batch_size", "bn"]
    assert list(out["bn"]) == [True, False, True, False]
    # Levels read back as strings (a CSV or MLflow params) are typed like the config's.
    text = _results().astype({"bn": str, "batch_size": str})
    again = stats.arm_summary(text, "bn", [True, False], ["batch_size"])
    pd.testing.assert_frame_equal(again, out)


def test_an_arm_with_one_or_no_finished_cell():
    one = pd.DataFrame(
        [
            {"bn": False, "batch_size": 16, "seed": 0, "status": "finished", "test_accuracy": 0.97},
            {"bn": True, "batch_size": 16, "seed": 0, "status": "failed", "test_accuracy": None},
        ]
    )
    out = stats.arm_summary(one, "bn", [False, True], ["batch_size"]).set_index("bn")
    assert out.loc[False, "n"] == 1 and out.loc[False, "mean"] == pytest.approx(0.97)
    assert np.isnan(out.loc[False, ["sd", "ci_low", "ci_high"]].astype(float)).all()
    assert out.loc[True, "n"] == 0 and np.isnan(float(out.loc[True, "mean"]))


def test_no_strata_gives_one_row_per_arm():
    frame = _results().loc[lambda f: f["batch_size"] == 32].drop(columns="batch_size")
    out = stats.arm_summary(frame, "bn")
    assert list(out.columns) == ["bn", *stats.ARM_COLUMNS]
    assert list(out["bn"]) == [False, True]
    assert list(out["n"]) == [2, 5]


def test_a_missing_factor_column_is_an_error():
    with pytest.raises(ValueError, match="learning_rate"):
        stats.arm_summary(_results(), "bn", strata=["learning_rate"])
