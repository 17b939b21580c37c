"""A training process beside the flow's process, for ``bnpipe run`` on one machine.

Why a process and not the flow's own threads: importing TensorFlow (12-20 s here) and tracing
its programs are Python work under the GIL, and so are importing Prefect and MLflow and logging
cells. In one process they take turns; here TensorFlow is imported while the flow process
imports Prefect and MLflow and claims its cells, and a group is traced and compiled while the
flow logs the group before it.

The command starts one (:func:`started`) as soon as it parses its arguments and hands it the
run's data settings once they are checked (:meth:`TrainerProcess.serve`); from then on
:func:`active` returns it and the flow's training and evaluation tasks call it instead of
training in their own process. A library call of the flow (tests, notebooks) trains in its
own process, as before. The results are the same either way: the process runs
:func:`bnpipe.grid.train_cells` and :func:`bnpipe.grid.evaluate_cell` on the same data, and
tests/test_e2e.py reproduces a cell trained here, in a process of its own, to the last bit.

The process leaves when the command does: on a message, or (the command killed) when its end of
the pipe closes. It is born ignoring Ctrl-C, which a terminal sends to the whole process group:
what stops when is the flow's decision (groups still training stop at their next epoch).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import multiprocessing
import os
import pickle
import queue
import re
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

# How long the command waits for the process to leave after telling it to (a group finishes
# its epoch first) before it is terminated.
EXIT_TIMEOUT_S = 60.0

_active: TrainerProcess | None = None


class Stopped(Exception):
    """A group still training when its flow stopped (an error elsewhere, Ctrl-C)."""

    def __init__(self, group_name: str) -> None:
        super().__init__(f"{group_name}: {STOPPED}")


# What a Stopped says: the command keeps Prefect's report of it off the console (the flow's own
# one line says why it stopped).
STOPPED = "the flow stopped"


class TrainerDied(RuntimeError):
    """The training process is gone (killed, out of memory): its groups fail."""


class RemoteTraceback(Exception):
    """Where the training process raised: the cause of the exception re-raised here."""

    def __str__(self) -> str:
        return self.args[0]


IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The command's SIGINT/SIGTERM, as noted below Python's handlers (bnpipe.cli watches the signal
# wakeup fd). The handler that runs raises where the main thread is, and that exception can get
# lost: Prefect swaps in its own SIGTERM handler for a flow run, and a TerminationSignal raised
# inside a weakref callback is printed as "Exception ignored" and dropped (seen in CI: a SIGTERM
# landed while a group trained and the run finished with exit code 0). A call from the main
# thread that sees a request stops its group at the next epoch and raises KeyboardInterrupt
# itself; calls on other threads are stopped by their flow, which that exception unwinds.
_stop_signals: list[int] = []


def request_stop(signum: int) -> None:
    if not _stop_signals:
        _stop_signals.append(signum)


def clear_stop() -> None:
    _stop_signals.clear()


def stop_signal() -> int | None:
    """The signal a stop was requested with, if one was."""
    return _stop_signals[0] if _stop_signals else None


def _stop_requested() -> KeyboardInterrupt | None:
    signum = stop_signal()
    if signum is None or threading.current_thread() is not threading.main_thread():
        return None
    exc = KeyboardInterrupt()
    exc.signal = signum  # what the flow reports it as (Prefect's TerminationSignal's)
    return exc


def active() -> TrainerProcess | None:
    """The training process the flow's tasks call, or None: they train in their own process."""
    return _active


def wanted(task_runner: str, engine: str) -> bool:
    """Whether a run trains in a process beside the flow: serially with the fused engine (the
    keras engine's fits share Keras' global state in one process anyway; Dask has workers)."""
    return task_runner == "serial" and engine == "fused"


@contextlib.contextmanager
def started() -> Iterator[TrainerProcess]:
    """A training process, importing TensorFlow from now on; closed on the way out."""
    global _active
    process = TrainerProcess()
    try:
        yield process
    finally:
        _active = None
        process.close()


class TrainerProcess:
    """The command's end of the training process: calls by name, answers by call id."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
        self._conn, child = ctx.Pipe()
        # Born ignoring SIGINT and SIGTERM (a disposition inherited as ignored survives the
        # exec): Ctrl-C or `timeout` signal the whole process group, and a training process
        # dying of it would fail the group's task with a traceback before the command's one
        # line. The command stops it instead (close), and it leaves by itself when the
        # command's end of the pipe closes.
        previous: dict[int, Any] = {}
        try:
            # Each one noted as soon as it is set: a signal pending from before raises here, and
            # what was set by then must still be restored (else this process ignores Ctrl-C).
            if threading.current_thread() is threading.main_thread():
                for sig in IGNORED_SIGNALS:
                    previous[sig] = signal.signal(sig, signal.SIG_IGN)
            self._process = ctx.Process(
                target=_serve, args=(child,), name="bnpipe-trainer", daemon=True
            )
            self._process.start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        child.close()
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the order of sends and the table of pending calls
        # Messages are written by a thread of their own. Ctrl-C raises on the main thread
        # wherever it is, and a message larger than the pipe's buffer (a trained cell's
        # weights) is written in pieces as the process reads: cut there, the process would wait
        # forever for the rest of it (a notebook's next run hung with no epoch trained, in CI).
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write, name="bnpipe-trainer-writer", daemon=True
        )
        self._writer.start()
        self._pending: dict[int, queue.SimpleQueue] = {}
        self._ready = threading.Event()
        self._gone: str | None = None
        self._reader = threading.Thread(
            target=self._read, name="bnpipe-trainer-reader", daemon=True
        )
        self._reader.start()

    def serve(self, data: Any) -> None:
        """Read ``data`` (a :class:`bnpipe.config.DataConfig`) there, and take the flow's calls."""
        global _active
        self._send(("data", None, data))  # to a process already gone too: its calls fail
        _active = self

    @contextlib.contextmanager
    def serving(self, data: Any) -> Iterator[TrainerProcess]:
        """:meth:`serve` for one run of a process that outlives it (bnpipe.session's)."""
        global _active
        self.serve(data)
        try:
            yield self
        finally:
            _active = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        """Whether the process is still there to take calls."""
        return self._gone is None and self._process.is_alive()

    def wait_ready(self) -> None:
        """Block until TensorFlow is imported there; :class:`TrainerDied` if the process is gone."""
        self._ready.wait()
        if self._gone is not None:
            raise TrainerDied(self._gone)

    def train(self, cfg: Any, group: Any, digest: str, on_epoch: Callable | None) -> list:
        """:func:`bnpipe.grid.train_cells` there; ``on_epoch`` runs here, in the caller's thread,
        and an exception from it stops the group there at its next epoch and is raised here."""
        return self._call("train", (cfg, group, digest), on_epoch)

    def evaluate(self, cfg: Any, result: Any, digest: str) -> Any:
        """:func:`bnpipe.grid.evaluate_cell` there."""
        return self._call("evaluate", (cfg, result, digest), None)

    def close(self) -> None:
        """Let the process leave (its groups stop at their next epoch), terminating it when it
        is still importing or does not leave in :data:`EXIT_TIMEOUT_S`."""
        if self._process.is_alive():
            if self._ready.is_set():
                self._send(("exit", None))
                self._process.join(EXIT_TIMEOUT_S)
            if self._process.is_alive():
                self._process.kill()  # it ignores SIGTERM
                self._process.join(5)
        self._outbox.put(None)
        self._writer.join(5)
        self._reader.join(5)
        self._conn.close()

    def _send(self, message: tuple) -> None:
        payload = _pickled(message)
        with self._lock:
            self._outbox.put(payload)

    def _write(self) -> None:
        while (payload := self._outbox.get()) is not None:
            try:
                self._conn.send_bytes(payload)
            except OSError:  # the process is gone: the reader fails the pending calls
                return

    def _call(self, name: str, args: tuple, on_epoch: Callable | None) -> Any:
        self.wait_ready()
        if (requested := _stop_requested()) is not None:
            raise requested
        call_id, answers = next(self._ids), queue.SimpleQueue()
        payload = _pickled(("call", call_id, name, args))
        with self._lock:
            if self._gone is not None:
                raise TrainerDied(self._gone)
            self._pending[call_id] = answers
            self._outbox.put(payload)
        stopped: BaseException | None = None
        try:
            while True:
                try:
                    kind, *body = answers.get()
                except BaseException:
                    # Interrupted here (Ctrl-C in a notebook's kernel, which keeps this process
                    # for its next run): the group stops there at its next epoch too.
                    self._send(("stop", call_id))
                    raise
                if stopped is None and (requested := _stop_requested()) is not None:
                    stopped = requested
                    self._send(("stop", call_id))
                if kind == "epoch":
                    if stopped is None and on_epoch is not None:
                        try:
                            on_epoch(*body)
                        except BaseException as exc:  # stop it there, raise it here when it ends
                            stopped = exc
                            self._send(("stop", call_id))
                    continue
                if stopped is not None:
                    raise stopped
                if kind == "done":
                    return body[0]
                if kind == "error":
                    exc, where = body
                    raise exc from RemoteTraceback(where)
                raise TrainerDied(self._gone)
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    def _read(self) -> None:
        """Route each answer to its call; when the process is gone, fail every pending call."""
        while True:
            try:
                kind, call_id, *body = self._conn.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                self._ready.set()
                continue
            with self._lock:
                answers = self._pending.get(call_id)
            if answers is not None:
                answers.put((kind, *body))
        self._process.join(5)
        with self._lock:
            self._gone = f"the training process exited (code {self._process.exitcode})"
            for answers in self._pending.values():
                answers.put(("gone",))
        self._ready.set()


# -- the training process ----------------------------------------------------------------------


def _serve(conn: Any) -> None:
    """The process's main thread: import TensorFlow, then run each call on a thread of its own
    until told to leave or the command's end of the pipe closes."""
    # TensorFlow's banner waits in a file until the command's checks pass (the data message):
    # a run refused for bad input says one line, not that line and TensorFlow's.
    held = _hold_stderr()
    try:
        # What this process is for, before anything asks: TensorFlow, Keras and the engines.
        from bnpipe import (
            grid,
            tfkeras,  # noqa: F401 -- TensorFlow and Keras, before the engines
        )
        from bnpipe.data import read_data, worker_data
        from bnpipe.train import fused  # noqa: F401 -- imports TensorFlow and Keras
    except BaseException:
        _release_stderr(held)  # why it failed is worth reading
        raise

    send_lock = threading.Lock()
    stops: dict[int, threading.Event] = {}
    threads: list[threading.Thread] = []

    def send(message: tuple) -> None:
        with send_lock, contextlib.suppress(OSError):  # the command gone: the loop below ends
            conn.send(message)

    def run(call_id: int, name: str, args: tuple, stop: threading.Event) -> None:
        try:
            if name == "train":
                cfg, group, digest = args

                def on_epoch(cell: Any, epoch: int, row: dict[str, float]) -> None:
                    if stop.is_set():
                        raise Stopped(group.name)
                    send(("epoch", call_id, cell, epoch, row))

                out = grid.train_cells(cfg, group, worker_data(cfg.data, digest), on_epoch)
            else:
                cfg, result, digest = args
                out = grid.evaluate_cell(cfg, result, worker_data(cfg.data, digest))
            send(("done", call_id, out))
        except BaseException as exc:
            send(("error", call_id, _portable(exc), traceback.format_exc()))

    send(("ready", None))
    while True:
        try:
            kind, call_id, *body = conn.recv()
        except (EOFError, OSError):  # the command is gone
            break
        if kind == "exit":
            break
        if kind == "data":
            _release_stderr(held)
            # Read now, before the first call asks; an error comes again to every call that
            # needs the data (worker_data reads it too, and checks the flow's digest).
            with contextlib.suppress(Exception):
                read_data(body[0])
        elif kind == "stop" and call_id in stops:
            stops[call_id].set()
        elif kind == "call":
            stops[call_id] = threading.Event()
            thread = threading.Thread(target=run, args=(call_id, *body, stops[call_id]))
            thread.start()
            threads.append(thread)
    # Groups still training stop at their next epoch. Then the exit handlers (they publish this
    # process's new XLA cache entries, bnpipe.xla_cache), and no interpreter teardown: with
    # TensorFlow loaded it takes seconds, and the command waits for this process to leave.
    for stop in stops.values():
        stop.set()
    for thread in threads:
        thread.join()
    atexit._run_exitfuncs()
    os._exit(0)


def import_quietly() -> None:
    """Import TensorFlow and the engines in this process without TensorFlow's start-up lines
    (for a command that trains in its own process: ``bnpipe reproduce``)."""
    held = _hold_stderr()
    try:
        from bnpipe import tfkeras  # noqa: F401 -- TensorFlow and Keras, before the engines
        from bnpipe.train import fused  # noqa: F401 -- imports TensorFlow and Keras
    finally:
        _release_stderr(held)


def _hold_stderr() -> tuple[int, Any]:
    """Point file descriptor 2 at a temporary file; (the real stderr, the file)."""
    real = os.dup(2)
    held = tempfile.TemporaryFile()  # noqa: SIM115 -- open until released, not one block
    os.dup2(held.fileno(), 2)
    return real, held


# TensorFlow's start-up lines, written before absl's logging is set up and so past
# TF_CPP_MIN_LOG_LEVEL: the "before InitializeLog" warning and INFO lines such as "oneDNN custom
# operations are on" (turning those off with TF_ENABLE_ONEDNN_OPTS=0 would change numbers).
_START_UP_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rb"STDERR|I\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*)\n",
    re.M,
)


def _release_stderr(hold: tuple[int, Any]) -> None:
    """Write what was held to the real stderr and point descriptor 2 back at it (once); the
    start-up lines stay held unless TF_CPP_MIN_LOG_LEVEL=0 asks for TensorFlow's INFO lines."""
    real, held = hold
    if held.closed:
        return
    os.dup2(real, 2)
    held.seek(0)
    text = held.read()
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0":
        text = _START_UP_NOISE.sub(b"", text)
    data = memoryview(text)
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(2, data) :]
    held.close()


def _pickled(message: tuple) -> bytes:
    """``message`` as :meth:`Connection.send` writes it, pickled by the caller: what cannot be
    sent raises there, not in the writer thread."""
    return bytes(ForkingPickler.dumps(message))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
