"""Values that pass validation but would fail only after runs exist are caught in the preflight:
one line, exit 2, fast, and no run in the store."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.test_config_hostile import assert_one_line_exit_2


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BNPIPE_DATA_DIR", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def existing_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store that already holds the experiment (so "no run created" can be checked)."""
    from bnpipe.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    Tracker(uri, "preflight").check()
    return uri


def runs_in(uri: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("preflight")
    return len(client.search_runs([exp.experiment_id], run_view_type=3))


def refused(capsys, sets: list[str], fragment: str, seconds: float = 10.0) -> None:
    argv = ["run", "--set", "tracking.experiment=preflight"]
    for item in sets:
        argv += ["--set", item]
    capsys.readouterr()  # what setting up the store printed
    assert_one_line_exit_2(capsys, argv, fragment, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reports_dir_that_cannot_be_made(capsys, workdir, existing_store):
    (workdir / "afile").write_text("in the way")
    refused(
        capsys,
        [f"tracking.uri={existing_store}", "tracking.reports_dir=afile/reports"],
        "tracking.reports_dir: ",
    )
    assert runs_in(existing_store) == 0


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "nonsense"])
def test_unreachable_dask_scheduler(capsys, workdir, existing_store, address):
    sets = [
        f"tracking.uri={existing_store}",
        "orchestration.task_runner=dask",
        f"orchestration.dask_address={address.format(port=free_port())}",
    ]
    refused(capsys, sets, "orchestration.dask_address ")
    assert runs_in(existing_store) == 0


def test_dask_address_is_not_checked_for_serial_runs(capsys, workdir):
    sets = ["orchestration.dask_address=nonsense", "data.dir=./nowhere"]
    refused(capsys, sets, "data.dir: nowhere is not a directory")


def test_sqlite_store_that_is_a_folder(capsys, workdir, monkeypatch):
    folder = workdir / "some" / "dir"
    folder.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}")
    refused(capsys, [], "is a folder, not a database file")
    assert list(folder.iterdir()) == []


def test_fewer_classes_than_the_data_has(capsys, workdir, existing_store, monkeypatch):
    # 5 outputs for 10 digits trained to a NaN loss: every cell stored as "diverged", exit 0.
    import bnpipe.data
    from tests.conftest import make_tiny_mnist

    monkeypatch.setattr(bnpipe.data, "load_mnist", lambda *_a, **_k: make_tiny_mnist())
    refused(
        capsys,
        [f"tracking.uri={existing_store}", "model.num_classes=5"],
        "model.num_classes: 5 is fewer than the data's 10 classes (labels 0-9)",
    )
    assert runs_in(existing_store) == 0
