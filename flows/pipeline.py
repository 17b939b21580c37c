"""The Prefect flow: load data once, train per group (one combination of the grid's levels),
evaluate and log per cell, analyse at the end. Prefect lives here only; the work is done by
plain functions in bnpipe/.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import signal
import time
import traceback
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.logging.handlers import APILogHandler
from prefect.logging.loggers import PrefectLogAdapter
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import State
from prefect.utilities.urls import url_for

from bnpipe.config import Config, DataConfig, load_config
from bnpipe.data import MnistData, load_mnist
from bnpipe.design import (
    Plan,
    close_capped,
    decide_all,
    next_block,
    plan_of,
)
from bnpipe.evaluate import Evaluation
from bnpipe.factors import (
    FACTORS,
    Stratum,
    contrast_phrase,
    factor_columns,
    level_phrase,
    strata_phrase,
    stratum_key,
    stratum_label,
)
from bnpipe.grid import (
    Group,
    cell_key_for,
    cell_params,
    default_level,
    evaluate_cell,
    grid_cells,
    history_frame,
    keras_model,
    result_columns,
    result_row,
    strata,
    train_cells,
    training_groups,
)
from bnpipe.progress import PhaseClock, Progress
from bnpipe.provenance import code_digest, environment_facts, git_commit, package_versions
from bnpipe.report import ReportOutput, build_run_report
from bnpipe.stats import HEADLINE_COLUMNS
from bnpipe.tracking import (
    ABANDONED,
    ERROR_TAG,
    FAILURE_TAG,
    HEARTBEAT_TAG,
    OUTCOMES,
    ROLE_TAG,
    STATUS_TAG,
    TAG_PREFIX,
    UNUSABLE_TAG,
    ArtifactWriteError,
    CellRun,
    CellSpec,
    Owner,
    Tracker,
    UnreadableArtifact,
    parent_params,
    redact_uri,
    resolve_uri,
    run_url,
    without_credentials,
)
from bnpipe.train import TrainResult
from bnpipe.train.common import Cell
from flows.runners import final_state, training_runner, worker_data

# The headline statistics with the equivalence test's p just before the verdict it decides.
VERDICT_COLUMNS = [*HEADLINE_COLUMNS[:-1], "tost_pvalue", "verdict"]

ENGINE_TAG = TAG_PREFIX + "engine"
FLOW_RUN_ID_TAG = TAG_PREFIX + "prefect.flow_run_id"
FLOW_RUN_URL_TAG = TAG_PREFIX + "prefect.flow_run_url"


@dataclass(frozen=True)
class CellOutcome:
    """One cell's row of the results table and its per-epoch history (keyed by the cell)."""

    row: dict[str, Any]
    history: pd.DataFrame


def _keyed(history: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    return history.assign(**dict(cell.levels), seed=cell.seed)


def _now_ms() -> int:
    return int(time.time() * 1000)


# Tasks pass large arrays in memory: hashing them for Prefect's default cache key would cost more
# than the work, and finished cells are found in MLflow instead, so no task caches.


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def load_data(data: DataConfig, clock: PhaseClock) -> MnistData:
    """Read and verify MNIST (I/O: retried)."""
    with clock.phase("data"):
        return load_mnist(data.dir).subset(data.limit_train, data.limit_test)


# No retries on training: an error there is deterministic far more often than transient, and a
# retry would repeat the most expensive step; the cells are recorded as failed instead.
@task(cache_policy=NO_CACHE, task_run_name="train {group.name}")
def train(group: Group, data: MnistData, cfg: Config, progress: Progress) -> list[TrainResult]:
    """Train one group in the flow process, printing per-epoch progress."""
    with progress.clock.phase("training"):
        return train_cells(cfg, group, data, progress.epoch)


@task(cache_policy=NO_CACHE, task_run_name="train {group.name}")
def train_on_worker(group: Group, cfg: Config, digest: str) -> list[TrainResult]:
    """Train one group on a Dask worker, which reads the data itself (nothing large is shipped;
    per-epoch progress stays in the worker's log)."""
    return train_cells(cfg, group, worker_data(cfg.data, digest))


# Evaluation is retried although it is computation: it is cheap (one forward pass), and what makes
# it fail is transient far more often than not (memory pressure, a lost worker).
@task(
    retries=2,
    retry_delay_seconds=1,
    cache_policy=NO_CACHE,
    task_run_name="evaluate {result.cell.name}",
)
def evaluate(result: TrainResult, data: MnistData, cfg: Config, clock: PhaseClock) -> Evaluation:
    """Test metrics of one trained cell."""
    with clock.phase("evaluation"):
        return evaluate_cell(cfg, result, data)


def _retry_unless_store_full(_task: Any, _run: Any, state: State) -> bool:
    """Retry a failed log, except when the artifact store stopped taking writes: that does not
    heal in seconds (a full or read-only disk)."""
    try:
        state.result()
    except ArtifactWriteError:
        return False
    except Exception:  # the task's own failure, re-raised by result()
        return True
    return True


class _DropReported(logging.Filter):
    """Prefect's console logs of an ArtifactWriteError (each a traceback): the CLI says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ArtifactWriteError) and (
            ArtifactWriteError.__name__ not in record.getMessage()
        )


def quiet_reported_errors() -> None:
    """Keep the tracebacks of errors the CLI reports in one line off the console (Prefect's API
    log, and so its UI, keeps them)."""
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _DropReported) for f in handler.filters
            ):
                handler.addFilter(_DropReported())


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_store_full,
    cache_policy=NO_CACHE,
    task_run_name="log {cell.name}",
)
def log_cell(
    tracker: Tracker,
    run_id: str,
    cell: Cell,
    cfg: Config,
    result: TrainResult | None,
    evaluation: Evaluation | None,
    error: str | None,
    timestamp_ms: int,
    clock: PhaseClock,
    example: Any = None,
) -> CellOutcome:
    """Fill the cell's claimed child run (I/O: retried); return its results row and history."""
    history = history_frame(result) if result is not None else history_frame(TrainResult(cell, []))
    if error is not None:
        status, reason = "failed", error
    elif result is not None and result.status != "finished":
        status, reason = result.status, result.error or result.status
    else:
        status, reason = "finished", None
    tags = {STATUS_TAG: status}
    if reason:
        tags[FAILURE_TAG] = "diverged" if status == "diverged" else "error"
        tags[ERROR_TAG] = reason[:5000]
    final = dict(evaluation.metrics()) if evaluation is not None else {}
    if result is not None:
        final["train_time_s"] = result.train_time_s
    log_model = cfg.tracking.log_models and evaluation is not None and result is not None
    with clock.phase("tracking"):
        tracker.log_cell(
            run_id,
            tags=tags,
            history=history,
            final_metrics=final,
            confusion=evaluation.confusion if evaluation is not None else None,
            weights=result.weights if (result is not None and cfg.tracking.log_weights) else None,
            # A diverged cell is an outcome (with fixed seeds it diverges again the same way):
            # FINISHED, so later runs reuse it; only errors stay FAILED and train again.
            status="FINISHED" if status in OUTCOMES else "FAILED",
            timestamp_ms=timestamp_ms,
            model=keras_model(cfg, result) if log_model else None,
            input_example=example,
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
    return CellOutcome(row, _keyed(history, cell))


def load_reused(state: GridRun) -> dict[Cell, CellOutcome]:
    """Results rows and histories of cells finished (or diverged) in earlier runs.

    The test metrics are the recorded ones and the history is the run's history.csv (read when
    the run was taken over): nothing is trained or evaluated again. A diverged cell comes back
    diverged, with its recorded reason, so the statistics treat it as the run that trained it.
    """
    out = {}
    for cell, run in state.reused.items():
        history = state.histories[cell]
        row = result_row(
            cell,
            status=run.outcome,
            run_id=run.run_id,
            test_accuracy=run.test_accuracy,
            test_loss=run.test_loss,
            history=history,
            error=run.tags.get(ERROR_TAG) if run.outcome != "finished" else None,
            reused=True,
        )
        out[cell] = CellOutcome(row, _keyed(history, cell))
    return out


@task(cache_policy=NO_CACHE)
def analyze(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    cfg: Config,
    run_name: str,
    run_info: dict,
    clock: PhaseClock,
) -> ReportOutput:
    """Statistics, figures and report.md under reports/<run name>/; published to Prefect too."""
    with clock.phase("analysis"):
        out = build_run_report(results, histories, cfg, run_name, run_info)
    key = "bn-ablation-report"
    markdown = embed_images(out.report_path.read_text(), out.report_path.parent)
    create_markdown_artifact(markdown, key=key, description=run_name)
    table = out.summary[VERDICT_COLUMNS].round(6)
    create_table_artifact(
        table.astype(object).where(table.notna(), None).to_dict("records"),
        key=key + "-table",
        description=f"{_contrast(cfg)} ({run_name})",
    )
    return out


def embed_images(markdown: str, folder: Path) -> str:
    """``markdown`` with its local PNG links (relative to ``folder``) turned into data: URIs:
    Prefect's artifact viewer cannot reach report files, but shows embedded images (checked in
    Chromium; tests/test_prefect_ui.py)."""

    def inline(match: re.Match[str]) -> str:
        path = folder / match["src"]
        if not path.is_file():
            return match[0]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match['alt']}](data:image/png;base64,{data})"

    return re.sub(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^):/]+\.png)\)", inline, markdown)


def new_run_name() -> str:
    """A fresh run name, shared by the Prefect flow run and its MLflow parent run.

    The random suffix keeps two runs started in the same second out of each other's report
    folder (reports/<run name>/).
    """
    return f"ablation-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _prefect_log() -> logging.LoggerAdapter:
    """The flow run's logger, sending to Prefect's API only: the terminal already shows the
    same lines (or a live bar), so Prefect's console handler would print them twice."""
    logger = logging.getLogger("bnpipe.flow_run")
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return PrefectLogAdapter(logger, extra=dict(get_run_logger().extra))


def _prefect_progress(run_name: str) -> Callable[[int, int], None]:
    """A progress artifact at 0%; the returned callable moves it to ``done / total`` (the
    cells planned so far: a sequential design adds a look's cells when it starts the look)."""

    def description(done: int, total: int) -> str:
        # The flow run's Artifacts tab shows descriptions, not percentages.
        return f"{done} of {total} cells done ({run_name})"

    artifact = create_progress_artifact(
        0.0, key="bn-ablation-progress", description=description(0, 0)
    )

    def update(done: int, total: int) -> None:
        update_progress_artifact(
            artifact, 100.0 * done / total, description=description(done, total)
        )

    return update


def _flow_run_tags() -> dict[str, str]:
    """Tags pointing the MLflow parent run at this flow run (its URL where a UI is known)."""
    tags = {FLOW_RUN_ID_TAG: str(current_flow_run.get_id())}
    if PREFECT_UI_URL.value():
        tags[FLOW_RUN_URL_TAG] = url_for("flow-run", obj_id=current_flow_run.get_id())
    return tags


def _link_to_mlflow(tracker: Tracker, parent_id: str, run_name: str) -> None:
    """A link artifact from this flow run to its MLflow parent run's page."""
    create_link_artifact(
        run_url(tracker.uri, tracker.experiment_id, parent_id),
        link_text=f"MLflow parent run {run_name}",
        key="bn-ablation-mlflow-run",
        description="The MLflow run holding this flow run's params, metrics and report",
    )


def _contrast(cfg: Config) -> str:
    """``BN on minus BN off test accuracy per batch size``: what the comparisons are."""
    others = [n for n in cfg.grid.levels if n != cfg.grid.compare]
    return (
        f"{contrast_phrase(cfg.grid.compare, cfg.grid.compare_levels)} test accuracy "
        f"{strata_phrase(others)}"
    )


def cfg_info(cfg: Config, data: MnistData) -> dict[str, Any]:
    """Facts shown at the top of the report."""
    grid = " x ".join(f"{name} {list(levels)}" for name, levels in cfg.grid.levels.items())
    return {
        "grid": f"{grid} x seeds; compared: {_contrast(cfg)}",
        "design": plan_of(cfg).describe(),
        "training": f"{cfg.train.epochs} epochs, Adam, engine {cfg.train.engine}; "
        + ", ".join(
            level_phrase(name, default_level(cfg, name))
            for name in FACTORS
            if name not in cfg.grid.levels
        ),
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
    """Key numbers per comparison as parent-run metrics (``diff_batch_size_32``), so the UI can
    chart them over runs."""
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
        factors = [c for c in factor_columns(summary.columns) if c != row.get("compare")]
        key = stratum_key(tuple((n, _py(row[n])) for n in factors))
        for col, short in names.items():
            if col in row:
                out[f"{short}_{key}"] = float(row[col])
    return out


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _grouped(cells: list[Cell], order: Iterable[Cell]) -> list[list[Cell]]:
    """``cells`` split into training groups, in the grid order of ``order``."""
    todo = set(cells)
    return [g.cells for g in training_groups(c for c in order if c in todo)]


def _group_of(claimed: MutableMapping[Cell, str]) -> Group:
    cells = sorted(claimed)
    return Group(cells[0].levels, tuple(c.seed for c in cells))


def _train_on_cluster(
    won_groups: list[dict[Cell, str]], data: MnistData, cfg: Config, clock: PhaseClock
) -> Iterator[tuple[dict[Cell, str], State]]:
    """dask: every claimed group trains at once on the workers; each comes back with its final
    state, in grid order, for the flow process to evaluate and log (the only MLflow writer)."""
    with training_runner(cfg) as runner:
        futures = [
            runner.submit(
                train_on_worker, {"group": _group_of(won), "cfg": cfg, "digest": data.digest}
            )
            for won in won_groups
        ]
        for won, future in zip(won_groups, futures, strict=True):
            with clock.phase("training"):  # waiting for the workers
                state = final_state(future)
            yield won, state


def _train_and_log(
    claimed: MutableMapping[Cell, str],
    tracker: Tracker,
    data: MnistData,
    cfg: Config,
    progress: Progress,
    trained: State | None = None,
) -> dict[Cell, CellOutcome]:
    """Train the claimed cells of one group (unless ``trained`` elsewhere already), evaluate
    each, and fill their child runs.

    A cell leaves ``claimed`` once its run is closed, so what remains there if this raises are
    the runs still open.
    """
    cells = sorted(claimed)
    group = _group_of(claimed)
    evaluate_task = evaluate.with_options(retries=cfg.orchestration.retries)
    log_task = log_cell.with_options(retries=cfg.orchestration.retries)
    out: dict[Cell, CellOutcome] = {}
    if trained is None:
        trained = train(group, data, cfg, progress, return_state=True)
    if trained.is_failed():
        why = _error_text(trained)
        for cell in cells:
            out[cell] = log_task(
                tracker, claimed[cell], cell, cfg, None, None, why, _now_ms(), progress.clock
            )
            del claimed[cell]
            progress.cell(cell, "failed", float("nan"))
        return out
    for result in trained.result():
        evaluation, why = None, None
        if result.status == "finished":
            evaluated = evaluate_task(result, data, cfg, progress.clock, return_state=True)
            if evaluated.is_failed():
                why = _error_text(evaluated)
            else:
                evaluation = evaluated.result()
        cell = result.cell
        out[cell] = log_task(
            tracker,
            claimed[cell],
            cell,
            cfg,
            result,
            evaluation,
            why,
            _now_ms(),
            progress.clock,
            data.x_test[:3],
        )
        del claimed[cell]
        progress.cell(cell, out[cell].row["status"], out[cell].row["test_accuracy"])
    return out


@dataclass
class GridRun:
    """Where every cell of one flow run came from."""

    outcomes: dict[Cell, CellOutcome] = field(default_factory=dict)
    reused: dict[Cell, CellRun] = field(default_factory=dict)
    histories: dict[Cell, pd.DataFrame] = field(default_factory=dict)  # of the reused cells
    open_claims: MutableMapping[Cell, str] = field(default_factory=dict)


def _reuse(
    state: GridRun, runs: dict[Cell, CellRun], tracker: Tracker, progress: Progress
) -> list[Cell]:
    """Take over the finished (or diverged) runs whose history can be read; return the cells
    of the others.

    A finished run whose history.csv is gone or broken is no result: it is tagged so no later run
    picks it again, and its cell is trained again.
    """
    again = []
    for cell, run in sorted(runs.items()):
        try:
            with progress.clock.phase("tracking"):
                history = tracker.history(run.run_id)
        except UnreadableArtifact as exc:
            tracker.mark_unusable(run.run_id, str(exc))
            print(
                f"run {run.run_id[:8]} ({cell.name}) is not reusable: {exc}; training the cell "
                f"again (tag {UNUSABLE_TAG})",
                flush=True,
            )
            again.append(cell)
            continue
        state.reused[cell], state.histories[cell] = run, history
        what = "reused" if run.outcome == "finished" else f"reused, {run.outcome}"
        progress.cell(cell, f"{what} (run {run.run_id[:8]})", run.test_accuracy)
    return again


def _run_grid(
    state: GridRun,
    keys: dict[Cell, str],
    parent_id: str,
    tracker: Tracker,
    data: MnistData,
    cfg: Config,
    progress: Progress,
    *,
    fresh: bool,
    common_tags: dict[str, str],
) -> None:
    """Reuse what is finished, claim and train what is not, wait for what others train."""
    owner = Owner.current()
    if not fresh:
        with progress.clock.phase("tracking"):
            found = tracker.finished_cells(keys.values())
        _reuse(state, {c: found[k] for c, k in keys.items() if k in found}, tracker, progress)
    pending = [c for c in keys if c not in state.reused]
    waiting: dict[str, Cell] = {}  # another run's live claim -> the cell it trains
    told = False  # the contention is one line; each cell's "reused" line says the rest
    while pending or waiting:
        won_groups: list[dict[Cell, str]] = []
        again: list[Cell] = []  # offered a finished run that turned out unusable
        for cells in _grouped(pending, keys):
            specs = [
                CellSpec(
                    keys[c],
                    c.name,
                    cell_params(cfg, c, data.digest),
                    {**common_tags, ROLE_TAG: "cell", ENGINE_TAG: cfg.train.engine},
                )
                for c in cells
            ]
            with progress.clock.phase("tracking"):
                claims = tracker.claim_cells(parent_id, specs, owner, exclusive=not fresh)
            by_key = {keys[c]: c for c in cells}
            finished = {by_key[k]: run for k, run in claims.finished.items()}
            again += _reuse(state, finished, tracker, progress)
            for key, other in claims.taken.items():
                waiting[other] = by_key[key]
            won = {by_key[k]: run_id for k, run_id in claims.won.items()}
            if won and cfg.orchestration.task_runner == "serial":
                state.open_claims = won
                state.outcomes.update(_train_and_log(won, tracker, data, cfg, progress))
            elif won:
                won_groups.append(won)
        if won_groups:
            # The runs of every group stay open until their group is logged; a ChainMap sees
            # each group's cells leave as _train_and_log closes them.
            state.open_claims = ChainMap(*won_groups)
            for won, trained in _train_on_cluster(won_groups, data, cfg, progress.clock):
                state.outcomes.update(_train_and_log(won, tracker, data, cfg, progress, trained))
        pending = again
        if waiting:
            if not told:
                print(
                    f"waiting for {len(waiting)} cell(s) that another bnpipe run is training "
                    "(their results will be reused)",
                    flush=True,
                )
                told = True
            settled = tracker.wait_for(waiting)
            done = {}
            for other in sorted(settled, key=waiting.__getitem__):
                cell, run = waiting.pop(other), settled[other]
                if run is None:  # failed, withdrawn or abandoned: claim it again
                    pending.append(cell)
                else:
                    done[cell] = run
            pending += _reuse(state, done, tracker, progress)
            pending.sort()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the flow after ``runs_failed`` open cell runs were closed."""

    def __init__(self, signum: int, runs_failed: int) -> None:
        super().__init__(f"signal {signum}: {runs_failed} open cell run(s) marked FAILED")
        self.signum, self.runs_failed = signum, runs_failed


@flow(name="bn-ablation", flow_run_name=new_run_name)
def ablation(params: Config, fresh: bool = False) -> dict[str, Any]:
    """Run the grid (factor levels x seeds) defined by ``params``.

    Args:
        params: The experiment, as in params.yaml (a mapping of the same shape works too).
        fresh: Train every cell, even those finished by earlier runs.

    Cells whose key has a FINISHED run in the experiment (finished or diverged) are reused, not
    trained, unless ``fresh``. Runs left RUNNING by a killed bnpipe process are marked FAILED
    first.

    Returns the parent run id, the results table (records), the per-comparison summary, and
    which cells were trained and reused.
    """
    # A deployment's params may carry credentials in the URI: keep them out of what is logged.
    cfg = without_credentials(Config.model_validate(params))
    clock = PhaseClock()
    data = load_data.with_options(retries=cfg.orchestration.retries)(cfg.data, clock)
    with clock.phase("tracking"):
        tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
        tracker.check()
        tracker.use_data(data)
        abandoned = tracker.fail_abandoned_runs()
    if abandoned:
        print(
            f"marked {len(abandoned)} run(s) FAILED that a killed bnpipe process left RUNNING "
            f"(tag {FAILURE_TAG}={ABANDONED}); their cells are trained again",
            flush=True,
        )
    run_name = current_flow_run.get_name() or new_run_name()
    common_tags = {
        TAG_PREFIX + "data_digest": data.digest,
        TAG_PREFIX + "git_commit": git_commit() or "unknown",
        TAG_PREFIX + "code_digest": code_digest(),
        **{f"{TAG_PREFIX}version.{k}": v for k, v in package_versions().items()},
        **{f"{TAG_PREFIX}env.{k}": v for k, v in environment_facts().items()},
    }
    # Any cell: the parent records only the settings its cells share.
    shared = cell_params(cfg, grid_cells(cfg, {strata(cfg)[0]: [0]})[0], data.digest)
    with clock.phase("tracking"):
        parent_id = tracker.start_run(
            run_name,
            params=parent_params(cfg.flat(), shared, cfg.grid.levels),
            tags={
                **common_tags,
                **Owner.current().tag(),
                ROLE_TAG: "parent",
                TAG_PREFIX + "fresh": fresh,
                HEARTBEAT_TAG: f"{time.time():.0f}",
                **_flow_run_tags(),
            },
        )
    _link_to_mlflow(tracker, parent_id, run_name)
    print(f"MLflow parent run: {tracker.run_url(parent_id)}", flush=True)
    plan = plan_of(cfg)
    log = _prefect_log()
    progress = Progress(
        0, cfg.train.epochs, clock=clock, sinks=[log.info], on_cell=_prefect_progress(run_name)
    )
    progress.note(f"plan: {plan.describe()}; {_plan_size(plan, cfg)}")
    state = GridRun()
    try:
        with tracker.heartbeat(parent_id):

            def run_cells(seeds: dict[Stratum, range | tuple[int, ...]]) -> dict[Cell, str]:
                keys = {c: cell_key_for(cfg, c, data.digest) for c in grid_cells(cfg, seeds)}
                progress.total += len(keys)
                _run_grid(
                    state,
                    keys,
                    parent_id,
                    tracker,
                    data,
                    cfg,
                    progress,
                    fresh=fresh,
                    common_tags=common_tags,
                )
                return keys

            keys = _run_design(plan, run_cells, state, progress, cfg)
            state.outcomes.update(load_reused(state))
            # Grid order, whichever cells were reused and whichever look trained them: the
            # analysis is then the same as a run's that trained everything at once.
            by_stratum = _seeds_by_stratum(keys, cfg.grid.compare)
            ordered = [state.outcomes[c] for c in grid_cells(cfg, by_stratum)]
            results = pd.DataFrame([o.row for o in ordered], columns=result_columns(cfg))
            histories = [o.history for o in ordered if len(o.history)]
            history_table = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
            run_info = {
                "parent run": parent_id,
                "tracking": redact_uri(tracker.uri),
                **cfg_info(cfg, data),
            }
            if state.reused:
                run_info["reused"] = (
                    f"{len(state.reused)} of {len(keys)} cells from earlier runs (reused.csv)"
                )
            report = analyze(results, history_table, cfg, run_name, run_info, clock)
            summary = report.summary
            design = report.design
            log.info(
                "%s (report %s):\n%s",
                _contrast(cfg),
                report.report_path,
                summary[VERDICT_COLUMNS].round(4).to_string(index=False),
            )
            failed = results.loc[results["status"] == "failed"]
            times = clock.breakdown()
            timing_metrics = {
                f"time_{k}_s": v for k, v in times.items() if k not in ("total", "overhead_share")
            }
            with clock.phase("tracking"):
                tracker.finish_parent(
                    parent_id,
                    metrics={
                        **summary_metrics(summary),
                        **design.record["metrics"],
                        **timing_metrics,
                        "overhead_share": times["overhead_share"],
                        "wall_time_s": times["total"],
                    },
                    tables={
                        "results": results,
                        "histories": history_table,
                        "summary": summary,
                        "reused": reused_table(state.reused, keys, cfg.grid.levels),
                        **(
                            {"decisions": design.decisions, "looks": design.looks}
                            if plan.sequential
                            else {}
                        ),
                    },
                    files=[report.report_path, report.html_path, *report.figures],
                    tags={
                        TAG_PREFIX + "cells_total": len(results),
                        TAG_PREFIX + "cells_trained": len(keys) - len(state.reused),
                        TAG_PREFIX + "cells_reused": len(state.reused),
                        TAG_PREFIX + "cells_failed": len(failed),
                        TAG_PREFIX + "cells_diverged": int((results["status"] == "diverged").sum()),
                        TAG_PREFIX + "runs_marked_abandoned": len(abandoned),
                        **{TAG_PREFIX + k: v for k, v in design.record["tags"].items()},
                    },
                    status="FAILED" if len(failed) else "FINISHED",
                    description=report.verdict_markdown,
                )
    except BaseException as exc:
        # Never leave our runs RUNNING when the flow itself breaks (Ctrl-C included): a claim
        # left open would make a concurrent run wait for a cell nobody trains.
        why = f"{type(exc).__name__}: {exc}"
        open_runs = list(state.open_claims.values())
        for run_id in open_runs:
            tracker.fail_run(run_id, why, failure="interrupted")
        tracker.fail_run(parent_id, why)
        if isinstance(exc, KeyboardInterrupt | TerminationSignal):
            raise Interrupted(getattr(exc, "signal", signal.SIGINT), len(open_runs)) from exc
        raise
    finally:
        progress.close()
    final_times = clock.breakdown()  # finish_parent's own tracking included
    return {
        "parent_run_id": parent_id,
        "parent_url": tracker.run_url(parent_id),
        "run_name": run_name,
        "tracking_uri": redact_uri(tracker.uri),
        "results": results.to_dict("records"),
        "summary": summary.to_dict("records"),
        "decisions": design.decisions.to_dict("records"),
        "report": str(report.report_path),
        "wall_time_s": final_times["total"],
        "timing": final_times,
        "trained": len(keys) - len(state.reused),
        "reused": len(state.reused),
        "abandoned": abandoned,
    }


def _plan_size(plan: Plan, cfg: Config) -> str:
    """How many cells the plan trains (a fixed list), or per look and at most (sequential)."""
    arms = len(cfg.grid.compare_levels)
    if not plan.sequential:
        return f"{arms * len(plan.strata) * len(plan.seeds)} cells"
    per_look = arms * len(plan.strata) * plan.look_every
    return (
        f"{per_look} cells per look, at most {arms * len(plan.strata) * plan.max_seeds} "
        f"({plan.max_looks} looks)"
    )


def _seeds_by_stratum(cells: Iterable[Cell], compare: str) -> dict[Stratum, list[int]]:
    out: dict[Stratum, set[int]] = {}
    for c in cells:
        out.setdefault(c.stratum(compare), set()).add(c.seed)
    return {st: sorted(s) for st, s in out.items()}


def _light_results(state: GridRun, cfg: Config) -> pd.DataFrame:
    """Status and test accuracy of every cell so far (trained or reused): what a look needs."""
    columns = [*cfg.grid.levels, "seed", "status", "test_accuracy"]
    rows = [{k: o.row[k] for k in columns} for o in state.outcomes.values()]
    rows += [
        {
            **dict(c.levels),
            "seed": c.seed,
            "status": run.outcome,
            "test_accuracy": run.test_accuracy,
        }
        for c, run in state.reused.items()
    ]
    return pd.DataFrame(rows, columns=columns)


def _run_design(
    plan: Plan, run_cells: Any, state: GridRun, progress: Progress, cfg: Config
) -> dict[Cell, str]:
    """Train what the design asks for; returns every cell's key.

    Fixed: the seed list once. Sequential: a block of ``look_every`` seeds for every open
    comparison, then a look (decisions from all pairs so far, reused ones included), until
    every comparison is decided or capped.
    """
    if not plan.sequential:
        return run_cells({st: plan.seeds for st in plan.strata})
    keys: dict[Cell, str] = {}
    started = dict.fromkeys(plan.strata, 0)
    decisions = decide_all(_light_results(state, cfg), plan)
    look = trained_looks = 0
    while block := next_block(plan, decisions, started):
        # Looks replayed from reused cells are free and do not count: a scheduled run with
        # looks_per_run=1 replays the design so far, then trains exactly one new look.
        if plan.looks_per_run is not None and trained_looks >= plan.looks_per_run:
            progress.note(
                f"stopping after {trained_looks} new look(s) (stats.looks_per_run); the next run "
                "does the next look of the same design"
            )
            break
        look += 1
        trained_before = len(state.outcomes)
        t0 = time.perf_counter()
        progress.set_stage(
            f"look {look}: seeds {min(r.start for r in block.values())}-"
            f"{max(r.stop for r in block.values()) - 1} for "
            f"{', '.join(stratum_label(st) for st in block)}"
        )
        keys.update(run_cells(block))
        trained_looks += len(state.outcomes) > trained_before
        for st, seeds in block.items():
            started[st] = seeds.stop
        decisions = close_capped(decide_all(_light_results(state, cfg), plan), plan, started)
        progress.note(
            f"look {look} done in {time.perf_counter() - t0:.0f}s: "
            + "; ".join(
                f"{stratum_label(st)} {d.decision} (n={d.n}, "
                f"RCI [{100 * d.rci_low:+.2f}, {100 * d.rci_high:+.2f}] pp)"
                for st, d in decisions.items()
            )
        )
        still_open = [st for st, d in decisions.items() if d.decision == "continue"]
        if still_open and len(state.outcomes) > trained_before:
            # Worst case: every open comparison runs to max_seeds at this look's pace.
            per_pair = (time.perf_counter() - t0) / sum(len(r) for r in block.values())
            left = sum(max(0, plan.max_seeds - started[st]) for st in still_open)
            progress.note(
                f"still open: {len(still_open)} comparison(s); at most {2 * left} more cells "
                f"(~{per_pair * left / 60:.0f} min at this look's pace)"
            )
    return keys


def reused_table(
    reused: dict[Cell, CellRun], keys: dict[Cell, str], factors: Iterable[str]
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


@flow(name="bn-ablation-from-file", flow_run_name=new_run_name)
def ablation_from_file(
    params_file: str = "params.yaml", overrides: list[str] | None = None
) -> dict[str, Any]:
    """The ablation with params read when the run starts. prefect.yaml deploys this flow, so an
    edited params.yaml applies to the next scheduled run without redeploying.

    Args:
        params_file: The params file, relative to the run's working folder.
        overrides: Changes in ``bnpipe run --set`` form, e.g. ``grid.seeds=[0,1,2]``.
    """
    # Credentials in the file's URI go to this process's environment, not into the subflow's
    # parameters (which the Prefect server stores).
    cfg = without_credentials(load_config(params_file, list(overrides or [])))
    # The subflow (and so its MLflow parent run) takes this run's name: one name in both UIs.
    return ablation.with_options(flow_run_name=current_flow_run.get_name())(cfg)
