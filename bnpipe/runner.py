"""The cell scheduler, free of any orchestrator: what to reuse, claim, train, wait for, how many
groups train at once, and when a sequential look is due.

The flow (flows/pipeline.py) hands it :class:`Steps`: how to train a group, evaluate a cell and
log it (as Prefect tasks, in process or on Dask workers); which step runs when is decided here,
and each step's result comes back here. MLflow is reached only through
:class:`bnpipe.tracking.Tracker`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import ChainMap, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bnpipe.config import Config
from bnpipe.data import MnistData
from bnpipe.design import (
    DesignChangeError,
    Plan,
    close_capped,
    decide_all,
    decided_interval,
    design_cells,
    design_change,
    next_block,
    plan_of,
    plan_summary,
)
from bnpipe.evaluate import Evaluation, pack_correct
from bnpipe.factors import (
    FACTORS,
    Stratum,
    contrast_phrase,
    level_phrase,
    strata_phrase,
    stratum_label,
)
from bnpipe.grid import (
    Group,
    cell_key_for,
    cell_params,
    default_level,
    grid_cells,
    group_spans,
    history_frame,
    keras_model,
    result_columns,
    result_row,
    training_groups,
)
from bnpipe.progress import PhaseClock, Progress
from bnpipe.tracking import (
    DESIGN_CELLS_TAG,
    DESIGN_ID_TAG,
    ERROR_TAG,
    FAILURE_TAG,
    NEW_DESIGN_TAG,
    OUTCOMES,
    ROLE_TAG,
    STATUS_TAG,
    TAG_PREFIX,
    UNUSABLE_TAG,
    CellRun,
    CellSpec,
    Owner,
    ParentRun,
    Tracker,
    UnreadableArtifact,
    redact_uri,
    release_interrupted_write,
    resolve_uri,
)
from bnpipe.train import TrainResult
from bnpipe.train.common import Cell

ENGINE_TAG = TAG_PREFIX + "engine"
# Simulated comparisons per true effect for the run's one-line plan (~0.2 s; bnpipe plan uses
# 20,000): enough for expected models to about one model.
PLAN_LINE_SIMS = 4000


class Outage(RuntimeError):
    """Training itself broke: its process died, or every cell of a group failed with one error.

    The run stops claiming cells (going on would fail every later cell the same way); what
    finished is kept, the open cells are closed FAILED, and a rerun continues where it stopped.
    """

    runs_failed = 0  # open cell runs closed FAILED on the way out (set by the flow)


@dataclass(frozen=True)
class CellOutcome:
    """One cell's row of the results table and its per-epoch history (keyed by the cell)."""

    row: dict[str, Any]
    history: pd.DataFrame


# Trains and logs claimed groups of cells (each a cell -> its claimed run id), yielding each
# group's outcomes as it is logged. The groups come as an iterable: with the serial runner each
# group is claimed only when the trainer asks for it (it may ask for the next one while this one
# trains). A group's cells leave its mapping as their runs are closed, so what remains there if
# it raises are the runs still open.
TrainClaimed = Callable[[Iterable[dict[Cell, str]]], Iterator[dict[Cell, CellOutcome]]]


def _keyed(history: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    return history.assign(**dict(cell.levels), seed=cell.seed)


def now_ms() -> int:
    """The time in milliseconds: one timestamp per logged cell, so a retried log rewrites it."""
    return int(time.time() * 1000)


def log_outcome(
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
    """Fill the cell's claimed child run; return its results row and history.

    Args:
        tracker: the store.
        run_id: the cell's claimed (RUNNING) child run.
        cell: the cell.
        cfg: the experiment.
        result: what training returned (None when training failed).
        evaluation: its test metrics (None when not evaluated: diverged, or failed).
        error: why training or evaluation failed (None when they did not).
        timestamp_ms: the metrics' timestamp (fixed, so a retried call writes the same rows).
        clock: where the time goes ("tracking").
        example: a few test inputs, the logged model's input example.
    """
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
            correct=evaluation.correct if evaluation is not None else None,
        )
    row = result_row(
        cell,
        status=status,
        run_id=run_id,
        test_accuracy=evaluation.test_accuracy if evaluation is not None else float("nan"),
        test_loss=evaluation.test_loss if evaluation is not None else float("nan"),
        history=history,
        error=reason,
        test_correct=pack_correct(evaluation.correct) if evaluation is not None else "",
    )
    return CellOutcome(row, _keyed(history, cell))


@dataclass
class GridRun:
    """Where every cell of one flow run came from."""

    outcomes: dict[Cell, CellOutcome] = field(default_factory=dict)
    reused: dict[Cell, CellRun] = field(default_factory=dict)
    histories: dict[Cell, pd.DataFrame] = field(default_factory=dict)  # of the reused cells
    # Per-example outcomes of the reused cells (pack_correct); a cell recorded before they were
    # is missing until fill_test_correct computes them from its weights.
    correct: dict[Cell, str] = field(default_factory=dict)
    open_claims: MutableMapping[Cell, str] = field(default_factory=dict)


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
            test_correct=state.correct.get(cell, ""),
        )
        out[cell] = CellOutcome(row, _keyed(history, cell))
    return out


def _grouped(cells: list[Cell], order: Iterable[Cell], cfg: Config) -> list[list[Cell]]:
    """``cells`` split into ``cfg``'s training groups, in the grid order of ``order``."""
    todo = set(cells)
    return [
        list(g.cells) for g in training_groups((c for c in order if c in todo), group_spans(cfg))
    ]


def group_of(claimed: MutableMapping[Cell, str]) -> Group:
    """The training group of a claimed group's cells (one combination of levels but BN, its BN
    levels and seeds)."""
    return Group(tuple(sorted(claimed)))


def reuse(
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
        with progress.clock.phase("tracking"), contextlib.suppress(UnreadableArtifact):
            # An unreadable one is filled in again from the weights, as a missing one.
            if (correct := tracker.test_correct(run.run_id)) is not None:
                state.correct[cell] = pack_correct(correct)
        what = "reused" if run.outcome == "finished" else f"reused, {run.outcome}"
        progress.cell(cell, f"{what} (run {run.run_id[:8]})", run.test_accuracy)
    return again


# -- training claimed groups ---------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """How one group's training ended: its results, or why it failed (one line)."""

    results: list[TrainResult] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Steps:
    """The steps the orchestrator runs for the runner (Prefect tasks in flows/pipeline.py, plain
    calls in a test); which runs when, and how many at once, is decided here.

    Attributes:
        train: trains a group in this process now (``stop`` set: end after the current epoch).
        evaluate: one trained cell's test metrics, or why evaluating it failed (one line).
        log: fills a claimed run (run id, cell, result, evaluation, error, timestamp) and
            returns the cell's outcome; raises when the run cannot be written.
        submit: starts training a group beside this process's work and returns what waits
            for it (None: :attr:`train` now).
        train_all: trains every group at once elsewhere (Dask workers), yielding each one's
            outcome in order (None: one after the other with :attr:`train`).
    """

    train: Callable[[Group, threading.Event | None], Trained]
    evaluate: Callable[[TrainResult], tuple[Evaluation | None, str | None]]
    log: Callable[[str, Cell, TrainResult | None, Evaluation | None, str | None, int], CellOutcome]
    submit: Callable[[Group, threading.Event], Callable[[], Trained]] | None = None
    train_all: Callable[[list[Group]], Iterator[Trained]] | None = None

    def start(self, group: Group, stop: threading.Event) -> Callable[[], Trained]:
        if self.submit is not None:
            return self.submit(group, stop)
        trained = self.train(group, stop)
        return lambda: trained

    def train_every(self, groups: list[Group]) -> Iterator[Trained]:
        if self.train_all is not None:
            return self.train_all(groups)
        return (self.train(group, None) for group in groups)


def trainer(steps: Steps, cfg: Config, progress: Progress) -> TrainClaimed:
    """What claimed groups train with: serial fused groups trained ahead (the next training
    while this one is evaluated and logged), serial Keras groups one at a time (they share
    Keras' global seed state), any other runner every group of a round at once."""

    def train_claimed(groups: Iterable[dict[Cell, str]]) -> Iterator[dict[Cell, CellOutcome]]:
        if cfg.orchestration.task_runner != "serial":
            won_groups = list(groups)
            trained = steps.train_every([group_of(won) for won in won_groups])
            pairs: Iterable[tuple[dict[Cell, str], Trained | None]] = zip(
                won_groups, trained, strict=True
            )
        elif cfg.train.engine == "fused":
            pairs = _train_ahead(groups, steps, cfg)
        else:
            pairs = ((won, None) for won in groups)
        for won, done in pairs:
            yield _train_and_log(won, steps, cfg, progress, done)

    return train_claimed


def _train_and_log(
    claimed: MutableMapping[Cell, str],
    steps: Steps,
    cfg: Config,
    progress: Progress,
    trained: Trained | None = None,
) -> dict[Cell, CellOutcome]:
    """Train the claimed cells of one group (unless ``trained`` elsewhere already), evaluate
    each, and fill their child runs.

    A cell leaves ``claimed`` once its run is closed, so what remains there if this raises are
    the runs still open.
    """
    cells = sorted(claimed)
    group = group_of(claimed)
    out: dict[Cell, CellOutcome] = {}
    if trained is None:
        trained = steps.train(group, None)
    if trained.error is not None:
        why = trained.error
        for cell in cells:
            out[cell] = steps.log(claimed[cell], cell, None, None, why, now_ms())
            del claimed[cell]
            progress.cell(cell, "failed", float("nan"))
        if cfg.orchestration.task_runner == "serial":
            # One training process serves every group: what broke this group breaks the next.
            # On Dask a lost worker loses its group only; the others go on training.
            raise Outage(f"training {group.name} failed: {why}")
        return out
    for result in trained.results:
        evaluation, why = None, None
        if result.status == "finished":
            evaluation, why = steps.evaluate(result)
        cell = result.cell
        out[cell] = steps.log(claimed[cell], cell, result, evaluation, why, now_ms())
        del claimed[cell]
        progress.cell(cell, out[cell].row["status"], out[cell].row["test_accuracy"])
    # Not a cell's own fault when all of a group's cells fail alike: every later group would.
    errors = [o.row["error"] for o in out.values() if o.row["status"] == "failed"]
    if len(out) > 1 and len(errors) == len(out) and len(set(errors)) == 1:
        raise Outage(f"every cell of {group.name} failed: {errors[0]}")
    return out


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
    groups: Iterable[dict[Cell, str]], steps: Steps, cfg: Config
) -> Iterator[tuple[dict[Cell, str], Trained]]:
    """Serial fused training with the next group already training while this one is evaluated
    and logged (and, for small groups, :func:`groups_at_once` groups training side by side).

    Each group is claimed only when it is submitted. Leaving early (an error, Ctrl-C) stops the
    groups still training at their next epoch, so nothing outlives the flow.
    """
    todo = iter(groups)
    stop = threading.Event()
    running: deque[tuple[dict[Cell, str], Callable[[], Trained]]] = deque()

    def submit(limit: int) -> None:
        while len(running) < limit:
            won = next(todo, None)
            if won is None:
                return
            running.append((won, steps.start(group_of(won), stop)))

    try:
        submit(1)
        while running:
            won, wait = running[0]
            at_once = groups_at_once(cfg, len(won))
            submit(at_once)  # at_once groups train (this one among them) ...
            trained = wait()
            running.popleft()
            submit(at_once)  # ... and at_once more while this one is evaluated and logged
            yield won, trained
    finally:
        stop.set()
        for _, wait in running:
            # Only waited for: how a group stopped on the way out changes nothing, and must not
            # hide why we are leaving.
            with contextlib.suppress(Exception):
                wait()


def run_grid(
    state: GridRun,
    keys: dict[Cell, str],
    parent_id: str,
    tracker: Tracker,
    data_digest: str,
    cfg: Config,
    progress: Progress,
    train: TrainClaimed,
    *,
    fresh: bool,
    common_tags: dict[str, str],
) -> None:
    """Reuse what is finished, claim and train what is not, wait for what others train.

    Args:
        state: where the outcomes go (and the claims still open, for the caller to close if
            this raises).
        keys: the cells to run, each with its cell key.
        parent_id: the parent run the claims go under.
        tracker: the store.
        data_digest: the data's digest (a cell param).
        cfg: the experiment; ``orchestration.task_runner`` "serial" claims each group when the
            trainer asks for it, any other claims every group first and trains them at once.
        progress: per-cell progress and the phase clock.
        train: trains and logs claimed groups (see :data:`TrainClaimed`).
        fresh: train every cell, even those finished by earlier runs.
        common_tags: provenance tags for every claimed run.
    """
    owner = Owner.current()
    if not fresh:
        with progress.clock.phase("tracking"):
            found = tracker.finished_cells(keys.values())
        reuse(state, {c: found[k] for c, k in keys.items() if k in found}, tracker, progress)
    pending = [c for c in keys if c not in state.reused]
    waiting: dict[str, Cell] = {}  # another run's live claim -> the cell it trains
    told = False  # the contention is one line; each cell's "reused" line says the rest
    while pending or waiting:
        again: list[Cell] = []  # offered a finished run that turned out unusable

        def claimed(cells_of: list[list[Cell]], again: list[Cell] = again) -> Iterator[dict]:
            """Claim each group when the trainer asks for it; yield the cells won."""
            for cells in cells_of:
                specs = [
                    CellSpec(
                        keys[c],
                        c.name,
                        cell_params(cfg, c, data_digest),
                        {**common_tags, ROLE_TAG: "cell", ENGINE_TAG: cfg.train.engine},
                    )
                    for c in cells
                ]
                with progress.clock.phase("tracking"):
                    claims = tracker.claim_cells(parent_id, specs, owner, exclusive=not fresh)
                by_key = {keys[c]: c for c in cells}
                finished = {by_key[k]: run for k, run in claims.finished.items()}
                again += reuse(state, finished, tracker, progress)
                for key, other in claims.taken.items():
                    waiting[other] = by_key[key]
                won = {by_key[k]: run_id for k, run_id in claims.won.items()}
                if won:
                    # Every claimed group's runs stay open until it is logged; the ChainMap
                    # sees each group's cells leave as they are closed.
                    state.open_claims.maps.append(won)
                    yield won

        state.open_claims = ChainMap()
        groups = claimed(_grouped(pending, keys, cfg))
        # Serial: claimed as the trainer takes them; any other runner claims every group first
        # and trains them at once.
        for outcomes in train(groups if cfg.orchestration.task_runner == "serial" else [*groups]):
            state.outcomes.update(outcomes)
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
            pending += reuse(state, done, tracker, progress)
            pending.sort()


def run_plan(
    plan: Plan,
    state: GridRun,
    parent_id: str,
    tracker: Tracker,
    data_digest: str,
    cfg: Config,
    progress: Progress,
    steps: Steps,
    *,
    fresh: bool,
    common_tags: dict[str, str],
) -> dict[Cell, str]:
    """Run every cell the design asks for (see :func:`run_grid`, :func:`run_design`), training
    with ``steps`` (see :func:`trainer`); returns every cell's key."""
    train = trainer(steps, cfg, progress)

    def run_cells(seeds: dict[Stratum, range | tuple[int, ...]]) -> dict[Cell, str]:
        keys = {c: cell_key_for(cfg, c, data_digest) for c in grid_cells(cfg, seeds)}
        progress.total += len(keys)
        run_grid(
            state,
            keys,
            parent_id,
            tracker,
            data_digest,
            cfg,
            progress,
            train,
            fresh=fresh,
            common_tags=common_tags,
        )
        fill_test_correct(state, tracker, steps, progress)
        return keys

    return run_design(plan, run_cells, state, progress, cfg)


def fill_test_correct(state: GridRun, tracker: Tracker, steps: Steps, progress: Progress) -> int:
    """Per-example outcomes of reused finished cells recorded before they were: one forward pass
    of the cell's logged weights (no training), logged to its run as test_correct.npz.

    The pass must reproduce the cell's logged test accuracy exactly (same weights, same
    evaluation); a cell where it does not is named in a warning and its outcomes are not
    recorded (the crossed analysis then has no pair for its seed, and says so). Returns how many
    cells were filled in.
    """
    todo = [
        (c, run)
        for c, run in sorted(state.reused.items())
        if run.outcome == "finished" and c not in state.correct
    ]
    filled = 0
    for cell, run in todo:
        with progress.clock.phase("tracking"):
            try:
                weights = tracker.weights(run.run_id)
            except UnreadableArtifact:
                weights = None
        if weights is None:
            print(
                f"warning: {cell.name} (run {run.run_id[:8]}): no readable weights.npz, so no "
                "per-example outcomes for it",
                flush=True,
            )
            continue
        evaluation, why = steps.evaluate(TrainResult(cell, weights))
        if evaluation is None or evaluation.test_accuracy != run.test_accuracy:
            got = why if evaluation is None else f"{evaluation.test_accuracy!r}"
            print(
                f"warning: {cell.name} (run {run.run_id[:8]}): its weights give test accuracy "
                f"{got}, not the logged {run.test_accuracy!r}; its per-example outcomes are "
                "not recorded",
                flush=True,
            )
            continue
        with progress.clock.phase("tracking"):
            tracker.log_test_correct(run.run_id, evaluation.correct)
        state.correct[cell] = pack_correct(evaluation.correct)
        filled += 1
    if filled:
        progress.note(
            f"per-example outcomes of {filled} earlier cell(s) filled in from their weights "
            "(each reproduces its logged test accuracy exactly)"
        )
    return filled


def design_start(
    cfg: Config, tracker: Tracker, data_digest: str, new_design: bool
) -> tuple[dict[str, str], str | None]:
    """The design's parent tags and, for a knowingly new design, the report's sentence.

    Raises:
        DesignChangeError: The store's cells were looked at by another sequential design and
            ``new_design`` is False (one line: the earlier design and what differs).
    """
    plan = plan_of(cfg)
    if not plan.sequential:
        return {}, None
    keys, cells_id = design_cells(cfg, data_digest)
    change = design_change(plan, tracker.recorded_designs(keys, cells_id))
    tags = {DESIGN_ID_TAG: plan.design_id(), DESIGN_CELLS_TAG: cells_id}
    if change is None:
        return tags, None
    if not new_design:
        raise DesignChangeError(change.message())
    note = (
        f"new design {change.design_id} started knowingly (--new-design) over cells that design "
        f"{change.earlier_id} already looked at; it differs in {', '.join(change.differences)}. "
        "The error guarantee covers a design fixed before its data, not one chosen after seeing "
        "it: these decisions are error-controlled only as far as the new design was not chosen "
        "from the earlier looks."
    )
    return {**tags, NEW_DESIGN_TAG: change.earlier_id}, note


@dataclass(frozen=True)
class OpenRun:
    """A flow run's store and parent run, as opened before any cell is claimed."""

    tracker: Tracker
    parent: ParentRun
    abandoned: list[str]  # runs a killed bnpipe process left RUNNING, now marked FAILED
    design_note: str | None  # the report's sentence on a design started knowingly (--new-design)


def open_run(
    cfg: Config,
    data: MnistData,
    name: str,
    *,
    fresh: bool,
    new_design: bool,
    tags: Mapping[str, str],
) -> OpenRun:
    """Check the store, refuse a design changed under its data (before anything is written),
    mark abandoned runs FAILED and open the parent run (``tags``: the orchestrator's)."""
    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    tracker.check()
    design_tags, design_note = design_start(cfg, tracker, data.digest, new_design)
    tracker.use_data(data)
    abandoned = tracker.fail_abandoned_runs()
    parent = tracker.open_parent(name, cfg, data.digest, fresh=fresh, tags={**tags, **design_tags})
    return OpenRun(tracker, parent, abandoned, design_note)


def report_info(
    run: OpenRun, cfg: Config, data: MnistData, state: GridRun, keys: Mapping[Cell, str]
) -> dict[str, Any]:
    """Facts shown at the top of a run's report: its parent run, store, grid, design, data and
    the cells it reused."""
    info = {
        "parent run": run.parent.run_id,
        "tracking": redact_uri(run.tracker.uri),
        **cfg_info(cfg, data),
        **({"design change": run.design_note} if run.design_note else {}),
    }
    if state.reused:
        info["reused"] = f"{len(state.reused)} of {len(keys)} cells from earlier runs (reused.csv)"
    return info


def plan_size(plan: Plan, cfg: Config) -> str:
    """How many cells the plan trains (a fixed list), or per look, expected and at most
    (sequential; expected by a quick simulation at the planning SD, as ``bnpipe plan``)."""
    arms = len(cfg.grid.compare_levels)
    if not plan.sequential:
        return f"{arms * len(plan.strata) * len(plan.seeds)} cells"
    per_look = arms * len(plan.strata) * plan.look_every
    first = arms * len(plan.strata) * plan.look_ns[0]
    looks = f"{first} cells at the first look, then {per_look} per look ({plan.max_looks} looks)"
    return f"{looks}; {plan_summary(plan, n_sim=PLAN_LINE_SIMS).line()}"


def seeds_by_stratum(cells: Iterable[Cell], compare: str) -> dict[Stratum, list[int]]:
    """Each stratum's seeds among ``cells`` (sorted)."""
    out: dict[Stratum, set[int]] = {}
    for c in cells:
        out.setdefault(c.stratum(compare), set()).add(c.seed)
    return {st: sorted(s) for st, s in out.items()}


def _light_results(state: GridRun, cfg: Config) -> pd.DataFrame:
    """Status, test accuracy and per-example outcomes of every cell so far (trained or reused):
    what a look needs."""
    columns = [*cfg.grid.levels, "seed", "status", "test_accuracy", "test_correct"]
    rows = [{k: o.row[k] for k in columns} for o in state.outcomes.values()]
    rows += [
        {
            **dict(c.levels),
            "seed": c.seed,
            "status": run.outcome,
            "test_accuracy": run.test_accuracy,
            "test_correct": state.correct.get(c, ""),
        }
        for c, run in state.reused.items()
    ]
    return pd.DataFrame(rows, columns=columns)


def run_design(
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
            f"{_some(stratum_label(st) for st in block)}"
        )
        keys.update(run_cells(block))
        trained_looks += len(state.outcomes) > trained_before
        for st, seeds in block.items():
            started[st] = seeds.stop
        decisions = close_capped(decide_all(_light_results(state, cfg), plan), plan, started)
        progress.note(
            f"look {look} done in {time.perf_counter() - t0:.0f}s: "
            + _some(
                (
                    f"{stratum_label(st)} {d.decision} (n={d.n}, RCI [{100 * low:+.2f}, "
                    f"{100 * high:+.2f}] pp)"
                    for st, d in decisions.items()
                    for low, high in [decided_interval(d)]
                ),
                sep="; ",
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


# Comparisons named in one progress line; a larger grid's line says how many more (a grid of
# 160,000 comparisons once printed a 406,836-character line).
LISTED = 6


def _some(texts: Iterable[str], sep: str = ", ") -> str:
    items = list(texts)
    more = len(items) - LISTED
    return sep.join(items[:LISTED]) + (f"{sep}and {more} more" if more > 0 else "")


def collect(
    state: GridRun, keys: dict[Cell, str], cfg: Config
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results table and the histories of every cell, trained or reused, in grid order.

    Grid order, whichever cells were reused and whichever look trained them: the analysis is
    then the same as a run's that trained everything at once.
    """
    state.outcomes.update(load_reused(state))
    ordered = [state.outcomes[c] for c in grid_cells(cfg, seeds_by_stratum(keys, cfg.grid.compare))]
    results = pd.DataFrame([o.row for o in ordered], columns=result_columns(cfg))
    histories = [o.history for o in ordered if len(o.history)]
    return results, pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()


def fail_open_runs(state: GridRun, tracker: Tracker, parent_id: str, exc: BaseException) -> int:
    """Mark the claims still open and the parent run FAILED; how many claims there were.

    Called when the flow itself breaks with ``exc`` (Ctrl-C included): a claim left open would
    make a concurrent run wait for a cell nobody trains.
    """
    release_interrupted_write(exc)
    why = f"{type(exc).__name__}: {exc}"
    open_runs = list(state.open_claims.values())
    for run_id in open_runs:
        tracker.fail_run(run_id, why, failure="interrupted")
    tracker.fail_run(parent_id, why)
    return len(open_runs)


def contrast_text(cfg: Config) -> str:
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
        "grid": f"{grid} x seeds; compared: {contrast_text(cfg)}",
        "design": plan_of(cfg).describe(),
        # The optimizer is a factor: its level is named with the others below.
        "training": f"{cfg.train.epochs} epochs, engine {cfg.train.engine}; "
        + ", ".join(
            level_phrase(name, default_level(cfg, name))
            for name in FACTORS
            if name not in cfg.grid.levels
        ),
        "data": f"{len(data.x_train)} train / {len(data.x_test)} test ({data.source}), "
        f"digest {data.digest[:12]}",
    }
