"""The issue's acceptance run, as a user types it: `bnpipe run` on real MNIST, 2 seeds, 1 epoch.

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

from bnpipe.tracking import PARENT_TAG
from tests.conftest import requires_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@requires_mnist
def test_bnpipe_run_on_real_mnist(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    bnpipe = Path(sys.executable).with_name("bnpipe")
    proc = subprocess.run(
        [
            str(bnpipe),
            "run",
            "--params",
            str(ROOT / "params.yaml"),
            "--set",
            "grid.seeds=[0,1]",
            "--set",
            "train.epochs=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "[ 16/16]" in out  # progress reached the last cell
    assert "BN on minus BN off test accuracy per batch size" in out
    rows = re.findall(r"^batch_size=(\d+)\s+(\d+)\s+(0\.\d{4})\s+(0\.\d{4})\s+", out, re.MULTILINE)
    # one summary row per batch size, 2 pairs each, accuracies of one epoch (~0.93-0.97)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(16, 2), (32, 2), (64, 2), (128, 2)]
    assert all(0.9 < float(a) < 1.0 for r in rows for a in r[2:])
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    try:
        runs = mlflow.search_runs(experiment_names=["bnpipe-bn-ablation"])
    finally:
        mlflow.set_tracking_uri(None)
    parents = runs[runs[f"tags.{PARENT_TAG}"].isna()]
    children = runs[runs[f"tags.{PARENT_TAG}"].notna()]
    assert len(parents) == 1 and len(children) == 16
    assert set(children["status"]) == {"FINISHED"}
    assert parents["run_id"].iloc[0] in out
    acc = children["metrics.test/accuracy"].astype(float)
    assert acc.between(0.9, 1.0).all()  # one epoch of the reference MLP on MNIST: ~0.93-0.96
    assert (children["tags.bnpipe.data_digest"] == parents["tags.bnpipe.data_digest"].iloc[0]).all()
