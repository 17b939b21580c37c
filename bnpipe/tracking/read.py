"""Reading runs back: a parent's cells and tables, one cell's run, history and weights, and the
sequential designs recorded over a set of cells."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from bnpipe.tracking.cell_record import HISTORY, TEST_CORRECT, keep, kept
from bnpipe.tracking.cells import CellClaims, CellRun
from bnpipe.tracking.names import (
    ARM_ROLE,
    DESIGN_CELLS_TAG,
    DESIGN_ID_TAG,
    NEW_DESIGN_TAG,
    PARENT_TAG,
    ROLE_TAG,
    UNUSABLE_TAG,
    grid_factors,
)
from bnpipe.tracking.store import UnreadableArtifact, first_line


class Reading(CellClaims):
    """What the store recorded, as tables and records."""

    def children(self, parent_id: str) -> pd.DataFrame:
        """The cell runs of a parent as a DataFrame (one row per run; its arm runs left out)."""
        runs = self._search(f"tags.`{PARENT_TAG}` = '{parent_id}'")
        role = f"tags.{ROLE_TAG}"
        return runs if role not in runs else runs.loc[runs[role] != ARM_ROLE]

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
        """One run as recorded (any run id; MlflowException if there is none), with its grid's
        factors as its parent recorded them (so its cell is read from params, never its name)."""
        run = self.client.get_run(run_id)
        parent = run.data.tags.get(PARENT_TAG)
        params = None
        if parent:
            with contextlib.suppress(MlflowException):  # a purged parent: the legacy grid
                params = self.client.get_run(parent).data.params
        return CellRun.of(run, grid_factors(params))

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

    def parent_tags(self, run_id: str) -> dict[str, str]:
        """A parent run's tags (where its flow run is, its decisions as recorded)."""
        return dict(self.client.get_run(run_id).data.tags)

    def report_file(self, run_id: str, name: str) -> bytes:
        """A file of the report a parent run recorded (``report.html``, a figure's PNG).

        Raises:
            UnreadableArtifact: the run has no such file (a run that never finished).
        """
        path = f"report/{name}"
        if path not in {a.path for a in self.client.list_artifacts(run_id, "report")}:
            raise UnreadableArtifact(f"{path} is missing from the artifact store")
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def history(self, run_id: str) -> pd.DataFrame:
        """A child run's per-epoch history, read back from its history.csv artifact.

        Raises:
            UnreadableArtifact: history.csv is gone or is not a history table.
        """
        return self._kept_read(run_id, HISTORY, self._read_history)

    def _read_history(self, run_id: str) -> pd.DataFrame:
        self._require_artifact(run_id, HISTORY)
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, HISTORY, tmp)
            try:
                history = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                why = f"history.csv cannot be read ({first_line(exc)})"
                raise UnreadableArtifact(why) from None
        if "epoch" not in history.columns:
            raise UnreadableArtifact("history.csv has no epoch column")
        return history

    def weights(self, run_id: str) -> list[np.ndarray] | None:
        """A child run's weights.npz (in ``get_weights`` order), or None if there is none.

        Raises:
            UnreadableArtifact: weights.npz is there but is not an array archive.
        """
        return self._read_npz(
            run_id, "weights.npz", lambda f: [f[f"arr_{i}"] for i in range(len(f.files))]
        )

    def test_correct(self, run_id: str) -> np.ndarray | None:
        """A child run's per-example test outcomes (test_correct.npz), or None if it has none
        (a cell recorded before they were; see ``bnpipe.runner.fill_test_correct``).

        Raises:
            UnreadableArtifact: test_correct.npz is there but cannot be read.
        """

        def unpacked(f: Any) -> np.ndarray:
            return np.unpackbits(f["packed"], count=int(f["n"])).astype(bool)

        return self._kept_read(
            run_id, TEST_CORRECT, lambda r: self._read_npz(r, TEST_CORRECT, unpacked)
        )

    def _kept_read(self, run_id: str, name: str, read: Callable[[str], Any]) -> Any:
        """``read(run_id)``, from what this process kept of the run's file ``name`` when it
        keeps reads (a copy: the caller may change it). None is not kept: a later run may fill
        the file in (runner.fill_test_correct)."""
        value = kept(self.uri, run_id, name)
        if value is not None:
            return value
        value = read(run_id)
        if value is not None:
            keep(self.uri, run_id, name, value.copy)
        return value

    def _read_npz(self, run_id: str, name: str, parse: Callable[[Any], Any]) -> Any:
        """``parse`` of the open array archive ``name`` of a child run, or None if it has none.

        Raises:
            UnreadableArtifact: it is there but is not an array archive ``parse`` can read.
        """
        try:
            self._require_artifact(run_id, name)
        except UnreadableArtifact:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, name, tmp)
            try:
                with np.load(path) as f:
                    return parse(f)
            except (ValueError, OSError, KeyError) as exc:
                raise UnreadableArtifact(f"{name} cannot be read ({first_line(exc)})") from None

    def _require_artifact(self, run_id: str, name: str) -> None:
        # Listing first tells a file that is gone (the run is unusable) from a store that does
        # not answer (an error that propagates: nothing is concluded from an outage).
        if name not in {a.path for a in self.client.list_artifacts(run_id)}:
            raise UnreadableArtifact(f"{name} is missing from the artifact store")

    def mark_unusable(self, run_id: str, reason: str) -> None:
        """Tag a finished run whose artifacts cannot be read, so no later run reuses it."""
        self.client.set_tag(run_id, UNUSABLE_TAG, reason[:5000])
