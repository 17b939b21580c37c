"""The Prefect flow: load data once, train per (BN, batch size) group, evaluate and log per cell,
analyse at the end. Prefect lives here only; the work is done by plain functions in bnpipe/.
"""

from __future__ import annotations

import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from bnpipe.config import Config, DataConfig
from bnpipe.data import MnistData, load_mnist
from bnpipe.evaluate import Evaluation, evaluate_weights
from bnpipe.grid import Group, cell_key_for, cell_params, groups, history_frame, result_row
from bnpipe.progress import Progress
from bnpipe.provenance import git_commit, package_versions
from bnpipe.report import ReportOutput, build_report
from bnpipe.tracking import TAG_PREFIX, Tracker, resolve_uri
from bnpipe.train import TrainResult, train_group
from bnpipe.train.common import Cell

VERDICT_COLUMNS = (
    "batch_size",
    "n_pairs",
    "acc_no_bn",
    "acc_bn",
    "mean_diff",
    "ci_low",
    "ci_high",
    "t_pvalue",
    "p_holm",
    "tost_pvalue",
    "verdict",
)

# Tasks pass large arrays in memory: hashing them for Prefect's default cache key would cost more
# than the work, and finished cells are found in MLflow instead, so no task caches.


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def load_data(data: DataConfig) -> MnistData:
    """Read and verify MNIST (I/O: retried)."""
    return load_mnist(data.dir).subset(data.limit_train, data.limit_test)


@task(cache_policy=NO_CACHE, task_run_name="train {group.name}")
def train(group: Group, data: MnistData, cfg: Config, progress: Progress) -> list[TrainResult]:
    """Train every seed of one group (fused: one stacked model; keras: one fit per seed)."""
    return train_group(
        cfg.train.engine,
        group.bn,
        group.batch_size,
        group.seeds,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        epochs=cfg.train.epochs,
        learning_rate=cfg.train.learning_rate,
        hidden_units=cfg.model.hidden_units,
        steps_per_execution=cfg.train.steps_per_execution,
        max_models_per_chunk=cfg.train.max_models_per_chunk,
        on_epoch=progress.epoch,
    )


@task(cache_policy=NO_CACHE, task_run_name="evaluate {result.cell.name}")
def evaluate(result: TrainResult, data: MnistData, cfg: Config) -> Evaluation:
    """Test metrics of one trained cell."""
    return evaluate_weights(
        result.cell,
        result.weights,
        data.x_test,
        data.y_test,
        hidden_units=cfg.model.hidden_units,
        num_classes=cfg.model.num_classes,
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="log {cell.name}")
def log_cell(
    tracker: Tracker,
    parent_id: str,
    cell: Cell,
    cfg: Config,
    data: MnistData,
    result: TrainResult | None,
    evaluation: Evaluation | None,
    error: str | None,
    common_tags: dict[str, str],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Write one child run (I/O: retried); return the cell's results row and its history."""
    history = history_frame(result) if result is not None else history_frame(TrainResult(cell, []))
    if error is not None:
        status, reason = "failed", error
    elif result is not None and result.status != "finished":
        status, reason = result.status, result.error or result.status
    else:
        status, reason = "finished", None
    tags = {
        **common_tags,
        TAG_PREFIX + "cell_key": cell_key_for(cfg, cell, data.digest),
        TAG_PREFIX + "status": status,
        TAG_PREFIX + "engine": cfg.train.engine,
    }
    if reason:
        tags[TAG_PREFIX + "failure_reason"] = "diverged" if status == "diverged" else "error"
        tags[TAG_PREFIX + "error"] = reason[:5000]
    final = dict(evaluation.metrics()) if evaluation is not None else {}
    if result is not None:
        final["train_time_s"] = result.train_time_s
    run_id = tracker.log_cell(
        parent_id,
        cell.name,
        params=cell_params(cfg, cell, data.digest),
        tags=tags,
        history=history,
        final_metrics=final,
        confusion=evaluation.confusion if evaluation is not None else None,
        weights=result.weights if (result is not None and cfg.tracking.log_weights) else None,
        status="FINISHED" if status == "finished" else "FAILED",
    )
    row = result_row(
        cell,
        status=status,
        run_id=run_id,
        test_accuracy=evaluation.test_accuracy if evaluation is not None else float("nan"),
        test_loss=evaluation.test_loss if evaluation is not None else float("nan"),
        history=history,
        error=reason,
    )
    return row, history.assign(bn=cell.bn, batch_size=cell.batch_size, seed=cell.seed)


@task(cache_policy=NO_CACHE)
def analyze(
    results: pd.DataFrame, histories: pd.DataFrame, cfg: Config, run_name: str, run_info: dict
) -> ReportOutput:
    """Statistics, figures and report.md under reports/<run name>/; published to Prefect too."""
    out = build_report(
        results,
        histories,
        Path(cfg.tracking.reports_dir) / run_name,
        title=f"BN ablation: {run_name}",
        alpha=cfg.stats.alpha,
        equivalence_margin=cfg.stats.equivalence_margin,
        threshold=cfg.stats.val_threshold,
        n_resamples=cfg.stats.n_resamples,
        run_info=run_info,
    )
    key = "bn-ablation-report"
    create_markdown_artifact(out.report_path.read_text(), key=key, description=run_name)
    table = out.summary[list(VERDICT_COLUMNS)].round(6)
    create_table_artifact(
        table.astype(object).where(table.notna(), None).to_dict("records"),
        key=key + "-table",
        description=f"BN minus no-BN per batch size ({run_name})",
    )
    return out


def cfg_info(cfg: Config, data: MnistData) -> dict[str, Any]:
    """Facts shown at the top of the report."""
    return {
        "grid": f"BN {list(cfg.grid.bn)} x batch sizes {list(cfg.grid.batch_sizes)} x "
        f"{len(cfg.grid.seeds)} seeds",
        "training": f"{cfg.train.epochs} epochs, Adam lr {cfg.train.learning_rate}, "
        f"engine {cfg.train.engine}",
        "data": f"{len(data.x_train)} train / {len(data.x_test)} test ({data.source}), "
        f"digest {data.digest[:12]}",
    }


def _error_text(state: State) -> str:
    """One line saying why a task failed (the full traceback stays in Prefect's logs)."""
    try:
        state.result()
    except Exception as exc:  # the state's exception, re-raised by result()
        lines = traceback.format_exception_only(type(exc), exc)
        return lines[-1].strip()
    return str(state.message or state.name)


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Key numbers per batch size as parent-run metrics, so the UI can chart them over runs."""
    out: dict[str, float] = {}
    names = {
        "mean_diff": "diff",
        "ci_low": "ci_low",
        "ci_high": "ci_high",
        "t_pvalue": "p",
        "p_holm": "p_holm",
        "acc_bn": "acc_bn",
        "acc_no_bn": "acc_no_bn",
        "n_pairs": "n_pairs",
    }
    for _, row in summary.iterrows():
        for col, short in names.items():
            if col in row:
                out[f"{short}_bs{int(row['batch_size'])}"] = float(row[col])
    return out


@flow(name="bn-ablation")
def ablation(params: dict[str, Any]) -> dict[str, Any]:
    """Run the BN x batch-size x seed grid defined by ``params`` (a params.yaml mapping).

    Returns the parent run id, the results table (records) and the per-batch-size summary.
    """
    cfg = Config.model_validate(params)
    started = time.perf_counter()
    data = load_data(cfg.data)
    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    tracker.check()
    run_name = f"ablation-{datetime.now():%Y%m%d-%H%M%S}"
    common_tags = {
        TAG_PREFIX + "data_digest": data.digest,
        TAG_PREFIX + "git_commit": git_commit() or "unknown",
        **{f"{TAG_PREFIX}version.{k}": v for k, v in package_versions().items()},
    }
    parent_id = tracker.start_run(
        run_name, params=cfg.flat(), tags={**common_tags, TAG_PREFIX + "role": "parent"}
    )
    progress = Progress(len(groups(cfg)) * len(cfg.grid.seeds), cfg.train.epochs)
    try:
        rows: list[dict[str, Any]] = []
        histories: list[pd.DataFrame] = []
        for group in groups(cfg):
            trained = train(group, data, cfg, progress, return_state=True)
            if trained.is_failed():
                why = _error_text(trained)
                for cell in group.cells:
                    row, _ = log_cell(
                        tracker, parent_id, cell, cfg, data, None, None, why, common_tags
                    )
                    rows.append(row)
                    progress.cell(cell, "failed", float("nan"))
                continue
            for result in trained.result():
                evaluation, why = None, None
                if result.status == "finished":
                    evaluated = evaluate(result, data, cfg, return_state=True)
                    if evaluated.is_failed():
                        why = _error_text(evaluated)
                    else:
                        evaluation = evaluated.result()
                row, history = log_cell(
                    tracker, parent_id, result.cell, cfg, data, result, evaluation, why, common_tags
                )
                rows.append(row)
                histories.append(history)
                progress.cell(result.cell, row["status"], row["test_accuracy"])
        results = pd.DataFrame(rows)
        history_table = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
        run_info = {"parent run": parent_id, "tracking": tracker.uri, **cfg_info(cfg, data)}
        report = analyze(results, history_table, cfg, run_name, run_info)
        summary = report.summary
        failed = results.loc[results["status"] == "failed"]
        tracker.finish_parent(
            parent_id,
            metrics={**summary_metrics(summary), "wall_time_s": time.perf_counter() - started},
            tables={"results": results, "histories": history_table, "summary": summary},
            files=[report.report_path, *report.figures],
            tags={
                TAG_PREFIX + "cells_total": len(results),
                TAG_PREFIX + "cells_failed": len(failed),
                TAG_PREFIX + "cells_diverged": int((results["status"] == "diverged").sum()),
            },
            status="FAILED" if len(failed) else "FINISHED",
        )
    except BaseException as exc:
        # Never leave the parent RUNNING when the flow itself breaks (Ctrl-C included).
        tracker.fail_run(parent_id, f"{type(exc).__name__}: {exc}")
        raise
    return {
        "parent_run_id": parent_id,
        "run_name": run_name,
        "tracking_uri": tracker.uri,
        "results": results.to_dict("records"),
        "summary": summary.to_dict("records"),
        "report": str(report.report_path),
        "wall_time_s": time.perf_counter() - started,
    }
