"""The claims' tests on synthetic study frames (the general-grid schema), and the report."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bnpipe import claims as C
from tests.conftest import requires_mnist

SEEDS = list(range(10))
Outcome = Callable[[dict, int, np.random.Generator], dict]


def frames(
    factors: dict[str, list], seeds: list[int], outcome: Outcome, epochs: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results and histories of a grid: ``outcome(levels, seed, rng)`` gives a cell's numbers.

    Its keys: status, test_accuracy, train_accuracy, epoch_time_s and optionally ``val``
    (per-epoch validation accuracies) and ``times`` (per-epoch seconds).
    """
    rng = np.random.default_rng(0)
    rows, hist = [], []
    names = list(factors)
    for combo in itertools.product(*factors.values()):
        levels = dict(zip(names, combo, strict=True))
        for seed in seeds:
            o = {"status": "finished", "train_accuracy": math.nan, "epoch_time_s": 1.0}
            o.update(outcome(levels, seed, rng))
            rows.append({**levels, "seed": seed, **{k: o[k] for k in C_RESULT}, "run_id": "r"})
            val = o.get("val", [o["test_accuracy"]] * epochs)
            times = o.get("times", [o["epoch_time_s"]] * len(val))
            for e, (v, t) in enumerate(zip(val, times, strict=True), start=1):
                hist.append(
                    {**levels, "seed": seed, "epoch": e, "loss": 0.1, "accuracy": 0.99,
                     "val_loss": 0.1, "val_accuracy": v, "epoch_time_s": t}
                )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(hist)


C_RESULT = ("status", "test_accuracy", "train_accuracy", "epoch_time_s")


def bn_effect(effect: float, noise: float) -> Outcome:
    """Test accuracy 0.97 + effect with BN, paired noise ``noise`` per cell."""

    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        base = 0.97 + 0.002 * np.sin(seed)  # the seed's shared part
        return {"test_accuracy": base + (effect if lv["bn"] else 0.0) + noise * rng.normal()}

    return out


ACC_GRID = {"bn": [False, True], "batch_size": [16, 32, 64, 128]}


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
    t = C.paired_outcome(results, alpha=0.05 / 7, margin=0.002, n_resamples=999)
    assert t.n == 10  # seeds are the unit, not seed x batch size
    assert t.effect == pytest.approx(effect, abs=max(4 * noise, 1e-4))
    assert C.verdict_of(t, +1) == expected


def test_paired_outcome_is_a_paired_t_on_seed_means() -> None:
    results, _ = frames(ACC_GRID, SEEDS, bn_effect(0.002, 0.002))
    t = C.paired_outcome(results, alpha=0.01, n_resamples=999)
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
    t = C.paired_outcome(results, n_resamples=999)
    assert t.n == 8  # seed 0 lacks one stratum, seed 1 lacks its no-BN arm


def lr_outcome(bn_diverges: bool, no_bn_diverges: bool) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        top = lv["learning_rate"] == 0.1
        if top and (bn_diverges if lv["bn"] else no_bn_diverges):
            return {"status": "diverged", "test_accuracy": math.nan}
        return {"test_accuracy": 0.96 + 0.001 * rng.normal()}

    return out


LR_GRID = {"bn": [False, True], "learning_rate": [0.001, 0.01, 0.1]}


def test_bn_diverging_less_supports_the_learning_rate_claim() -> None:
    results, _ = frames(LR_GRID, list(range(20)), lr_outcome(False, True))
    t = C.diverged_share(results, alpha=0.05 / 7)
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
    t = C.diverged_share(results, alpha=0.05 / 7)
    assert t.n == 60
    assert C.verdict_of(t, -1) == expected


def test_a_few_discordant_pairs_are_undecided_and_collapse_counts_as_diverged() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        if lv["learning_rate"] == 0.1 and not lv["bn"] and seed < 3:
            return {"test_accuracy": 0.1135}  # finite loss, but predicts one class
        return {"test_accuracy": 0.96}

    results, _ = frames(LR_GRID, SEEDS, out)
    t = C.diverged_share(results, alpha=0.05 / 7)
    assert t.secondary["control_only"] == 3 and t.secondary["treatment_only"] == 0
    assert t.p == pytest.approx(0.25)  # exact McNemar: 2 * 0.5**3
    assert C.verdict_of(t, -1) == "undecided"


def init_outcome(bn_flat: bool) -> Outcome:
    """One arm loses accuracy away from init scale 1 and diverges at 4 on odd seeds."""

    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        s = lv["init_scale"]
        sensitive = lv["bn"] != bn_flat
        if sensitive and s == 4 and seed % 2:
            return {"status": "diverged", "test_accuracy": math.nan}
        drop = (0.02 if sensitive else 0.001) * abs(math.log2(s))
        return {"test_accuracy": 0.97 - drop + 0.0005 * rng.normal()}

    return out


INIT_GRID = {"bn": [False, True], "init_scale": [0.25, 1.0, 4.0]}


def test_spread_across_init_scales() -> None:
    results, _ = frames(INIT_GRID, SEEDS, init_outcome(bn_flat=True))
    t = C.spread_across(results, "init_scale", alpha=0.05 / 7, n_resamples=999)
    # No-BN's diverged cells at scale 4 count (chance accuracy) instead of dropping 5 seeds.
    assert t.n == 10
    assert C.verdict_of(t, -1) == "supported"
    results, _ = frames(INIT_GRID, SEEDS, init_outcome(bn_flat=False))
    t = C.spread_across(results, "init_scale", alpha=0.05 / 7, n_resamples=999)
    assert t.n == 10
    assert C.verdict_of(t, -1) == "contradicted"


def curve_outcome(bn_epoch: int, no_bn_epoch: int | None) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        at = bn_epoch if lv["bn"] else no_bn_epoch
        jitter = seed % 2 if at is not None else 0
        val = [0.98 if at is not None and e >= at + jitter else 0.95 for e in range(1, 6)]
        return {"test_accuracy": val[-1], "train_accuracy": 0.99, "val": val}

    return out


def test_epochs_to_threshold() -> None:
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(2, 4))
    t = C.epochs_to_threshold(histories, results, threshold=0.97, epochs=5, alpha=0.05 / 7)
    assert t.effect == pytest.approx(-2.0)
    assert C.verdict_of(t, -1) == "supported"
    # Never reaching counts as epochs + 1 = 6, not as a dropped pair.
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(2, None))
    t = C.epochs_to_threshold(histories, results, threshold=0.97, epochs=5, alpha=0.05 / 7)
    assert t.n == 10
    assert t.effect == pytest.approx(2.5 - 6.0)


def test_train_test_gap() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        test = 0.975 + 0.001 * rng.normal()
        gap = (0.005 if lv["bn"] else 0.015) + 0.001 * rng.normal()
        return {"test_accuracy": test, "train_accuracy": test + gap}

    results, _ = frames(ACC_GRID, SEEDS, out)
    t = C.train_test_gap(results, alpha=0.05 / 7, n_resamples=999)
    assert t.effect == pytest.approx(-0.01, abs=0.001)
    assert C.verdict_of(t, -1) == "supported"


def test_time_ratio_skips_the_compile_epoch() -> None:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        per = (1.2 if lv["bn"] else 1.0) * (1 + 0.01 * rng.normal())
        first = 3.0 if lv["bn"] else 9.0  # compile: would make BN look cheaper
        return {"test_accuracy": 0.97, "times": [first] + [per] * 4, "val": [0.97] * 5}

    results, histories = frames({"bn": [False, True], "batch_size": [32]}, SEEDS, out)
    t = C.time_ratio(results, histories, alpha=0.05 / 7, n_resamples=999)
    assert t.effect == pytest.approx(1.2, rel=0.02)
    assert t.null == 1.0 and t.ci_low > 1.0
    assert C.verdict_of(t, +1) == "supported"
    rng = np.random.default_rng(1)
    equal = results.assign(epoch_time_s=1.0 + 0.002 * rng.normal(size=len(results)))
    t = C.time_ratio(equal, alpha=0.05 / 7, n_resamples=999)  # no histories: results' means
    assert t.effect == pytest.approx(1.0, abs=0.005)
    assert C.verdict_of(t, +1) == "no meaningful difference"


def small_batch_outcome(bn_breaks: bool) -> Outcome:
    def out(lv: dict, seed: int, rng: np.random.Generator) -> dict:
        bs = lv["batch_size"]
        acc = 0.97 + (0.003 if lv["bn"] else 0.0) + 0.001 * rng.normal()
        if bn_breaks and lv["bn"] and bs == 2:
            if seed < 3:
                return {"status": "diverged", "test_accuracy": math.nan, "val": [0.9, 0.1]}
            acc = 0.90 + 0.01 * rng.normal()
        return {"test_accuracy": acc}

    return out


SB_GRID = {"bn": [False, True], "batch_size": [2, 4, 8, 16]}


def test_small_batch_interaction_counts_diverged_cells() -> None:
    results, histories = frames(SB_GRID, SEEDS, small_batch_outcome(True))
    t = C.interaction_contrast(
        results, "batch_size", alpha=0.05 / 7, histories=histories, n_resamples=999
    )
    assert t.n == 10  # the 3 diverged seeds are outcomes (chance accuracy), not dropped
    assert C.verdict_of(t, -1) == "supported"
    row = t.detail.set_index("batch_size").loc[2]
    assert row["diverged_treatment"] == 3 and row["diverged_control"] == 0
    assert row["treatment"] < 0.9  # chance accuracy pulled the BN mean down
    assert row["val_sd_treatment"] > row["val_sd_control"]
    results, histories = frames(SB_GRID, SEEDS, small_batch_outcome(False))
    t = C.interaction_contrast(results, "batch_size", alpha=0.05 / 7, n_resamples=999)
    assert C.verdict_of(t, -1) != "supported"


def test_claims_table_and_report(tmp_path: Path) -> None:
    acc_r, acc_h = frames(ACC_GRID, SEEDS, curve_outcome(2, 4))
    acc_r["test_accuracy"] += np.where(acc_r["bn"], 0.003, 0.0)
    lr_r, lr_h = frames(LR_GRID, list(range(20)), lr_outcome(False, True))
    studies = {
        "accuracy": C.StudyData(acc_r, acc_h, epochs=5),
        "learning_rate": C.StudyData(lr_r, lr_h),
    }
    tests = C.check_claims(studies, alpha=0.05, n_resamples=999)
    assert set(tests) == {"accuracy", "convergence", "regularisation", "learning_rate"}
    table = C.claims_table(tests, alpha=0.05)
    assert list(table["claim"]) == [c.key for c in C.CLAIMS]
    verdicts = dict(zip(table["claim"], table["verdict"], strict=True))
    assert verdicts["learning_rate"] == "supported"
    assert verdicts["convergence"] == "supported"
    assert verdicts["compute"] == verdicts["init_scale"] == "not run"
    # The 4 tested claims are the family: intervals at 1 - 0.05/4; Holm over their p only.
    assert np.isfinite(table["p_holm"]).sum() == 4
    assert (
        table.loc[table["claim"] == "learning_rate", "p_holm"].item()
        <= 4 * tests["learning_rate"].p + 1e-12
    )
    out = C.write_report(tests, tmp_path / "claims", alpha=0.05, studies={"accuracy": {"x": "1"}})
    text = out.markdown_path.read_text()
    assert text.startswith("# Claims of the notebook, checked")
    assert "98.75% CI (simultaneous)" in text
    body = [ln for ln in out.description.splitlines()[2:] if ln.startswith("| ")]
    assert len(body) == len(C.CLAIMS)  # one row per claim
    html = out.html_path.read_text()
    assert "data:image/png;base64," in html and 'src="claims.png"' not in html
    assert (tmp_path / "claims" / "claims.csv").is_file()
    assert {f.name for f in out.figures} == {"claims.png", "claim_learning_rate.png"}
    assert "![learning_rate](claim_learning_rate.png)" in text


def test_cell_outcomes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        C.cell_outcomes(pd.DataFrame({"bn": [True]}))
    results, _ = frames(ACC_GRID, [0], bn_effect(0, 0))
    with pytest.raises(ValueError, match="diverged must be"):
        C.cell_outcomes(results, diverged="keep")
    with pytest.raises(ValueError, match="more than once"):
        C.pair_cells(C.cell_outcomes(pd.concat([results, results])))


def test_bool_levels_read_back_from_csv(tmp_path: Path) -> None:
    results, _ = frames(ACC_GRID, SEEDS, bn_effect(0.003, 0.001))
    path = tmp_path / "results.csv"
    results.assign(bn=results["bn"].map({True: "True", False: "False"})).to_csv(path)
    t = C.paired_outcome(pd.read_csv(path, dtype={"bn": str}), n_resamples=999)
    assert t.n == 10 and t.effect > 0


# ------------------------------------------------------------------------------- the studies

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_every_claim_has_a_study_that_loads() -> None:
    from bnpipe.config import load_config

    for claim in C.CLAIMS:
        cfg = load_config(STUDIES / f"{claim.study}.yaml")
        assert cfg.grid.compare == "bn" and cfg.grid.compare_levels == (False, True)
    # The accuracy study is the default experiment: its cells are `make run`'s (same keys).
    accuracy = load_config(STUDIES / "accuracy.yaml")
    assert accuracy.model_dump() == load_config(STUDIES.parent / "params.yaml").model_dump()


@pytest.mark.parametrize(
    ("study", "factor", "must_have"),
    [
        ("small_batch", "batch_size", 2),
        ("learning_rate", "learning_rate", 0.1),
        ("init_scale", "init_scale", 4.0),
    ],
)
def test_studies_vary_what_their_claim_is_about(study: str, factor: str, must_have: float):
    from bnpipe.config import load_config

    cfg = load_config(STUDIES / f"{study}.yaml")
    assert must_have in cfg.grid.levels[factor]
    assert cfg.stats.design == "fixed" and len(cfg.grid.seeds) >= 10


def test_compute_study_times_the_users_fit() -> None:
    from bnpipe.config import load_config

    cfg = load_config(STUDIES / "compute.yaml")
    assert cfg.train.engine == "keras" and cfg.train.steps_per_execution == 1
    assert cfg.train.epochs >= 2  # the first epoch (compile) is not timed


def test_claims_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from bnpipe.cli import main

    assert main(["claims", "--study", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study nope: unknown study" in err[0]
    (tmp_path / "accuracy.yaml").write_text("grid: {factors: {bn: [false, true, 3]}}\n")
    assert main(["claims", "--studies", str(tmp_path), "--study", "accuracy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accuracy.yaml" in err[0] and "grid.factors.bn" in err[0]
    assert main(["claims", "--studies", str(tmp_path), "--study", "compute"]) == 2
    assert "compute.yaml does not exist" in capsys.readouterr().err


def test_claims_run_every_study_once() -> None:
    from flows.claims import RUN_ORDER

    assert sorted(RUN_ORDER) == sorted({c.study for c in C.CLAIMS})


@pytest.mark.slow
@requires_mnist
def test_claims_cli_small(tmp_path: Path) -> None:
    """The whole `bnpipe claims --quick` on real MNIST: every study trains, one report."""
    import os
    import subprocess
    import sys

    import mlflow

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    bnpipe = Path(sys.executable).with_name("bnpipe")
    # --quick is 2 epochs on 2000 examples; seeds 0-1 on top: 68 small models in 5 studies.
    cmd = [str(bnpipe), "claims", "--studies", str(STUDIES), "--quick", "--set",
           "grid.seeds=[0,1]", "--set", "train.shard_size=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "reports" / "claims" / "claims.md").read_text()
    table = [ln for ln in md.split("## How")[0].splitlines() if ln.startswith("| ")][1:]
    assert len(table) == len(C.CLAIMS)  # one row per claim, each from a study that ran
    assert "not run" not in md.split("## How")[0]
    html = (tmp_path / "reports" / "claims" / "claims.html").read_text()
    assert "data:image/png;base64," in html
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["bnpipe-bn-ablation"])
        claims_run = runs[runs["tags.bnpipe.role"] == "claims"]
        assert len(claims_run) == 1
        run_id = claims_run["run_id"].iloc[0]
        files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "report")}
    finally:
        mlflow.set_tracking_uri(None)
    assert {"report/claims.md", "report/claims.html", "report/claims.png"} <= files
    assert len(runs[runs["tags.bnpipe.role"] == "parent"]) == len(C.CLAIMS) - 2  # 5 studies
    assert run_id in proc.stdout


def test_diverged_share_detail_has_accuracy_at_chance() -> None:
    results, _ = frames(LR_GRID, SEEDS, lr_outcome(False, True))
    detail = C.diverged_share(results).detail.set_index("learning_rate")
    assert detail.loc[0.1, "diverged_control"] == 1.0 and detail.loc[0.1, "diverged_treatment"] == 0
    assert detail.loc[0.1, "acc_control"] == pytest.approx(0.1)  # chance, not dropped
    assert detail.loc[0.001, "acc_diff"] == pytest.approx(0.0, abs=0.002)


@pytest.mark.usefixtures("prefect_api")
def test_run_claims_through_the_flow_on_tiny_data(monkeypatch, tiny_mnist, store, tmp_path):
    """Two studies through the real flow, Prefect API and MLflow store; the report from MLflow."""
    import mlflow

    import flows.pipeline as pipeline
    from bnpipe.config import load_config
    from flows.claims import run_claims

    monkeypatch.setattr(pipeline, "load_mnist", lambda _dir: tiny_mnist)
    common = [f"tracking.uri={store}", f"tracking.reports_dir={tmp_path / 'reports'}",
              "train.epochs=2", "grid.seeds=[0,1]", "train.shard_size=2",
              "stats.n_resamples=199", "data.limit_train=300"]  # fmt: skip
    configs = {
        # An absurd rate so that the loss goes non-finite: those cells are outcomes, not dropped.
        "learning_rate": load_config(
            STUDIES / "learning_rate.yaml", [*common, "grid.factors.learning_rate=[0.001,1e30]"]
        ),
        "compute": load_config(STUDIES / "compute.yaml", common),
    }
    seen, outs = [], {}

    def on_study(name, o):
        seen.append((name, len(o["results"])))
        outs[name] = o

    out = run_claims(configs, on_study=on_study)
    assert seen == [("learning_rate", 8), ("compute", 4)]
    diverged = [r for r in outs["learning_rate"]["results"] if r["status"] == "diverged"]
    assert len(diverged) == 4  # both arms at 1e30, both seeds
    table = out.report.table.set_index("claim")
    assert table.loc["learning_rate", "n"] == 4  # every (rate, seed) pair, diverged or not
    assert table.loc["compute", "n"] == 2
    assert (table.drop(index=["learning_rate", "compute"])["verdict"] == "not run").all()
    assert out.report.markdown_path == tmp_path / "reports" / "claims" / "claims.md"
    mlflow.set_tracking_uri(store)
    try:
        run = mlflow.get_run(out.run_id)
        files = {a.path for a in mlflow.MlflowClient().list_artifacts(out.run_id, "report")}
    finally:
        mlflow.set_tracking_uri(None)
    assert run.data.tags["bnpipe.role"] == "claims"
    assert run.data.tags["bnpipe.verdict.compute"] == table.loc["compute", "verdict"]
    assert run.data.params["study.learning_rate"] == out.studies["learning_rate"]["parent run"]
    assert "claims.md" in {Path(f).name for f in files}
    assert "| claim (notebook) |" in run.data.tags["mlflow.note.content"]

    # Again: every cell is reused, the diverged ones as diverged, and the claims come out the same.
    outs.clear()
    again = run_claims(configs, on_study=on_study)
    assert [o["trained"] for o in outs.values()] == [0, 0]
    assert sum(r["status"] == "diverged" for r in outs["learning_rate"]["results"]) == 4
    pd.testing.assert_frame_equal(again.report.table, out.report.table)


def test_no_cell_reaching_the_threshold_decides_nothing() -> None:
    results, histories = frames(ACC_GRID, SEEDS, curve_outcome(99, 99))  # never 0.98
    t = C.epochs_to_threshold(histories, results, threshold=0.97, epochs=5, alpha=0.05 / 7)
    assert t.n == 10 and t.effect == 0.0
    assert C.verdict_of(t, -1) == "undecided"  # not "no meaningful difference"
    assert "no cell reached" in t.method


def test_an_infinite_interval_is_shown_as_such() -> None:
    results, _ = frames(SB_GRID, [0, 1, 2], small_batch_outcome(True))
    t = C.interaction_contrast(results, "batch_size", alpha=0.05 / 7)
    assert (t.ci_low, t.ci_high) == (-math.inf, math.inf)
    assert C.verdict_of(t, -1) == "undecided"
    assert C.format_effect(t.ci_low, t.unit) == "-inf"


def test_a_finished_network_that_did_not_learn_counts_as_diverged() -> None:
    # Measured on full MNIST: Adam at 0.1 without BN finished at 0.2047 with a finite loss.
    results = pd.DataFrame(
        {"bn": [False, True, False, True], "learning_rate": [0.1, 0.1, 0.001, 0.001],
         "seed": 0, "status": "finished", "test_accuracy": [0.2047, 0.9408, 0.9762, 0.9765]}
    )  # fmt: skip
    cells = C.cell_outcomes(results, diverged="chance")
    assert cells["diverged"].tolist() == [1, 0, 0, 0]
    assert cells["value"].tolist() == [0.2047, 0.9408, 0.9762, 0.9765]  # measured, kept
    assert len(C.cell_outcomes(results)) == 3  # the accuracy study drops it


def test_a_real_but_negligible_effect_is_flagged() -> None:
    # The accuracy claim on full MNIST: BN +0.08 pp, interval [+0.02, +0.13] pp, margin 0.2 pp.
    small = C.ClaimTest(
        n=50, n_label="50", effect=0.0008, ci_low=0.0002, ci_high=0.0013, p=1e-4,
        null=0.0, band=(-0.002, 0.002), unit="pp", method="paired t",
    )  # fmt: skip
    wide = dataclasses.replace(small, ci_high=0.0031)
    for t, flagged in ((small, True), (wide, False)):
        table = C.claims_table({"accuracy": t}, alpha=0.05)
        row = table.set_index("claim").loc["accuracy"]
        assert row["verdict"] == "supported"
        assert bool(row["within_band"]) is flagged
        assert (C.NEGLIGIBLE in C.claims_markdown_table(table, 0.05)) is flagged
