"""bnpipe.tracking.cells: the claims protocol against a real SQLite MLflow store (no training).

Abandoned runs are faked the way a killed process leaves them: RUNNING, owned by a process that is
gone (this host, a start token no process has).
"""

from __future__ import annotations

import socket
import time

import pytest
from mlflow.entities import RunTag, ViewType
from mlflow.tracking import MlflowClient

from bnpipe import tracking
from bnpipe.tracking import (
    CELL_KEY_TAG,
    FAILURE_TAG,
    OWNER_TAG,
    CellSpec,
    Owner,
    Tracker,
)

EXPERIMENT = "bnpipe-store-test"
GONE = f"{socket.gethostname()}|1|gone:0"  # pid 1 never has this start token


def specs(n: int) -> list[CellSpec]:
    return [CellSpec(f"key-{i}", f"cell {i}", {"seed": i}, {}) for i in range(n)]


def all_runs(store: str) -> list:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=5000)


def make_abandoned(tracker: Tracker, n: int) -> None:
    """``n`` RUNNING runs of a killed process, created fast (one create_run each, tags inline)."""
    client = MlflowClient(tracker.uri)
    for i in range(n):
        client.create_run(
            tracker.experiment_id,
            run_name=f"r{i}",
            tags={OWNER_TAG: GONE, CELL_KEY_TAG: f"k{i}"},
        )


@pytest.mark.parametrize("n, page_size", [(23, 5)])
def test_every_abandoned_run_is_marked_across_pages(store, n, page_size):
    tracker = Tracker(store, EXPERIMENT, page_size=page_size)
    tracker.check()
    make_abandoned(tracker, n)
    marked = tracker.fail_abandoned_runs()
    runs = all_runs(store)
    assert len(marked) == n == len(set(marked))
    assert {r.info.status for r in runs} == {"FAILED"}
    assert {r.data.tags[FAILURE_TAG] for r in runs} == {tracking.ABANDONED}


@pytest.mark.slow
def test_more_than_a_page_of_abandoned_runs_with_the_default_page_size(store):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    n = tracker.page_size + 50
    make_abandoned(tracker, n)
    started = time.monotonic()
    assert len(tracker.fail_abandoned_runs()) == n
    assert not [r for r in all_runs(store) if r.info.status == "RUNNING"]
    print(f"marked {n} abandoned runs in {time.monotonic() - started:.1f}s")


def test_interrupted_claims_are_closed(store, monkeypatch):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    parent = tracker.start_run("parent", params={}, tags={})
    real, calls = MlflowClient.create_run, []

    def ctrl_c_at_fourth_claim(self, *args, **kwargs):
        calls.append(kwargs.get("run_name"))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", ctrl_c_at_fourth_claim)
    with pytest.raises(KeyboardInterrupt):
        tracker.claim_cells(parent, specs(8), Owner.current())
    claims = [r for r in all_runs(store) if r.info.run_id != parent]
    assert len(claims) == 3
    assert {r.info.status for r in claims} == {"FAILED"}
    assert {r.data.tags[FAILURE_TAG] for r in claims} == {tracking.INTERRUPTED}


def test_interrupt_while_settling_closes_won_and_open_claims(store, monkeypatch):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    parent = tracker.start_run("parent", params={}, tags={})

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracker, "_cell_runs_by_key", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tracker.claim_cells(parent, specs(4), Owner.current())
    claims = [r for r in all_runs(store) if r.info.run_id != parent]
    assert len(claims) == 4 and {r.info.status for r in claims} == {"FAILED"}


def test_withdrawn_claims_are_closed_before_they_are_deleted(store):
    first, second = Tracker(store, EXPERIMENT), Tracker(store, EXPERIMENT)
    first.check()
    parents = [t.start_run(f"parent of {t}", params={}, tags={}) for t in (first, second)]
    owner = Owner.current()  # alive: the first run's claims stand
    won = first.claim_cells(parents[0], specs(5), owner)
    assert len(won.won) == 5
    lost = second.claim_cells(parents[1], specs(5), owner)
    assert lost.won == {} and lost.taken == won.won
    withdrawn = [r for r in all_runs(store) if r.info.lifecycle_stage == "deleted"]
    assert len(withdrawn) == 5
    assert {r.info.status for r in withdrawn} == {"KILLED"}
    assert {r.data.tags[FAILURE_TAG] for r in withdrawn} == {tracking.WITHDRAWN}
    reasons = [r.data.tags[tracking.ERROR_TAG] for r in withdrawn]
    assert all(why.endswith("claimed the cell first") for why in reasons), reasons
    # Nothing a later run could take for a live claim: only the winners are RUNNING.
    running = {r.info.run_id for r in all_runs(store) if r.info.status == "RUNNING"}
    assert running == {*won.won.values(), *parents}


def test_withdrawn_and_unusable_runs_are_never_reused(store):
    tracker = Tracker(store, EXPERIMENT)
    tracker.check()
    parent = tracker.start_run("parent", params={}, tags={})
    run_id = tracker.claim_cells(parent, specs(1), Owner.current()).won["key-0"]
    client = MlflowClient(store)
    client.log_metric(run_id, "test_accuracy", 0.9)
    client.log_batch(run_id, tags=[RunTag(tracking.STATUS_TAG, "finished")])
    client.set_terminated(run_id, "FINISHED")
    assert set(tracker.finished_cells(["key-0"])) == {"key-0"}
    # A search per key (few keys) and one scan of the experiment (many) find the same runs.
    tracker.keys_per_search_max = 0
    assert set(tracker.finished_cells(["key-0", "key-1"])) == {"key-0"}
    tracker.keys_per_search_max = Tracker.keys_per_search_max
    tracker.mark_unusable(run_id, "history.csv is missing from the artifact store")
    assert tracker.finished_cells(["key-0"]) == {}
