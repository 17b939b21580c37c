"""Stopping a child process: the one helper bnpipe's servers, the bench and the tests share.

Framework-free (the standard library only), so flows/ and tests/ import it as well.
"""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """Ask ``proc`` to end (SIGTERM), give it ``timeout_s`` to shut down cleanly, then kill it.

    Always reaped: a child that is never waited for stays a zombie as long as its parent lives.
    """
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
