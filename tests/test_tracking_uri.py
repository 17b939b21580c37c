"""bnpipe.tracking.uri: credentials leave a tracking URI for MLflow's environment, and only the
redacted URI is ever shown or stored."""

from __future__ import annotations

import os

from bnpipe.config import load_config
from bnpipe.tracking import redact_uri, without_credentials


def test_credentials_leave_the_uri_for_mlflows_environment(monkeypatch) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:p%40ss@mlflow.example:8443/x")
    cfg = without_credentials(load_config(None, ["tracking.uri=http://bob:hunter2@127.0.0.1:5000"]))
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    assert "hunter2" not in str(cfg.flat()) and "hunter2" not in cfg.model_dump_json()
    # The environment's URI was there first: its credentials are the ones MLflow uses.
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert redact_uri("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
    assert redact_uri("http://tok@host:1/api?x=1") == "http://host:1/api?x=1"
