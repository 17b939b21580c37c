"""`bnpipe claims` (flows/claims.py): bad input, the studies through the real flow, the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bnpipe import claims as C
from tests.conftest import requires_mnist

STUDIES = Path(__file__).resolve().parents[1] / "studies"
# The CLI test's settings on top of --quick (2 epochs on 2000 examples): seeds 0-1 and half of
# that (the wiring is what it proves, not a number); report.figures=false: the six studies' run
# reports without figures (the claims report's own figures, checked there, are drawn either way).
CLI_SETS = ("grid.seeds=[0,1]", "train.shard_size=2", "data.limit_train=1000",
            "data.limit_test=500", "stats.n_resamples=199", "report.figures=false")  # fmt: skip


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


def two_level_studies(tmp_path: Path) -> Path:
    """The repository's study files, each factor other than BN cut to its lowest and highest
    level (every claim's test needs two: a spread, a contrast, a slope), in a folder of their own.

    A run's cost is per cell (a record, an evaluation), not per example: 44 cells instead of 88
    halve the command's work, and every claim still gets a row from a study that ran.
    """
    import yaml

    folder = tmp_path / "studies"
    folder.mkdir()
    for path in STUDIES.glob("*.yaml"):
        study = yaml.safe_load(path.read_text())
        factors = study["grid"]["factors"]
        for name, levels in factors.items():
            if name != study["grid"]["compare"] and len(levels) > 2:
                factors[name] = [min(levels), max(levels)]
        (folder / path.name).write_text(yaml.safe_dump(study, sort_keys=False))
    return folder


def test_every_study_file_loads_at_the_cli_tests_scale() -> None:
    """The repository's own study files with the CLI test's settings, as `bnpipe claims --quick`
    reads them (that test runs two-level copies of them)."""
    from bnpipe.cli import resolve_config
    from flows.claims import QUICK, study_paths

    paths = study_paths(STUDIES)
    assert list(paths) == list(C.run_order())
    for path in paths.values():
        assert resolve_config(str(path), [*QUICK, *CLI_SETS]).grid.seeds == (0, 1)


@pytest.mark.slow
@requires_mnist
def test_claims_cli_small(tmp_path: Path, prefect_api: str) -> None:
    """The whole `bnpipe claims --quick` on real MNIST (two-level copies of the studies): every
    study trains, one report."""
    import os
    import subprocess
    import sys

    import mlflow

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    # The session's Prefect API, not a temporary server of the command's own (its start is
    # 20-40 s of CPU and tests/test_interrupt.py is where that server is the subject).
    env["PREFECT_API_URL"] = prefect_api
    bnpipe = Path(sys.executable).with_name("bnpipe")
    cmd = [str(bnpipe), "claims", "--studies", str(two_level_studies(tmp_path)), "--quick"]
    for item in CLI_SETS:
        cmd += ["--set", item]
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
    assert len(runs[runs["tags.bnpipe.role"] == "parent"]) == len(C.run_order())  # 6 studies
    assert run_id in proc.stdout


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
              "stats.n_resamples=199", "data.limit_train=300",
              "report.figures=false"]  # fmt: skip
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
