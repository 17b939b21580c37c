"""Boot Prefect's temporary API server early, so that its start overlaps TensorFlow's import.

Without PREFECT_API_URL, Prefect starts a temporary server in a subprocess when the first flow
runs, and waits for it (5-10 s on two cores). ``bnpipe run`` asks for that same server (Prefect
keeps one instance per process) on a thread while it imports the pipeline, which brings in
TensorFlow (~7 s). Nothing changes when a server is configured: then this does nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable


def start_temporary_server() -> Callable[[], None]:
    """Start booting the temporary server if Prefect would use one; returns a function that waits
    until it is up. A failed early start is left alone: Prefect's own start then retries it and
    reports its error where a user expects it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    # The server's telemetry service would report an error on every run on a machine without
    # internet access; a user who wants it on says so in the environment, which wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    def boot() -> None:
        # Prefect's own start, at the first flow run, raises a failure again, in context.
        with contextlib.suppress(Exception):
            SubprocessASGIServer().start()

    thread = threading.Thread(target=boot, name="prefect-server-start", daemon=True)
    thread.start()
    return thread.join
