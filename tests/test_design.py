"""The design a run follows: fixed seed lists, and the group-sequential loop in the flow (looks,
decisions, reuse across scheduled runs)."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest

from bnpipe.config import ConfigError, load_config
from bnpipe.design import (
    DEFAULT_FIXED_SEEDS,
    close_capped,
    decide_all,
    design_outcome,
    next_block,
    plan_of,
)
from tests.conftest import bs_cell
from tests.test_resume import TrainCounter, accuracies, run_flow

# Tiny data, 1 epoch, fused engine (on tiny data its compile per group costs less than the keras
# engine's model.fit per cell): looks of 2 seed pairs up to 6 per batch size. With 2 pairs
# (df = 1) the first look can never decide, so every comparison
# takes at least two looks; the wide margin lets some end "equivalent" on tiny data.
SEQ = [
    "train.engine=fused",
    "train.epochs=1",
    "grid.batch_sizes=[32,64]",
    "stats.look_every=2",
    "stats.max_seeds=6",
    "stats.equivalence_margin=0.05",
]


def test_plan_from_config() -> None:
    default = plan_of(load_config(None))
    assert default.sequential and (default.look_every, default.max_seeds) == (10, 100)
    assert default.alpha_per_comparison == pytest.approx(0.05 / 4)  # Bonferroni over 4 sizes
    explicit = plan_of(load_config(None, ["grid.seeds=[0,1]"]))
    assert not explicit.sequential and explicit.seeds == (0, 1)
    fixed = plan_of(load_config(None, ["stats.design=fixed"]))
    assert not fixed.sequential and fixed.seeds == DEFAULT_FIXED_SEEDS
    # Looks per run do not change the design (a scheduled sequence is the same design).
    assert plan_of(load_config(None, ["stats.looks_per_run=1"])).design_id() == default.design_id()
    assert plan_of(load_config(None, ["stats.spending=pocock"])).design_id() != default.design_id()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grid.bn=[true]", "stats.design: sequential needs grid.bn"),
        ("stats.max_seeds=5", "stats.max_seeds: must be >= stats.look_every (10)"),
        ("stats.look_every=1", "stats.look_every"),
        ("stats.spending=linear", "stats.spending"),
    ],
)
def test_bad_design_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def _results(diffs_by_bs: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for bs, diffs in diffs_by_bs.items():
        for seed, d in enumerate(diffs):
            rows.append(
                {
                    "bn": False,
                    "batch_size": bs,
                    "seed": seed,
                    "status": "finished",
                    "test_accuracy": 0.97,
                }
            )
            rows.append(
                {
                    "bn": True,
                    "batch_size": bs,
                    "seed": seed,
                    "status": "finished",
                    "test_accuracy": 0.97 + d,
                }
            )
    return pd.DataFrame(rows)


def test_blocks_follow_the_open_comparisons() -> None:
    plan = plan_of(load_config(None, ["grid.batch_sizes=[16,32]"]))
    rng = np.random.default_rng(0)
    # bs16: a large clear benefit (decided at the first look); bs32: pure noise (stays open).
    results = _results(
        {
            16: list(0.01 + 0.0001 * rng.standard_normal(10)),
            32: list(0.003 * rng.standard_normal(10)),
        }
    )
    decisions = decide_all(results, plan)
    s16, s32 = (("batch_size", 16),), (("batch_size", 32),)  # the strata: one per batch size
    assert decisions[s16].decision == "benefit" and decisions[s16].n == 10
    assert decisions[s32].decision == "continue"
    started = {s16: 10, s32: 10}
    assert next_block(plan, decisions, started) == {s32: range(10, 20)}
    # A comparison whose pairs keep failing is closed undecided at the seed cap.
    capped = close_capped(decisions, plan, {s16: 10, s32: plan.seed_cap})
    assert capped[s32].decision == "undecided" and next_block(plan, capped, started) == {}


def test_design_outcome_records_state_and_design_quantities() -> None:
    plan = plan_of(load_config(None, ["grid.batch_sizes=[16]"]))
    out = design_outcome(_results({16: [0.01 + 0.0001 * i for i in range(10)]}), plan, n_sim=2000)
    assert out.decisions["decision"].tolist() == ["benefit"]
    assert out.record["tags"]["decision.batch_size_16"] == "benefit"
    assert out.record["metrics"]["seeds_batch_size_16"] == 10
    assert 0 < out.record["metrics"]["alpha_spent_batch_size_16"] < plan.alpha
    assert out.looks["comparison"].tolist() == ["batch_size=16"]
    # Design quantities come from the planning SD at fixed effects, not from this run's data.
    assert out.characteristics["effect"].tolist() == [0.0, plan.margin / 2, plan.margin]
    assert (out.characteristics["asn"] >= plan.look_every).all()


@pytest.mark.usefixtures("prefect_api")
def test_sequential_runs_until_decided_and_a_scheduled_sequence_equals_a_straight_run(
    monkeypatch, tiny_mnist, tmp_path
):
    def store(name: str) -> str:
        (tmp_path / name).mkdir()
        return f"sqlite:///{tmp_path / name / 'mlflow.db'}"

    counter = TrainCounter(monkeypatch)
    straight_store = store("straight")
    straight, _ = run_flow(monkeypatch, tiny_mnist, straight_store, SEQ)
    trained = counter.take()
    decisions = pd.DataFrame(straight["decisions"])
    assert set(decisions["decision"]) <= {"benefit", "harm", "equivalent", "undecided"}
    # Every comparison got whole blocks of 2 seeds up to its decision, and no more.
    for r in decisions.itertuples():
        seeds = {c.seed for c in trained if c["batch_size"] == r.batch_size}
        assert seeds == set(range(r.n_pairs)) and r.n_pairs % 2 == 0 and r.looks >= 2
    assert len(trained) == straight["trained"] == 2 * decisions["n_pairs"].sum()
    parent = mlflow.MlflowClient(straight_store).get_run(straight["parent_run_id"])
    for r in decisions.itertuples():
        assert parent.data.tags[f"bnpipe.decision.batch_size_{r.batch_size}"] == r.decision
        assert parent.data.metrics[f"seeds_batch_size_{r.batch_size}"] == r.n_pairs

    # Decided with unchanged cell keys: the next run trains nothing and decides the same.
    again, _ = run_flow(monkeypatch, tiny_mnist, straight_store, SEQ)
    assert counter.take() == set() and again["decisions"] == straight["decisions"]

    # The same design as scheduled runs of one look each reaches the same decisions and numbers.
    scheduled_store = store("scheduled")
    runs = []
    while True:
        out, _ = run_flow(monkeypatch, tiny_mnist, scheduled_store, [*SEQ, "stats.looks_per_run=1"])
        runs.append(out)
        if "continue" not in {d["decision"] for d in out["decisions"]}:
            break
        assert len(runs) < 5, "the scheduled sequence never ended"
    assert len(runs) >= 2 and all(r["trained"] > 0 for r in runs)
    assert runs[-1]["decisions"] == straight["decisions"]
    assert accuracies(runs[-1]) == accuracies(straight)
    assert counter.take() == trained


def test_fixed_design_keeps_its_seed_list(monkeypatch, tiny_mnist, store, prefect_api) -> None:
    counter = TrainCounter(monkeypatch)
    out, _ = run_flow(
        monkeypatch,
        tiny_mnist,
        store,
        ["train.engine=fused", "train.epochs=1", "grid.batch_sizes=[32]", "grid.seeds=[3,5]"],
    )
    assert counter.take() == {bs_cell(b, 32, s) for b in (False, True) for s in (3, 5)}
    # A fixed design's answer is its fixed test's verdict, in the same decisions table.
    assert out["design"] == "fixed"
    assert [d["decision"] for d in out["decisions"]] == [r["verdict"] for r in out["summary"]]
