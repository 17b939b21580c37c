"""The Prefect flow: load data, plan, train groups, evaluate and log cells, analyse, publish.

Prefect lives here only: the tasks wrap plain functions in bnpipe/, and the flow hands them to
the cell scheduler (bnpipe/runner.py: what to reuse, claim, train when and how many at once,
wait for, when a sequential look is due), which calls them and gets their results. MLflow
records (the parent run included) are written by bnpipe/tracking/.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from bnpipe import trainer
from bnpipe.analysis import analyze as run_analysis
from bnpipe.config import Config, DataConfig, load_config
from bnpipe.data import MnistData, load_mnist, worker_data
from bnpipe.design import Plan, plan_of
from bnpipe.evaluate import Evaluation
from bnpipe.grid import Group, evaluate_cell, train_cells
from bnpipe.progress import PhaseClock, Progress
from bnpipe.report import ReportOutput, decision_table, write_run_report
from bnpipe.runner import (
    CellOutcome,
    GridRun,
    OpenRun,
    Outage,
    Steps,
    Trained,
    collect,
    contrast_text,
    fail_open_runs,
    log_outcome,
    open_run,
    plan_size,
    report_info,
    run_plan,
)
from bnpipe.tracking import (
    ABANDONED,
    FAILURE_TAG,
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    ArtifactWriteError,
    Tracker,
    redact_uri,
    run_url,
    without_credentials,
)
from bnpipe.train import TrainResult
from bnpipe.train.common import Cell
from bnpipe.trainer import Stopped, TrainerDied
from flows.runners import final_state, training_runner

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
        description=(
            f"Decided: {contrast_text(cfg)}, about {out.analysis.population_text} ({run_name})"
        ),
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


PROGRESS_EVERY_S = 1.0


def _prefect_progress(run_name: str) -> Callable[[int, int], None]:
    """A progress artifact at 0%; the returned callable moves it to ``done / total`` (the
    cells planned so far: a sequential design adds a look's cells when it starts the look)."""

    def description(done: int, total: int) -> str:
        # The flow run's Artifacts tab shows descriptions, not percentages.
        return f"{done} of {total} cells done ({run_name})"

    artifact = create_progress_artifact(
        0.0, key="bn-ablation-progress", description=description(0, 0)
    )

    last_sent = [0.0]

    def update(done: int, total: int) -> None:
        # At most one request a second, and always the last cell's: a rerun reuses its cells in
        # a burst (16 requests were a tenth of a warm rerun), and a page refreshes no faster.
        now = time.monotonic()
        if done < total and now - last_sent[0] < PROGRESS_EVERY_S:
            return
        last_sent[0] = now
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


def _trained(state: State) -> Trained:
    """A training task's final state as the runner reads it."""
    return Trained(error=_error_text(state)) if state.is_failed() else Trained(state.result())


def _steps(tracker: Tracker, data: MnistData, cfg: Config, progress: Progress) -> Steps:
    """The tasks the runner trains, evaluates and logs cells with: a group in this process (now,
    or submitted beside the flow's own work), or every group of a round on the Dask workers."""
    clock = progress.clock
    evaluate_task = evaluate.with_options(retries=cfg.orchestration.retries)
    log_task = log_cell.with_options(retries=cfg.orchestration.retries)

    def train_now(group: Group, stop: threading.Event | None) -> Trained:
        return _trained(train(group, data, cfg, progress, stop, return_state=True))

    def submit(group: Group, stop: threading.Event) -> Callable[[], Trained]:
        future = train.submit(group, data, cfg, progress, stop)
        return lambda: _trained(final_state(future))

    def train_all(groups: list[Group]) -> Iterator[Trained]:
        # The flow process evaluates and logs what comes back: it is the only MLflow writer.
        with training_runner(cfg) as runner:
            futures = [
                runner.submit(train_on_worker, {"group": g, "cfg": cfg, "digest": data.digest})
                for g in groups
            ]
            for future in futures:
                with clock.phase("training"):  # waiting for the workers
                    state = final_state(future)
                yield _trained(state)

    def evaluate_one(result: TrainResult) -> tuple[Evaluation | None, str | None]:
        state = evaluate_task(result, data, cfg, clock, return_state=True)
        return (None, _error_text(state)) if state.is_failed() else (state.result(), None)

    def log(
        run_id: str,
        cell: Cell,
        result: TrainResult | None,
        evaluation: Evaluation | None,
        error: str | None,
        timestamp_ms: int,
    ) -> CellOutcome:
        # The logged model's input example: a few test images (a failed group logs no model).
        example = data.x_test[:3] if result is not None else None
        return log_task(
            tracker, run_id, cell, cfg, result, evaluation, error, timestamp_ms, clock, example
        )

    return Steps(
        train=train_now,
        evaluate=evaluate_one,
        log=log,
        submit=submit if cfg.orchestration.task_runner == "serial" else None,
        train_all=train_all if cfg.orchestration.task_runner != "serial" else None,
    )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the flow after ``runs_failed`` open cell runs were closed."""

    def __init__(self, signum: int, runs_failed: int) -> None:
        super().__init__(f"signal {signum}: {runs_failed} open cell run(s) marked FAILED")
        self.signum, self.runs_failed = signum, runs_failed


def _opened(run: OpenRun) -> None:
    """Say what opening the run did: runs marked abandoned, and where its parent run is."""
    if run.abandoned:
        print(
            f"marked {len(run.abandoned)} run(s) FAILED that a killed bnpipe process left "
            f"RUNNING (tag {FAILURE_TAG}={ABANDONED}); their cells are trained again",
            flush=True,
        )
    _link_to_mlflow(run.tracker, run.parent.run_id, run.parent.name)
    print(f"MLflow parent run: {run.tracker.run_url(run.parent.run_id)}", flush=True)


def _progress(cfg: Config, plan: Plan, clock: PhaseClock, run_name: str) -> Progress:
    """Per-cell progress in the terminal, Prefect's log and its progress artifact."""
    log = _prefect_log()
    progress = Progress(
        0, cfg.train.epochs, clock=clock, sinks=[log.info], on_cell=_prefect_progress(run_name)
    )
    progress.note(f"plan: {plan.describe()}; {plan_size(plan, cfg)}")
    return progress


def _publish(
    run: OpenRun,
    cfg: Config,
    results: pd.DataFrame,
    histories: pd.DataFrame,
    report: ReportOutput,
    state: GridRun,
    keys: dict[Cell, str],
    clock: PhaseClock,
) -> None:
    """The decisions to Prefect's log; the analysis onto the parent run, which closes."""
    _prefect_log().info(
        "Decided: %s (report %s):\n%s",
        contrast_text(cfg),
        report.report_path,
        decision_table(report.analysis),
    )
    times = clock.breakdown()
    with clock.phase("tracking"):
        run.tracker.close_parent(
            run.parent,
            cfg,
            results=results,
            histories=histories,
            analysis=report.analysis,
            files=[report.report_path, report.html_path, *report.figures],
            description=report.answer_markdown,
            reused=state.reused,
            keys=keys,
            abandoned=len(run.abandoned),
            times=times,
        )
    print(f"MLflow arm means (every seed): {run.tracker.arms_url(run.parent.run_id)}", flush=True)


def _stopped(exc: BaseException, state: GridRun, run: OpenRun) -> BaseException:
    """Close our open runs FAILED when the flow itself breaks (Ctrl-C included: a claim left
    open would make a concurrent run wait for a cell nobody trains); what to raise."""
    closed = fail_open_runs(state, run.tracker, run.parent.run_id, exc)
    if isinstance(exc, Outage):
        exc.runs_failed = closed
    # A signal that reached the flow's handler stops the run whatever exception carries it:
    # Prefect's task engine, interrupted before its task run exists, raises ValueError("Task
    # run is not set") in place of the KeyboardInterrupt (seen in the notebook test).
    signum = getattr(exc, "signal", None) or trainer.stop_signal()
    if isinstance(exc, KeyboardInterrupt | TerminationSignal) or signum is not None:
        return Interrupted(signum or signal.SIGINT, closed)
    return exc


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
    with _signals_stop_training():
        return _ablation(cfg, fresh, new_design)


@contextmanager
def _signals_stop_training() -> Iterator[None]:
    """Whichever Python handler takes SIGINT/SIGTERM during the flow run (Prefect swaps in its
    own for SIGTERM), the training calls hear of the signal first (bnpipe.trainer.request_stop):
    Prefect's exception can be raised where Python drops it (a weakref callback), and the
    command's wakeup fd (bnpipe.cli) was seen lost once in 8 runs on a new PREFECT_HOME, so this
    is the second way a signal reaches the training calls. Off the main thread (a deployment's
    subflow in a worker thread) there is no handler to wrap."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if not callable(handler):  # ignored, or the default (the process ends)
            continue

        def chained(number: int, frame: Any, handler: Callable[..., Any] = handler) -> None:
            trainer.request_stop(number)
            handler(number, frame)

        previous[signum] = signal.signal(signum, chained)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # A stop request belongs to this run: a warm session's next run must not inherit it.
        trainer.clear_stop()


def _ablation(cfg: Config, fresh: bool, new_design: bool) -> dict[str, Any]:
    clock = PhaseClock()
    data = load_data.with_options(retries=cfg.orchestration.retries)(cfg.data, clock)
    run_name = current_flow_run.get_name() or new_run_name()
    with clock.phase("tracking"):
        run = open_run(
            cfg, data, run_name, fresh=fresh, new_design=new_design, tags=_flow_run_tags()
        )
    _opened(run)
    plan = plan_of(cfg)
    progress = _progress(cfg, plan, clock, run_name)
    state = GridRun()
    try:
        with run.tracker.heartbeat(run.parent.run_id):
            keys = run_plan(
                plan,
                state,
                run.parent.run_id,
                run.tracker,
                data.digest,
                cfg,
                progress,
                _steps(run.tracker, data, cfg, progress),
                fresh=fresh,
                common_tags=run.parent.common_tags,
            )
            results, histories = collect(state, keys, cfg)
            info = report_info(run, cfg, data, state, keys)
            report = analyze(results, histories, cfg, run_name, info, clock)
            _publish(run, cfg, results, histories, report, state, keys, clock)
    except BaseException as exc:
        stopped = _stopped(exc, state, run)
        if stopped is exc:
            raise
        raise stopped from exc
    finally:
        progress.close()
    return _outcome(run, results, report, state, keys, clock)


def _outcome(
    run: OpenRun,
    results: pd.DataFrame,
    report: ReportOutput,
    state: GridRun,
    keys: dict[Cell, str],
    clock: PhaseClock,
) -> dict[str, Any]:
    """What the flow returns (the CLI's summary reads it)."""
    times = clock.breakdown()  # the parent's closing included
    analysis = report.analysis
    return {
        "parent_run_id": run.parent.run_id,
        "parent_url": run.tracker.run_url(run.parent.run_id),
        "run_name": run.parent.name,
        "tracking_uri": redact_uri(run.tracker.uri),
        "results": results.to_dict("records"),
        "design": analysis.plan.kind,
        "summary": analysis.summary.to_dict("records"),
        "decisions": analysis.decisions.to_dict("records"),
        "population_text": analysis.population_text,  # what the decisions are about
        "report": str(report.report_path),
        "report_html": str(report.html_path),
        "figures": [str(f) for f in report.figures],
        # The answer itself, for a caller in this process (bnpipe.session renders it as the
        # terminal renders the records above); computed once, in analyze.
        "analysis": analysis,
        "flow_run_id": str(current_flow_run.get_id()),
        "flow_run_url": _flow_run_tags().get(FLOW_RUN_URL_TAG),
        "wall_time_s": times["total"],
        "timing": times,
        "trained": len(keys) - len(state.reused),
        "reused": len(state.reused),
        "abandoned": run.abandoned,
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
