"""Every MLflow call of the project: store, experiment, parent/child runs, claims, reading back.

Resume and concurrency rest on three facts kept in run tags:

- ``bnpipe.cell_key`` on every child run: the hash of everything that decides the cell's numbers.
  A FINISHED child with the key is a result any later run may reuse instead of training: its
  ``bnpipe.status`` says which outcome, ``finished`` (trained, evaluated) or ``diverged``
  (non-finite loss; with fixed seeds it diverges again identically, so it is not retrained).
- A child run is created RUNNING *before* its cell trains: that run is the cell's claim. Two
  processes that claim the same key both see both claims on reading back; the earliest claim
  (start time, then run id) trains, the other withdraws its claim (deletes that run) and waits.
- ``bnpipe.owner`` (host, pid, process start) on every run and ``bnpipe.heartbeat`` on parents
  tell a live claim from one whose process was killed: those are marked FAILED ("abandoned") and
  their cells trained again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import socket
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import requests
import sqlalchemy.exc
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bnpipe.factors import FACTORS, Cell, canonical, levels_text, parse_level

if TYPE_CHECKING:
    from bnpipe.data import MnistData

if TYPE_CHECKING:
    from bnpipe.config import Config

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first opens stay unprotected there
    fcntl = None

STORE_DIR = Path("mlruns")
TAG_PREFIX = "bnpipe."
PARENT_TAG = "mlflow.parentRunId"
CELL_KEY_TAG = TAG_PREFIX + "cell_key"
STATUS_TAG = TAG_PREFIX + "status"
ROLE_TAG = TAG_PREFIX + "role"
OWNER_TAG = TAG_PREFIX + "owner"
HEARTBEAT_TAG = TAG_PREFIX + "heartbeat"
FAILURE_TAG = TAG_PREFIX + "failure_reason"
ERROR_TAG = TAG_PREFIX + "error"
UNUSABLE_TAG = TAG_PREFIX + "unusable_reason"
DESIGN_ID_TAG = TAG_PREFIX + "design_id"
# The cells a sequential design looks at (a hash of its seed-0 cell keys), and the earlier
# design a run replaced knowingly (bnpipe run --new-design).
DESIGN_CELLS_TAG = TAG_PREFIX + "design_cells"
NEW_DESIGN_TAG = TAG_PREFIX + "new_design_from"
ABANDONED = "abandoned"
INTERRUPTED = "interrupted"
WITHDRAWN = "withdrawn"
# The cell outcomes a FINISHED child run may record (its STATUS_TAG); both are reused.
OUTCOMES = ("finished", "diverged")
# One summary run per arm (stratum x level of the compared factor) sits beside a parent's cells:
# role "arm", no cell key, so finding, claiming and reusing cells never meets one. The order tag
# sorts them (stratum, then control before treatment) in the view that lists them.
ARM_ROLE = "arm"
ARM_ORDER_TAG = TAG_PREFIX + "arm_order"
# An arm's statistics (stats.arm_summary's columns) as metrics: the mean under the cells' own
# test-accuracy name, so a table or chart of test/accuracy shows arms and cells alike.
ARM_METRICS = {
    "mean": "test/accuracy",
    "sd": "test/accuracy_sd",
    "ci_low": "test/accuracy_ci_low",
    "ci_high": "test/accuracy_ci_high",
    "n": "n_seeds",
}
# MLflow's UI opens the view stored in the experiment tag <prefix><key> when its link carries
# ?viewStateShareKey=<key> (its Share button writes such tags). The value is the UI's own state
# (MLflow 3.17: searchFilter, orderByKey, orderByAsc, selectedColumns, columnOrder,
# columnWidths); a key it cannot read makes it show an error and the plain runs table.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
# What a user reads first in the runs table, 100 runs to a page: the arms of one parent only, and
# their numbers. The default start-time order would also fetch the parent and fold the arm runs
# under it, collapsed; ordering by the arm order tag lists them flat.
_ARM_FILTER = f"tags.`{ROLE_TAG}` = '{ARM_ROLE}'"
_ARM_VIEW_COLUMNS = [f"metrics.`{m}`" for m in ARM_METRICS.values()]
_ARM_VIEW_WIDTHS = {"attributes.`Run Name`": 300, **dict.fromkeys(_ARM_VIEW_COLUMNS, 170)}
# What the MLflow UI reads: the experiment's kind decides whether it opens on the runs table
# (Model training) or on GenAI traces; the note is the description shown on top of a run/experiment.
KIND_TAG = "mlflow.experimentKind"
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_NOTE = (
    "BatchNormalization on/off x batch size x seed ablation of a 784-64-64-10 MLP on MNIST "
    "(bnpipe). One parent run per `bnpipe run` (its description is the verdict, its artifacts the "
    "report); one child run per cell, and one per arm (`bn=on bs=32 (mean of N seeds)`: its mean "
    "over every seed; the link `bnpipe run` prints for arm means lists only those). Compare cells: "
    "Model training view, group by `bn` and `batch_size`."
)
# The UI `make ui` serves the local store on; links to a SQLite store's runs point there.
LOCAL_UI = "http://127.0.0.1:5000"
# Metric names as logged: sections (train/, val/, test/, time/) group the UI's charts and keep the
# metric `train/loss` apart from the param naming the loss function. Runs written before carry the
# names on the left; reading maps them (CellRun.of), so their results are still found and reused.
METRIC_NAMES = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "epoch_time_s": "time/epoch_s",
    "train_time_s": "time/train_s",
}
# Child params as logged, spelled as the parent's (``train.epochs`` on both); the keys are
# grid.cell_params' names, which the cell key hashes, so keys stay as they were.
PARAM_NAMES = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "optimizer": "train.optimizer",
    "loss": "train.loss_function",
    "engine": "train.engine",
    "shard_size": "train.shard_size",
    "hidden_units": "model.hidden_units",
    "num_classes": "model.num_classes",
    "limit_train": "data.limit_train",
    "limit_test": "data.limit_test",
    "data_digest": "data.digest",
}
# What tells the cells of one grid apart, besides the grid's factors' levels.
CELL_PARAMS = ("seed",)
# MLflow caps one log_batch call at 1000 metrics / 100 params / 100 tags.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
# A parent's heartbeat is refreshed this often; a run on another host whose heartbeat is older
# than STALE_AFTER_S counts as abandoned (on the same host the process table decides at once).
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# The preflight check may not wait minutes on a server that does not answer (MLflow's default is
# several retries with backoff); the real run keeps MLflow's patient defaults.
PREFLIGHT_TIMEOUT_S = 5
PREFLIGHT_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PREFLIGHT_TIMEOUT_S),
}
# MLflow's basic-auth server checks a password slowly by design (seconds per request on a busy
# machine; only logins that succeeded are cached). A server that has just answered without
# credentials is alive: the check with them may take this long before it counts as no answer.
AUTH_CHECK_TIMEOUT_S = 60
_CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_LOCKED = ("database is locked", "database table is locked")
# SQLite's unix file layer opens no path (a database's journal's included) of 512 bytes or more.
_SQLITE_MAX_PATH = 512
# What a broken, missing or unreachable store raises; anything else is a bug in bnpipe and keeps its
# traceback.
_STORE_ERRORS = (
    MlflowException,
    OSError,
    sqlite3.Error,
    sqlalchemy.exc.SQLAlchemyError,
    requests.exceptions.RequestException,
)
_log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


class UnreadableArtifact(LookupError):
    """A recorded artifact of a run is gone or cannot be parsed; the message says which."""


class ArtifactWriteError(TrackingError):
    """The artifact store stopped taking writes during the run (full, read-only); one line."""


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
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def move_credentials(uri: str) -> str:
    """Hand the ``user:password@`` of ``uri`` to MLflow's own MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD (unless already set) and return ``uri`` without it, so the secret
    travels in this process's environment and never in params, tags, reports or flow runs."""
    from urllib.parse import urlsplit

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


def _is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _has_credentials() -> bool:
    return any(os.environ.get(k) for k in _CREDENTIAL_ENV)


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc).lower()


def _store_problem(exc: BaseException, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> str:
    """The useful part of an error from opening a store (HTTP errors bury it in a long line)."""
    text = str(exc)
    code = getattr(exc, "error_code", None)
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        if not _has_credentials():
            return (
                "needs credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD"
            )
        return (
            "wrong credentials (HTTP 401): check MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD"
        )
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        return "permission denied (HTTP 403): this user may not write to the experiment"
    if "Connection refused" in text:
        return "connection refused (is the MLflow server running, and on this port?)"
    if _timed_out(exc):
        return f"no answer within {timeout_s:.0f} s (is this an MLflow server?)"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _first_line(exc)


def metric_name(name: str) -> str:
    """The logged name of a metric known by its legacy name (``test_loss`` -> ``test/loss``)."""
    if name in METRIC_NAMES:
        return METRIC_NAMES[name]
    return "test/" + name.removeprefix("test_") if name.startswith("test_") else name


def _current_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics under today's names; runs logged before the renaming are read the same way (where
    a run has both spellings of one metric, today's wins)."""
    out = {metric_name(k): v for k, v in metrics.items() if metric_name(k) not in metrics}
    out.update({k: v for k, v in metrics.items() if metric_name(k) == k})
    return out


def logged_params(cell_params: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's params as logged: the parent's spelling, on/off factors (``bn``) as on/off like
    the run names."""
    out = {PARAM_NAMES.get(k, k): v for k, v in cell_params.items()}
    for name, f in FACTORS.items():
        if f.kind is bool and name in out:
            out[name] = f.format(out[name])
    return out


def parent_params(
    flat_config: Mapping[str, Any],
    cell_params: Mapping[str, Any],
    varying: Iterable[str] = (),
) -> dict[str, Any]:
    """The parent's params: the whole config plus what its cells share, spelled as they are
    (``varying``: the grid's factors, whose levels differ from cell to cell)."""
    varying = tuple(varying)
    differ = {PARAM_NAMES.get(k, k) for k in (*varying, *CELL_PARAMS)}
    shared = {k: v for k, v in logged_params(cell_params).items() if k not in differ}
    # A grid factor's default field (``model.bn False``) is a level no cell used: the parent
    # records the factor's levels (``grid.factors.bn``) instead.
    unused = {FACTORS[n].default_field for n in varying if n in FACTORS}
    return {**{k: v for k, v in flat_config.items() if k not in unused}, **shared}


def _recorded_cell_params(params: Mapping[str, str]) -> dict[str, str]:
    """A child's params under grid.cell_params' names, whichever spelling it was logged with
    (on/off factors as "True"/"False", as the oldest runs logged ``bn``)."""
    out = dict(params)
    for old, new in PARAM_NAMES.items():
        if new in params:
            out[old] = params[new]
    for name, f in FACTORS.items():
        if f.kind is bool and name in params:
            out[name] = str(parse_level(name, params[name]))
    return out


def recorded_cell(run_name: str, params: Mapping[str, str]) -> Cell:
    """The grid cell a child run recorded: its factors from the run name (``bn=on bs=32
    seed=3``), their levels and the seed from its params (old and new spellings alike).

    Raises:
        KeyError, ValueError: the params or the name do not describe a cell.
    """
    p = _recorded_cell_params(params)
    by_label = {f.label: name for name, f in FACTORS.items()}
    labels = [token.partition("=")[0] for token in run_name.split()]
    names = [by_label[label] for label in labels if label in by_label]
    if not names or any(label not in by_label and label != "seed" for label in labels):
        raise ValueError(f"run name {run_name!r} is not a cell's (factor=level ... seed=N)")
    return Cell.of(int(p["seed"]), **{n: parse_level(n, p[n]) for n in names})


def _model_name(run_name: str) -> str:
    """A LoggedModel name from a run name ("bn=on bs=32 seed=0" -> "bn-on_bs-32_seed-0")."""
    return "_".join(run_name.replace("=", "-").split())


def _model_requirements() -> list[str]:
    """What loading a logged model needs: the versions that trained it."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for names in (("mlflow",), ("keras",), ("tensorflow-cpu", "tensorflow"), ("numpy",)):
        for name in names:
            try:
                out.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return out


# -- who owns a run ------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rpartition(")")[2].split()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _start_token(pid: int) -> str:
    """Boot id + start time of ``pid`` (tells a pid reused after a reboot or wrap-around apart).

    Empty where /proc does not exist (macOS): then only the pid and the heartbeat are known.
    """
    if not Path("/proc/self/stat").exists():
        return ""
    fields = _proc_stat(pid)
    return f"{_boot_id()}:{fields[19]}" if fields else ""


@dataclass(frozen=True)
class Owner:
    """The process that created a run: host name, pid, and the process's start token."""

    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _start_token(os.getpid()))

    @classmethod
    def parse(cls, value: str | None) -> Owner | None:
        if not value:
            return None
        host, _, rest = value.partition("|")
        pid, _, started = rest.partition("|")
        return cls(host, int(pid), started) if pid.isdigit() else None

    def tag(self) -> dict[str, str]:
        return {OWNER_TAG: f"{self.host}|{self.pid}|{self.started}"}

    def is_gone(self) -> bool | None:
        """True if the process has ended, False if it runs, None if this host cannot tell."""
        if self.host != socket.gethostname():
            return None
        if self.started and Path("/proc/self/stat").exists():
            fields = _proc_stat(self.pid)
            # A zombie (state Z) has exited; only its parent has not reaped it yet.
            return fields is None or fields[0] == "Z" or _start_token(self.pid) != self.started
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it exists, owned by another user
        return False


# -- records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    """What a claim records before training: the cell's key, run name, params and tags."""

    key: str
    name: str
    params: Mapping[str, Any]
    tags: Mapping[str, Any]


@dataclass(frozen=True)
class CellRun:
    """One child run as stored: status, params, latest metrics, tags."""

    run_id: str
    name: str
    status: str
    lifecycle: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> CellRun:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            lifecycle=run.info.lifecycle_stage,
            start_time=int(run.info.start_time or 0),
            params=dict(run.data.params),
            metrics=_current_names(run.data.metrics),
            tags=dict(run.data.tags),
        )

    @property
    def key(self) -> str:
        return self.tags.get(CELL_KEY_TAG, "")

    @property
    def parent_id(self) -> str:
        return self.tags.get(PARENT_TAG, "")

    @property
    def is_arm(self) -> bool:
        """A summary run of one arm's cells (Tracker.log_arm_runs), not a cell."""
        return self.tags.get(ROLE_TAG) == ARM_ROLE

    @property
    def outcome(self) -> str:
        """The cell's status as recorded: "finished", "diverged", "failed", "running", ..."""
        return self.tags.get(STATUS_TAG, "")

    @property
    def reusable(self) -> bool:
        """A cell outcome that stands for any run with its key: finished with a test accuracy,
        or diverged (never evaluated). Runs older than diverged-as-outcome recorded diverged
        cells FAILED: those are not reusable and train once more."""
        return (
            self.status == "FINISHED"
            and self.lifecycle == "active"
            and self.outcome in OUTCOMES
            and (self.outcome == "diverged" or metric_name("test_accuracy") in self.metrics)
            and UNUSABLE_TAG not in self.tags
        )

    @property
    def test_accuracy(self) -> float:
        """The recorded test accuracy; NaN for a diverged cell (never evaluated)."""
        return self.metrics.get(metric_name("test_accuracy"), float("nan"))

    @property
    def test_loss(self) -> float:
        return self.metrics.get(metric_name("test_loss"), float("nan"))

    @property
    def cell_params(self) -> dict[str, str]:
        """The params under grid.cell_params' names (``bn`` "True"/"False"), old runs or new."""
        return _recorded_cell_params(self.params)

    @property
    def cell(self) -> Cell:
        """The grid cell this run recorded (see :func:`recorded_cell`)."""
        return recorded_cell(self.name, self.params)

    @property
    def order(self) -> tuple[int, str]:
        """Claims and duplicate results are ranked by this: the earliest wins, everywhere."""
        return (self.start_time, self.run_id)


@dataclass
class Claims:
    """Outcome of claiming cells: what to train, what to reuse, what to wait for (by key)."""

    won: dict[str, str] = field(default_factory=dict)  # key -> our claim run id: train it
    finished: dict[str, CellRun] = field(default_factory=dict)  # key -> a result to reuse
    taken: dict[str, str] = field(default_factory=dict)  # key -> another live claim: wait


class _RetryingClient:
    """MlflowClient whose calls retry when SQLite reports a lock.

    SQLite returns "database is locked" at once (no busy wait) when a read transaction of one
    connection must upgrade to a write while another connection has written: with two ``bnpipe
    run`` processes on one store this happens. The failed transaction was rolled back, so a
    retry is safe.
    """

    def __init__(self, client: MlflowClient, attempts: int = 12) -> None:
        self._client = client
        self._attempts = attempts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except MlflowException as exc:
                    if attempt == self._attempts - 1 or not any(s in str(exc) for s in _LOCKED):
                        raise
                    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            raise AssertionError("unreachable")

        return call


class _DropLockedRetries(logging.Filter):
    """MLflow logs a full traceback for every SQLite lock error; ours are retried, so drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in _LOCKED)


_DROP_LOCKED = _DropLockedRetries()


@contextlib.contextmanager
def _bounded_http(timeout_s: float = PREFLIGHT_TIMEOUT_S) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in PREFLIGHT_HTTP_ENV}
    os.environ.update({**PREFLIGHT_HTTP_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a local SQLite store while MLflow opens it.

    MLflow creates and migrates a new database when it first opens it, without a lock: two
    ``bnpipe run`` processes starting on a new store at once crash in the migration.
    """
    if not _is_local_sqlite(uri) or fcntl is None:
        yield
        return
    db = _sqlite_path(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (db.parent / f".{db.name}.open-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Tracker:
    """An experiment in one tracking store; all writes of one flow run go through it."""

    uri: str
    experiment_name: str
    store_dir: Path | None = None  # artifacts folder's parent; None: beside a SQLite database
    page_size: int = 1000  # runs per search page (MLflow's maximum)

    def __post_init__(self) -> None:
        self._client: _RetryingClient | None = None
        self._inputs: list[DatasetInput] = []
        self._datasets: dict[str, tuple[str, str]] = {}  # context -> (dataset name, digest)
        self._experiment_id: str | None = None
        if self.store_dir is None:
            self.store_dir = (
                _sqlite_path(self.uri).parent if _is_local_sqlite(self.uri) else STORE_DIR
            )
        logging.getLogger("mlflow.store.db.utils").addFilter(_DROP_LOCKED)

    @property
    def client(self) -> _RetryingClient:
        """The MLflow client; opening it creates (and migrates) a new SQLite store."""
        if self._client is None:
            with _store_lock(self.uri):
                self._client = _RetryingClient(MlflowClient(tracking_uri=self.uri))
        return self._client

    # -- store -------------------------------------------------------------------------------
    def check(self) -> str:
        """Open (or create) the experiment and prove the store takes writes, before any compute.

        A read-only database, an artifact folder that cannot be written and a server that does
        not answer all fail here, in seconds. Returns the experiment id.

        Raises:
            TrackingError: with one line saying what is wrong with which store.
        """
        if _is_local_sqlite(self.uri):
            self._check_sqlite_folder()
        timeout = PREFLIGHT_TIMEOUT_S
        try:
            try:
                exp_id = self._open_and_write(timeout)
            except _STORE_ERRORS as exc:
                if not (_timed_out(exc) and self._asks_for_a_login()):
                    raise
                timeout = AUTH_CHECK_TIMEOUT_S  # alive, and checking our password: let it
                exp_id = self._open_and_write(timeout)
        except TrackingError:
            raise
        except _STORE_ERRORS as exc:
            problem = _store_problem(exc, timeout)
            raise TrackingError(f"tracking store {self.uri}: {problem}") from None
        if _is_local_sqlite(self.uri):
            self._use_wal()
        self._check_artifact_root(exp_id)
        return exp_id

    def _open_and_write(self, timeout_s: float) -> str:
        """The experiment's id, after a write the store must accept now (or training would be
        wasted); HTTP requests bounded by ``timeout_s``, without retries."""
        with _bounded_http(timeout_s):
            exp_id = self.experiment_id
            self.client.set_experiment_tag(exp_id, TAG_PREFIX + "last_check", time.time())
            self._describe_experiment(exp_id)
        return exp_id

    def _asks_for_a_login(self) -> bool:
        """Whether an HTTP store we have credentials for answers a request without them with
        401 at once: a live server with authentication (whose password check is slow)."""
        if not self.uri.startswith(("http://", "https://")) or not _has_credentials():
            return False
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or not insecure
        try:
            answer = requests.get(
                f"{self.uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                timeout=PREFLIGHT_TIMEOUT_S,
                verify=verify,
            )
        except requests.RequestException:
            return False
        return answer.status_code == 401

    def _describe_experiment(self, exp_id: str) -> None:
        """Open in the UI's Model training view, with a description (a user's own edit stays)."""
        tags = self.client.get_experiment(exp_id).tags
        if tags.get(KIND_TAG) != "custom_model_development":
            self.client.set_experiment_tag(exp_id, KIND_TAG, "custom_model_development")
        if NOTE_TAG not in tags:
            self.client.set_experiment_tag(exp_id, NOTE_TAG, EXPERIMENT_NOTE)

    def ui_base(self) -> str:
        """The UI's address: the tracking server's, or the one `make ui` serves a local store on."""
        return self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else LOCAL_UI

    def run_url(self, run_id: str) -> str:
        """The UI link to a run, in Model training mode (MLflow 3's UI would open GenAI views)."""
        return run_url(self.uri, self.experiment_id, run_id)

    def runs_url(self) -> str:
        """The UI link to the experiment's runs table, in Model training mode."""
        base = f"{self.ui_base()}/#/experiments/{self.experiment_id}"
        return f"{base}/runs?workflowType=machine_learning"

    def _check_sqlite_folder(self) -> None:
        db = _sqlite_path(self.uri)
        for folder in (db.parent, *db.parent.parents):
            if folder.exists() and not folder.is_dir():
                raise TrackingError(f"tracking store {db}: {folder} is a file, not a folder")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"tracking store {db.parent}: cannot create ({exc.strerror})"
            ) from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"tracking store {db}: not writable")
        self._check_sqlite_opens(db)

    def _check_sqlite_opens(self, db: Path) -> None:
        """SQLite itself opens the file: MLflow retries one it cannot open for ~100 s.

        A link to a missing folder, or a path longer than SQLite takes, passes every folder
        check above. Opening creates an empty file where none was, as MLflow would next.
        """
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
                con.execute("PRAGMA schema_version")  # reads the header: a non-database fails
        except sqlite3.Error as exc:
            text = str(exc)
            if any(s in text for s in _LOCKED):
                return  # another bnpipe run is writing: the store opens, MLflow will wait
            if db.is_symlink() and not db.exists():
                text = f"the file is a link to {os.readlink(db)}, which cannot be created"
            elif len(os.fsencode(db.absolute())) + len("-journal") >= _SQLITE_MAX_PATH:
                text += f"; the path is too long for SQLite (at most {_SQLITE_MAX_PATH} bytes)"
            raise TrackingError(
                f"tracking store {self.uri}: SQLite cannot open it: {text}"
            ) from None

    def _use_wal(self) -> None:
        """Write-ahead logging: readers (another process polling) never block the writer."""
        with contextlib.closing(sqlite3.connect(_sqlite_path(self.uri), timeout=20)) as con:
            con.execute("PRAGMA journal_mode=WAL")

    def _check_artifact_root(self, exp_id: str) -> None:
        location = self.client.get_experiment(exp_id).artifact_location
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            return  # a server's artifact store: reachability was proved above
        root = Path(unquote(parsed.path))
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".bnpipe-check-"):
                pass
        except OSError as exc:
            raise TrackingError(
                f"artifact store {root}: cannot write ({exc.strerror or exc})"
            ) from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                location = None
                if _is_local_sqlite(self.uri):
                    # Keep artifacts beside the database under mlruns/, not in the working dir.
                    location = (Path(self.store_dir) / "artifacts").resolve().as_uri()
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=location
                    )
                except MlflowException as exc:
                    # Another process created it between our lookup and our create.
                    exp = self.client.get_experiment_by_name(self.experiment_name)
                    if exp is None:
                        raise exc from None
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {self.experiment_name!r} is deleted in {self.uri}; restore "
                        "it (mlflow experiments restore) or set tracking.experiment"
                    )
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- writing -----------------------------------------------------------------------------
    def start_run(
        self,
        run_name: str,
        *,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        parent_id: str | None = None,
    ) -> str:
        """Create a RUNNING run with its params and tags; returns the run id."""
        all_tags = {k: str(v) for k, v in tags.items()}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self._log_batch(run.info.run_id, params=params)
        if self._inputs:
            self.client.log_inputs(run.info.run_id, datasets=self._inputs)
        return run.info.run_id

    def use_data(self, data: MnistData) -> None:
        """Log ``data``'s train and test splits as the inputs of every run started from now on.

        Only metadata is stored (name, digest, shape, source), never the arrays. The digest is
        the data's own: MLflow's numpy digest would hash only the first 10,000 values.
        """
        from mlflow.data import from_numpy

        self._inputs, self._datasets = [], {}
        for context, x, y in (
            ("train", data.x_train, data.y_train),
            ("test", data.x_test, data.y_test),
        ):
            # The digest column holds 36 characters.
            name, digest = f"mnist-{context}", data.digest[:32]
            with warnings.catch_warnings():
                # "source can be interpreted in multiple ways": both readings are local paths.
                warnings.simplefilter("ignore", UserWarning)
                ds = from_numpy(x[:1], targets=y[:1], source=data.source, name=name, digest=digest)
            entity = ds._to_mlflow_entity()
            # Profiled on one row to skip scanning the arrays; the real shapes go in here.
            profile = {"features_shape": list(x.shape), "targets_shape": list(y.shape)}
            entity = Dataset(
                name, digest, entity.source_type, entity.source, entity.schema, json.dumps(profile)
            )
            self._inputs.append(
                DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
            )
            self._datasets[context] = (name, digest)

    def _log_batch(
        self,
        run_id: str,
        *,
        metrics: list[Metric] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        metrics = metrics or []
        p = [Param(k, str(v)) for k, v in (params or {}).items()]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        n_calls = max(
            1,
            -(-len(metrics) // _MAX_METRICS),
            -(-len(p) // _MAX_PARAMS),
            -(-len(t) // _MAX_TAGS),
        )
        for i in range(n_calls):
            self.client.log_batch(
                run_id,
                metrics=metrics[i * _MAX_METRICS : (i + 1) * _MAX_METRICS],
                params=p[i * _MAX_PARAMS : (i + 1) * _MAX_PARAMS],
                tags=t[i * _MAX_TAGS : (i + 1) * _MAX_TAGS],
            )

    def claim_cells(
        self, parent_id: str, specs: list[CellSpec], owner: Owner, *, exclusive: bool = True
    ) -> Claims:
        """Create one RUNNING child run per cell (its claim), then settle races by reading back.

        With ``exclusive`` (the default), a cell that another run finished meanwhile is reused and
        a cell another live run claimed earlier is left to it; our own claim on those cells is
        withdrawn (closed KILLED, then deleted, so no empty duplicate remains). Without it
        (``--fresh``) every claim is ours to train. If this raises (Ctrl-C included), no claim it
        made is left open: each is marked FAILED ("interrupted").
        """
        mine: dict[str, str] = {}
        closed: set[str] = set()
        try:
            for s in specs:
                mine[s.key] = self.start_run(
                    s.name,
                    params=logged_params(s.params),
                    tags={**s.tags, CELL_KEY_TAG: s.key, STATUS_TAG: "running", **owner.tag()},
                    parent_id=parent_id,
                )
            if not exclusive or not mine:
                return Claims(won=mine)
            return self._settle(mine, closed)
        except BaseException as exc:
            for run_id in mine.values():
                if run_id not in closed:
                    self.fail_run(run_id, f"{type(exc).__name__}: {exc}", failure=INTERRUPTED)
            raise

    def _settle(self, mine: dict[str, str], closed: set[str]) -> Claims:
        """Keep the claims that won their race; withdraw the others (their ids go to ``closed``)."""
        by_key = self._cell_runs_by_key(mine)
        claims, parents = Claims(), {}
        for key, run_id in mine.items():
            found = by_key.get(key, [])
            done = [r for r in found if r.reusable]
            live = [
                r
                for r in found
                if r.status == "RUNNING"
                and r.lifecycle == "active"
                and (r.run_id == run_id or not self._abandoned(r, parents))
            ]
            first = min(live, key=lambda r: r.order) if live else None
            if done:
                claims.finished[key] = min(done, key=lambda r: r.order)
                why = f"run {claims.finished[key].run_id} had finished the cell"
            elif first is None or first.run_id == run_id:
                claims.won[key] = run_id
                continue
            else:
                claims.taken[key] = first.run_id
                why = f"run {first.run_id} claimed the cell first"
            self._withdraw(run_id, why)
            closed.add(run_id)
        return claims

    def _withdraw(self, run_id: str, why: str) -> None:
        """Close a lost claim, then delete it: a deleted run must not stay RUNNING."""
        tags = {FAILURE_TAG: WITHDRAWN, STATUS_TAG: WITHDRAWN, ERROR_TAG: why}
        self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)

    def _cell_runs_by_key(self, keys: Iterable[str]) -> dict[str, list[CellRun]]:
        wanted = set(keys)
        out: dict[str, list[CellRun]] = {}
        for run in self._runs(f"tags.`{CELL_KEY_TAG}` IS NOT NULL"):
            cell = CellRun.of(run)
            if cell.key in wanted:
                out.setdefault(cell.key, []).append(cell)
        return out

    def finished_cells(self, keys: Iterable[str]) -> dict[str, CellRun]:
        """For each key with a reusable result, the earliest such run (one pick, every time)."""
        return {
            key: min(done, key=lambda r: r.order)
            for key, runs in self._cell_runs_by_key(keys).items()
            if (done := [r for r in runs if r.reusable])
        }

    def wait_for(self, run_ids: Iterable[str], poll_s: float = 2.0) -> dict[str, CellRun | None]:
        """Block until at least one of the claims ``run_ids`` is settled; return the settled ones.

        A settled claim maps to its run when it finished with a result, or to None when it
        failed, was withdrawn, or its process is gone (then it is marked FAILED here).
        """
        ids = list(run_ids)
        while True:
            settled: dict[str, CellRun | None] = {}
            parents: dict[str, float | None] = {}
            for run in self._runs(
                "attributes.run_id IN (" + ",".join(f"'{i}'" for i in ids) + ")", ViewType.ALL
            ):
                cell = CellRun.of(run)
                if cell.reusable:
                    settled[cell.run_id] = cell
                elif cell.status != "RUNNING" or cell.lifecycle != "active":
                    settled[cell.run_id] = None
                elif self._abandoned(cell, parents):
                    self._mark_abandoned(cell)
                    settled[cell.run_id] = None
            if settled:
                return settled
            time.sleep(poll_s)

    def log_cell(
        self,
        run_id: str,
        *,
        tags: Mapping[str, Any],
        history: pd.DataFrame,
        final_metrics: Mapping[str, float],
        confusion: np.ndarray | None,
        weights: list[np.ndarray] | None,
        status: str,
        timestamp_ms: int | None = None,
        model: Any | None = None,
        input_example: np.ndarray | None = None,
    ) -> str:
        """Fill a claimed child run: tags, per-epoch metrics, final metrics, artifacts; close it.

        ``status`` is "FINISHED" (finished or diverged: a reusable outcome; the tags say which)
        or "FAILED" (an error: the next run trains the cell again). A fixed
        ``timestamp_ms`` makes a retried call write the same metric rows again, not new ones.
        History columns and final metrics come under their legacy names (history.csv keeps
        them) and are logged under ``metric_name``'s. A Keras ``model`` becomes the run's
        LoggedModel, its test metrics linked to it.
        """
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        model_id = self._create_model(run_id, model) if model is not None else None
        metrics = [
            self._metric(col, float(row[col]), now, int(row["epoch"]))
            for _, row in history.iterrows()
            for col in history.columns
            if col != "epoch" and np.isfinite(row[col])
        ]
        metrics += [
            self._metric(k, float(v), now, 0, model_id)
            for k, v in final_metrics.items()
            if np.isfinite(v)
        ]
        self._log_batch(run_id, metrics=metrics, tags=tags)
        try:
            self.client.log_text(run_id, history.to_csv(index=False), "history.csv")
            if confusion is not None:
                cm = pd.DataFrame(confusion).rename_axis(index="true", columns="predicted")
                self.client.log_text(run_id, cm.to_csv(), "confusion_matrix.csv")
            if weights is not None:
                buf = io.BytesIO()
                # Uncompressed: trained float32 weights shrink by only ~8% and compressing costs
                # ~20x the write (measured: 209 vs 226 KB, 6 vs 0.3 ms per cell).
                np.savez(buf, *weights)
                self._log_bytes(run_id, buf.getvalue(), "weights.npz")
            if model_id is not None:
                self._save_model(run_id, model_id, model, input_example)
        except OSError as exc:
            # A full or read-only disk does not heal by retrying; the run stays open for the
            # flow to close, so it is never mistaken for a finished cell.
            location = self.client.get_experiment(self.experiment_id).artifact_location
            raise ArtifactWriteError(
                f"artifact store {location}: cannot write ({exc.strerror or exc}); cells "
                "finished before are kept, rerun when it takes writes again"
            ) from None
        self.client.set_terminated(run_id, status)
        return run_id

    def _metric(
        self, legacy: str, value: float, ts: int, step: int, model_id: str | None = None
    ) -> Metric:
        """A metric under its logged name; val/ and test/ metrics name the test set they used."""
        name = metric_name(legacy)
        section = name.partition("/")[0]
        dataset = self._datasets.get("test") if section in ("val", "test") else None
        return Metric(
            name,
            value,
            ts,
            step,
            model_id=model_id if section == "test" else None,
            dataset_name=dataset[0] if dataset else None,
            dataset_digest=dataset[1] if dataset else None,
        )

    def _create_model(self, run_id: str, model: Any) -> str:
        """Register the run's LoggedModel (PENDING until its files are uploaded); its id."""
        run = self.client.get_run(run_id)
        logged = self.client.create_logged_model(
            self.experiment_id,
            name=_model_name(run.info.run_name or run_id),
            source_run_id=run_id,
            params={k: str(v)[:500] for k, v in run.data.params.items()},
            model_type="keras-mlp",
        )
        return logged.model_id

    def _save_model(
        self, run_id: str, model_id: str, model: Any, input_example: np.ndarray | None
    ) -> None:
        """Save ``model`` in MLflow's Keras flavor into its LoggedModel and link it to the run."""
        import mlflow.keras
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        n_in, n_out = int(model.inputs[0].shape[-1]), int(model.outputs[0].shape[-1])
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_in), "pixels")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_out), "probabilities")]),
        )
        info = self.client.get_logged_model(model_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            path.mkdir()  # the input example is written before the flavor makes the folder
            mlflow.keras.save_model(
                model,
                str(path),
                mlflow_model=Model(
                    artifact_path=info.artifact_location,
                    model_uuid=model_id,
                    run_id=run_id,
                    model_id=model_id,
                ),
                signature=signature,
                input_example=input_example,
                # Given, not inferred: inferring loads the model in a pip subprocess per cell.
                pip_requirements=_model_requirements(),
            )
            self.client.log_model_artifacts(model_id, str(path))
        self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)

    def _log_bytes(self, run_id: str, data: bytes, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path))

    def finish_parent(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float],
        tables: Mapping[str, pd.DataFrame],
        tags: Mapping[str, Any],
        files: list[Path] = (),
        status: str = "FINISHED",
        description: str | None = None,
    ) -> None:
        """Close the parent run with the analysis: key numbers as metrics, tables as CSV, and
        ``description`` (Markdown: the verdict) as the run's description in the UI."""
        now = int(time.time() * 1000)
        if description is not None:
            tags = {**tags, NOTE_TAG: description}
        self._log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if np.isfinite(v)],
            tags=tags,
        )
        for name, frame in tables.items():
            self.client.log_text(run_id, frame.to_csv(index=False), f"{name}.csv")
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")
        self.client.set_terminated(run_id, status)

    def log_arm_runs(self, parent_id: str, arms: pd.DataFrame, *, alpha: float) -> list[str]:
        """One FINISHED summary run per row of ``arms`` (``stats.arm_summary``'s frame), nested
        under ``parent_id``, in place of any arm runs the parent had; their ids, in row order.

        Each is named like its cells, the seed replaced by the count (``bn=on bs=32 (mean of
        60 seeds)``), and carries the cells' factor params spelled as theirs, so grouping the
        runs table by them puts it with its cells. Its metrics (ARM_METRICS): the arm's mean as
        ``test/accuracy``, its SD, ``1 - alpha`` t interval and ``n_seeds``. The runs start
        after every cell, the first row last, so a newest-first table lists them first and in
        row order; ``arms_url`` opens a view of them alone.
        """
        factors = [c for c in arms.columns if c in FACTORS]
        # Every page read before deleting (deleting while paging would skip runs); a summary
        # published again replaces the old one.
        for old in list(self._runs(f"tags.`{PARENT_TAG}` = '{parent_id}' AND {_ARM_FILTER}")):
            self.client.delete_run(old.info.run_id)
        start = int(time.time() * 1000)
        ids = []
        for i, row in enumerate(arms.itertuples(index=False)):
            row = row._asdict()
            levels = canonical({f: _py(row[f]) for f in factors})
            n = int(row["n"])
            label = f"{levels_text(levels)} (mean of {n} seed{'s' if n != 1 else ''})"
            ts = start + len(arms) - 1 - i
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=label,
                start_time=ts,
                tags={
                    PARENT_TAG: parent_id,
                    ROLE_TAG: ARM_ROLE,
                    ARM_ORDER_TAG: f"{i:04d}",
                    NOTE_TAG: _arm_note(levels, row, alpha),
                },
            ).info.run_id
            # Rounded far below an accuracy's resolution, so the table shows 0.8766, not the
            # binary sum's 0.8765999999999999.
            metrics = [
                self._metric(name, round(float(row[col]), 12), ts, 0)
                for col, name in ARM_METRICS.items()
                if np.isfinite(row[col])
            ]
            params = {**logged_params(dict(levels)), "stats.alpha": alpha}
            self._log_batch(run_id, metrics=metrics, params=params)
            self.client.set_terminated(run_id, "FINISHED", end_time=ts)
            ids.append(run_id)
        view = {
            "searchFilter": f"{_ARM_FILTER} AND tags.`{PARENT_TAG}` = '{parent_id}'",
            "orderByKey": f"tags.`{ARM_ORDER_TAG}`",
            "orderByAsc": True,
            "selectedColumns": _ARM_VIEW_COLUMNS,
            "columnOrder": ["attributes.`Run Name`", *_ARM_VIEW_COLUMNS],
            "columnWidths": _ARM_VIEW_WIDTHS,
        }
        key = SHARED_VIEW_PREFIX + arms_view_key(parent_id)
        self.client.set_experiment_tag(self.experiment_id, key, json.dumps(view))
        return ids

    def arms_url(self, parent_id: str) -> str:
        """The UI link to the runs table showing only ``parent_id``'s arm runs and their numbers."""
        return f"{self.runs_url()}&viewStateShareKey={arms_view_key(parent_id)}"

    def fail_run(self, run_id: str, reason: str, *, failure: str | None = None) -> None:
        """Mark a run FAILED with the reason as a tag (used when the flow itself errors)."""
        tags = {FAILURE_TAG: (failure or reason)[:5000]}
        if failure is not None:
            tags[ERROR_TAG] = reason[:5000]
            tags[STATUS_TAG] = failure
        self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED")

    # -- runs whose process is gone ----------------------------------------------------------
    def _heartbeat_age(self, parent_id: str, cache: dict[str, float | None]) -> float | None:
        if parent_id not in cache:
            beat = self.client.get_run(parent_id).data.tags.get(HEARTBEAT_TAG)
            cache[parent_id] = time.time() - float(beat) if beat else None
        return cache[parent_id]

    def _abandoned(self, run: CellRun, parents: dict[str, float | None]) -> bool:
        """Whether a RUNNING run's process is gone (killed, crashed, machine off)."""
        owner = Owner.parse(run.tags.get(OWNER_TAG))
        if owner is None:
            return False  # not written by this version of bnpipe: cannot tell, leave it alone
        gone = owner.is_gone()
        if gone is not None:
            return gone
        age = self._heartbeat_age(run.parent_id or run.run_id, parents)
        return age is not None and age > STALE_AFTER_S

    def _mark_abandoned(self, run: CellRun) -> None:
        owner = Owner.parse(run.tags.get(OWNER_TAG))
        who = f"process {owner.pid} on {owner.host}" if owner else "its process"
        self.fail_run(
            run.run_id,
            f"{who} ended before the run finished (killed, crashed or the machine stopped); "
            f"marked FAILED by {Owner.current().host}|{os.getpid()} at {time.ctime()}",
            failure=ABANDONED,
        )

    def fail_abandoned_runs(self) -> list[str]:
        """Mark FAILED every RUNNING run of the experiment whose process is gone; their ids.

        Runs of processes that are alive (a concurrent ``bnpipe run``) are left alone.
        """
        parents: dict[str, float | None] = {}
        failed = []
        # Read every page first: marking runs FAILED while paging would shift the pages (offset
        # tokens) under the search and skip runs.
        for cell in [CellRun.of(r) for r in self._runs("attributes.status = 'RUNNING'")]:
            # An arm run carries no owner: its numbers come from cells, it holds no claim.
            if not cell.is_arm and self._abandoned(cell, parents):
                self._mark_abandoned(cell)
                failed.append(cell.run_id)
        return failed

    @contextlib.contextmanager
    def heartbeat(self, run_id: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Refresh ``bnpipe.heartbeat`` on ``run_id`` in a background thread while inside."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
                except MlflowException as exc:
                    # A missed beat only matters after STALE_AFTER_S of them; keep training.
                    _log.warning("heartbeat of run %s not written: %s", run_id, _first_line(exc))
                if stop.wait(every_s):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)

    # -- reading -----------------------------------------------------------------------------
    def _runs(self, filter_string: str, view: int = ViewType.ACTIVE_ONLY) -> Iterator[Run]:
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                run_view_type=view,
                max_results=self.page_size,
                page_token=token,
            )
            yield from page
            token = page.token
            if not token:
                return

    def children(self, parent_id: str) -> pd.DataFrame:
        """The cell runs of a parent as a DataFrame (one row per run; its arm runs left out)."""
        runs = self._search(f"tags.`{PARENT_TAG}` = '{parent_id}'")
        role = f"tags.{ROLE_TAG}"
        return runs if role not in runs else runs.loc[runs[role] != ARM_ROLE]

    def arm_runs(self, parent_id: str) -> pd.DataFrame:
        """The arm summary runs of a parent as a DataFrame, in their order (log_arm_runs)."""
        runs = self._search(f"tags.`{PARENT_TAG}` = '{parent_id}' AND {_ARM_FILTER}")
        if not len(runs):
            return runs
        return runs.sort_values(f"tags.{ARM_ORDER_TAG}").reset_index(drop=True)

    def _search(self, filter_string: str) -> pd.DataFrame:
        rows = []
        for r in self._runs(filter_string):
            row = {"run_id": r.info.run_id, "run_status": r.info.status}
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def recorded_designs(self, keys: Iterable[str], cells_id: str) -> list[dict[str, Any]]:
        """Parent runs of sequential designs over these cells: those that trained a finished
        cell with one of ``keys``, or that recorded ``cells_id`` as their design's cells. One
        dict per parent: ``run_id, run_name, start_time, design_id, new_design_from`` and
        ``params`` (its ``stats.*`` params as recorded)."""
        ids = {r.parent_id for r in self.finished_cells(keys).values() if r.parent_id}
        found = {r.info.run_id: r for r in self._runs(f"tags.`{DESIGN_CELLS_TAG}` = '{cells_id}'")}
        for run_id in ids - set(found):
            with contextlib.suppress(MlflowException):  # a purged parent holds no design
                found[run_id] = self.client.get_run(run_id)
        return [
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name or "",
                "start_time": int(run.info.start_time or 0),
                "design_id": run.data.tags[DESIGN_ID_TAG],
                "new_design_from": run.data.tags.get(NEW_DESIGN_TAG),
                "params": {k: v for k, v in run.data.params.items() if k.startswith("stats.")},
            }
            for run in found.values()
            if DESIGN_ID_TAG in run.data.tags and run.info.lifecycle_stage == "active"
        ]

    def cell_run(self, run_id: str) -> CellRun:
        """One run as recorded (any run id; MlflowException if there is none)."""
        return CellRun.of(self.client.get_run(run_id))

    def parent_param(self, run: CellRun, name: str) -> str | None:
        """A param of the run's parent (the run that trained the cell); None if unknown."""
        try:
            return self.client.get_run(run.parent_id).data.params.get(name)
        except MlflowException:  # no parent, or it was purged
            return None

    def parent_tables(self, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame, str, dict[str, str]]:
        """What a parent run recorded: (results, histories, run name, params)."""
        run = self.client.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            tables = [
                pd.read_csv(self.client.download_artifacts(run_id, f"{name}.csv", tmp))
                for name in ("results", "histories")
            ]
        return tables[0], tables[1], run.info.run_name, dict(run.data.params)

    def log_report(self, run_id: str, files: list[Path]) -> None:
        """Attach report files (report.md and figures) to a run under ``report/``."""
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")

    def history(self, run_id: str) -> pd.DataFrame:
        """A child run's per-epoch history, read back from its history.csv artifact.

        Raises:
            UnreadableArtifact: history.csv is gone or is not a history table.
        """
        self._require_artifact(run_id, "history.csv")
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, "history.csv", tmp)
            try:
                history = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                why = f"history.csv cannot be read ({_first_line(exc)})"
                raise UnreadableArtifact(why) from None
        if "epoch" not in history.columns:
            raise UnreadableArtifact("history.csv has no epoch column")
        return history

    def weights(self, run_id: str) -> list[np.ndarray] | None:
        """A child run's weights.npz (in ``get_weights`` order), or None if there is none.

        Raises:
            UnreadableArtifact: weights.npz is there but is not an array archive.
        """
        try:
            self._require_artifact(run_id, "weights.npz")
        except UnreadableArtifact:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, "weights.npz", tmp)
            try:
                with np.load(path) as f:
                    return [f[f"arr_{i}"] for i in range(len(f.files))]
            except (ValueError, OSError, KeyError) as exc:
                why = f"weights.npz cannot be read ({_first_line(exc)})"
                raise UnreadableArtifact(why) from None

    def _require_artifact(self, run_id: str, name: str) -> None:
        # Listing first tells a file that is gone (the run is unusable) from a store that does
        # not answer (an error that propagates: nothing is concluded from an outage).
        if name not in {a.path for a in self.client.list_artifacts(run_id)}:
            raise UnreadableArtifact(f"{name} is missing from the artifact store")

    def mark_unusable(self, run_id: str, reason: str) -> None:
        """Tag a finished run whose artifacts cannot be read, so no later run reuses it."""
        self.client.set_tag(run_id, UNUSABLE_TAG, reason[:5000])


def arms_view_key(parent_id: str) -> str:
    """The shared-view key of a parent's arm runs (the ``viewStateShareKey`` of its link)."""
    return f"bnpipe-arms-{parent_id}"


def _arm_note(levels: tuple[tuple[str, Any], ...], row: Mapping[str, Any], alpha: float) -> str:
    """An arm run's description: what it summarizes, and that it is no trained cell."""
    n, name = int(row["n"]), levels_text(levels)
    if n == 0:
        numbers = "no finished cell with a test accuracy"
    else:
        numbers = f"mean test accuracy {row['mean']:.4f}"
        if n > 1:
            numbers += (
                f", SD {row['sd']:.4f}, {1 - alpha:.0%} t interval "
                f"{row['ci_low']:.4f} to {row['ci_high']:.4f}"
            )
    return (
        f"Summary of the {n} finished seed(s) of `{name}` ({numbers}); not a trained cell. Its "
        f"cells are the runs named `{name} seed=N` under the same parent."
    )


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in Model training mode: on the tracking server itself
    when tracking over HTTP, else on the local ``make ui``."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
