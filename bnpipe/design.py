"""Which seeds a run trains: a fixed list, or a group-sequential design that adds blocks of seed
pairs to each comparison until it is decided.

The sequential design is a pure function of the recorded results in seed order: a look happens
whenever a comparison's complete pairs reach a planned look size (``first_look``, then every
``look_every``), and its decision comes from ``bnpipe.stats.sequential_decide``. So a run that
reuses earlier runs' cells replays the same looks and reaches the same decisions; a scheduled run
is the next look of one design, not a fresh test, and the error rates hold however the seeds were
spread over runs.
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

from bnpipe.config import (
    DEFAULT_COMPARE,
    DIGITS,
    TEST_SET,
    Config,
    ConfigError,
    logged_bool,
    population_text,
)
from bnpipe.evaluate import unpack_correct
from bnpipe.factors import Stratum, factor, stratum_key, stratum_label
from bnpipe.grid import cell_key_for, grid_cells, strata
from bnpipe.stats import (
    HSD_GAMMA,
    SequentialResult,
    average_sample_number,
    crossed_variance,
    look_sizes,
    paired_frame,
    sequential_decide,
    sequential_decide_crossed,
    sequential_plan,
    t_critical,
    t_critical_df,
)

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
    # Defaults are the designs before issue 24 (first look at look_every, one shared interval).
    first_look: int | None = None
    hsd_gamma: float = HSD_GAMMA
    equivalence: str = "shared"  # "shared" | "tost"
    # Defaults are the designs before issue 28: seeds only, about these test images.
    population: str = TEST_SET  # DIGITS | TEST_SET
    planning_example_se: float = 0.0
    # data.bootstrap_train: not part of the design (the cell keys tell such cells apart), but
    # part of what its decisions are about.
    bootstrap_train: bool = False

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
    def equivalence_alpha(self) -> float | None:
        """Two-sided alpha of the equivalence interval: TOST at alpha/m per side, or None (the
        benefit / harm interval decides equivalence too)."""
        return 2 * self.alpha_per_comparison if self.equivalence == "tost" else None

    @property
    def look_ns(self) -> tuple[int, ...]:
        """Pairs per comparison at each planned look."""
        return tuple(int(n) for n in look_sizes(self.look_every, self.max_seeds, self.first_look))

    @property
    def max_looks(self) -> int:
        return len(self.look_ns)

    def block_end(self, started: int) -> int:
        """One past the last seed of the next block after ``started`` seeds: up to the next
        planned look, or ``look_every`` more once failed pairs pushed past ``max_seeds``."""
        return next((n for n in self.look_ns if n > started), started + self.look_every)

    def settings(self) -> dict[str, Any]:
        """The design's settings by their params.yaml names, as they decide (a first look at
        look_every is no first look; hsd_gamma only counts for hsd)."""
        out = {
            "stats.spending": self.spending,
            "stats.alpha": self.alpha,
            "stats.equivalence_margin": self.margin,
            "stats.first_look": self.first_look or self.look_every,
            "stats.look_every": self.look_every,
            "stats.max_seeds": self.max_seeds,
            "stats.equivalence": self.equivalence,
            "stats.population": self.population,
        }
        if self.spending == "hsd":
            out["stats.hsd_gamma"] = self.hsd_gamma
        return out

    @property
    def crossed(self) -> bool:
        """Decisions about digits like the test set's: seeds and test examples crossed."""
        return self.population == DIGITS

    @property
    def population_text(self) -> str:
        """What every surface says a decision is about."""
        return population_text(self.population, self.bootstrap_train)

    @property
    def seed_cap(self) -> int:
        return SEED_CAP_FACTOR * self.max_seeds

    def design_id(self) -> str:
        """Short hash of what defines the design (not the data): runs with the same id and the
        same cell keys are looks of one design."""
        new = ("first_look", "hsd_gamma", "equivalence", "population", "planning_example_se")
        # What the cells are (their keys tell bootstrap cells apart), not how they are decided.
        outside = ("bootstrap_train",)
        facts = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k
            not in ("seeds", "planning_sd", "looks_per_run", "compare", "levels", *outside, *new)
        }
        # Settings added by issue 24 enter the hash only where they change the design, so a
        # design from before them keeps its id (its stores stay looks of one design).
        if self.first_look not in (None, self.look_every):
            facts["first_look"] = self.first_look
        if self.spending == "hsd":
            facts["hsd_gamma"] = self.hsd_gamma
        if self.equivalence != "shared":
            facts["equivalence"] = self.equivalence
        # Issue 28: the population changes the intervals, so it is a new design; test_set is
        # the design every earlier run used and keeps their ids.
        if self.population != TEST_SET:
            facts["population"] = self.population
        # Designs keep the ids they had before the general grid (their scheduled runs stay
        # looks of one design): a stratum of one ``bare_stratum`` factor (batch size) hashes as
        # its level, and a comparison of a factor's ``keyless_compare`` levels (BN off/on) is
        # left out; any other grid hashes its levels.
        bare = [len(st) == 1 and factor(st[0][0]).bare_stratum for st in self.strata]
        facts["strata"] = [st[0][1] if b else st for st, b in zip(self.strata, bare, strict=True)]
        if factor(self.compare).keyless_compare != tuple(self.levels):
            facts["compare"] = [self.compare, list(self.levels)]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for the terminal and the report."""
        if not self.sequential:
            return f"fixed design: seeds {list(self.seeds)}"
        spending = f"hsd({self.hsd_gamma:g})" if self.spending == "hsd" else self.spending
        tost = self.equivalence == "tost"
        equivalence = "; equivalence by two one-sided tests at alpha/m each" if tost else ""
        first = self.first_look or self.look_every
        looks = (
            f"looks every {self.look_every} seed pairs"
            if first == self.look_every
            else f"first look at {first} seed pairs, then every {self.look_every}"
        )
        return (
            f"sequential design ({spending} spending, alpha {self.alpha:g} split over "
            f"{len(self.strata)} comparisons by Bonferroni{equivalence}): {looks}, at most "
            f"{self.max_seeds} per comparison; decisions about {self.population_text}"
        )

    def decide(self, diffs: np.ndarray) -> SequentialResult:
        """The design's decision on one comparison's paired differences (seed order)."""
        return sequential_decide(diffs, **self.design_args())

    def floor(self) -> dict[str, float]:
        """The test-example floor at the planning values (about digits; all 0 about the test
        set): ``floor_se`` (the SE no number of seeds goes below), ``se_max`` (the SE at
        max_seeds pairs) and ``half_eq_max`` (the equivalence interval's half-width there, at
        the last look's z boundary: the narrowest equivalence interval the design can reach;
        ``reaches_margin`` when it is not inside the margin, so comparisons near 0 stop
        undecided with reason floor)."""
        if not (self.sequential and self.crossed):
            return {"floor_se": 0.0, "se_max": 0.0, "half_eq_max": 0.0, "reaches_margin": 0.0}
        z_eq_last = float(
            sequential_plan(**{k: v for k, v in self.design_args().items() if k != "margin"})[
                "z_crit_eq"
            ].iloc[-1]
        )
        floor = self.planning_example_se
        se_max = math.sqrt(self.planning_sd**2 / self.max_seeds + floor**2)
        return {
            "floor_se": floor,
            "se_max": se_max,
            "half_eq_max": z_eq_last * se_max,
            "reaches_margin": float(z_eq_last * se_max >= self.margin),
        }

    def decide_crossed(self, d: np.ndarray) -> SequentialResult:
        """The design's decision on one comparison's seeds x test examples differences."""
        return sequential_decide_crossed(d, **self.design_args())

    def simulate(self, effect: float, n_sim: int = 20000, seed: int = 0) -> dict[str, float]:
        """The design's operating characteristics at a true ``effect`` and the planning SD
        (and, about digits, the planning test-example SE: the floor)."""
        floor = self.planning_example_se if self.crossed else 0.0
        return average_sample_number(
            effect, self.planning_sd, n_sim=n_sim, seed=seed, floor_se=floor, **self.design_args()
        )

    def design_args(self) -> dict[str, Any]:
        """One comparison's design as ``sequential_decide`` and ``average_sample_number`` take
        it (alpha already split)."""
        return {
            "look_every": self.look_every,
            "max_n": self.max_seeds,
            "alpha": self.alpha_per_comparison,
            "margin": self.margin,
            "spending": self.spending,
            "first_look": self.first_look,
            "gamma": self.hsd_gamma,
            "equivalence_alpha": self.equivalence_alpha,
        }


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
        first_look=cfg.stats.first_look,
        hsd_gamma=cfg.stats.hsd_gamma,
        equivalence=cfg.stats.equivalence,
        population=cfg.stats.population,
        planning_example_se=cfg.stats.planning_example_se,
        bootstrap_train=cfg.data.bootstrap_train,
    )


def design_cells(cfg: Config, data_digest: str) -> tuple[list[str], str]:
    """The cell keys every sequential design over ``cfg``'s grid starts with (seed 0 of each
    stratum, both arms), and a short id of them: designs with the same cells share these."""
    keys = sorted(
        cell_key_for(cfg, c, data_digest) for c in grid_cells(cfg, {st: [0] for st in strata(cfg)})
    )
    return keys, hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:12]


def _setting(v: Any) -> Any:
    """A design setting comparable with its MLflow param (a string): numbers as floats."""
    if v is None or (isinstance(v, str) and v in ("None", "null", "")):
        return None
    if isinstance(v, bool):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def recorded_settings(params: dict[str, str]) -> dict[str, Any]:
    """A parent run's design settings from its ``stats.*`` params, as :meth:`Plan.settings`
    names them; runs from before a setting existed get the value their design used."""
    every = _setting(params.get("stats.look_every"))
    out = {
        "stats.spending": params.get("stats.spending"),
        "stats.alpha": _setting(params.get("stats.alpha")),
        "stats.equivalence_margin": _setting(params.get("stats.equivalence_margin")),
        "stats.first_look": _setting(params.get("stats.first_look")) or every,
        "stats.look_every": every,
        "stats.max_seeds": _setting(params.get("stats.max_seeds")),
        "stats.equivalence": params.get("stats.equivalence", "shared"),
        "stats.population": params.get("stats.population", TEST_SET),
    }
    if out["stats.spending"] == "hsd":
        out["stats.hsd_gamma"] = _setting(params.get("stats.hsd_gamma"))
    return out


def design_overrides(params: dict[str, str]) -> list[str]:
    """``--set`` overrides that restore the design a parent run recorded (its ``stats.*``
    params), so its report rebuilt later decides as its own design did; [] when none is
    recorded. A fixed design gets its own back too: a seed list (``--set grid.seeds=[0,1]``)
    read back under a sequential params file is still the fixed design it was. A run on
    bootstrap training sets gets ``data.bootstrap_train`` back, so its report says so."""
    # Not the design, but what its decisions are about (Plan.population_text).
    out = ["data.bootstrap_train=true"] if logged_bool(params.get("data.bootstrap_train")) else []
    seeds = params.get("grid.seeds")
    if params.get("stats.design") == "fixed" or seeds not in (None, "None"):
        out += ["stats.design=fixed"] if params.get("stats.design") == "fixed" else []
        return [*out, *([f"grid.seeds={seeds}"] if seeds not in (None, "None") else [])]
    if "stats.spending" not in params:
        return out
    for key, value in recorded_settings(params).items():
        if value is not None:
            whole = key in ("stats.first_look", "stats.look_every", "stats.max_seeds")
            out.append(f"{key}={int(value) if whole else value}")
    return out


class DesignChangeError(ConfigError):
    """A run would change the design of cells an earlier design already looked at."""


@dataclass(frozen=True)
class DesignChange:
    """A run whose design differs from the one that already looked at its cells."""

    earlier_id: str  # the design in force over these cells (the latest recorded)
    earlier_run: str  # the parent run name that recorded it
    differences: tuple[str, ...]  # "stats.spending obf -> pocock", ...
    design_id: str  # this run's

    def message(self) -> str:
        """One line: what differs, and the two ways on."""
        return (
            f"stats: the store's cells were already looked at by sequential design "
            f"{self.earlier_id} (parent run {self.earlier_run}); this run's design "
            f"{self.design_id} differs in {', '.join(self.differences)}. Set those back to "
            "continue that design, or pass --new-design to start a new one knowingly (recorded "
            "on the parent: the error guarantee covers a design fixed before its data)"
        )


def _shown(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def design_change(plan: Plan, recorded: list[dict[str, Any]]) -> DesignChange | None:
    """How ``plan`` differs from the design in force over its cells (the latest recorded
    parent's, see ``Tracker.recorded_designs``); None when it is the same design or none is
    recorded. A fixed design is never a change: it makes no sequential decisions."""
    if not plan.sequential or not recorded:
        return None
    latest = max(recorded, key=lambda r: (r["start_time"], r["run_id"]))
    ours = plan.design_id()
    if latest["design_id"] == ours:
        return None
    theirs = recorded_settings(latest["params"])
    mine = {k: _setting(v) for k, v in plan.settings().items()}
    differences = tuple(
        f"{k} {_shown(theirs.get(k))} -> {_shown(v)}"
        for k, v in mine.items()
        if not _same(theirs.get(k), v)
    ) or ("its comparisons (grid factors or grid.compare)",)
    return DesignChange(latest["design_id"], latest["run_name"], differences, ours)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


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
    if plan.crossed:
        return {st: plan.decide_crossed(d) for st, d in example_diffs(results, plan).items()}
    pairs = paired_frame(results, plan.compare, levels) if usable else None
    for stratum in plan.strata:
        if pairs is None or not len(pairs):
            diffs = np.array([], float)
        else:
            mine = pairs.loc[_in_stratum(pairs, stratum)]
            diffs = mine.sort_values("seed")["diff"].to_numpy(float)
        out[stratum] = plan.decide(diffs)
    return out


def example_diffs(results: pd.DataFrame, plan: Plan) -> dict[Stratum, np.ndarray]:
    """Per comparison the seeds x test examples array of paired differences (treatment minus
    control correctness: -1, 0, 1), seeds in order; the pairs of ``paired_frame`` (finished in
    both arms) whose cells both recorded their per-example outcomes.

    Raises:
        ConfigError: No finished cell has per-example outcomes (a results table from before
            issue 28: its decisions are about the test set only).
    """
    levels = plan.levels if len(plan.levels) == 2 else None
    empty = np.zeros((0, 2))
    if not (len(results) and levels and plan.compare in results.columns):
        return dict.fromkeys(plan.strata, empty)
    if (
        "test_correct" not in results.columns
        or not results["test_correct"].map(lambda v: isinstance(v, str) and bool(v)).any()
    ):
        if not (results["status"] == "finished").any():
            return dict.fromkeys(plan.strata, empty)
        raise ConfigError(
            "stats.population: digits needs each cell's per-example test outcomes (the results' "
            "test_correct column), and these results have none; use stats.population=test_set "
            "for a decision about the test set only"
        )
    rows = results.reset_index(drop=True).assign(_row=lambda f: np.arange(len(f), dtype=float))
    pairs = paired_frame(rows, plan.compare, levels, outcome="_row")
    bits = rows["test_correct"].map(unpack_correct)
    out = {}
    for stratum in plan.strata:
        mine = pairs.loc[_in_stratum(pairs, stratum)].sort_values("seed")
        arrays = [
            (bits[int(c)], bits[int(t)])
            for c, t in zip(mine["control"], mine["treatment"], strict=True)
        ]
        kept = [
            t.astype(np.int8) - c.astype(np.int8)
            for c, t in arrays
            if c is not None and t is not None
        ]
        out[stratum] = np.vstack(kept).astype(float) if kept else empty
    return out


def next_block(
    plan: Plan, decisions: dict[Stratum, SequentialResult], started: dict[Stratum, int]
) -> dict[Stratum, range]:
    """The next seeds per open comparison: up to its next planned look, for comparisons whose
    decision is still open and whose seed cap is not reached."""
    return {
        st: range(started[st], plan.block_end(started[st]))
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


def decided_interval(d: SequentialResult) -> tuple[float, float]:
    """The interval behind a comparison's decision: the equivalence interval for "equivalent"
    (narrower than the repeated CI under TOST), else the repeated CI."""
    if d.decision == "equivalent" and len(d.table):
        last = d.table.iloc[-1]
        return float(last["eq_low"]), float(last["eq_high"])
    return d.rci_low, d.rci_high


def design_table(decisions: dict[Stratum, SequentialResult], plan: Plan) -> pd.DataFrame:
    """One row per comparison: the decided verdict table (``comparison`` is the stratum's
    label, then one column per stratum factor); ``rci_low``/``rci_high``: the interval behind
    the decision (:func:`decided_interval`)."""
    rows = [
        {
            "comparison": stratum_label(st),
            **dict(st),
            "decision": d.decision,
            "n_pairs": d.n,
            "looks": d.looks,
            "mean_diff": d.mean,
            "rci_low": decided_interval(d)[0],
            "rci_high": decided_interval(d)[1],
            "alpha": plan.alpha_per_comparison,
            "population": plan.population,
            "population_text": plan.population_text,
            "stop_reason": d.stop_reason,
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
        oc = plan.simulate(effect, n_sim=n_sim)
        rows.append({"effect": effect, "sd": plan.planning_sd, **oc})
    return pd.DataFrame(rows)


def design_record(decisions: dict[Stratum, SequentialResult], plan: Plan) -> dict[str, Any]:
    """The design's state as MLflow tags and metrics on the parent run (looks done, alpha,
    decisions), so the store says where every scheduled run left the design."""
    tags: dict[str, Any] = {
        "design": plan.kind,
        "design_id": plan.design_id(),
        "population": plan.population_text,
    }
    metrics: dict[str, float] = {}
    for st, d in decisions.items():
        label = stratum_key(st)
        tags[f"decision.{label}"] = d.decision
        metrics[f"seeds_{label}"] = float(d.n)
        metrics[f"looks_{label}"] = float(d.looks)
        low, high = decided_interval(d)
        metrics[f"rci_low_{label}"] = float(low)
        metrics[f"rci_high_{label}"] = float(high)
        spent = d.table["alpha_spent"].iloc[-1] if len(d.table) else 0.0
        metrics[f"alpha_spent_{label}"] = float(spent)
    return {"tags": tags, "metrics": metrics}


@dataclass(frozen=True)
class DesignOutcome:
    """A finished run's design: decided verdicts, every look, the MLflow record, the design
    quantities at the planning SD (all empty for a fixed design), and where each decided
    comparison's noise comes from (``noise_table``; empty without per-example outcomes)."""

    plan: Plan
    decisions: pd.DataFrame
    looks: pd.DataFrame
    record: dict[str, Any]
    characteristics: pd.DataFrame
    noise: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def noise_table(
    results: pd.DataFrame, plan: Plan, decisions: dict[Stratum, SequentialResult]
) -> pd.DataFrame:
    """Per comparison, at the pairs its decision used: the seed, test-example and residual
    variance components of the paired per-example differences (``crossed_variance``), each
    one's share of the mean's variance (s2_seed/S, s2_example/E, s2_resid/(S E) over their sum),
    and the interval both ways at the deciding look's boundary (the equivalence one for an
    "equivalent"): about digits (crossed SE, Satterthwaite df) and about these test images
    (seed-only SE, S - 1 df). Empty when the
    results hold no per-example outcomes (runs before issue 28)."""
    try:
        diffs = example_diffs(results, plan)
    except ConfigError:
        return pd.DataFrame()
    bounds = sequential_plan(**{k: v for k, v in plan.design_args().items() if k != "margin"})
    rows = []
    for st, dec in decisions.items():
        d, n = diffs.get(st, np.zeros((0, 2))), dec.n
        if n < 2 or d.shape[0] < n or not len(dec.table):
            continue
        cv = crossed_variance(d[:n])
        n_e = cv.n_examples
        parts = np.array([cv.s2_seed / n, cv.s2_example / n_e, cv.s2_resid / (n * n_e)])
        total = parts.sum()
        shares = parts / total if total > 0 else np.full(3, np.nan)
        # The boundary behind the decision: the equivalence one for "equivalent" (TOST).
        z_col = "z_crit_eq" if dec.decision == "equivalent" else "z_crit"
        z = float(bounds[z_col].iloc[dec.looks - 1])
        t_c = float(t_critical_df(z, cv.df if math.isfinite(cv.df) else math.inf))
        t_s = float(t_critical_df(z, n - 1))
        rows.append(
            {
                "comparison": stratum_label(st),
                **dict(st),
                "n_seeds": n,
                "n_examples": n_e,
                "mean_diff": cv.mean,
                "s2_seed": cv.s2_seed,
                "s2_example": cv.s2_example,
                "s2_resid": cv.s2_resid,
                "share_seed": shares[0],
                "share_example": shares[1],
                "share_resid": shares[2],
                "se_digits": cv.se,
                "df_digits": cv.df,
                "se_test_set": cv.seed_only_se,
                "se_ratio": cv.se / cv.seed_only_se if cv.seed_only_se > 0 else math.nan,
                "floor_se": math.sqrt(cv.s2_example / n_e),
                "digits_low": cv.mean - t_c * cv.se,
                "digits_high": cv.mean + t_c * cv.se,
                "test_set_low": cv.mean - t_s * cv.seed_only_se,
                "test_set_high": cv.mean + t_s * cv.seed_only_se,
                "population": plan.population,
                "floored": ",".join(cv.floored),
            }
        )
    return pd.DataFrame(rows)


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
        noise_table(results, plan, decisions),
    )


@dataclass(frozen=True)
class PlanSummary:
    """What a sequential design will cost and how it behaves, before anything trains (the
    planning SD, never data): gsDesign's design summary for one comparison, and the grid's
    totals. ``characteristics`` has one row per true effect: ``effect, asn, models`` (expected
    per comparison), ``p_benefit, p_harm, p_equivalent, p_undecided``; ``looks`` one row per
    planned look with the t boundaries at its pairs (benefit / harm, and equivalence)."""

    plan: Plan
    characteristics: pd.DataFrame
    looks: pd.DataFrame
    arms: int

    @property
    def comparisons(self) -> int:
        return len(self.plan.strata)

    @property
    def max_models(self) -> int:
        """Models per comparison at the cap (every planned look done)."""
        return self.arms * self.plan.max_seeds

    @property
    def expected_models(self) -> tuple[float, float]:
        """Fewest and most expected models per comparison over the planning effects."""
        return float(self.characteristics["models"].min()), float(
            self.characteristics["models"].max()
        )

    @property
    def models_at_zero(self) -> float:
        """Expected models per comparison when its true effect is 0."""
        return float(
            self.characteristics.loc[self.characteristics["effect"] == 0, "models"].iloc[0]
        )

    def line(self) -> str:
        """The one-line summary ``bnpipe run`` prints at the start."""
        low, high = self.expected_models
        m = self.comparisons
        return (
            f"expected {m * low:.0f}-{m * high:.0f} models over true effects 0 to "
            f"±{2 * self.plan.margin * 100:g} pp ({m * self.models_at_zero:.0f} at 0) at the "
            f"planning SD {self.plan.planning_sd * 100:g} pp, at most {m * self.max_models}"
        )

    def cost(self, epochs: int, seconds: dict[Any, float], batch_size: int) -> pd.DataFrame:
        """Per comparison and in total: expected (fewest, most, at effect 0) and maximum models,
        and the training time they take at ``seconds`` per model-epoch (by batch size, None:
        any other; from ``bnpipe.bench.model_epoch_seconds``) over ``epochs``; NaN times when
        there is no figure. ``batch_size``: the batch of strata that do not vary it."""
        low, high = self.expected_models
        counts = {
            "models_low": low,
            "models_high": high,
            "models_zero": self.models_at_zero,
            "models_max": float(self.max_models),
        }
        rows = []
        for st in self.plan.strata:
            bs = dict(st).get("batch_size", batch_size)
            per = seconds.get(bs, seconds.get(None, math.nan))
            rows.append(
                {
                    "comparison": stratum_label(st),
                    "s_per_model_epoch": per,
                    **counts,
                    **{f"seconds_{k[7:]}": v * epochs * per for k, v in counts.items()},
                }
            )
        table = pd.DataFrame(rows)
        total = table.drop(columns=["comparison", "s_per_model_epoch"]).sum(min_count=1)
        return pd.concat(
            [table, pd.DataFrame([{"comparison": "total", **total.to_dict()}])],
            ignore_index=True,
        )


def planning_effects(margin: float) -> tuple[float, ...]:
    """True effects a plan is shown at: 0, ±margin/2, ±margin, ±2 margin."""
    return tuple(k * margin for k in (-2, -1, -0.5, 0, 0.5, 1, 2))


def plan_summary(plan: Plan, n_sim: int = 20000, seed: int = 0) -> PlanSummary:
    """The design's expected and maximum models and its decision probabilities at the planning
    SD (simulated with ``average_sample_number``, common draws across effects).

    Raises:
        ValueError: For a fixed design (it has no looks to plan).
    """
    if not plan.sequential:
        raise ValueError("a fixed design has no sequential plan")
    arms = len(plan.levels)
    rows = []
    for effect in planning_effects(plan.margin):
        oc = plan.simulate(effect, n_sim=n_sim, seed=seed)
        rows.append({"effect": effect, **oc, "models": arms * oc["asn"]})
    looks = sequential_plan(**{k: v for k, v in plan.design_args().items() if k != "margin"})
    looks["t_crit"] = t_critical(looks["z_crit"], looks["n"])
    looks["t_crit_eq"] = t_critical(looks["z_crit_eq"], looks["n"])
    return PlanSummary(plan, pd.DataFrame(rows), looks, arms)
