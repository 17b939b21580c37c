"""``bnpipe serve`` and its Prefect server's life: started together (serve waits), never
coming (serve gives up in one line), restarted under it (serve goes on). A file of its own so
the test workers split these server starts from test_servers.py's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import requires_mnist
from tests.test_servers import (
    BIN,
    SERVE_POLL_S,
    client_env,
    free_port,
    logs_on_failure,
    probe,
    running,
    tail,
    write_params,
)


def _serve_and_server(tmp_path: Path) -> tuple[str, list[str], list[str]]:
    """A free port's API URL, `bnpipe serve` on a small params file, and a Prefect server for
    that port (each test starts them in its own order)."""
    port = free_port()
    params = write_params(tmp_path)
    serve = [str(BIN / "bnpipe"), "serve", "--cron", "0 3 * * *", "--params", str(params)]
    server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return f"http://127.0.0.1:{port}/api", serve, server


@pytest.mark.server
@requires_mnist
def test_serve_waits_for_its_server_and_keeps_serving_through_a_restart(
    tmp_path: Path, prefect_db: Path
) -> None:
    # One serve process through both lives of its server (a serve and a server start fewer than
    # a test each, ~20 s of CPU): started first, as a service manager starting both at once
    # does (serve used to exit at once, "connection refused"), then the server restarted.
    api, serve_cmd, server = _serve_and_server(tmp_path)
    env = client_env(tmp_path, PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY=SERVE_POLL_S)
    serve_log = tmp_path / "serve.log"
    home = tmp_path / "s"
    up = {"env": client_env(home, prefect_db=prefect_db), "ready_url": f"{api}/health"}
    with running(serve_cmd, env=env, log=serve_log, cwd=tmp_path) as serving:
        deadline = time.monotonic() + 60
        while "waiting for Prefect at" not in serve_log.read_text():
            assert serving.poll() is None, tail(serve_log)
            assert time.monotonic() < deadline, tail(serve_log)
            time.sleep(0.5)
        server1 = tmp_path / "server1.log"
        with (
            running(server, log=server1, **up),
            logs_on_failure(serve=serve_log, server=server1),
        ):
            got = probe(api, tmp_path, "bn-ablation/nightly", runs=0)
            assert serving.poll() is None  # still serving, the deployment registered
        assert got["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
        # Before the restart: while it waited for the server, serve reported no error.
        assert "error" not in serve_log.read_text().lower(), tail(serve_log)
        # The server stopped; the same database comes back on the same port: the next run
        # still happens.
        server2 = tmp_path / "server2.log"
        with (
            running(server, log=server2, **up),
            logs_on_failure(serve=serve_log, server=server2),
        ):
            got = probe(api, tmp_path, "bn-ablation/nightly", runs=1)
            assert serving.poll() is None
    assert got["run_states"] == ["COMPLETED"], got["run_messages"]


def test_serve_gives_up_on_a_server_that_never_comes(monkeypatch, capsys) -> None:
    import flows.server

    monkeypatch.setattr(flows.server, "API_WAIT_S", 2.0)
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        why = flows.server.wait_for_api()
    assert "connection refused" in why and why.endswith("waited 2 s")
    assert "waiting for Prefect at http://127.0.0.1:" in capsys.readouterr().out
