"""bnpipe.procs: a child is ended and reaped, whether it honours SIGTERM or not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from bnpipe.procs import stop_process


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # handler installed
    return proc


def test_a_child_that_honours_sigterm_ends_at_once() -> None:
    proc = _child("import time; print('up', flush=True); time.sleep(60)")
    start = time.monotonic()
    stop_process(proc, timeout_s=30)
    assert proc.returncode is not None and proc.returncode < 0  # ended by the signal, reaped
    assert time.monotonic() - start < 10


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    proc = _child(ignore + "; print('up', flush=True); time.sleep(60)")
    stop_process(proc, timeout_s=0.5)
    assert proc.returncode == -9  # SIGKILL, and reaped (returncode set)


def test_a_group_gets_ctrl_c_and_what_outlives_its_leader_is_killed() -> None:
    # A server (the leader) that ends on Ctrl-C, and a worker it started that ignores it. Both
    # set their handling themselves (a disposition inherited from the test process may differ)
    # and say so before the stop.
    worker = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    leader = (
        "import signal, subprocess, sys, time; "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE); "
        "w.stdout.readline(); print(w.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", leader], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    worker_pid = int(proc.stdout.readline())
    stop_process(proc, timeout_s=10, first=signal.SIGINT, group=True)
    assert proc.returncode is not None and proc.returncode != -9  # the leader took the Ctrl-C
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(worker_pid):
        if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
            break  # killed; its parent is gone and init reaps it
        time.sleep(0.05)
    assert not psutil.pid_exists(worker_pid) or (
        psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    ), "the worker that ignored Ctrl-C outlived the stop"
