"""bnpipe.tracking.store: opening and checking a store, in one line when it cannot be used."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from bnpipe.tracking import Tracker, TrackingError
from bnpipe.tracking import store as store_module

EXPERIMENT = "bnpipe-store-test"


def test_a_broken_store_is_one_line_but_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(b"\x00not sqlite" * 200)
    with pytest.raises(TrackingError, match="not a database"):
        Tracker(f"sqlite:///{garbage}", EXPERIMENT).check()

    def bug(*_a, **_k):
        raise TypeError("a bug in bnpipe, not a store problem")

    monkeypatch.setattr(store_module, "check_sqlite_store", lambda _uri: None)
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", bug)
    with pytest.raises(TypeError, match="a bug in bnpipe"):
        Tracker(f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}", EXPERIMENT).check()
