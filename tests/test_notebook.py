"""bnpipe from Python: overrides checked as ``--set`` is, and examples/quickstart.ipynb executed in
a real Jupyter kernel (nbclient + ipykernel), warm between runs, interrupted, and leaving no
process behind when the kernel shuts down.

One kernel for the whole notebook test (its cost is the point of a warm session): the notebook on
the first 2,000 / 500 MNIST images, then two cells of the test's own in the same kernel: a run
interrupted by SIGINT (the kernel's stop button) once a group has finished, and the same grid again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from bnpipe.config import ConfigError
from tests.conftest import requires_mnist, seed_prefect_home

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_import_bnpipe_stays_cheap() -> None:
    code = (
        "import sys, bnpipe; heavy = [m for m in ('tensorflow', 'prefect', 'mlflow', 'pandas') "
        "if m in sys.modules]; assert not heavy, heavy; assert callable(bnpipe.run)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"grid": {"seedz": [0]}}, "grid.seedz"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"trian": {"epochs": 1}}, "trian"),
        ({"train": 3}, "train"),
    ],
)
def test_bad_override_raises_one_error_naming_the_field(sections: dict, field: str) -> None:
    import bnpipe

    with pytest.raises(ConfigError) as err:
        bnpipe.run(str(ROOT / "params.yaml"), **sections)
    message = str(err.value)
    assert field in message and "\n" not in message, message


def test_overrides_are_set_strings() -> None:
    from bnpipe.session import overrides

    sets = overrides({"grid": {"seeds": [0, 1], "compare": "bn"}, "train": {"epochs": 1}})
    assert sets == ["grid.seeds=[0, 1]", "grid.compare=bn", "train.epochs=1"]


def test_a_sessions_flow_runs_send_heartbeats_only_where_the_user_asked() -> None:
    """Prefect's default heartbeat thread holds the end of every flow run up to 1 s: a session's
    runs go without it, unless the user set a frequency of their own."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from bnpipe.session import _no_default_heartbeats

    before = get_current_settings()
    assert before.flows.heartbeat_frequency == 180  # Prefect's default
    for _ in range(2):  # the second time from the settings kept the first time
        with _no_default_heartbeats():
            assert get_current_settings().flows.heartbeat_frequency is None
            assert get_current_settings().api.url == before.api.url
    # (_no_default_heartbeats() is called once the user's setting is in place)
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}),
        _no_default_heartbeats(),
    ):
        assert get_current_settings().flows.heartbeat_frequency == 60
    assert get_current_settings().flows.heartbeat_frequency == 180


# Run in the notebook's kernel after the notebook: SIGINT (what the kernel's stop button sends)
# once a group's cells are finished, then the same grid again, which must reuse them.
INTERRUPT_CELL = """
import os, signal, threading, time
from mlflow import MlflowClient
from bnpipe.tracking import PARENT_TAG

client = MlflowClient(tracking["uri"])
exp = client.get_experiment_by_name("bnpipe-bn-ablation").experiment_id

def cells(status):
    query = f"attributes.status = '{status}' and tags.`{PARENT_TAG}` != ''"
    return client.search_runs([exp], query, max_results=1000)

before = len(cells("FINISHED"))
grid = {"seeds": [5, 6], "batch_sizes": [16, 32, 64]}

def interrupt_after_a_group():
    while len(cells("FINISHED")) < before + 4:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt_after_a_group, daemon=True).start()
try:
    bnpipe.run(params, grid=grid, train={"epochs": 2}, data=small, tracking=tracking)
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
kept = len(cells("FINISHED")) - before
left_running = len(cells("RUNNING"))
again = bnpipe.run(params, grid=grid, train={"epochs": 2}, data=small, tracking=tracking)
print(json.dumps({"interrupted": interrupted, "kept": kept, "left_running": left_running,
                  "trained": again.trained, "reused": again.reused}))
"""

PIDS_CELL = """
import json, os, psutil
from bnpipe.session import session_pids
children = [p.pid for p in psutil.Process().children(recursive=True)]
print(json.dumps({"kernel": os.getpid(), "session": session_pids(), "children": children}))
"""


def _parameters(tmp: Path) -> str:
    tracking = {"uri": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", "reports_dir": str(tmp / "r")}
    return (
        f"params = {str(ROOT / 'params.yaml')!r}\n"
        'small = {"limit_train": 2000, "limit_test": 500}\n'
        f"tracking = {tracking!r}\n"
        "import json\n"
    )


def _stdout_json(cell: dict) -> dict:
    text = "".join(o.get("text", "") for o in cell["outputs"] if o.get("name") == "stdout")
    return json.loads(text.strip().splitlines()[-1])


def _gone(pids: list[int], within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(p.cmdline()[:4]))
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@requires_mnist
@pytest.mark.slow
def test_quickstart_notebook_runs_warm_in_a_kernel(tmp_path: Path, monkeypatch, prefect_db) -> None:
    from nbclient import NotebookClient

    (tmp_path / "mlruns").mkdir()
    # The kernel inherits the environment: an isolated Prefect home, no configured servers.
    # Its database migrated already (conftest.prefect_db), as after a user's first notebook.
    monkeypatch.setenv("PREFECT_HOME", str(seed_prefect_home(tmp_path / "prefect", prefect_db)))
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = _parameters(tmp_path)
    shown = len(nb.cells)
    nb.cells += [nbformat.v4.new_code_cell(INTERRUPT_CELL), nbformat.v4.new_code_cell(PIDS_CELL)]
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    pids: list[int] = []
    started = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError on any cell's error
    finally:
        last = nb.cells[-1]
        if last.get("outputs"):
            ids = _stdout_json(last)
            pids = [ids["kernel"], *ids["children"]]
            assert set(ids["session"]) <= set(ids["children"]), ids
    print(f"notebook + interrupt executed in {time.monotonic() - started:.1f} s")
    # The notebook as executed, for its screenshot (python -m tests.browser --notebook FILE).
    shown_nb = nbformat.from_dict({**nb, "cells": nb.cells[:shown]})
    nbformat.write(shown_nb, tmp_path / "quickstart.executed.ipynb")

    # The notebook's own cells: the decided table rendered inline, from the run's analysis.
    html = [
        o["data"]["text/html"]
        for c in nb.cells[:shown]
        if c.cell_type == "code"
        for o in c.outputs
        if "text/html" in o.get("data", {})
    ]
    assert any("Decided (fixed design" in h and "<table" in h for h in html), "no decided table"
    assert any('<iframe srcdoc="' in h for h in html), "no inline report"

    outcome = _stdout_json(nb.cells[-2])
    assert outcome["interrupted"], outcome
    assert outcome["left_running"] == 0, outcome  # the open claims were closed
    assert outcome["kept"] >= 4, outcome  # the group finished before the interrupt is kept
    assert outcome["reused"] == outcome["kept"], outcome
    assert outcome["trained"] + outcome["reused"] == 12, outcome

    # The kernel shut down: its training process and Prefect server went with it.
    assert len(pids) >= 3, pids  # the kernel, its training process, its Prefect server
    assert _gone(pids, within_s=60) == []
