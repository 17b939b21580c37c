"""Where the store is, and keeping credentials out of everything that is shown or stored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from bnpipe.config import Config

STORE_DIR = Path("mlruns")
# The UI `make ui` serves the local store on; links to a SQLite store's runs point there.
LOCAL_UI = "http://127.0.0.1:5000"
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def resolve_uri(configured: str | None, store_dir: Path = STORE_DIR) -> str:
    """MLFLOW_TRACKING_URI wins (as MLflow users expect), then params, then the local store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"


def redact_uri(uri: str) -> str:
    """``uri`` without a ``user:password@`` part: the only form shown or stored."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def move_credentials(uri: str) -> str:
    """Hand the ``user:password@`` of ``uri`` to MLflow's own MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD (unless already set) and return ``uri`` without it, so the secret
    travels in this process's environment and never in params, tags, reports or flow runs."""
    parts = urlsplit(uri)
    if parts.password is not None or parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    return redact_uri(uri)


def without_credentials(cfg: Config) -> Config:
    """``cfg`` with credentials in its tracking URI, or in MLFLOW_TRACKING_URI, moved to
    MLflow's username and password variables (see move_credentials)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = move_credentials(os.environ["MLFLOW_TRACKING_URI"])
    if not cfg.tracking.uri:
        return cfg
    tracking = cfg.tracking.model_copy(update={"uri": move_credentials(cfg.tracking.uri)})
    return cfg.model_copy(update={"tracking": tracking})


def has_credentials() -> bool:
    return any(os.environ.get(k) for k in CREDENTIAL_ENV)


def is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str) -> str:
    """The UI's address: the tracking server's, or the one `make ui` serves a local store on."""
    return uri.rstrip("/") if is_http(uri) else LOCAL_UI


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in Model training mode: on the tracking server itself
    when tracking over HTTP, else on the local ``make ui``."""
    return (
        f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    )
