"""The design a run follows: fixed seed lists, and the group-sequential loop in the flow (looks,
decisions, reuse across scheduled runs)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from bnpipe.config import ConfigError, load_config
from bnpipe.design import (
    DEFAULT_FIXED_SEEDS,
    average_sample_number,
    close_capped,
    decide_all,
    design_change,
    design_outcome,
    next_block,
    plan_of,
)
from bnpipe.runner import plan_size
from tests.conftest import bs_cell
from tests.test_resume import (
    TrainCounter,
    accuracies,
    flow_config,
    run_flow,
    store_overrides,
    use_data,
)

# Tiny data, 1 epoch, fused engine (on tiny data its compile per group costs less than the keras
# engine's model.fit per cell): looks of 2 seed pairs up to 6 per batch size. With 2 pairs
# (df = 1) the first look can never decide, so every comparison
# takes at least two looks; the wide margin lets some end "equivalent" on tiny data. OBF with
# one shared interval (the design before issue 24): its last boundary is the lowest, so 6 tiny
# pairs end decided (tests/test_one_answer.py needs that).
SEQ = [
    "train.engine=fused",
    "train.epochs=1",
    "grid.batch_sizes=[32,64]",
    "stats.first_look=2",
    "stats.look_every=2",
    "stats.max_seeds=6",
    "stats.equivalence_margin=0.05",
    "stats.spending=obf",
    # About these test images: on tiny data the test examples' noise (a few hundred images)
    # would stop every comparison at its first look (the floor); the digits design's looks
    # through the flow are tests/test_test_correct.py's.
    "stats.population=test_set",
    "stats.equivalence=shared",
]


def test_plan_from_config() -> None:
    default = plan_of(load_config(None))
    assert default.sequential and default.look_ns == (20, *range(25, 101, 5))
    assert (default.spending, default.equivalence, default.max_seeds) == ("pocock", "tost", 100)
    assert default.alpha_per_comparison == pytest.approx(0.05 / 4)  # Bonferroni over 4 sizes
    explicit = plan_of(load_config(None, ["grid.seeds=[0,1]"]))
    assert not explicit.sequential and explicit.seeds == (0, 1)
    fixed = plan_of(load_config(None, ["stats.design=fixed"]))
    assert not fixed.sequential and fixed.seeds == DEFAULT_FIXED_SEEDS
    # Looks per run do not change the design (a scheduled sequence is the same design).
    assert plan_of(load_config(None, ["stats.looks_per_run=1"])).design_id() == default.design_id()
    assert plan_of(load_config(None, ["stats.spending=obf"])).design_id() != default.design_id()
    # The run's one-line plan: cells per look, expected models at the planning SD, the cap.
    line = plan_size(default, load_config(None))
    assert line.startswith("160 cells at the first look, then 40 per look (17 looks); expected ")
    assert re.search(r"expected \d+-\d+ models over true effects 0 to ±0.4 pp \(\d+ at 0\)", line)
    assert line.endswith("at the planning SD 0.3 pp, at most 800")
    # A first look at look_every is no first look: the design (and its id) is the same.
    same = ["stats.first_look=null", "stats.look_every=10"]
    assert (
        plan_of(load_config(None, same)).design_id()
        == plan_of(load_config(None, [*same[1:], "stats.first_look=10"])).design_id()
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grid.bn=[true]", "stats.design: sequential needs grid.bn"),
        ("stats.max_seeds=4", "stats.max_seeds: must be >= stats.look_every (5)"),
        ("stats.max_seeds=10", "stats.max_seeds: must be >= stats.first_look (20)"),
        ("stats.look_every=1", "stats.look_every"),
        ("stats.first_look=1", "stats.first_look"),
        ("stats.spending=linear", "stats.spending"),
        ("stats.hsd_gamma=41", "stats.hsd_gamma"),
        ("stats.equivalence=both", "stats.equivalence"),
        ("stats.alpha=0.5", "stats.alpha: must be < 0.5 with stats.equivalence: tost"),
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
    # Synthetic frames hold test accuracies, not per-example outcomes: about the test set.
    plan = plan_of(load_config(None, ["grid.batch_sizes=[16,32]", "stats.population=test_set"]))
    rng = np.random.default_rng(0)
    # bs16: a large clear benefit (decided at the first look); bs32: pure noise (stays open).
    results = _results(
        {
            16: list(0.01 + 0.0001 * rng.standard_normal(20)),
            32: list(0.01 * rng.standard_normal(20)),
        }
    )
    decisions = decide_all(results, plan)
    s16, s32 = (("batch_size", 16),), (("batch_size", 32),)  # the strata: one per batch size
    assert decisions[s16].decision == "benefit" and decisions[s16].n == 20
    assert decisions[s32].decision == "continue"
    # The first block reaches the first look (20 pairs); later ones add look_every (5).
    assert next_block(plan, decide_all(results.iloc[:0], plan), dict.fromkeys((s16, s32), 0)) == {
        s16: range(0, 20),
        s32: range(0, 20),
    }
    started = {s16: 20, s32: 20}
    assert next_block(plan, decisions, started) == {s32: range(20, 25)}
    # A comparison whose pairs keep failing is closed undecided at the seed cap.
    capped = close_capped(decisions, plan, {s16: 10, s32: plan.seed_cap})
    assert capped[s32].decision == "undecided" and next_block(plan, capped, started) == {}


def test_design_outcome_records_state_and_design_quantities() -> None:
    plan = plan_of(load_config(None, ["grid.batch_sizes=[16]", "stats.population=test_set"]))
    out = design_outcome(_results({16: [0.01 + 0.0001 * i for i in range(20)]}), plan, n_sim=2000)
    assert out.decisions["decision"].tolist() == ["benefit"]
    assert out.record["tags"]["decision.batch_size_16"] == "benefit"
    assert out.record["metrics"]["seeds_batch_size_16"] == 20
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


# Issue 24's planning scenario: per batch size 16, 32, 64, 128 the effect and SD of the 440-model
# run of 2026-12-05 (BN on - off, accuracy).
MEASURED = {
    16: (0.00174, 0.00293),
    32: (0.00174, 0.00261),
    64: (0.0007, 0.00204),
    128: (-0.00077, 0.00225),
}
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_default_design_meets_its_cost_and_error_constraints_by_simulation() -> None:
    """params.yaml's design, simulated with the project's own rule (average_sample_number).

    Tolerances from the Monte-Carlo SE: an error rate p from N comparisons has SE
    sqrt(p (1 - p) / N), at most 0.0005 for p <= 0.0125 and N = 50,000; each rate must lie 3 SE
    below its bound (so the true rate is below it with ~99.9% confidence, not just the draw).
    Expected models: SE about 1 model at 4,000 comparisons per batch size (pairs to a decision
    vary with an SD of ~10); the bound is checked on the estimate plus 3 SE.
    """
    plan = plan_of(load_config(str(PARAMS)))
    assert (plan.alpha, len(plan.strata), plan.margin, plan.max_seeds) == (0.05, 4, 0.002, 100)
    a, m = plan.alpha_per_comparison, plan.margin

    def oc(effect: float, sd: float, n: int, seed: int) -> dict:
        return average_sample_number(effect, sd, n_sim=n, seed=seed, **plan.design_args())

    runs = [oc(e, sd, 4000, seed) for seed, (e, sd) in enumerate(MEASURED.values())]
    models = sum(2 * r["asn"] for r in runs)
    se_models = 2 * 10 * math.sqrt(len(runs) / 4000)
    assert models + 3 * se_models <= 250, f"expected models {models:.1f}"

    def below(p: float, bound: float, n: int) -> bool:
        return p + 3 * math.sqrt(max(p, 1 / n) * (1 - p) / n) <= bound

    null = oc(0.0, 0.003, 50_000, 10)
    assert below(null["p_benefit"] + null["p_harm"], a, 50_000), null
    for seed, effect in enumerate((m, -m), start=11):
        r = oc(effect, 0.003, 50_000, seed)
        assert below(r["p_equivalent"], a, 50_000), (effect, r)
    for seed, effect in enumerate((0.0, m / 2, m), start=20):
        r = oc(effect, 0.003, 4000, seed)
        assert below(r["p_undecided"], 0.02, 4000), (effect, r)


def test_design_change_names_the_earlier_design_and_what_differs() -> None:
    plan = plan_of(load_config(None, ["stats.spending=pocock"]))
    legacy = {  # a parent from before issue 24: no first_look, equivalence, hsd_gamma params
        "stats.spending": "obf",
        "stats.alpha": "0.05",
        "stats.equivalence_margin": "0.002",
        "stats.look_every": "10",
        "stats.max_seeds": "100",
    }
    old = {"run_id": "r1", "run_name": "old-run", "start_time": 1, "design_id": "129d2870fc03"}
    change = design_change(plan, [{**old, "params": legacy}])
    assert change is not None and change.earlier_id == "129d2870fc03"
    assert change.differences == (
        "stats.spending obf -> pocock",
        "stats.first_look 10 -> 20",
        "stats.look_every 10 -> 5",
        "stats.equivalence shared -> tost",
        "stats.population test_set -> digits",
    )
    line = change.message()
    assert "\n" not in line and "design 129d2870fc03 (parent run old-run)" in line
    assert "--new-design" in line
    # Its own settings (as the store recorded them) are the same design: no change.
    same = {k: str(v) for k, v in plan.settings().items()}
    mine = {**old, "run_id": "r2", "start_time": 2, "design_id": plan.design_id()}
    assert design_change(plan, [{**old, "params": legacy}, {**mine, "params": same}]) is None
    # The latest recorded design is the one in force; a fixed design changes nothing.
    assert design_change(plan, []) is None
    assert design_change(plan_of(load_config(None, ["grid.seeds=[0]"])), [old]) is None


def _argv(store: str, overrides: list[str]) -> list[str]:
    return ["run", *(a for o in [*store_overrides(store), *overrides] for a in ("--set", o))]


@pytest.mark.usefixtures("prefect_api")
def test_a_design_cannot_change_under_its_data(monkeypatch, tiny_mnist, store, capsys) -> None:
    import flows.pipeline as pipeline
    from bnpipe.cli import EXIT_BAD_INPUT, main
    from bnpipe.design import DesignChangeError

    one_look = [*SEQ, "stats.looks_per_run=1"]
    first, cfg = run_flow(monkeypatch, tiny_mnist, store, one_look)
    client = mlflow.MlflowClient(store)
    parent = client.get_run(first["parent_run_id"])
    earlier = plan_of(cfg).design_id()
    assert parent.data.tags["bnpipe.design_id"] == earlier
    runs_before = len(client.search_runs([parent.info.experiment_id]))
    changes = {
        "stats.spending=pocock": "stats.spending obf -> pocock",
        "stats.alpha=0.1": "stats.alpha 0.05 -> 0.1",
        "stats.equivalence_margin=0.04": "stats.equivalence_margin 0.05 -> 0.04",
        "stats.first_look=4": "stats.first_look 2 -> 4",
        "stats.look_every=3": "stats.look_every 2 -> 3",
        "stats.max_seeds=8": "stats.max_seeds 6 -> 8",
        "stats.equivalence=tost": "stats.equivalence shared -> tost",
    }
    capsys.readouterr()
    for override, what in changes.items():
        assert main(_argv(store, [*one_look, override])) == EXIT_BAD_INPUT, override
        err = capsys.readouterr().err.strip()
        assert err.startswith("bnpipe: error: stats: ") and "\n" not in err, err
        assert f"design {earlier} (parent run {first['run_name']})" in err and what in err, err
    # Refused before anything was written, and the flow itself refuses too (deployments).
    assert len(client.search_runs([parent.info.experiment_id])) == runs_before
    with pytest.raises(DesignChangeError, match="stats.spending obf -> pocock"):
        run_flow(monkeypatch, tiny_mnist, store, [*one_look, "stats.spending=pocock"])
    assert len(client.search_runs([parent.info.experiment_id])) == runs_before

    # A report rebuilt under today's params (Pocock, TOST) decides with the run's own design.
    sets = [a for o in store_overrides(store) for a in ("--set", o)]
    assert main(["report", first["parent_run_id"], *sets]) == 0
    printed = capsys.readouterr().out
    assert "design: the run's own, as recorded (sequential design (obf spending" in printed
    for d in first["decisions"]:
        assert re.search(rf"^{d['comparison']}\s+{d['decision']}\s", printed, re.M), printed
    assert "(obf spending" in Path(first["report"]).read_text(encoding="utf-8")

    # Asked for explicitly: the new design (issue 24's Pocock and TOST) runs, and says so on the
    # parent and in the report.
    new = [*one_look, "stats.spending=pocock", "stats.equivalence=tost"]
    use_data(monkeypatch, tiny_mnist)
    new_cfg = flow_config(store, new)
    out = pipeline.ablation(new_cfg.model_dump(mode="json"), new_design=True)
    tags = client.get_run(out["parent_run_id"]).data.tags
    assert tags["bnpipe.new_design_from"] == earlier
    assert tags["bnpipe.design_id"] == plan_of(new_cfg).design_id() != earlier
    report_text = Path(out["report"]).read_text(encoding="utf-8")
    assert f"over cells that design {earlier} already looked at" in report_text
    assert "not one chosen after seeing it" in report_text
    # The new design is now the store's: it continues without the flag, the old one is refused.
    again, _ = run_flow(monkeypatch, tiny_mnist, store, new)
    assert "bnpipe.new_design_from" not in client.get_run(again["parent_run_id"]).data.tags
    with pytest.raises(DesignChangeError, match=f"design {plan_of(new_cfg).design_id()}"):
        run_flow(monkeypatch, tiny_mnist, store, one_look)


def test_design_overrides_restore_a_fixed_run_under_a_sequential_params_file() -> None:
    """A run made with a seed list (``--set grid.seeds=[0,1]``), read back under the default
    sequential params (bnpipe report, bnpipe.load), is analysed as the fixed design it was."""
    from bnpipe.design import design_overrides

    recorded = {"grid.seeds": "[0, 1]", "stats.design": "sequential", "stats.spending": "pocock"}
    own = load_config(None, design_overrides(recorded))
    assert not plan_of(own).sequential and list(own.grid.seeds) == [0, 1]
    fixed = {"grid.seeds": "None", "stats.design": "fixed"}
    assert load_config(None, design_overrides(fixed)).stats.design == "fixed"
