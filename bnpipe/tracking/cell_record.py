"""Filling a claimed cell run: its metrics, tags, history, confusion matrix, weights and the
trained Keras model as the run's LoggedModel."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.tracking.store import ArtifactWriteError, Store

# A cell's per-example test outcomes (the crossed analysis reads them back).
TEST_CORRECT = "test_correct.npz"
HISTORY = "history.csv"

# What this process wrote or read of finished runs' files (histories, per-example test outcomes),
# by (store, run id, file), or None (each read goes to the store). A finished run's files never
# change, so a process that runs the grid again and again (bnpipe.session's warm session) reads
# each once, and none that it wrote itself: reading them was most of a rerun that reuses every
# cell.
_kept: dict[tuple[str, str, str], Any] | None = None


def keep_reads() -> None:
    """Keep every history and test outcome this process writes or reads, for its later runs."""
    global _kept
    if _kept is None:
        _kept = {}


def kept(uri: str, run_id: str, name: str) -> Any | None:
    """A copy of what this process kept of the run's file ``name`` (the caller may change it)."""
    value = None if _kept is None else _kept.get((uri, run_id, name))
    return None if value is None else value.copy()


def keep(uri: str, run_id: str, name: str, value: Callable[[], Any]) -> None:
    """Keep ``value()`` as the run's file ``name`` reads back, where this process keeps reads."""
    if _kept is not None:
        _kept[(uri, run_id, name)] = value()


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


class CellRecord(Store):
    """Logging a cell's outcome into the run that claimed it."""

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
        correct: np.ndarray | None = None,
    ) -> str:
        """Fill a claimed child run: tags, per-epoch metrics, final metrics, artifacts; close it.

        ``status`` is "FINISHED" (finished or diverged: a reusable outcome; the tags say which)
        or "FAILED" (an error: the next run trains the cell again). A fixed
        ``timestamp_ms`` makes a retried call write the same metric rows again, not new ones.
        History columns and final metrics come under their legacy names (history.csv keeps
        them) and are logged under ``metric_name``'s. A Keras ``model`` becomes the run's
        LoggedModel, its test metrics linked to it. ``correct`` (per test example: right or
        not) becomes test_correct.npz (:meth:`log_test_correct`).
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
        history_csv = history.to_csv(index=False)
        # One artifact call for the cell's files: each call was a temporary folder and a copy
        # (~10 ms a file on a local store), four a cell.
        files = {HISTORY: history_csv.encode()}
        if confusion is not None:
            cm = pd.DataFrame(confusion).rename_axis(index="true", columns="predicted")
            files["confusion_matrix.csv"] = cm.to_csv().encode()
        if weights is not None:
            buf = io.BytesIO()
            # Uncompressed: trained float32 weights shrink by only ~8% and compressing costs
            # ~20x the write (measured: 209 vs 226 KB, 6 vs 0.3 ms per cell).
            np.savez(buf, *weights)
            files["weights.npz"] = buf.getvalue()
        bits = None
        if correct is not None and np.size(correct):
            bits, files[TEST_CORRECT] = _packed_outcomes(correct)
        try:
            self._log_files(run_id, files)
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
        if status == "FINISHED":  # a reusable outcome: a later run of this process reads it
            # As a read parses the file, so the kept table is the one a read would return.
            keep(self.uri, run_id, HISTORY, lambda: pd.read_csv(io.StringIO(history_csv)))
            if bits is not None:
                keep(self.uri, run_id, TEST_CORRECT, bits.copy)
        return run_id

    def log_test_correct(self, run_id: str, correct: np.ndarray) -> None:
        """Which test examples the cell got right, as test_correct.npz (see
        :func:`_packed_outcomes`); also for a finished run (filled in later)."""
        self._log_files(run_id, {TEST_CORRECT: _packed_outcomes(correct)[1]})

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

    def _log_files(self, run_id: str, files: Mapping[str, bytes]) -> None:
        """Files (name -> bytes) at the root of the run's artifacts, in one call."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(run_id, tmp)


def _packed_outcomes(correct: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Per test example, right or not: the bits, and test_correct.npz's bytes (``packed``:
    np.packbits, 10,000 examples in 1,250 bytes; ``n``: how many)."""
    bits = np.asarray(correct, dtype=bool).ravel()
    buf = io.BytesIO()
    np.savez(buf, packed=np.packbits(bits), n=np.int64(bits.size))
    return bits, buf.getvalue()
