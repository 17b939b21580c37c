"""Nobody in: bnpipe through a password-protected MLflow server and a Prefect server with an auth
string, both started as docs/servers.md starts them on 127.0.0.1, and no secret written anywhere.
The secured run is also the suite's check of a grid logged over HTTP (runs, the artifact proxy).

The secrets are random per test session, so finding one in a file or in the output can only mean
bnpipe (or something it drove) wrote it there.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest

from bnpipe.tracking import PARENT_TAG
from tests.conftest import requires_mnist
from tests.test_servers import BIN, client_env, free_port, running, runs_of, tail, write_params

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
def prefect_auth(
    tmp_path_factory: pytest.TempPathFactory, prefect_db: Path
) -> Iterator[tuple[str, str, Path]]:
    """``prefect server start`` with PREFECT_SERVER_API_AUTH_STRING: (api url, auth, home)."""
    tmp = tmp_path_factory.mktemp("prefect-auth")
    auth = f"{ADMIN}:ps-{secrets.token_hex(8)}"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = client_env(tmp, prefect_db=prefect_db, PREFECT_SERVER_API_AUTH_STRING=auth)
    with running(cmd, env=env, log=tmp / "server.log", ready_url=f"{api}/health", timeout=300):
        yield api, auth, tmp


def read_deployment(api: str, auth: str, name: str) -> dict | None:
    """A deployment as the Prefect API returns it, or None while there is none."""
    got = httpx.get(f"{api}/deployments/name/{name}", auth=tuple(auth.split(":", 1)), timeout=30)
    return got.json() if got.status_code == 200 else None


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
    # The 401 itself, though the server takes longer than the 5 s bound to check a password.
    assert lines[0] == (
        f"bnpipe: error: tracking store {url}: wrong credentials (HTTP 401): check "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    ), lines[0]
    assert "training" not in got.stdout and not (tmp_path / "reports").exists()
    assert password not in got.stdout + got.stderr
    assert took < 90, f"took {took:.0f}s"


def no_runs_in(uri: str) -> bool:
    """Whether the store holds no run at all (a refused run must not have started one)."""
    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return not ids or not client.search_runs(ids)


@pytest.mark.server
@requires_mnist
def test_wrong_prefect_auth_string_fails_in_one_line_before_training(
    prefect_auth, tmp_path
) -> None:
    api, auth, _ = prefect_auth
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    for given, what in ((auth + "x", "a wrong one"), ("", "none")):
        started = time.monotonic()
        got = bnpipe_run(
            tmp_path, store, timeout=120, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=given
        )
        took = time.monotonic() - started
        assert got.returncode == 2, f"{what}: {got.stdout[-2000:]}{got.stderr[-3000:]}"
        # One line: refused before TensorFlow is imported (its banner would be on stderr too).
        assert got.stderr.strip().splitlines() == [
            f"bnpipe: error: Prefect API {api}: wrong credentials (HTTP 401); check "
            "PREFECT_API_AUTH_STRING (the server's PREFECT_SERVER_API_AUTH_STRING) or "
            "PREFECT_API_KEY"
        ], got.stderr
        assert "training" not in got.stdout and not (tmp_path / "reports").exists()
        assert no_runs_in(store)
        assert auth.partition(":")[2] not in got.stdout + got.stderr
        assert took < 60, f"{what}: took {took:.0f}s"


# A deployment run of ``bn-ablation-from-file`` as a work pool's worker starts it: the flow
# function, in a process whose Prefect settings name the server.
FROM_FILE = """
import sys
from flows.pipeline import ablation_from_file
ablation_from_file(sys.argv[1])
"""


@pytest.mark.server
@requires_mnist
def test_no_password_reaches_prefect_from_serve_or_a_params_file(
    mlflow_auth, prefect_auth, tmp_path
) -> None:
    url, password, _ = mlflow_auth
    api, auth, prefect_dir = prefect_auth
    env = client_env(tmp_path, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth)
    # ablation_from_file reads a params file with a password in its URI (to a closed port: the
    # flow fails at the store, after Prefect has stored its subflow's parameters).
    file_secret = "pf-" + secrets.token_hex(8)
    params = write_params(
        tmp_path,
        tracking={
            "uri": f"http://{ADMIN}:{file_secret}@127.0.0.1:{free_port()}",
            "reports_dir": str(tmp_path / "reports"),
        },
    )
    ran = subprocess.run(
        [str(BIN / "python"), "-c", FROM_FILE, str(params)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "connection refused" in ran.stdout + ran.stderr, ran.stderr[-3000:]
    assert file_secret not in ran.stdout + ran.stderr
    # bnpipe serve with the MLflow password in a --set override: the deployment's parameters.
    (tmp_path / "serve").mkdir()
    secret_uri = url.replace("http://", f"http://{ADMIN}:{password}@")
    serve = [str(BIN / "bnpipe"), "serve", "--cron", "0 3 * * *", "--name", "secret-test"]
    serve += ["--params", str(write_params(tmp_path / "serve"))]
    serve += ["--set", f"tracking.uri={secret_uri}"]
    log = tmp_path / "serve.log"
    with running(serve, env=env, log=log, cwd=tmp_path):
        deadline = time.monotonic() + 180
        while (deployment := read_deployment(api, auth, "bn-ablation/secret-test")) is None:
            assert time.monotonic() < deadline, tail(log)
            time.sleep(1)
    assert deployment["parameters"]["params"]["tracking"]["uri"] == url
    (tmp_path / "params.yaml").unlink()  # the from-file run's params hold the secret by design
    for secret in (file_secret, password):
        assert files_holding(secret, prefect_dir, tmp_path) == [], secret


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
    parent_id = parents["run_id"].iloc[0]
    assert parent_id in out
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    assert (children[f"tags.{PARENT_TAG}"] == parent_id).all()
    assert children["tags.bnpipe.cell_key"].nunique() == 4
    assert children["metrics.test/accuracy"].astype(float).between(0.1, 1).all()
    # Artifacts go through the server's proxy (mlflow-artifacts:) and land in its folder. (The
    # checks a plain `mlflow server` had a test, a server start and a `bnpipe run` of its own for.)
    client = mlflow.MlflowClient(url)
    assert client.get_run(parent_id).info.artifact_uri.startswith("mlflow-artifacts:")
    child_id = children["run_id"].iloc[0]
    names = {a.path for a in client.list_artifacts(child_id)}
    assert {"history.csv", "confusion_matrix.csv", "weights.npz"} <= names
    history = pd.read_csv(client.download_artifacts(child_id, "history.csv", str(tmp_path)))
    assert history["epoch"].tolist() == [1]
    report = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert "report/report.md" in report
    stored = {p.name for p in (mlflow_dir / "artifacts").rglob("*") if p.is_file()}
    assert {"weights.npz", "history.csv", "report.md", "results.csv"} <= stored
    # The client kept nothing locally: no SQLite store, no artifact folder beside the work dir.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    # Neither secret in the output, the MLflow store (database and artifacts), the reports, or
    # the Prefect server's database (flow parameters, logs); the params file holds it by design.
    (tmp_path / "params.yaml").unlink()
    for secret in (password, auth.partition(":")[2]):
        assert secret not in out
        assert files_holding(secret, mlflow_dir, prefect_dir, tmp_path) == []
