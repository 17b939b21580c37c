"""The store: opening and checking it (SQLite paths included), the experiment, a client that
rides out SQLite's lock errors, and the writes every other job builds on."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import requests
import sqlalchemy.exc
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bnpipe.tracking.names import (
    ERROR_TAG,
    EXPERIMENT_NOTE,
    FAILURE_TAG,
    KIND_TAG,
    NOTE_TAG,
    PARENT_TAG,
    STATUS_TAG,
    TAG_PREFIX,
    metric_name,
)
from bnpipe.tracking.uri import (
    STORE_DIR,
    has_credentials,
    is_http,
    is_local_sqlite,
    run_url,
    sqlite_path,
    ui_base,
)

if TYPE_CHECKING:
    from bnpipe.data import MnistData

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first opens stay unprotected there
    fcntl = None

# MLflow caps one log_batch call at 1000 metrics / 100 params / 100 tags.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
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


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


class UnreadableArtifact(LookupError):
    """A recorded artifact of a run is gone or cannot be parsed; the message says which."""


class ArtifactWriteError(TrackingError):
    """The artifact store stopped taking writes during the run (full, read-only); one line."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc).lower()


def _store_problem(exc: BaseException, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> str:
    """The useful part of an error from opening a store (HTTP errors bury it in a long line)."""
    text = str(exc)
    code = getattr(exc, "error_code", None)
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        if not has_credentials():
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
    return first_line(exc)


# -- SQLite paths --------------------------------------------------------------------------------
def check_sqlite_path(uri: str) -> None:
    """A ``sqlite:///`` store must name a database file: MLflow retries a folder for minutes.

    Changes nothing on disk, so it runs before the data is read (``bnpipe run``'s preflight);
    :func:`check_sqlite_store` goes on to create and open the store.
    """
    if not is_local_sqlite(uri):
        return
    db = sqlite_path(uri)
    if db.is_dir():
        raise TrackingError(f"tracking store {uri}: {db} is a folder, not a database file")


def check_sqlite_store(uri: str) -> None:
    """The store's folder exists (or is made) and takes writes, and SQLite opens the file."""
    check_sqlite_path(uri)
    db = sqlite_path(uri)
    for folder in (db.parent, *db.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise TrackingError(f"tracking store {db}: {folder} is a file, not a folder")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"tracking store {db.parent}: cannot create ({exc.strerror})") from None
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"tracking store {db}: not writable")
    _check_sqlite_opens(uri, db)


def _check_sqlite_opens(uri: str, db: Path) -> None:
    """SQLite itself opens the file: MLflow retries one it cannot open for ~100 s.

    A link to a missing folder, or a path longer than SQLite takes, passes every folder check
    above. Opening creates an empty file where none was, as MLflow would next.
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
        raise TrackingError(f"tracking store {uri}: SQLite cannot open it: {text}") from None


def _use_wal(uri: str) -> None:
    """Write-ahead logging: readers (another process polling) never block the writer."""
    with contextlib.closing(sqlite3.connect(sqlite_path(uri), timeout=20)) as con:
        con.execute("PRAGMA journal_mode=WAL")


# -- a client that waits out SQLite's locks ------------------------------------------------------
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


# The frames whose locals can hold an interrupted statement's cursor or session.
_DB_MODULES = ("sqlalchemy.", "mlflow.", "sqlite3.")


def release_interrupted_write(exc: BaseException) -> None:
    """Let go of the SQLite write that ``exc`` (Ctrl-C, SIGTERM) interrupted, before writing more.

    sqlite3 checks for signals inside a statement (between executemany's rows): the interrupted
    statement's cursor stays referenced from the exception's traceback, and its connection keeps
    the database's write lock while it is. Every later write of this process, marking the open
    runs FAILED included, then waits out MLflow's 20 s busy timeout on each of its retries (an
    interrupted notebook run hung 4 minutes and failed). Clearing the locals of the database
    layers' frames frees the cursor; the traceback still prints, bnpipe's frames with their
    arguments.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            if f"{tb.tb_frame.f_globals.get('__name__', '')}.".startswith(_DB_MODULES):
                with contextlib.suppress(RuntimeError):  # a frame still running keeps its locals
                    tb.tb_frame.clear()
            tb = tb.tb_next
        stack += [e.__cause__, e.__context__]
    gc.collect()  # the cursor may sit in a reference cycle of its frames


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
    if not is_local_sqlite(uri) or fcntl is None:
        yield
        return
    db = sqlite_path(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (db.parent / f".{db.name}.open-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Store:
    """An experiment in one tracking store: opening, checking, and the writes every job uses."""

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
                sqlite_path(self.uri).parent if is_local_sqlite(self.uri) else STORE_DIR
            )
        logging.getLogger("mlflow.store.db.utils").addFilter(_DROP_LOCKED)

    @property
    def client(self) -> _RetryingClient:
        """The MLflow client; opening it creates (and migrates) a new SQLite store."""
        if self._client is None:
            with _store_lock(self.uri):
                self._client = _RetryingClient(MlflowClient(tracking_uri=self.uri))
        return self._client

    # -- checks ------------------------------------------------------------------------------
    def check(self) -> str:
        """Open (or create) the experiment and prove the store takes writes, before any compute.

        A read-only database, an artifact folder that cannot be written and a server that does
        not answer all fail here, in seconds. Returns the experiment id.

        Raises:
            TrackingError: with one line saying what is wrong with which store.
        """
        if is_local_sqlite(self.uri):
            check_sqlite_store(self.uri)
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
        if is_local_sqlite(self.uri):
            _use_wal(self.uri)
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
        if not is_http(self.uri) or not has_credentials():
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
                if is_local_sqlite(self.uri):
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

    # -- links -------------------------------------------------------------------------------
    def ui_base(self) -> str:
        """The UI's address: the tracking server's, or the one `make ui` serves a local store on."""
        return ui_base(self.uri)

    def run_url(self, run_id: str) -> str:
        """The UI link to a run, in Model training mode (MLflow 3's UI would open GenAI views)."""
        return run_url(self.uri, self.experiment_id, run_id)

    def runs_url(self) -> str:
        """The UI link to the experiment's runs table, in Model training mode."""
        base = f"{self.ui_base()}/#/experiments/{self.experiment_id}"
        return f"{base}/runs?workflowType=machine_learning"

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

    def fail_run(self, run_id: str, reason: str, *, failure: str | None = None) -> None:
        """Mark a run FAILED with the reason as a tag (used when the flow itself errors)."""
        tags = {FAILURE_TAG: (failure or reason)[:5000]}
        if failure is not None:
            tags[ERROR_TAG] = reason[:5000]
            tags[STATUS_TAG] = failure
        self._log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED")

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
