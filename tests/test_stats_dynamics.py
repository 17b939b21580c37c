"""Training dynamics over any grid factors: per cell and per stratum."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bnpipe import stats as S
from tests.stats_frames import make_histories, make_results, set_cell


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """bn x learning_rate x init_scale, 2 seeds, 4 epochs; BN reaches 0.96 one epoch earlier."""
    rows, hist = [], []
    for bn in (False, True):
        for lr in (0.001, 0.1):
            for init in (0.5, 2.0):
                for seed in (0, 1):
                    acc = 0.97 + 0.002 * bn - 0.01 * (lr > 0.01)
                    rows.append(
                        {
                            "bn": bn,
                            "learning_rate": lr,
                            "init_scale": init,
                            "seed": seed,
                            "status": "finished",
                            "test_accuracy": acc,
                            "train_accuracy": acc + 0.02,
                            "epoch_time_s": 1.5,
                        }
                    )
                    for e in range(1, 5):
                        val = acc - 0.01 * (4 - e) + (0.01 if bn else 0.0) * (e < 4)
                        hist.append(
                            {
                                "bn": bn,
                                "learning_rate": lr,
                                "init_scale": init,
                                "seed": seed,
                                "epoch": e,
                                "accuracy": val + 0.02,
                                "val_accuracy": val,
                                "epoch_time_s": 1.0,
                            }
                        )
    return pd.DataFrame(rows), pd.DataFrame(hist)


def test_dynamics_keys_on_the_frames_factor_columns() -> None:
    results, histories = _frames()
    dyn = S.dynamics(histories.sample(frac=1.0, random_state=1), results, threshold=0.955)
    assert list(dyn.columns) == ["bn", "learning_rate", "init_scale", "seed", *S.DYNAMICS_MEASURES]
    assert len(dyn) == len(results) and (dyn["n_epochs"] == 4).all()
    fast = dyn[(dyn.learning_rate == 0.001)]
    assert fast.loc[~fast.bn, "epochs_to_threshold"].tolist() == [3.0] * 4
    assert fast.loc[fast.bn, "epochs_to_threshold"].tolist() == [2.0] * 4
    np.testing.assert_allclose(dyn["generalization_gap"], 0.02)


def test_dynamics_summary_one_row_per_stratum_and_level() -> None:
    results, histories = _frames()
    results.loc[(results.seed == 1) & results.bn & (results.init_scale == 2.0), "status"] = "failed"
    summ = S.dynamics_summary(histories, results, threshold=0.955, compare="bn")
    assert list(summ.columns) == [
        "stratum", "bn", "learning_rate", "init_scale", *S.SUMMARY_MEASURES
    ]  # fmt: skip
    assert len(summ) == 8
    assert summ["stratum"].iloc[0] == "learning_rate=0.001, init_scale=0.5"
    row = summ[summ.bn & (summ.learning_rate == 0.1) & (summ.init_scale == 2.0)].iloc[0]
    assert row["n"] == 1  # the failed cell is left out
    # The compare factor can be any: with learning_rate compared, bn is part of the stratum.
    by_lr = S.dynamics_summary(histories, results, threshold=0.955, compare="learning_rate")
    assert by_lr["stratum"].iloc[-1] == "bn=on, init_scale=2"


def test_dynamics_without_histories_and_with_a_missing_column() -> None:
    results, histories = _frames()
    dyn = S.dynamics(pd.DataFrame(), results)
    assert (dyn["n_epochs"] == 0).all() and dyn["stability"].isna().all()
    assert dyn["time_per_epoch"].tolist() == [1.5] * len(results)
    with pytest.raises(ValueError, match="init_scale"):
        S.dynamics(histories.drop(columns="init_scale"), results)


def test_dynamics_hand_computed() -> None:
    r = make_results(sizes=(16,), seeds=2)
    r["test_accuracy"] = 0.975
    r["train_accuracy"] = 0.99
    h = make_histories(r, epochs=4)  # val: 0.945, 0.955, 0.965, 0.975
    h = h.sample(frac=1.0, random_state=0)  # order must not matter
    set_cell(r, True, 16, 1, epoch_time_s=np.nan)
    dyn = S.dynamics(h, r, threshold=0.96)
    assert list(dyn.columns) == S.dynamics_columns(["bn", "batch_size"]) and len(dyn) == 4
    assert (dyn["epochs_to_threshold"] == 3).all()
    np.testing.assert_allclose(dyn["stability"], np.std([0.955, 0.965, 0.975], ddof=1))
    np.testing.assert_allclose(dyn["generalization_gap"], 0.015)
    assert dyn["time_per_epoch"].tolist() == [1.0, 1.0, 1.1, 2.0]  # NaN falls back to history
    assert S.dynamics(h, r, threshold=0.99)["epochs_to_threshold"].isna().all()


def test_dynamics_missing_history_and_summary() -> None:
    r = make_results(sizes=(16, 32), seeds=3)
    h = make_histories(r, epochs=3)
    h = h[~((h.batch_size == 32) & (h.seed == 0) & h.bn)]
    set_cell(r, False, 16, 2, status="diverged")
    dyn = S.dynamics(h, r, threshold=0.95)
    missing = dyn[(dyn.batch_size == 32) & (dyn.seed == 0) & dyn.bn].iloc[0]
    assert missing["n_epochs"] == 0 and math.isnan(missing["stability"])
    summ = S.dynamics_summary(h, r, threshold=0.95, compare="bn")
    assert list(summ.columns) == S.dynamics_summary_columns(["bn", "batch_size"])
    assert len(summ) == 4
    row = summ[(~summ.bn) & (summ.batch_size == 16)].iloc[0]
    assert row["n"] == 2  # the diverged cell is excluded
    ref = dyn[(~dyn.bn) & (dyn.batch_size == 16) & (dyn.status == "finished")]
    assert row["generalization_gap"] == pytest.approx(ref["generalization_gap"].mean())
