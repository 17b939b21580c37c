"""Nobody in: bnpipe through a password-protected MLflow server and a Prefect server with an auth
string, both started as docs/servers.md starts them on 127.0.0.1, and no secret written anywhere.

The secrets are random per test session, so finding one in a file or in the output can only mean
bnpipe (or something it drove) wrote it there.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bnpipe.config import load_config
from tests.conftest import requires_mnist
from tests.test_servers import BIN, client_env, free_port, running, runs_of, write_params

ADMIN = "admin"


def files_holding(secret: str, *folders: Path) -> list[str]:
    """Every file under ``folders`` whose bytes contain ``secret``."""
    needle = secret.encode()
    return [
        str(p)
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    ]


@pytest.fixture(scope="module")
def mlflow_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """``mlflow server --app-name basic-auth`` on loopback: (url, admin password, its folder)."""
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    password = "pw-" + secrets.token_hex(8)
    ini = tmp / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without it every request pays a PBKDF2 check (seconds on a loaded 2-core box, over
        # bnpipe's 5 s preflight bound); docs/servers.md recommends it as well.
        "auth_cache_ttl_seconds = 600\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--workers",
        "1",
    ]
    env = client_env(
        tmp,
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),  # CSRF protection needs one
    )
    # The auth app starts slowly (two databases to migrate): minutes on a loaded 2-core box.
    with running(cmd, env=env, log=tmp / "server.log", ready_url=f"{url}/health", timeout=300):
        # One authenticated request fills the credential cache, as a team server's would be.
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(search, auth=(ADMIN, password), timeout=120).status_code == 200
        yield url, password, tmp


@pytest.fixture(scope="module")
def prefect_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """``prefect server start`` with PREFECT_SERVER_API_AUTH_STRING: (api url, auth, home)."""
    tmp = tmp_path_factory.mktemp("prefect-auth")
    auth = f"{ADMIN}:ps-{secrets.token_hex(8)}"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = client_env(tmp, PREFECT_SERVER_API_AUTH_STRING=auth)
    with running(cmd, env=env, log=tmp / "server.log", ready_url=f"{api}/health", timeout=300):
        yield api, auth, tmp


def bnpipe_run(
    tmp: Path, uri: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    params = write_params(tmp, tracking={"uri": uri, "reports_dir": str(tmp / "reports")})
    return subprocess.run(
        [str(BIN / "bnpipe"), "run", "--params", str(params)],
        env=client_env(tmp, **env),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.server
@requires_mnist
def test_wrong_mlflow_password_fails_in_one_line_before_training(mlflow_auth, tmp_path) -> None:
    url, password, _ = mlflow_auth
    started = time.monotonic()
    got = bnpipe_run(
        tmp_path, url, MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=password + "x"
    )
    took = time.monotonic() - started
    assert got.returncode == 2, got.stdout + got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnpipe: error: "), got.stderr
    # The store is named (a 401, or no answer from a server busy hashing passwords).
    assert lines[0].startswith(f"bnpipe: error: tracking store {url}"), lines[0]
    assert "training" not in got.stdout and not (tmp_path / "reports").exists()
    assert password not in got.stdout + got.stderr
    assert took < 60, f"took {took:.0f}s"


@pytest.mark.server
@requires_mnist
def test_secured_servers_work_and_no_secret_is_written(
    mlflow_auth, prefect_auth, tmp_path, monkeypatch
) -> None:
    url, password, mlflow_dir = mlflow_auth
    api, auth, prefect_dir = prefect_auth
    # The worst case: the password in the URI of params.yaml (as users paste it).
    secret_uri = url.replace("http://", f"http://{ADMIN}:{password}@")
    got = bnpipe_run(tmp_path, secret_uri, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth)
    out = got.stdout + got.stderr
    assert got.returncode == 0, out[-4000:]
    assert f"in {url}" in out  # the parent-run line names the server, without userinfo
    # Read back through the server with MLflow's own credential variables.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    parents, children = runs_of(url)
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert parents["params.tracking.uri"].iloc[0] == url
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    # Neither secret in the output, the MLflow store (database and artifacts), the reports, or
    # the Prefect server's database (flow parameters, logs); the params file holds it by design.
    (tmp_path / "params.yaml").unlink()
    for secret in (password, auth.partition(":")[2]):
        assert secret not in out
        assert files_holding(secret, mlflow_dir, prefect_dir, tmp_path) == []


def test_credentials_leave_the_uri_for_mlflows_environment(monkeypatch) -> None:
    from bnpipe.tracking import redact_uri, without_credentials

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:p%40ss@mlflow.example:8443/x")
    cfg = without_credentials(load_config(None, ["tracking.uri=http://bob:hunter2@127.0.0.1:5000"]))
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    assert "hunter2" not in str(cfg.flat()) and "hunter2" not in cfg.model_dump_json()
    # The environment's URI was there first: its credentials are the ones MLflow uses.
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert redact_uri("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
    assert redact_uri("http://tok@host:1/api?x=1") == "http://host:1/api?x=1"
