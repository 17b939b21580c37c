"""bnpipe.tracking.store: opening and checking a store, in one line when it cannot be used."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import threading
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from bnpipe.tracking import Tracker, TrackingError, release_interrupted_write
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


def _writable_at_once(db) -> bool:
    """Can another connection take the write lock within a fraction of a second?"""
    con = sqlite3.connect(db, timeout=0.3, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def test_a_write_interrupted_by_ctrl_c_lets_go_of_the_database(tmp_path):
    # Ctrl-C lands inside sqlite3's executemany (it checks for signals between rows): while the
    # exception lives, its traceback holds the cursor and the connection the write lock, so
    # marking the open runs FAILED hung 4 minutes in an interrupted notebook run.
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", EXPERIMENT)
    tracker.check()
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    steps = itertools.count()

    caught = threading.Event()

    def interrupt(*_a):
        if not caught.is_set():
            raise KeyboardInterrupt

    def ctrl_c() -> None:
        # Again until it is caught: one that lands in a finalizer (a cursor freed by the garbage
        # collector) is printed and dropped by Python, as a user's first Ctrl-C can be.
        time.sleep(random.uniform(0.02, 0.2))
        while not caught.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            caught.wait(1.0)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    mid_write, tries = 0, 0
    try:
        while mid_write < 3 and tries < 60:
            tries += 1
            caught.clear()
            sender = threading.Thread(target=ctrl_c)
            sender.start()
            try:
                while True:
                    step = next(steps)
                    metrics = [Metric(f"m{i}", 0.5, 0, step) for i in range(500)]
                    tracker.client.log_batch(run_id, metrics=metrics)
            except KeyboardInterrupt as exc:
                caught.set()
                if _writable_at_once(db):
                    continue
                mid_write += 1
                release_interrupted_write(exc)
                assert _writable_at_once(db), "the interrupted write still holds the database"
            finally:
                caught.set()
                sender.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert mid_write == 3, f"only {mid_write} of {tries} interrupts landed inside a write"
