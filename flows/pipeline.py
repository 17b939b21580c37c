"""The Prefect flow: load data once, train per group (one combination of the grid's levels),
evaluate and log per cell, analyse at the end. Prefect lives here only: the tasks wrap plain
functions in bnpipe/, and the cell scheduler (what to reuse, claim, train, wait for, when a
sequential look is due) is bnpipe/runner.py, handed the callable that trains and logs claimed
groups as tasks.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
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
from prefect.futures import PrefectFuture
from prefect.logging.handlers import APILogHandler
from prefect.logging.loggers import PrefectLogAdapter
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import State
from prefect.utilities.urls import url_for

from bnpipe import trainer
from bnpipe.analysis import analyze as run_analysis
from bnpipe.config import Config, DataConfig, load_config
from bnpipe.data import MnistData, load_mnist, worker_data
from bnpipe.design import plan_of
from bnpipe.evaluate import Evaluation
from bnpipe.grid import (
    Group,
    cell_params,
    evaluate_cell,
    grid_cells,
    strata,
    train_cells,
)
from bnpipe.progress import PhaseClock, Progress
from bnpipe.provenance import code_digest, environment_facts, git_commit, package_versions
from bnpipe.report import ReportOutput, decision_table, write_run_report
from bnpipe.runner import (
    CellOutcome,
    GridRun,
    Outage,
    TrainClaimed,
    cfg_info,
    collect,
    contrast_text,
    design_start,
    fail_open_runs,
    group_of,
    log_outcome,
    now_ms,
    plan_size,
    reused_table,
    run_plan,
)
from bnpipe.tracking import (
    ABANDONED,
    FAILURE_TAG,
    HEARTBEAT_TAG,
    ROLE_TAG,
    TAG_PREFIX,
    ArtifactWriteError,
    Owner,
    Tracker,
    parent_params,
    redact_uri,
    resolve_uri,
    run_url,
    without_credentials,
)
from bnpipe.train import TrainResult
from bnpipe.train.common import Cell
from bnpipe.trainer import Stopped, TrainerDied
from flows.runners import final_state, training_runner

FLOW_RUN_ID_TAG = TAG_PREFIX + "prefect.flow_run_id"
FLOW_RUN_URL_TAG = TAG_PREFIX + "prefect.flow_run_url"


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
def train(
    group: Group,
    data: MnistData,
    cfg: Config,
    progress: Progress,
    stop: threading.Event | None = None,
) -> list[TrainResult]:
    """Train one group, printing per-epoch progress; ``stop`` set ends it after the current
    epoch. In the command's training process when it has one, else in this one."""

    def on_epoch(cell: Cell, epoch: int, row: dict[str, float]) -> None:
        if stop is not None and stop.is_set():
            raise Stopped(group.name)
        progress.epoch(cell, epoch, row)

    process = trainer.active()
    if process is None:
        with progress.clock.phase("training"):
            return train_cells(cfg, group, data, on_epoch)
    with progress.clock.phase("tf_import"):  # what of it the flow's own start did not hide
        process.wait_ready()
    with progress.clock.phase("training"):
        return process.train(cfg, group, data.digest, on_epoch)


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
    """Test metrics of one trained cell (where it trained: see :func:`train`)."""
    process = trainer.active()
    with clock.phase("evaluation"):
        if process is None:
            return evaluate_cell(cfg, result, data)
        return process.evaluate(cfg, result, data.digest)


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


# Errors the CLI reports in one line: Prefect's console logs of them (each a traceback) go.
REPORTED = (ArtifactWriteError, Outage, TrainerDied)


class _DropReported(logging.Filter):
    """Prefect's console logs of an error the CLI reports, and of the failed training task an
    outage names (each a traceback): the CLI says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, REPORTED) or any(e.__name__ in record.getMessage() for e in REPORTED):
            return False
        # A training task's failure is an outage, which the CLI names with its error.
        task = str(getattr(record, "task_run_name", ""))
        return not (task.startswith("train ") and record.levelno >= logging.ERROR)


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
    return log_outcome(
        tracker, run_id, cell, cfg, result, evaluation, error, timestamp_ms, clock, example
    )


@task(cache_policy=NO_CACHE)
def analyze(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    cfg: Config,
    run_name: str,
    run_info: dict,
    clock: PhaseClock,
) -> ReportOutput:
    """The run's analysis, computed once, rendered as report.md / report.html with figures under
    reports/<run name>/ and published to Prefect: the report, and the decided table."""
    with clock.phase("analysis"):
        out = write_run_report(run_analysis(results, histories, cfg), cfg, run_name, run_info)
    key = "bn-ablation-report"
    markdown = embed_images(out.report_path.read_text(), out.report_path.parent)
    create_markdown_artifact(markdown, key=key, description=run_name)
    decisions = out.analysis.decisions.round(6)
    create_table_artifact(
        decisions.astype(object).where(decisions.notna(), None).to_dict("records"),
        key=key + "-table",
        description=f"Decided: {contrast_text(cfg)} ({run_name})",
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


def _error_text(state: State) -> str:
    """One line saying why a task failed (the full traceback stays in Prefect's logs)."""
    try:
        state.result()
    except Exception as exc:  # the state's exception, re-raised by result()
        lines = traceback.format_exception_only(type(exc), exc)
        return lines[-1].strip()
    return str(state.message or state.name)


def _train_on_cluster(
    won_groups: list[dict[Cell, str]], data: MnistData, cfg: Config, clock: PhaseClock
) -> Iterator[tuple[dict[Cell, str], State]]:
    """dask: every claimed group trains at once on the workers; each comes back with its final
    state, in grid order, for the flow process to evaluate and log (the only MLflow writer)."""
    with training_runner(cfg) as runner:
        futures = [
            runner.submit(
                train_on_worker, {"group": group_of(won), "cfg": cfg, "digest": data.digest}
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
    group = group_of(claimed)
    evaluate_task = evaluate.with_options(retries=cfg.orchestration.retries)
    log_task = log_cell.with_options(retries=cfg.orchestration.retries)
    out: dict[Cell, CellOutcome] = {}
    if trained is None:
        trained = train(group, data, cfg, progress, return_state=True)
    if trained.is_failed():
        why = _error_text(trained)
        for cell in cells:
            out[cell] = log_task(
                tracker, claimed[cell], cell, cfg, None, None, why, now_ms(), progress.clock
            )
            del claimed[cell]
            progress.cell(cell, "failed", float("nan"))
        if cfg.orchestration.task_runner == "serial":
            # One training process serves every group: what broke this group breaks the next.
            # On Dask a lost worker loses its group only; the others go on training.
            raise Outage(f"training {group.name} failed: {why}")
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
            now_ms(),
            progress.clock,
            data.x_test[:3],
        )
        del claimed[cell]
        progress.cell(cell, out[cell].row["status"], out[cell].row["test_accuracy"])
    # Not a cell's own fault when all of a group's cells fail alike: every later group would.
    errors = [o.row["error"] for o in out.values() if o.row["status"] == "failed"]
    if len(out) > 1 and len(errors) == len(out) and len(set(errors)) == 1:
        raise Outage(f"every cell of {group.name} failed: {errors[0]}")
    return out


def _trainer(tracker: Tracker, data: MnistData, cfg: Config, progress: Progress) -> TrainClaimed:
    """What the runner trains claimed groups with: each group as a task in this process
    (serial), or all of a round's groups at once on the Dask workers."""
    if cfg.orchestration.task_runner == "serial" and cfg.train.engine == "fused":

        def train_claimed(groups: Iterable[dict[Cell, str]]) -> Iterator[dict[Cell, CellOutcome]]:
            for won, trained in _train_ahead(groups, data, cfg, progress):
                yield _train_and_log(won, tracker, data, cfg, progress, trained)

    elif cfg.orchestration.task_runner == "serial":
        # Keras fits one at a time: they share Keras' global seed state.
        def train_claimed(groups: Iterable[dict[Cell, str]]) -> Iterator[dict[Cell, CellOutcome]]:
            for won in groups:
                yield _train_and_log(won, tracker, data, cfg, progress)

    else:

        def train_claimed(groups: Iterable[dict[Cell, str]]) -> Iterator[dict[Cell, CellOutcome]]:
            for won, trained in _train_on_cluster(list(groups), data, cfg, progress.clock):
                yield _train_and_log(won, tracker, data, cfg, progress, trained)

    return train_claimed


def groups_at_once(cfg: Config, members: int) -> int:
    """How many fused groups of ``members`` cells train at once in the flow process.

    One shard program keeps about 1.7 cores busy while it steps and one while XLA compiles it,
    so a group of one shard leaves a 2-core machine half idle: then two groups train side by
    side (one compiles while the other steps). Groups of as many shards as cores train one at a
    time. Results do not depend on it: XLA on the CPU is deterministic, shards on threads change
    no bit (tests/test_fused.py), and tests/test_e2e.py reproduces a real-MNIST cell alone to the
    last bit after its grid trained groups side by side.
    """
    from bnpipe.train.common import usable_cores

    shards = -(-members // cfg.train.shard_size)
    return max(1, usable_cores() // max(shards, 1))


def _train_ahead(
    groups: Iterable[dict[Cell, str]], data: MnistData, cfg: Config, progress: Progress
) -> Iterator[tuple[dict[Cell, str], State]]:
    """Serial fused training with the next group already training while this one is evaluated
    and logged (and, for small groups, :func:`groups_at_once` groups training side by side).

    Each group is claimed only when it is submitted. Leaving early (an error, Ctrl-C) stops the
    groups still training at their next epoch, so nothing outlives the flow.
    """
    todo = iter(groups)
    stop = threading.Event()
    running: deque[tuple[dict[Cell, str], PrefectFuture]] = deque()

    def submit(limit: int) -> None:
        while len(running) < limit:
            won = next(todo, None)
            if won is None:
                return
            running.append((won, train.submit(group_of(won), data, cfg, progress, stop)))

    try:
        submit(1)
        while running:
            won, future = running[0]
            at_once = groups_at_once(cfg, len(won))
            submit(at_once)  # at_once groups train (this one among them) ...
            state = final_state(future)
            running.popleft()
            submit(at_once)  # ... and at_once more while this one is evaluated and logged
            yield won, state
    finally:
        stop.set()
        for _, future in running:
            future.wait()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the flow after ``runs_failed`` open cell runs were closed."""

    def __init__(self, signum: int, runs_failed: int) -> None:
        super().__init__(f"signal {signum}: {runs_failed} open cell run(s) marked FAILED")
        self.signum, self.runs_failed = signum, runs_failed


@flow(name="bn-ablation", flow_run_name=new_run_name)
def ablation(params: Config, fresh: bool = False, new_design: bool = False) -> dict[str, Any]:
    """Run the grid (factor levels x seeds) defined by ``params``.

    Args:
        params: The experiment, as in params.yaml (a mapping of the same shape works too).
        fresh: Train every cell, even those finished by earlier runs.
        new_design: Start this sequential design even where another one already looked at the
            same cells (else that stops the run before anything is written).

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
        # A design changed under its data stops here, before anything is written.
        design_tags, design_note = design_start(cfg, tracker, data.digest, new_design)
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
                **design_tags,
            },
        )
    _link_to_mlflow(tracker, parent_id, run_name)
    print(f"MLflow parent run: {tracker.run_url(parent_id)}", flush=True)
    plan = plan_of(cfg)
    log = _prefect_log()
    progress = Progress(
        0, cfg.train.epochs, clock=clock, sinks=[log.info], on_cell=_prefect_progress(run_name)
    )
    progress.note(f"plan: {plan.describe()}; {plan_size(plan, cfg)}")
    state = GridRun()
    try:
        with tracker.heartbeat(parent_id):
            keys = run_plan(
                plan,
                state,
                parent_id,
                tracker,
                data.digest,
                cfg,
                progress,
                _trainer(tracker, data, cfg, progress),
                fresh=fresh,
                common_tags=common_tags,
            )
            results, history_table = collect(state, keys, cfg)
            run_info = {
                "parent run": parent_id,
                "tracking": redact_uri(tracker.uri),
                **cfg_info(cfg, data),
                **({"design change": design_note} if design_note else {}),
            }
            if state.reused:
                run_info["reused"] = (
                    f"{len(state.reused)} of {len(keys)} cells from earlier runs (reused.csv)"
                )
            report = analyze(results, history_table, cfg, run_name, run_info, clock)
            analysis = report.analysis
            record = analysis.record()
            log.info(
                "Decided: %s (report %s):\n%s",
                contrast_text(cfg),
                report.report_path,
                decision_table(analysis),
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
                        **record["metrics"],
                        **timing_metrics,
                        "overhead_share": times["overhead_share"],
                        "wall_time_s": times["total"],
                    },
                    tables={
                        "results": results,
                        "histories": history_table,
                        "summary": analysis.summary,
                        "reused": reused_table(state.reused, keys, cfg.grid.levels),
                        "decisions": analysis.decisions,
                        **({"looks": analysis.design.looks} if analysis.design else {}),
                    },
                    files=[report.report_path, report.html_path, *report.figures],
                    tags={
                        TAG_PREFIX + "cells_total": len(results),
                        TAG_PREFIX + "cells_trained": len(keys) - len(state.reused),
                        TAG_PREFIX + "cells_reused": len(state.reused),
                        TAG_PREFIX + "cells_failed": len(failed),
                        TAG_PREFIX + "cells_diverged": int((results["status"] == "diverged").sum()),
                        TAG_PREFIX + "runs_marked_abandoned": len(abandoned),
                        **{TAG_PREFIX + k: v for k, v in record["tags"].items()},
                    },
                    status="FAILED" if len(failed) else "FINISHED",
                    description=report.answer_markdown,
                )
                # Each arm's mean over all its seeds, listed first in the runs table: grouping
                # there averages only the 100 runs a page loads.
                tracker.log_arm_runs(parent_id, analysis.arms, alpha=cfg.stats.alpha)
            print(f"MLflow arm means (every seed): {tracker.arms_url(parent_id)}", flush=True)
    except BaseException as exc:
        # Never leave our runs RUNNING when the flow itself breaks (Ctrl-C included): a claim
        # left open would make a concurrent run wait for a cell nobody trains.
        closed = fail_open_runs(state, tracker, parent_id, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, Outage):
            exc.runs_failed = closed
        if isinstance(exc, KeyboardInterrupt | TerminationSignal):
            raise Interrupted(getattr(exc, "signal", signal.SIGINT), closed) from exc
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
        "design": analysis.plan.kind,
        "summary": analysis.summary.to_dict("records"),
        "decisions": analysis.decisions.to_dict("records"),
        "report": str(report.report_path),
        "wall_time_s": final_times["total"],
        "timing": final_times,
        "trained": len(keys) - len(state.reused),
        "reused": len(state.reused),
        "abandoned": abandoned,
    }


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
