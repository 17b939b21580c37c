"""Arm summary runs: one run per arm (stratum x level of the compared factor) beside a parent's
cells, holding the arm's mean over every seed, and a shared UI view listing only them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.factors import FACTORS, canonical, levels_text
from bnpipe.tracking.names import (
    ARM_FILTER,
    ARM_METRICS,
    ARM_ORDER_TAG,
    ARM_ROLE,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SHARED_VIEW_PREFIX,
    logged_params,
)
from bnpipe.tracking.read import Reading

# What a user reads first in the runs table, 100 runs to a page: the arms of one parent only, and
# their numbers. The default start-time order would also fetch the parent and fold the arm runs
# under it, collapsed; ordering by the arm order tag lists them flat.
_ARM_VIEW_COLUMNS = [f"metrics.`{m}`" for m in ARM_METRICS.values()]
_ARM_VIEW_WIDTHS = {"attributes.`Run Name`": 300, **dict.fromkeys(_ARM_VIEW_COLUMNS, 170)}


class ArmRuns(Reading):
    """Writing and reading a parent's arm summary runs."""

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
        for old in list(self._runs(f"tags.`{PARENT_TAG}` = '{parent_id}' AND {ARM_FILTER}")):
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
            "searchFilter": f"{ARM_FILTER} AND tags.`{PARENT_TAG}` = '{parent_id}'",
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

    def arm_runs(self, parent_id: str) -> pd.DataFrame:
        """The arm summary runs of a parent as a DataFrame, in their order (log_arm_runs)."""
        runs = self._search(f"tags.`{PARENT_TAG}` = '{parent_id}' AND {ARM_FILTER}")
        if not len(runs):
            return runs
        return runs.sort_values(f"tags.{ARM_ORDER_TAG}").reset_index(drop=True)


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
