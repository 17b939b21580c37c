"""The issue's acceptance run, as a user types it: `bnpipe run` on real MNIST, 2 seeds, 1 epoch;
then the same command again (trains nothing, prints the same numbers) and `bnpipe reproduce` of
one cell (retrains it, identical to the last bit).

The first run is the installed command in a process of its own (its exit code and output); the
rerun and the reproduce call the command's entry point (``bnpipe.cli.main``, what the script
runs) in the test process, in the same folder with the same arguments: a process each was
15-20 s of CPU for imports and start-up that the first run already proves.

Slow (trains 16 real models) and needs BNPIPE_DATA_DIR; CI sets it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

# Imported at collection, before any test captures output: importing it later, inside a test
# that captures stderr (capsys), leaves TensorFlow's log handler on a stream pytest then closes.
import flows.pipeline  # noqa: F401
from bnpipe.cli import main
from bnpipe.tracking import PARENT_TAG
from tests.conftest import requires_mnist

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_ROW = re.compile(r"^batch_size=(\d+)\s+(\d+)\s+(0\.\d{4})\s+(0\.\d{4})\s+.*$", re.MULTILINE)


@pytest.mark.slow
@requires_mnist
def test_bnpipe_run_on_real_mnist_rerun_trains_nothing_and_reproduce_matches(
    tmp_path, prefect_api, monkeypatch, capsys
):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    # The session's Prefect API instead of a temporary server per command (20-40 s of CPU each
    # start); tests/test_interrupt.py is where the temporary server is the subject.
    env["PREFECT_API_URL"] = prefect_api
    bnpipe = str(Path(sys.executable).with_name("bnpipe"))
    argv = [bnpipe, "run", "--params", str(ROOT / "params.yaml")]
    # The report's figures are not this test's subject (tests/test_flow.py, the UI tests).
    argv += ["--set", "grid.seeds=[0,1]", "--set", "train.epochs=1"]
    argv += ["--set", "report.figures=false"]

    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "[ 16/16]" in out  # progress reached the last cell
    assert "(16 cells: 16 trained, 0 reused" in out
    assert "BN on minus BN off test accuracy per batch size" in out
    rows = SUMMARY_ROW.findall(out)
    # one summary row per batch size, 2 pairs each, accuracies of one epoch (~0.93-0.97)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(16, 2), (32, 2), (64, 2), (128, 2)]
    assert all(0.9 < float(a) < 1.0 for r in rows for a in r[2:4])
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    try:
        runs = mlflow.search_runs(experiment_names=["bnpipe-bn-ablation"])
    finally:
        mlflow.set_tracking_uri(None)
    arms = runs[runs["tags.bnpipe.role"] == "arm"]
    runs = runs.drop(arms.index)
    parents = runs[runs[f"tags.{PARENT_TAG}"].isna()]
    children = runs[runs[f"tags.{PARENT_TAG}"].notna()]
    assert len(parents) == 1 and len(children) == 16
    assert len(arms) == 8 and set(arms["metrics.n_seeds"]) == {2}
    assert set(children["status"]) == {"FINISHED"}
    assert parents["run_id"].iloc[0] in out
    acc = children["metrics.test/accuracy"].astype(float)
    assert acc.between(0.9, 1.0).all()  # one epoch of the reference MLP on MNIST: ~0.93-0.96
    assert (children["tags.bnpipe.data_digest"] == parents["tags.bnpipe.data_digest"].iloc[0]).all()

    # The same command again (its entry point, in this process: same folder, same arguments,
    # the session's Prefect API as above): every cell reused, the same summary to the last
    # printed digit.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    code = main(argv[1:])
    again = capsys.readouterr()
    assert code == 0, again.out[-3000:] + again.err[-3000:]
    assert "(16 cells: 0 trained, 16 reused" in again.out
    assert [m.group(0) for m in SUMMARY_ROW.finditer(again.out)] == [
        m.group(0) for m in SUMMARY_ROW.finditer(out)
    ]

    # One cell trained again from its recorded settings (alone, not in its fused group).
    cell = children.loc[children["tags.mlflow.runName"] == "bn=on bs=128 seed=1", "run_id"]
    code = main(["reproduce", cell.iloc[0]])
    rep = capsys.readouterr()
    assert code == 0, rep.out[-3000:] + rep.err[-3000:]
    assert "MATCH: every metric and every weight is identical" in rep.out
