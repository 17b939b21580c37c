"""bnpipe.runner without any orchestrator: the scheduler driven by a plain-Python trainer against
a real SQLite MLflow store (no Prefect API, no flow)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from bnpipe.config import load_config
from bnpipe.design import plan_of
from bnpipe.grid import Group, evaluate_cell, train_cells
from bnpipe.progress import PhaseClock, Progress
from bnpipe.runner import GridRun, Steps, Trained, collect, groups_at_once, log_outcome, run_plan
from bnpipe.tracking import ROLE_TAG, Tracker
from bnpipe.train.common import Cell


def test_runner_imports_no_orchestrator() -> None:
    code = "import sys, bnpipe.runner; print('prefect' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _run(tiny_mnist, store, cfg, trained: list[Cell]) -> tuple[GridRun, pd.DataFrame]:
    tracker = Tracker(store, cfg.tracking.experiment)
    tracker.check()
    tracker.use_data(tiny_mnist)
    clock = PhaseClock()
    progress = Progress(0, cfg.train.epochs, clock=clock, live=False)

    def train(group: Group, _stop: object) -> Trained:
        results = train_cells(cfg, group, tiny_mnist)
        trained.extend(r.cell for r in results)
        return Trained(results)

    steps = Steps(
        train=train,
        evaluate=lambda r: (evaluate_cell(cfg, r, tiny_mnist), None),
        log=lambda run_id, cell, r, ev, error, ts: log_outcome(
            tracker, run_id, cell, cfg, r, ev, error, ts, clock
        ),
    )

    parent = tracker.start_run("runner-test", params={}, tags={ROLE_TAG: "parent"})
    state = GridRun()
    keys = run_plan(
        plan_of(cfg),
        state,
        parent,
        tracker,
        tiny_mnist.digest,
        cfg,
        progress,
        steps,
        fresh=False,
        common_tags={},
    )
    assert not state.open_claims
    results, _ = collect(state, keys, cfg)
    return state, results


def test_run_plan_trains_then_reuses_finished_and_diverged_cells(tiny_mnist, store) -> None:
    cfg = load_config(
        None,
        [
            f"tracking.uri={store}",
            "train.engine=fused",
            "train.epochs=1",
            "grid.factors={bn: [false, true], learning_rate: [0.001, 1e30]}",
            "grid.seeds=[0]",
        ],
    )
    trained: list[Cell] = []
    state, results = _run(tiny_mnist, store, cfg, trained)
    assert len(trained) == 4 and not state.reused
    status = dict(zip(results["learning_rate"], results["status"], strict=False))
    assert status == {0.001: "finished", 1e30: "diverged"}

    trained.clear()
    state, again = _run(tiny_mnist, store, cfg, trained)
    assert trained == [] and len(state.reused) == 4
    assert again["status"].tolist() == results["status"].tolist()
    assert again["run_id"].tolist() == results["run_id"].tolist()
    pd.testing.assert_series_equal(again["test_accuracy"], results["test_accuracy"])


def test_progress_lines_name_a_few_comparisons_and_count_the_rest():
    from bnpipe.runner import LISTED, _some

    labels = [f"learning_rate={i}" for i in range(160_000)]
    line = _some(labels)
    assert line.startswith("learning_rate=0, learning_rate=1, ") and len(line) < 200
    assert line.endswith(f"and {160_000 - LISTED} more")
    assert _some(labels[:3], sep="; ") == "learning_rate=0; learning_rate=1; learning_rate=2"


def test_time_parts_add_up_and_overlap_shows_as_overlap():
    import threading
    import time

    clock = PhaseClock()

    def train() -> None:
        with clock.phase("training"):
            time.sleep(0.3)

    worker = threading.Thread(target=train)
    worker.start()
    time.sleep(0.1)
    with clock.phase("evaluation"):  # while the next group trains
        time.sleep(0.1)
    worker.join()
    time.sleep(0.05)
    out = clock.breakdown()
    parts = [out[k] for k in (*PhaseClock.WORK, "overlap", *PhaseClock.OVERHEAD)]
    assert sum(parts) == pytest.approx(out["total"], rel=1e-6)
    assert out["overlap"] == pytest.approx(0.1, abs=0.05)
    assert out["training"] == pytest.approx(0.2, abs=0.05)
    assert clock.overlaps.keys() == {"evaluation+training"}


def test_small_fused_groups_train_side_by_side_and_large_ones_alone():
    """A group of one shard shares the cores with the next; one that fills them trains alone."""
    from bnpipe.train.common import usable_cores

    cfg = load_config(None, ["train.engine=fused", "train.shard_size=5"])
    cores = usable_cores()
    assert groups_at_once(cfg, 4) == max(1, cores)  # 2 seeds x 2 arms: one shard
    assert groups_at_once(cfg, 20) == max(1, cores // 4)  # 10 seeds x 2 arms: four shards
    assert groups_at_once(cfg, 1) >= groups_at_once(cfg, 10) >= 1
