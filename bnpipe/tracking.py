"""Every MLflow call of the project: store, experiment, parent/child runs, reading results back.

Only the flow process writes (one writer per store): SQLite stores lock under concurrent
writers, and a single writer also keeps the run tree consistent when training is distributed.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

STORE_DIR = Path("mlruns")
TAG_PREFIX = "bnpipe."
PARENT_TAG = "mlflow.parentRunId"
# MLflow caps one log_batch call at 1000 metrics / 100 params / 100 tags.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


def resolve_uri(configured: str | None, store_dir: Path = STORE_DIR) -> str:
    """MLFLOW_TRACKING_URI wins (as MLflow users expect), then params, then the local store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"


def _is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


@dataclass
class Tracker:
    """An experiment in one tracking store; all writes of one flow run go through it."""

    uri: str
    experiment_name: str
    store_dir: Path = STORE_DIR

    def __post_init__(self) -> None:
        self.client = MlflowClient(tracking_uri=self.uri)
        self._experiment_id: str | None = None

    # -- store -------------------------------------------------------------------------------
    def check(self) -> str:
        """Open (or create) the experiment now, so a bad store fails before any compute.

        Returns the experiment id.
        """
        if _is_local_sqlite(self.uri):
            db = Path(self.uri.removeprefix("sqlite:///"))
            folder = db.parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError(
                    f"tracking store {folder}: cannot create ({exc.strerror})"
                ) from None
            if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
                raise TrackingError(f"tracking store {db}: not writable")
        try:
            return self.experiment_id
        except Exception as exc:  # any failure here means the store is unusable; say so plainly
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"tracking store {self.uri}: {first[:300]}") from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                location = None
                if _is_local_sqlite(self.uri):
                    # Keep artifacts beside the database under mlruns/, not in the working dir.
                    location = (self.store_dir / "artifacts").resolve().as_uri()
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=location
                )
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
        return run.info.run_id

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

    def log_cell(
        self,
        parent_id: str,
        run_name: str,
        *,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        history: pd.DataFrame,
        final_metrics: Mapping[str, float],
        confusion: np.ndarray | None,
        weights: list[np.ndarray] | None,
        status: str,
    ) -> str:
        """One child run for one grid cell: params, per-epoch metrics, final metrics, artifacts.

        ``status`` is "FINISHED" or "FAILED" (diverged or errored; the tags say why).
        """
        run_id = self.start_run(run_name, params=params, tags=tags, parent_id=parent_id)
        now = int(time.time() * 1000)
        metrics = [
            Metric(col, float(row[col]), now, int(row["epoch"]))
            for _, row in history.iterrows()
            for col in history.columns
            if col != "epoch" and np.isfinite(row[col])
        ]
        metrics += [Metric(k, float(v), now, 0) for k, v in final_metrics.items() if np.isfinite(v)]
        self._log_batch(run_id, metrics=metrics)
        self.client.log_text(run_id, history.to_csv(index=False), "history.csv")
        if confusion is not None:
            cm = pd.DataFrame(confusion).rename_axis(index="true", columns="predicted")
            self.client.log_text(run_id, cm.to_csv(), "confusion_matrix.csv")
        if weights is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, *weights)
            self._log_bytes(run_id, buf.getvalue(), "weights.npz")
        self.client.set_terminated(run_id, status)
        return run_id

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
    ) -> None:
        """Close the parent run with the analysis: key numbers as metrics, tables as CSV."""
        now = int(time.time() * 1000)
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

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark a run FAILED with the reason as a tag (used when the flow itself errors)."""
        self.client.set_tag(run_id, TAG_PREFIX + "failure_reason", reason[:5000])
        self.client.set_terminated(run_id, "FAILED")

    # -- reading -----------------------------------------------------------------------------
    def children(self, parent_id: str) -> pd.DataFrame:
        """The child runs of a parent as a DataFrame (one row per run)."""
        return self._search(f"tags.`{PARENT_TAG}` = '{parent_id}'")

    def _search(self, filter_string: str) -> pd.DataFrame:
        rows, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1000,
                page_token=token,
            )
            for r in page:
                row = {"run_id": r.info.run_id, "run_status": r.info.status}
                row.update({f"params.{k}": v for k, v in r.data.params.items()})
                row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
                row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
                rows.append(row)
            token = page.token
            if not token:
                return pd.DataFrame(rows)

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
        """A child run's per-epoch history, read back from its history.csv artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, "history.csv", tmp)
            return pd.read_csv(path)
