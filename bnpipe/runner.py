"""The cell scheduler, free of any orchestrator: what to reuse, claim, train, wait for, and when a
sequential look is due.

The flow (flows/pipeline.py) hands it a callable that trains and logs claimed groups of cells
(as Prefect tasks, in process or on Dask workers); everything else is decided here. MLflow is
reached only through :class:`bnpipe.tracking.Tracker`.
"""

from __future__ import annotations

import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, MutableMapping
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
from bnpipe.evaluate import Evaluation
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
    Tracker,
    UnreadableArtifact,
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


@dataclass
class GridRun:
    """Where every cell of one flow run came from."""

    outcomes: dict[Cell, CellOutcome] = field(default_factory=dict)
    reused: dict[Cell, CellRun] = field(default_factory=dict)
    histories: dict[Cell, pd.DataFrame] = field(default_factory=dict)  # of the reused cells
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
        what = "reused" if run.outcome == "finished" else f"reused, {run.outcome}"
        progress.cell(cell, f"{what} (run {run.run_id[:8]})", run.test_accuracy)
    return again


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
    train: TrainClaimed,
    *,
    fresh: bool,
    common_tags: dict[str, str],
) -> dict[Cell, str]:
    """Run every cell the design asks for (see :func:`run_grid`, :func:`run_design`); returns
    every cell's key."""

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
        return keys

    return run_design(plan, run_cells, state, progress, cfg)


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


def fail_open_runs(state: GridRun, tracker: Tracker, parent_id: str, why: str) -> int:
    """Mark the claims still open and the parent run FAILED; how many claims there were.

    Called when the flow itself breaks (Ctrl-C included): a claim left open would make a
    concurrent run wait for a cell nobody trains.
    """
    open_runs = list(state.open_claims.values())
    for run_id in open_runs:
        tracker.fail_run(run_id, why, failure="interrupted")
    tracker.fail_run(parent_id, why)
    return len(open_runs)


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
