"""bnpipe.procs: a child is ended and reaped, whether it honours SIGTERM or not."""

from __future__ import annotations

import subprocess
import sys
import time

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
