"""The general grid: any registry factors in grid.factors, one compared factor, the others as
strata. Cells, groups, training specs, params, paired frames, the design and parent metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bnpipe import stats
from bnpipe.analysis import comparison_of
from bnpipe.config import load_config
from bnpipe.design import decide_all, design_outcome, plan_of
from bnpipe.factors import FACTORS, Cell
from bnpipe.grid import (
    GROUP_SPANS,
    cell_params,
    grid_cells,
    result_columns,
    result_row,
    strata,
    train_spec,
    training_groups,
)
from bnpipe.report import verdict_sentence
from bnpipe.train.common import TrainSpec

BN_LR = ["grid.factors={bn: [false, true], learning_rate: [0.001, 0.1]}", "grid.seeds=[0,1]"]
DEFAULT_DESIGN_ID = "129d2870fc03"
# Issue 24's default (pocock, first look 20, every 5, TOST) about the test set, captured before
# issue 28 made digits the default: stores of its looks continue with stats.population=test_set.
ISSUE24_DESIGN_ID = "1db704868d34"
POSITION = [
    "grid.factors={bn_position: [after_relu, before_relu]}",
    "grid.compare=bn_position",
    "model.bn=true",
    "grid.seeds=[0,1]",
]


def test_cells_strata_and_groups_of_a_bn_x_learning_rate_grid():
    cfg = load_config(None, BN_LR)
    assert strata(cfg) == [(("learning_rate", 0.001),), (("learning_rate", 0.1),)]
    cells = grid_cells(cfg, dict.fromkeys(strata(cfg), (1, 0)))
    assert [c.name for c in cells] == [
        "bn=off lr=0.001 seed=0",
        "bn=off lr=0.001 seed=1",
        "bn=on lr=0.001 seed=0",
        "bn=on lr=0.001 seed=1",
        "bn=off lr=0.1 seed=0",
        "bn=off lr=0.1 seed=1",
        "bn=on lr=0.1 seed=0",
        "bn=on lr=0.1 seed=1",
    ]
    # Both BN arms of a learning rate train as one group (one program for the fused engine).
    groups = training_groups(cells)
    assert [g.name for g in groups] == ["lr=0.001", "lr=0.1"]
    assert groups[1].cells == tuple(cells[4:])
    # The batch size is no factor here: every cell trains at train.batch_size.
    spec = train_spec(cfg, groups[1])
    assert spec.batch_size == 32 and spec.all("learning_rate") == (0.1,) * 4
    assert spec.all("bn") == (False, False, True, True) and spec.seeds == (0, 1, 0, 1)
    assert spec.architecture.bn and spec.all("init_scale") == (1.0,) * 4
    assert result_columns(cfg)[:3] == ["bn", "learning_rate", "seed"]
    assert list(result_row(cells[0], status="finished"))[:3] == ["bn", "learning_rate", "seed"]


def test_params_hold_every_factor_level_and_log_like_today():
    cfg = load_config(None, [*BN_LR, "model.init_scale=0.5", "train.batch_size=64"])
    cell = Cell.of(1, bn=True, learning_rate=0.1)
    params = cell_params(cfg, cell, "digest")
    assert (params["bn"], params["batch_size"], params["learning_rate"]) == (True, 64, 0.1)
    assert params["init_scale"] == 0.5 and "bn_position" not in params  # keyless default
    # How they are logged and read back: tests/test_tracking_names.py


def test_bn_position_compared_with_bn_on_by_default():
    cfg = load_config(None, POSITION)
    assert strata(cfg) == [()]
    cells = grid_cells(cfg, {(): (0,)})
    assert [c.name for c in cells] == ["pos=after_relu seed=0", "pos=before_relu seed=0"]
    spec = train_spec(cfg, training_groups(cells)[1])
    assert spec.architecture.bn and spec.architecture.bn_position == "before_relu"
    assert cell_params(cfg, cells[1], "d")["bn_position"] == "before_relu"
    assert plan_of(cfg).strata == ((),) and plan_of(cfg).compare == "bn_position"


def _results(diffs: dict[float, list[float]]) -> pd.DataFrame:
    rows = []
    for lr, ds in diffs.items():
        for seed, d in enumerate(ds):
            for bn, acc in ((False, 0.97), (True, 0.97 + d)):
                row = result_row(
                    Cell.of(seed, bn=bn, learning_rate=lr), status="finished", test_accuracy=acc
                )
                rows.append(row)
    return pd.DataFrame(rows)


def test_paired_statistics_and_design_per_stratum():
    cfg = load_config(
        None,
        [
            *BN_LR[:1],
            "stats.look_every=10",
            "stats.first_look=10",
            "stats.max_seeds=20",
            "stats.population=test_set",  # synthetic accuracies, no per-example outcomes
        ],
    )
    rng = np.random.default_rng(1)
    results = _results(
        {
            0.001: list(0.01 + 1e-4 * rng.standard_normal(10)),
            0.1: list(3e-3 * rng.standard_normal(10)),
        }
    )
    pairs = stats.paired_frame(results, "bn")
    assert list(pairs.columns) == [
        "stratum",
        "learning_rate",
        "seed",
        "control",
        "treatment",
        "diff",
    ]
    assert pairs["stratum"].unique().tolist() == ["learning_rate=0.001", "learning_rate=0.1"]
    summary = stats.summarize_by_stratum(results, "bn", (False, True), n_resamples=99)
    assert list(summary.columns) == stats.summary_columns(["learning_rate"])
    assert summary["learning_rate"].tolist() == [0.001, 0.1]
    assert summary.loc[0, "verdict"] == "significant improvement"
    sentence = verdict_sentence(summary.iloc[0], comparison_of(results, "bn", (False, True)))
    assert sentence.startswith(
        "At learning rate 0.001 (n = 10 seed pairs), BN on instead of BN off"
    )
    # The reverse contrast is the same comparison with the sign flipped.
    flipped = stats.summarize_by_stratum(results, "bn", (True, False), n_resamples=99)
    np.testing.assert_allclose(flipped["mean_diff"], -summary["mean_diff"])
    plan = plan_of(cfg)
    decisions = decide_all(results, plan)
    assert decisions[(("learning_rate", 0.001),)].decision == "benefit"
    out = design_outcome(results, plan, n_sim=200)
    assert out.decisions["comparison"].tolist() == ["learning_rate=0.001", "learning_rate=0.1"]
    assert out.record["tags"]["decision.learning_rate_0.001"] == "benefit"
    assert "seeds_learning_rate_0.1" in out.record["metrics"]
    # Control and treatment as listed: [true, false] makes BN off the treatment.
    reverse = plan_of(
        load_config(None, ["grid.factors={bn: [true, false], learning_rate: [0.001]}"])
    )
    assert reverse.levels == (True, False) and reverse.design_id() != plan.design_id()


def test_default_design_keeps_its_id():
    # Scheduled runs of the reference grid stay looks of one design across this change: the id
    # hashes what it hashed when the strata were batch sizes (captured on main at 86d33a8). Since
    # issue 24 that design is no longer the default, and its settings keep its id.
    before = ["stats.spending=obf", "stats.look_every=10", "stats.first_look=null"]
    old = plan_of(
        load_config(None, [*before, "stats.equivalence=shared", "stats.population=test_set"])
    )
    assert old.design_id() == DEFAULT_DESIGN_ID
    assert plan_of(load_config(None)).design_id() != DEFAULT_DESIGN_ID
    # Issue 28: about digits is a new design; about the test set, issue 24's keeps its id.
    issue24 = plan_of(load_config(None, ["stats.population=test_set"]))
    assert issue24.design_id() == ISSUE24_DESIGN_ID != plan_of(load_config(None)).design_id()


def test_parent_metrics_are_named_by_stratum_key():
    from bnpipe.analysis import analyze_frames
    from bnpipe.factors import stratum_key

    results = _results({0.001: [0.01, 0.02, 0.015], 0.1: [0.0, 0.001, -0.001]})
    record = analyze_frames(results, pd.DataFrame(), compare="bn", n_resamples=99).record()
    names = record["metrics"]
    assert record["tags"]["decision.learning_rate_0.1"] in stats.VERDICTS
    assert {
        "diff_learning_rate_0.001",
        "diff_learning_rate_0.1",
        "p_holm_learning_rate_0.1",
    } <= set(names)
    assert not any("=" in n for n in names)
    assert stratum_key((("learning_rate", 1e30),)) == "learning_rate_1e30"  # MLflow rejects "+"


def test_a_factor_added_later_has_a_keyless_default():
    """The trap of a new factor: without a ``keyless_default`` (the level every stored cell
    trained at) its level enters every cell's params, and every stored cell gets a new key.
    Only the factors of the first grid are keyed at every level."""
    keyed = {name for name, f in FACTORS.items() if f.keyless_default is None}
    assert keyed == {"bn", "batch_size", "learning_rate"}


def test_the_registry_says_how_each_factor_reaches_training():
    """Groups span exactly the factors the registry says (BN: one masked program), and a spec
    refuses members that disagree on a group or architecture level."""
    assert GROUP_SPANS == ("bn",)
    reaches = {name: f.reaches for name, f in FACTORS.items()}
    assert reaches["bn"] == reaches["bn_position"] == "architecture"
    assert reaches["batch_size"] == "group" and reaches["learning_rate"] == "member"
    a, b = TrainSpec.of([0], batch_size=32), TrainSpec.of([1], batch_size=64)
    with pytest.raises(ValueError, match="batch size differs"):
        a + b
    both = TrainSpec.of([0], bn=False) + TrainSpec.of([0], bn=True)
    assert both.all("bn") == (False, True) and both.architecture.bn
