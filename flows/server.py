"""Prefect's temporary API server for one ``bnpipe run``: booted early, owned, always stopped.

Without PREFECT_API_URL, Prefect starts a temporary server in a subprocess when the first flow
runs (5-10 s on two cores). ``bnpipe run`` starts that server itself while it imports TensorFlow
(~7 s) and registers it as Prefect's process-wide instance, so Prefect uses it and never starts a
second one. Owning it fixes three ways the server used to outlive or die before bnpipe:

- it runs in its own session, so a terminal's Ctrl-C (SIGINT to the whole foreground process
  group) reaches bnpipe only, which then still has an API while it closes its runs;
- it gets SIGTERM from the kernel when bnpipe dies, however it dies (kill -9 included:
  PR_SET_PDEATHSIG), and ``stop()`` ends it on every normal or interrupted exit;
- the wait for it is ours (wall-clock, generous), so a slow start on a loaded machine is waited
  for instead of being abandoned while Prefect starts another server on the same port;
- one start at a time per PREFECT_HOME (a file lock there, held until the server answers): two
  ``bnpipe run`` started together would otherwise migrate one new Prefect database at once, and
  one server dies in the migration with a traceback.

Nothing is started when a server is configured (PREFECT_API_URL) or temporary servers are off.
A configured server is asked first (``check_api``), so a wrong PREFECT_API_AUTH_STRING or a
server that does not answer stops ``bnpipe run`` with one line before any training, not with a
traceback when the flow run is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from bnpipe.procs import stop_process

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first starts stay unprotected there
    fcntl = None

STARTUP_TIMEOUT_S = 120.0  # a first start runs database migrations; 2 loaded cores are slow
# One request to a configured server, without Prefect's retries (several, with backoff).
API_CHECK_TIMEOUT_S = 15.0
# How long `bnpipe serve` waits for a Prefect API that is still starting (its first start runs
# migrations: 10-40 s on a 2-core box, minutes on a new PostgreSQL database).
API_WAIT_S = 180.0
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The temporary Prefect server did not come up."""


def _die_with_parent(parent: int) -> None:
    """preexec_fn: ask the kernel for SIGTERM when the parent dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class TemporaryServer:
    """The temporary server for this process, or nothing when Prefect would not start one.

    Use as a context manager: entering starts the server process (from the calling thread, as
    the death signal follows the thread that started it), ``wait()`` blocks until it answers,
    leaving stops it.
    """

    def __init__(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[Any] | None = None
        self._instance: Any = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._start_lock: IO[str] | None = None

    def __enter__(self) -> TemporaryServer:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            self._ready.set()
            return self
        from prefect.server.api.server import SubprocessASGIServer

        # The server's telemetry would report an error on every run on a machine without
        # internet access; a user who wants it on says so in the environment, which wins.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        server = SubprocessASGIServer()  # Prefect's process-wide instance (keyed None)
        if server.running:  # someone (a test harness) already runs one: theirs to stop
            self._ready.set()
            return self
        self._start_lock = _start_lock(self.timeout_s)
        server.port = server.find_available_port()
        self.process = self._spawn(server)
        self._instance = server
        threading.Thread(target=self._wait_healthy, name="prefect-server-wait", daemon=True).start()
        return self

    def _spawn(self, server: Any) -> subprocess.Popen[Any]:
        from prefect.settings import get_current_settings

        # Prefect's own command for its temporary server (SubprocessASGIServer), in a session of
        # its own and tied to this process's life.
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        import prefect

        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        parent = os.getpid()
        return subprocess.Popen(
            cmd, env=env, start_new_session=True, preexec_fn=lambda: _die_with_parent(parent)
        )

    def _wait_healthy(self) -> None:
        server, proc = self._instance, self.process
        assert server is not None and proc is not None
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    self._error = f"exited with code {proc.returncode} before answering"
                    break
                try:
                    if client.get(f"{server.api_url}/health").status_code == 200:
                        # Prefect's later start() calls now find it running and use it.
                        server.server_process, server.running = proc, True
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                self._error = f"did not answer within {self.timeout_s:.0f} s"
        self._release_start_lock()  # migrated and answering (or given up): the next may start
        self._ready.set()

    def _release_start_lock(self) -> None:
        lock, self._start_lock = self._start_lock, None
        if lock is not None:
            lock.close()  # closing the file releases its lock

    def wait(self) -> None:
        """Block until the server answers; ServerError (one line) if it never does."""
        self._ready.wait()
        if self._error is not None:
            raise ServerError(
                f"Prefect's temporary API server on 127.0.0.1 {self._error}; set PREFECT_API_URL "
                "to a running Prefect server (`prefect server start`) or retry"
            )

    def alive(self) -> bool:
        """Whether the server this object started is still running (True when it started none:
        a configured or someone else's server is theirs to keep)."""
        return self.process is None or self.process.poll() is None

    def stop(self) -> None:
        """Flush Prefect's queued logs and events to the server, then end it (idempotent)."""
        self._release_start_lock()
        proc, self.process = self.process, None
        if proc is None:
            return
        if self._instance is not None and self._instance.running:
            _drain_prefect_workers()
        stop_process(proc, timeout_s=10)
        server = self._instance
        if server is not None:
            server.server_process, server.running = None, False
            type(server)._instances.pop(None, None)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_lock(timeout_s: float) -> IO[str] | None:
    """The exclusive lock on starting a temporary server in this PREFECT_HOME, or None.

    Waits while another process's server starts (at most ``timeout_s``; then it starts anyway:
    a stuck peer must not stop this run). None where there are no advisory locks (Windows) or
    the folder cannot hold the lock file.
    """
    if fcntl is None:
        return None
    from prefect.settings import PREFECT_HOME

    try:
        home = Path(PREFECT_HOME.value()).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        handle = (home / ".bnpipe-server-start.lock").open("a")
    except OSError:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                return None
            time.sleep(0.2)


def check_api(timeout_s: float = API_CHECK_TIMEOUT_S) -> str | None:
    """Why the configured Prefect API (PREFECT_API_URL) cannot be used, or None if it can.

    One authenticated read with Prefect's own client (its headers, TLS settings), no retries:
    the health endpoint would not do, a server with an auth string answers it without one.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from bnpipe.tracking import redact_uri

    url = PREFECT_API_URL.value()
    if not url:
        return None
    where = f"Prefect API {redact_uri(url)}"
    try:
        with (
            temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True, httpx_settings={"timeout": timeout_s}) as client,
        ):
            client.read_flows(limit=1)
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        if code in (401, 403):
            return (
                f"{where}: wrong credentials (HTTP {code}); check PREFECT_API_AUTH_STRING "
                "(the server's PREFECT_SERVER_API_AUTH_STRING) or PREFECT_API_KEY"
            )
        return f"{where}: HTTP {code} (is PREFECT_API_URL a Prefect server's /api address?)"
    except httpx.TimeoutException:
        return f"{where}: no answer within {timeout_s:.0f} s"
    except httpx.HTTPError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "refused" in reason.lower():
            reason = "connection refused (is `prefect server start` running, on this port?)"
        return f"{where}: {reason}"
    return None


# Problems of a server still starting (or restarting): worth waiting for, unlike a refusal.
_STARTING = ("connection refused", "no answer within", "HTTP 502", "HTTP 503")


def wait_for_api(wait_s: float | None = None, say: Callable[[str], None] = print) -> str | None:
    """:func:`check_api`, waiting up to ``wait_s`` (backing off) while the server is still
    starting: a service manager or a boot script starts ``bnpipe serve`` with its server.

    Returns:
        Why the API cannot be used after waiting, or None once it answers.
    """
    from prefect.settings import PREFECT_API_URL

    from bnpipe.tracking import redact_uri

    wait_s = API_WAIT_S if wait_s is None else wait_s
    why = check_api()
    if not starting(why):
        return why
    say(f"waiting for Prefect at {redact_uri(PREFECT_API_URL.value())} (up to {wait_s:.0f} s)")
    deadline, delay = time.monotonic() + wait_s, 0.5
    while time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(2 * delay, 5.0)
        why = check_api()
        if not starting(why):
            return why
    return f"{why}; waited {wait_s:.0f} s"


def starting(why: str | None) -> bool:
    """Whether :func:`check_api`'s answer is a server still starting (worth waiting for)."""
    return why is not None and any(s in why for s in _STARTING)


def _drain_prefect_workers() -> None:
    """Send what Prefect's log and event workers still hold before the server goes (as Prefect's
    test harness does); a worker that never started has nothing to send."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):
            worker.drain_all(timeout=3)
