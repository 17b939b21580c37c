"""The parent run: one per flow run, opened before its cells are claimed (the whole config,
provenance, owner and heartbeat) and closed with the run's analysis (key numbers, tables, the
report, the verdict as its description, and the arm summary runs)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric

from bnpipe.factors import Cell
from bnpipe.grid import cell_params, grid_cells, strata
from bnpipe.provenance import code_digest, environment_facts, git_commit, package_versions
from bnpipe.tracking.arms import ArmRuns
from bnpipe.tracking.cells import CellRun, Owner
from bnpipe.tracking.names import HEARTBEAT_TAG, NOTE_TAG, ROLE_TAG, TAG_PREFIX, parent_params

if TYPE_CHECKING:
    from bnpipe.analysis import Analysis
    from bnpipe.config import Config


@dataclass(frozen=True)
class ParentRun:
    """A flow run's open parent run."""

    run_id: str
    name: str
    common_tags: dict[str, str]  # provenance, on the parent and on every cell claimed under it


def provenance_tags(data_digest: str) -> dict[str, str]:
    """What the code, packages, machine and data were: tags on a parent and its cells."""
    return {
        TAG_PREFIX + "data_digest": data_digest,
        TAG_PREFIX + "git_commit": git_commit() or "unknown",
        TAG_PREFIX + "code_digest": code_digest(),
        **{f"{TAG_PREFIX}version.{k}": v for k, v in package_versions().items()},
        **{f"{TAG_PREFIX}env.{k}": v for k, v in environment_facts().items()},
    }


def reused_table(
    reused: Mapping[Cell, CellRun], keys: Mapping[Cell, str], factors: Iterable[str]
) -> pd.DataFrame:
    """The parent's link to reused child runs (they keep their own parent; none is moved);
    ``factors``: the grid's factor names (the table's first columns)."""
    rows = [
        {
            **dict(c.levels),
            "seed": c.seed,
            "run_id": run.run_id,
            "parent_run_id": run.parent_id,
            "cell_key": keys[c],
        }
        for c, run in sorted(reused.items())
    ]
    return pd.DataFrame(rows, columns=[*factors, "seed", "run_id", "parent_run_id", "cell_key"])


class ParentRecord(ArmRuns):
    """Opening and closing a flow run's parent run."""

    def open_parent(
        self,
        name: str,
        cfg: Config,
        data_digest: str,
        *,
        fresh: bool,
        tags: Mapping[str, Any],
    ) -> ParentRun:
        """Start the parent run RUNNING: the whole config and what its cells share as params
        (spelled as theirs), provenance, owner, ``fresh`` and a first heartbeat as tags, plus
        ``tags`` (the orchestrator's and the design's)."""
        common = provenance_tags(data_digest)
        # Any cell: the parent records only the settings its cells share.
        shared = cell_params(cfg, grid_cells(cfg, {strata(cfg)[0]: [0]})[0], data_digest)
        run_id = self.start_run(
            name,
            params=parent_params(cfg.flat(), shared, cfg.grid.levels),
            tags={
                **common,
                **Owner.current().tag(),
                ROLE_TAG: "parent",
                TAG_PREFIX + "fresh": fresh,
                HEARTBEAT_TAG: f"{time.time():.0f}",
                **tags,
            },
        )
        return ParentRun(run_id, name, common)

    def close_parent(
        self,
        parent: ParentRun,
        cfg: Config,
        *,
        results: pd.DataFrame,
        histories: pd.DataFrame,
        analysis: Analysis,
        files: list[Path],
        description: str,
        reused: Mapping[Cell, CellRun],
        keys: Mapping[Cell, str],
        abandoned: int,
        times: Mapping[str, float],
    ) -> None:
        """Close the parent with the run's analysis: FAILED when a cell failed, else FINISHED;
        then its arm summary runs (their means over every seed, which the runs table's grouping
        of one 100-run page cannot give)."""
        record = analysis.record()
        failed = results.loc[results["status"] == "failed"]
        timing = {
            f"time_{k}_s": v for k, v in times.items() if k not in ("total", "overhead_share")
        }
        self.finish_parent(
            parent.run_id,
            metrics={
                **record["metrics"],
                **timing,
                "overhead_share": times["overhead_share"],
                "wall_time_s": times["total"],
            },
            tables={
                "results": results,
                "histories": histories,
                "summary": analysis.summary,
                "reused": reused_table(reused, keys, cfg.grid.levels),
                "decisions": analysis.decisions,
                **({"looks": analysis.design.looks} if analysis.design else {}),
            },
            files=files,
            tags={
                TAG_PREFIX + "cells_total": len(results),
                TAG_PREFIX + "cells_trained": len(keys) - len(reused),
                TAG_PREFIX + "cells_reused": len(reused),
                TAG_PREFIX + "cells_failed": len(failed),
                TAG_PREFIX + "cells_diverged": int((results["status"] == "diverged").sum()),
                TAG_PREFIX + "runs_marked_abandoned": abandoned,
                **{TAG_PREFIX + k: v for k, v in record["tags"].items()},
            },
            status="FAILED" if len(failed) else "FINISHED",
            description=description,
        )
        self.log_arm_runs(parent.run_id, analysis.arms, alpha=cfg.stats.alpha)

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

    def log_report(self, run_id: str, files: list[Path]) -> None:
        """Attach report files (report.md and figures) to a run under ``report/``."""
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")
