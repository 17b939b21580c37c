"""The training process beside the flow's (bnpipe.trainer): same results as training here,
stops and errors that reach the caller, and a process that dies failing its calls."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from bnpipe import trainer
from bnpipe.config import load_config
from bnpipe.data import DataError, load_mnist
from bnpipe.grid import evaluate_cell, grid_cells, strata, train_cells, training_groups
from tests.conftest import REAL_DATA, requires_mnist

pytestmark = requires_mnist
SETTINGS = [
    "train.engine=fused",
    "train.epochs=2",
    "grid.batch_sizes=[64]",
    "grid.seeds=[0,1]",
    "data.limit_train=1200",
    "data.limit_test=300",
]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None, [*SETTINGS, f"data.dir={REAL_DATA}"])
    data = load_mnist(cfg.data.dir).subset(cfg.data.limit_train, cfg.data.limit_test)
    cells = grid_cells(cfg, dict.fromkeys(strata(cfg), cfg.grid.seeds))
    (group,) = training_groups(cells, ("bn",))  # BN on and off: one masked program
    with trainer.started() as process:
        process.serve(cfg.data)
        yield cfg, data, group, process


def test_a_group_trains_there_bit_for_bit_as_here(setup):
    cfg, data, group, process = setup
    epochs: list[tuple] = []
    there = process.train(cfg, group, data.digest, lambda *a: epochs.append(a))
    here = train_cells(cfg, group, data)
    assert [r.cell for r in there] == [r.cell for r in here] == sorted(group.cells)
    for a, b in zip(there, here, strict=True):
        assert a.status == b.status == "finished"
        timeless = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in a.history]
        assert timeless == [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in b.history]
        assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
        there_eval, here_eval = process.evaluate(cfg, a, data.digest), evaluate_cell(cfg, b, data)
        assert there_eval.metrics() == here_eval.metrics()
        assert np.array_equal(there_eval.confusion, here_eval.confusion)
    # Every member's every epoch reached the caller's callback, with its metrics.
    assert sorted((cell, epoch) for cell, epoch, _ in epochs) == sorted(
        (cell, epoch) for cell in group.cells for epoch in range(1, cfg.train.epochs + 1)
    )
    assert {row["val_accuracy"] for *_, row in epochs} == {
        h["val_accuracy"] for r in here for h in r.history
    }


def test_an_exception_of_the_callback_stops_the_group_and_is_raised_here(setup):
    base, data, group, process = setup
    cfg = base.model_copy(update={"train": base.train.model_copy(update={"epochs": 50})})
    seen: list[int] = []

    class Enough(Exception):
        pass

    def on_epoch(cell, epoch, row):
        seen.append(epoch)
        raise Enough("stop here")

    with pytest.raises(Enough, match="stop here"):
        process.train(cfg, group, data.digest, on_epoch)
    assert max(seen) < 5  # stopped at its next epoch, not after 50
    # ... and the process takes the next call.
    (result, *_) = process.train(base, group, data.digest, None)
    assert process.evaluate(base, result, data.digest).test_accuracy > 0.5


def test_a_stop_request_whose_interrupt_was_swallowed_still_stops_the_group(setup):
    """The command notes its SIGTERM for the training calls besides raising where the main thread
    is; where code in between swallows that exception, the call stops its group and raises it."""
    base, data, group, process = setup
    cfg = base.model_copy(update={"train": base.train.model_copy(update={"epochs": 50})})
    seen: list[int] = []

    def on_epoch(cell, epoch, row):
        seen.append(epoch)
        trainer.request_stop(signal.SIGTERM)  # the handler ran; its exception went nowhere

    try:
        with pytest.raises(KeyboardInterrupt) as stopped:
            process.train(cfg, group, data.digest, on_epoch)
        assert stopped.value.signal == signal.SIGTERM  # the flow reports the signal it was
        assert max(seen) < 5  # stopped at its next epoch, not after 50
        with pytest.raises(KeyboardInterrupt):  # a later call does not start
            process.train(base, group, data.digest, None)
    finally:
        trainer.clear_stop()
    (result, *_) = process.train(base, group, data.digest, None)
    assert process.evaluate(base, result, data.digest).test_accuracy > 0.5


def test_an_error_there_is_raised_here_with_where_it_happened(setup):
    cfg, data, group, process = setup
    with pytest.raises(DataError, match="has digest .*, the flow's has not-the-dig") as info:
        process.train(cfg, group, "not-the-digest", None)
    assert isinstance(info.value.__cause__, trainer.RemoteTraceback)
    assert "in worker_data" in str(info.value.__cause__)


def test_what_the_process_prints_waits_until_the_command_accepts_the_run(capfd, monkeypatch):
    """A run refused for bad input says one line: TensorFlow's banner (printed while the command
    still checks its input) is shown only once the run goes ahead."""
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # TensorFlow logs its banner at INFO
    with trainer.started() as process:
        process.wait_ready()  # TensorFlow is imported there
        assert capfd.readouterr().err == ""
        process.serve(load_config(None, [f"data.dir={REAL_DATA}"]).data)
    assert "tensorflow" in capfd.readouterr().err.lower()


def test_a_killed_process_fails_its_calls_and_the_next_ones():
    with trainer.started() as process:
        process._process.kill()
        with pytest.raises(trainer.TrainerDied, match=r"exited \(code -9\)"):
            process.wait_ready()
        with pytest.raises(trainer.TrainerDied):
            process.evaluate(None, None, "")
    assert trainer.active() is None


def test_only_serial_fused_runs_train_beside_the_flow():
    assert trainer.wanted("serial", "fused")
    assert not trainer.wanted("serial", "keras")  # Keras' global seed state, one process
    assert not trainer.wanted("dask", "fused")  # the workers train


def test_tensorflows_start_up_lines_are_not_shown_by_default(capfd, monkeypatch):
    # `WARNING: All log messages before absl::InitializeLog()` and `I0000 ... oneDNN custom
    # operations are on`: written before TF_CPP_MIN_LOG_LEVEL applies, on every run.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # what the command sets unless told
    with trainer.started() as process:
        process.wait_ready()
        process.serve(load_config(None, [f"data.dir={REAL_DATA}"]).data)
    err = capfd.readouterr().err
    assert "InitializeLog" not in err and "oneDNN" not in err, err


def test_a_message_cut_by_ctrl_c_halfway_leaves_the_process_in_step(setup):
    """Ctrl-C lands on the main thread wherever it is, also halfway through writing a call's
    arguments to the process (a trained cell's weights are larger than the pipe's buffer). The
    process must still read the next call whole: a message cut short put it out of step, waiting
    for bytes that never came, and a notebook's next run hung with no epoch trained (CI)."""
    cfg, data, _, _ = setup
    with trainer.started() as process:  # not reading yet: it imports TensorFlow first
        main = threading.main_thread().ident
        threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
        try:
            process.serve(bytes(4 << 20))  # blocks once the pipe is full, until the process reads
            time.sleep(5)  # where the Ctrl-C lands when the write does not wait for the process
        except KeyboardInterrupt:
            pass
        process.serve(cfg.data)
        answered: list[BaseException] = []

        def call() -> None:
            try:
                process.evaluate(cfg, None, data.digest)  # no result: an error comes back
            except BaseException as exc:
                answered.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(120)
        assert answered, "the call got no answer: the process is out of step"
        assert isinstance(answered[0], AttributeError), answered
