"""Which seeds a run trains: a fixed list, or a group-sequential design that adds blocks of seed
pairs to each comparison until it is decided.

The sequential design is a pure function of the recorded results in seed order: a look happens
whenever a comparison's complete pairs reach a multiple of ``look_every``, and its decision
comes from ``bnpipe.stats.sequential_decide``. So a run that reuses earlier runs' cells replays
the same looks and reaches the same decisions; a scheduled run is the next look of one design,
not a fresh test, and the error rates hold however the seeds were spread over runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.config import DEFAULT_COMPARE, Config
from bnpipe.factors import Stratum, stratum_key, stratum_label
from bnpipe.grid import strata
from bnpipe.stats import SequentialResult, average_sample_number, paired_frame, sequential_decide

# An explicit fixed design without a seed list trains these (the grid before designs existed).
DEFAULT_FIXED_SEEDS = tuple(range(10))
# Seeds a comparison may try, failed pairs included, before it is closed undecided: a look needs
# complete pairs, and a cell that keeps failing must not make the loop run forever.
SEED_CAP_FACTOR = 2
OPEN = "continue"


@dataclass(frozen=True)
class Plan:
    """The design of one run, from its config."""

    kind: str  # "fixed" | "sequential"
    strata: tuple[Stratum, ...]  # one comparison (compare's control vs treatment) per stratum
    seeds: tuple[int, ...]  # fixed design: exactly these
    look_every: int
    max_seeds: int
    alpha: float  # family-wise, two-sided
    spending: str
    margin: float
    planning_sd: float
    looks_per_run: int | None = None
    compare: str = DEFAULT_COMPARE
    levels: tuple[Any, ...] = (False, True)  # the compared factor's (control, treatment)

    @property
    def sequential(self) -> bool:
        return self.kind == "sequential"

    @property
    def alpha_per_comparison(self) -> float:
        # Bonferroni: the repeated CIs of all comparisons then cover every true difference at
        # once with probability >= 1 - alpha, which makes every decision drawn from them
        # (benefit, harm and equivalent alike) error-controlled across comparisons and looks.
        return self.alpha / len(self.strata)

    @property
    def max_looks(self) -> int:
        return math.ceil(self.max_seeds / self.look_every)

    @property
    def seed_cap(self) -> int:
        return SEED_CAP_FACTOR * self.max_seeds

    def design_id(self) -> str:
        """Short hash of what defines the design (not the data): runs with the same id and the
        same cell keys are looks of one design."""
        facts = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("seeds", "planning_sd", "looks_per_run", "compare", "levels")
        }
        # The reference grid's strata hash as they did when they were batch sizes (its
        # scheduled runs stay looks of one design); any other grid's by their levels.
        flat = [st[0][1] if len(st) == 1 and st[0][0] == "batch_size" else st for st in self.strata]
        facts["strata"] = flat
        if (self.compare, tuple(self.levels)) != ("bn", (False, True)):
            facts["compare"] = [self.compare, list(self.levels)]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for the terminal and the report."""
        if not self.sequential:
            return f"fixed design: seeds {list(self.seeds)}"
        return (
            f"sequential design ({self.spending} spending, alpha {self.alpha:g} split over "
            f"{len(self.strata)} comparisons by Bonferroni): looks every {self.look_every} seed "
            f"pairs, at most {self.max_seeds} per comparison"
        )

    def decide(self, diffs: np.ndarray) -> SequentialResult:
        """The design's decision on one comparison's paired differences (seed order)."""
        return sequential_decide(
            diffs,
            look_every=self.look_every,
            max_n=self.max_seeds,
            alpha=self.alpha_per_comparison,
            margin=self.margin,
            spending=self.spending,
        )


def plan_of(cfg: Config) -> Plan:
    """The design ``cfg`` asks for: an explicit ``grid.seeds`` list means a fixed design."""
    fixed = cfg.stats.design == "fixed" or cfg.grid.seeds is not None
    return Plan(
        kind="fixed" if fixed else "sequential",
        strata=tuple(strata(cfg)),
        seeds=tuple(cfg.grid.seeds) if cfg.grid.seeds is not None else DEFAULT_FIXED_SEEDS,
        look_every=cfg.stats.look_every,
        max_seeds=cfg.stats.max_seeds,
        alpha=cfg.stats.alpha,
        spending=cfg.stats.spending,
        margin=cfg.stats.equivalence_margin,
        planning_sd=cfg.stats.planning_sd,
        looks_per_run=cfg.stats.looks_per_run,
        compare=cfg.grid.compare,
        levels=tuple(cfg.grid.compare_levels),
    )


def _in_stratum(frame: pd.DataFrame, stratum: Stratum) -> pd.Series:
    # A table of another grid (``bnpipe report`` under other params) has none of its cells.
    mask = pd.Series(True, index=frame.index)
    for name, level in stratum:
        mask &= frame[name] == level if name in frame.columns else False
    return mask


def decide_all(results: pd.DataFrame, plan: Plan) -> dict[Stratum, SequentialResult]:
    """Every comparison's decision on the pairs finished so far (in seed order)."""
    levels = plan.levels if len(plan.levels) == 2 else None
    out = {}
    usable = len(results) and levels and plan.compare in results.columns
    pairs = paired_frame(results, plan.compare, levels) if usable else None
    for stratum in plan.strata:
        if pairs is None or not len(pairs):
            diffs = np.array([], float)
        else:
            mine = pairs.loc[_in_stratum(pairs, stratum)]
            diffs = mine.sort_values("seed")["diff"].to_numpy(float)
        out[stratum] = plan.decide(diffs)
    return out


def next_block(
    plan: Plan, decisions: dict[Stratum, SequentialResult], started: dict[Stratum, int]
) -> dict[Stratum, range]:
    """The next seeds per open comparison: the next ``look_every`` after those started, for
    comparisons whose decision is still open and whose seed cap is not reached."""
    return {
        st: range(started[st], started[st] + plan.look_every)
        for st, d in decisions.items()
        if d.decision == OPEN and started[st] < plan.seed_cap
    }


def close_capped(
    decisions: dict[Stratum, SequentialResult], plan: Plan, started: dict[Stratum, int]
) -> dict[Stratum, SequentialResult]:
    """Comparisons still open at the seed cap (too many failed pairs) end undecided."""
    return {
        st: dataclasses.replace(d, decision="undecided")
        if d.decision == OPEN and started[st] >= plan.seed_cap
        else d
        for st, d in decisions.items()
    }


def design_table(decisions: dict[Stratum, SequentialResult], plan: Plan) -> pd.DataFrame:
    """One row per comparison: the decided verdict table (``comparison`` is the stratum's
    label, then one column per stratum factor)."""
    rows = [
        {
            "comparison": stratum_label(st),
            **dict(st),
            "decision": d.decision,
            "n_pairs": d.n,
            "looks": d.looks,
            "mean_diff": d.mean,
            "rci_low": d.rci_low,
            "rci_high": d.rci_high,
            "alpha": plan.alpha_per_comparison,
        }
        for st, d in decisions.items()
    ]
    return pd.DataFrame(rows)


def looks_table(decisions: dict[Stratum, SequentialResult]) -> pd.DataFrame:
    """Every look of every comparison (for the monitoring figure and the audit record)."""
    frames = [
        d.table.assign(comparison=stratum_label(st), **dict(st))
        for st, d in decisions.items()
        if len(d.table)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def operating_characteristics(plan: Plan, n_sim: int = 20000) -> pd.DataFrame:
    """Design quantities for the planning SD (not the observed effect): the expected seed pairs
    to a decision (average sample number) and how often each decision is reached, for true
    differences of 0, half the margin and the margin."""
    rows = []
    for effect in (0.0, plan.margin / 2, plan.margin):
        oc = average_sample_number(
            effect,
            plan.planning_sd,
            look_every=plan.look_every,
            max_n=plan.max_seeds,
            alpha=plan.alpha_per_comparison,
            margin=plan.margin,
            spending=plan.spending,
            n_sim=n_sim,
        )
        rows.append({"effect": effect, "sd": plan.planning_sd, **oc})
    return pd.DataFrame(rows)


def design_record(decisions: dict[Stratum, SequentialResult], plan: Plan) -> dict[str, Any]:
    """The design's state as MLflow tags and metrics on the parent run (looks done, alpha,
    decisions), so the store says where every scheduled run left the design."""
    tags: dict[str, Any] = {"design": plan.kind, "design_id": plan.design_id()}
    metrics: dict[str, float] = {}
    for st, d in decisions.items():
        label = stratum_key(st)
        tags[f"decision.{label}"] = d.decision
        metrics[f"seeds_{label}"] = float(d.n)
        metrics[f"looks_{label}"] = float(d.looks)
        metrics[f"rci_low_{label}"] = float(d.rci_low)
        metrics[f"rci_high_{label}"] = float(d.rci_high)
        spent = d.table["alpha_spent"].iloc[-1] if len(d.table) else 0.0
        metrics[f"alpha_spent_{label}"] = float(spent)
    return {"tags": tags, "metrics": metrics}


@dataclass(frozen=True)
class DesignOutcome:
    """A finished run's design: decided verdicts, every look, the MLflow record, and the design
    quantities at the planning SD (all empty for a fixed design)."""

    plan: Plan
    decisions: pd.DataFrame
    looks: pd.DataFrame
    record: dict[str, Any]
    characteristics: pd.DataFrame


def started_seeds(results: pd.DataFrame, stratum: Stratum) -> int:
    """Seeds 0 .. n-1 started in ``stratum`` (one past the largest seed recorded there)."""
    if not len(results):
        return 0
    seeds = results.loc[_in_stratum(results, stratum), "seed"]
    return int(seeds.max()) + 1 if len(seeds) else 0


def design_outcome(results: pd.DataFrame, plan: Plan, n_sim: int = 20000) -> DesignOutcome:
    """The design's decisions on a run's results table (recomputed from the cells, so
    ``bnpipe report`` and the flow agree, whichever runs trained them)."""
    if not plan.sequential:
        empty = pd.DataFrame()
        return DesignOutcome(
            plan, empty, empty, {"tags": {"design": "fixed"}, "metrics": {}}, empty
        )
    started = {st: started_seeds(results, st) for st in plan.strata}
    decisions = close_capped(decide_all(results, plan), plan, started)
    return DesignOutcome(
        plan,
        design_table(decisions, plan),
        looks_table(decisions),
        design_record(decisions, plan),
        operating_characteristics(plan, n_sim=n_sim),
    )
