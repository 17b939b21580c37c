"""Stopping a child process: the one helper bnpipe's servers, the bench and the tests share.

Framework-free (the standard library only), so flows/ and tests/ import it as well.
"""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process(
    proc: subprocess.Popen,
    timeout_s: float,
    *,
    first: int = signal.SIGTERM,
    group: bool = False,
) -> None:
    """Ask ``proc`` to end (``first``: SIGTERM, or SIGINT as a user's Ctrl-C), give it
    ``timeout_s`` to shut down cleanly, then kill it.

    ``group``: signal its process group (a child started with ``start_new_session=True``, and
    everything it started), and kill what is left of the group even when the leader ended in
    time: a server's workers can outlive it. Always reaped: a child that is never waited for
    stays a zombie as long as its parent lives.
    """

    def send(signum: int) -> bool:
        try:
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:  # the group is empty
            return False
        return True

    if send(first):
        try:
            proc.wait(timeout=timeout_s)
            if not group:
                return
        except subprocess.TimeoutExpired:
            pass
        send(signal.SIGKILL)
    proc.wait()
