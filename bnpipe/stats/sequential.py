"""Group-sequential paired comparisons: alpha-spending boundaries and repeated CIs.

Design. Each comparison (a stratum of the grid, e.g. BN vs no BN at one batch size) looks
after every ``look_every`` new seed pairs, up to ``max_n`` pairs. The two-sided critical
values come from a Lan-DeMets alpha-spending function (O'Brien-Fleming or Pocock type,
exactly gsDesign's ``sfLDOF`` / ``sfLDPocock`` with the one-sided alpha ``alpha/2`` per side),
solved by recursive numerical integration of the canonical joint distribution of the
z-statistics (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19).

Decisions use repeated confidence intervals (Jennison & Turnbull, ch. 9): at look k the
interval ``mean +/- c_k' * sd / sqrt(n)``, where ``c_k'`` is the Student t quantile (df n-1)
with the same tail probability as the z boundary ``c_k``, because the sd is estimated. The
first look whose interval excludes 0 decides "benefit" or "harm"; one whose interval lies
inside ``(-margin, +margin)`` decides "equivalent"; a comparison still open at ``max_n`` is
"undecided" (with its final interval); one whose data ran out earlier is "continue".

Why this controls the errors. The RCI sequence of one comparison covers the true mean at
every look simultaneously with probability ``>= 1 - alpha``, whenever and however often we
look, so it holds at whatever look the rule stops. Each wrong decision implies a miss: a
"benefit" or "harm" whose sign is wrong (or whose true effect is 0) has an interval that
excludes the true mean, and an "equivalent" when ``|true| >= margin`` has an interval inside
``(-margin, margin)`` that misses it. Family-wise control across the m comparisons of a run
is a Bonferroni split: call each comparison with ``alpha / m``; by the union bound all m RCI
sequences cover together with probability ``>= 1 - alpha``, so the probability of any wrong
benefit, harm *or* equivalent decision, at any look of any comparison, is at most ``alpha``.
Step-down procedures (Holm, or its graphical group-sequential form, Maurer & Bretz 2013)
recycle alpha from rejected nulls, which gives valid tests of "effect = 0" but not
simultaneous intervals, so they would not cover the equivalence decisions; we use Bonferroni.

Resuming. Boundaries depend only on the planned design (alpha, spending, ``look_every``,
``max_n``), never on the data or on when looks happened, and each look uses the first n
pairs in seed order. So a run stopped and resumed (10 seeds, then 10 more, ...) gives the
same decisions and numbers as one that went straight through, provided the design is fixed
for the life of the comparison. Coverage with the t conversion is approximate (exact for
known sd); the simulation test checks the operating characteristics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from bnpipe.stats.crossed import crossed_variance

SPENDINGS = ("obf", "pocock", "hsd")
# gsDesign's default sfHSD parameter (sfupar = -4: close to O'Brien-Fleming; 1 is close to Pocock).
HSD_GAMMA = -4.0
SEQUENTIAL_DECISIONS = ("benefit", "harm", "equivalent", "undecided", "continue")
LOOK_COLUMNS = [
    "look",
    "n",
    "mean",
    "sd",
    "z_crit",
    "t_crit",
    "rci_low",
    "rci_high",
    "t_stat",
    "alpha_spent",
    "decision",
    "t_crit_eq",
    "eq_low",
    "eq_high",
    "se",
    "df",
    "floor_se",
]
# Why a comparison stopped undecided before max_n: no decision is reachable by adding seeds (the
# test-example part of its crossed SE does not shrink with them).
FLOOR = "floor"
SEQUENTIAL_SUMMARY_COLUMNS = [
    "label",
    "decision",
    "n",
    "looks",
    "mean",
    "rci_low",
    "rci_high",
    "alpha",
]

# Uniform Simpson grid for the continuation densities: spacing at most 0.05 and at most 1/8
# of the smallest conditional sd of Z_k given Z_{k-1} (sqrt(1 - t_{k-1}/t_k)); this already
# reproduces the published boundaries to 1e-5. 12 sd truncates nothing measurable where a
# boundary is infinite.
_GRID_STEP = 0.05
_GRID_PER_SD = 8
_Z_CAP = 12.0
# Simulated pairs per Monte Carlo chunk, to bound memory for long designs.
_SIM_CHUNK = 2_000_000


def alpha_spent(
    t: np.ndarray | float, alpha: float = 0.05, spending: str = "obf", gamma: float = HSD_GAMMA
) -> np.ndarray:
    """Cumulative two-sided alpha spent at information fractions ``t`` (both sides together).

    ``alpha/2`` per side through gsDesign's ``sfLDOF``
    (``2 * (1 - Phi(Phi^-1(1 - a1/2) / sqrt(t)))``), ``sfLDPocock``
    (``a1 * log(1 + (e - 1) t)``) or ``sfHSD`` with parameter ``gamma``
    (``a1 * (1 - exp(-gamma t)) / (1 - exp(-gamma))``; ``a1 * t`` at gamma 0), ``a1 = alpha/2``.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    a1 = alpha / 2
    if spending == "obf":
        with np.errstate(divide="ignore"):
            one_side = 2 * stats.norm.sf(stats.norm.isf(a1 / 2) / np.sqrt(t))
    elif spending == "pocock":
        one_side = a1 * np.log1p((math.e - 1) * t)
    elif spending == "hsd":
        one_side = a1 * t if gamma == 0 else a1 * np.expm1(-gamma * t) / np.expm1(-gamma)
    else:
        raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")
    return 2 * one_side


def _phi(x: np.ndarray) -> np.ndarray:
    # stats.norm.pdf's argument checking dominates on the grid kernels.
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _simpson_weights(n: int, h: float) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * h / 3


def _cross(c: float, shift: np.ndarray, sd: float, mass: np.ndarray, target: float = 0.0) -> float:
    """P(|Z_k| >= c, still running at k-1) minus ``target``.

    ``mass`` is the continuation sub-density of Z_{k-1} times Simpson weights on its grid;
    given each grid point, Z_k ~ N(shift, sd^2).
    """
    upper = stats.norm.sf((c - shift) / sd) + stats.norm.cdf((-c - shift) / sd)
    return float(mass @ upper) - target


@functools.lru_cache(maxsize=256)
def _bounds(
    timing: tuple[float, ...], alpha: float, spending: str, gamma: float
) -> tuple[float, ...]:
    spent = alpha_spent(np.array(timing), alpha, spending, gamma)
    increments = np.diff(np.concatenate([[0.0], spent]))
    t_all = np.array(timing)
    min_sd = float(np.sqrt(1 - t_all[:-1] / t_all[1:]).min(initial=1.0))
    step = min(_GRID_STEP, min_sd / _GRID_PER_SD)
    crit: list[float] = []
    z = mass = np.zeros(0)  # grid of Z_{k-1} and its continuation sub-density x Simpson weight
    for k, (t, inc) in enumerate(zip(timing, increments, strict=True)):
        if k > 0:
            s = timing[k - 1]
            shift, sd = z * math.sqrt(s / t), math.sqrt((t - s) / t)  # Z_k | Z_{k-1} = z
        if inc <= 0:
            c = math.inf
        elif k == 0:
            c = float(stats.norm.isf(inc / 2))
        else:
            # Bracketed: at c = 0 all continuing mass (1 - spent so far > inc) crosses.
            c = optimize.brentq(_cross, 0.0, 40.0, args=(shift, sd, mass, inc), xtol=1e-10)
        crit.append(c)
        limit = min(c, _Z_CAP)
        points = 2 * math.ceil(limit / step) + 1  # odd, for Simpson's rule
        grid = np.linspace(-limit, limit, points)
        dens = _phi(grid) if k == 0 else mass @ _phi((grid[None, :] - shift[:, None]) / sd) / sd
        z, mass = grid, dens * _simpson_weights(points, grid[1] - grid[0])
    return tuple(crit)


def _check_timing(n_looks: int, timing: Sequence[float] | np.ndarray | None) -> tuple[float, ...]:
    if isinstance(n_looks, bool) or not isinstance(n_looks, int | np.integer) or n_looks < 1:
        raise ValueError(f"n_looks must be a positive integer, got {n_looks!r}")
    if timing is None:
        return tuple(float(k) / n_looks for k in range(1, n_looks + 1))
    t = np.asarray(timing, dtype=float).ravel()
    ok = (
        t.size == n_looks
        and np.all(np.isfinite(t))
        and t[0] > 0
        and np.all(np.diff(t) > 0)
        and math.isclose(t[-1], 1.0)
    )
    if not ok:
        raise ValueError(f"timing must be {n_looks} increasing fractions in (0, 1] ending at 1")
    return (*(float(v) for v in t[:-1]), 1.0)


def _check_alpha(alpha: float, spending: str, gamma: float = HSD_GAMMA) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if spending not in SPENDINGS:
        raise ValueError(f"spending must be one of {SPENDINGS}, got {spending!r}")
    # gsDesign's sfHSD accepts gamma in [-40, 40]; beyond it exp overflows the spending.
    if isinstance(gamma, bool) or not (isinstance(gamma, int | float) and -40 <= gamma <= 40):
        raise ValueError(f"gamma must be a number in [-40, 40], got {gamma!r}")


def sequential_bounds(
    n_looks: int,
    alpha: float = 0.05,
    spending: str = "obf",
    timing: Sequence[float] | np.ndarray | None = None,
    gamma: float = HSD_GAMMA,
) -> np.ndarray:
    """Two-sided symmetric z critical values ``c_1..c_K`` of an alpha-spending design.

    Args:
        n_looks: Number of planned looks K.
        alpha: Two-sided alpha (``alpha/2`` per side).
        spending: ``"obf"`` (Lan-DeMets O'Brien-Fleming), ``"pocock"`` (Lan-DeMets Pocock) or
            ``"hsd"`` (Hwang-Shih-DeCani with ``gamma``).
        timing: Information fractions of the looks, increasing, last 1; default equal spacing.
        gamma: The ``hsd`` parameter, as gsDesign's ``sfupar``: negative spends late (-4 is
            close to OBF), positive early (1 is close to Pocock); ignored by the others.

    Returns:
        Array of K critical values; ``inf`` where a look spends no alpha.

    Raises:
        ValueError: On a bad argument (named in the message).
    """
    _check_alpha(alpha, spending, gamma)
    return np.array(_bounds(_check_timing(n_looks, timing), float(alpha), spending, float(gamma)))


def t_critical(z_crit: np.ndarray | float, n: np.ndarray | int) -> np.ndarray:
    """Student t quantile at df ``n - 1`` with the same tail probability as ``z_crit``.

    ``t.ppf(norm.cdf(z), n - 1)``, computed from the upper tail for accuracy at large z.
    NaN where ``n < 2``.
    """
    n = np.asarray(n, dtype=float)
    return t_critical_df(z_crit, np.where(n >= 2, n - 1, np.nan))


def t_critical_df(z_crit: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """:func:`t_critical` at any (Satterthwaite, fractional) ``df``; NaN where df is NaN.

    By scipy.special (``t.isf(norm.sf(z), df)`` through the distribution objects costs ~0.5 ms
    a call, which dominated the crossed looks and their simulations); infinite z stays infinite.
    """
    z = np.asarray(z_crit, dtype=float)
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        t = -special.stdtrit(df, special.ndtr(-z))
    return np.where(np.isposinf(z) & ~np.isnan(df), np.inf, t)


def _decide(
    mean: np.ndarray, half: np.ndarray, margin: float, half_eq: np.ndarray | None = None
) -> np.ndarray:
    """Decision per look from the RCI ``mean +/- half`` (benefit / harm) and the equivalence RCI
    ``mean +/- half_eq`` (the same interval when None); NaN half-widths continue."""
    low, high = mean - half, mean + half
    e_low, e_high = (low, high) if half_eq is None else (mean - half_eq, mean + half_eq)
    return np.select(
        [low > 0, high < 0, (e_low > -margin) & (e_high < margin)],
        ["benefit", "harm", "equivalent"],
        "continue",
    )


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def look_sizes(look_every: int, max_n: int, first_look: int | None = None) -> np.ndarray:
    """Pairs at each planned look: ``first_look`` (default ``look_every``), then every
    ``look_every`` more, and always a last look at ``max_n``."""
    first = look_every if first_look is None else first_look
    for name, v in (("look_every", look_every), ("max_n", max_n), ("first_look", first)):
        _positive_int(name, v)
    if first > max_n:
        raise ValueError(f"first_look must be <= max_n ({max_n}), got {first!r}")
    return np.append(np.arange(first, max_n, look_every), max_n)


@dataclass(frozen=True)
class _Design:
    ns: np.ndarray  # pairs at each look
    z: np.ndarray  # benefit / harm z boundaries (two-sided alpha)
    z_eq: np.ndarray  # equivalence z boundaries (two-sided equivalence_alpha)
    spent: np.ndarray  # cumulative two-sided alpha spent on benefit / harm
    shared: bool  # one interval decides all (equivalence_alpha None)


def _design(
    look_every: int,
    max_n: int,
    alpha: float,
    margin: float,
    spending: str,
    first_look: int | None = None,
    gamma: float = HSD_GAMMA,
    equivalence_alpha: float | None = None,
) -> _Design:
    """Look sizes, z boundaries and cumulative two-sided alpha spent of a design."""
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    _check_alpha(alpha, spending, gamma)
    if equivalence_alpha is not None and not alpha <= equivalence_alpha < 1:
        # Below alpha the equivalence boundary would lie outside the benefit/harm one, and a
        # "harm" at a true effect >= margin would no longer imply an equivalence-side miss.
        raise ValueError(f"equivalence_alpha must be in [alpha, 1), got {equivalence_alpha!r}")
    ns = look_sizes(look_every, max_n, first_look)
    timing = ns / max_n
    z = sequential_bounds(len(ns), alpha, spending, timing, gamma)
    z_eq = (
        z
        if equivalence_alpha is None
        else (sequential_bounds(len(ns), equivalence_alpha, spending, timing, gamma))
    )
    spent = alpha_spent(timing, alpha, spending, gamma)
    return _Design(ns, z, z_eq, spent, equivalence_alpha is None)


def sequential_plan(
    *,
    look_every: int = 10,
    max_n: int = 100,
    alpha: float = 0.05,
    spending: str = "obf",
    first_look: int | None = None,
    gamma: float = HSD_GAMMA,
    equivalence_alpha: float | None = None,
) -> pd.DataFrame:
    """The planned looks of a design, fixed before any data: what to record with the design.

    Returns:
        One row per planned look: ``look, n, timing, z_crit, alpha_spent`` (cumulative,
        two-sided) and ``z_crit_eq`` (the equivalence boundary); the t boundaries follow from
        ``t_critical(z_crit, n)``.
    """
    d = _design(look_every, max_n, alpha, 0.0, spending, first_look, gamma, equivalence_alpha)
    return pd.DataFrame(
        {
            "look": np.arange(1, len(d.ns) + 1),
            "n": d.ns,
            "timing": d.ns / max_n,
            "z_crit": d.z,
            "alpha_spent": d.spent,
            "z_crit_eq": d.z_eq,
        }
    )


@dataclass(frozen=True, eq=False)
class SequentialResult:
    """Outcome of one group-sequential comparison (``diff`` = treatment - control).

    ``n`` and ``looks`` count the pairs and looks used up to the decision (0 before the first
    look); ``mean``, ``sd``, ``rci_low``, ``rci_high`` are those of the last look done (NaN
    when none); the benefit / harm interval (the equivalence one is in ``table``). ``table`` has
    one row per look done with ``LOOK_COLUMNS``.
    """

    decision: str
    n: int
    looks: int
    rci_low: float
    rci_high: float
    mean: float
    sd: float
    alpha: float
    max_n: int
    look_every: int
    spending: str
    margin: float
    planned_looks: int
    alpha_spent: float
    table: pd.DataFrame = field(repr=False)
    first_look: int | None = None
    gamma: float = HSD_GAMMA
    equivalence_alpha: float | None = None
    stop_reason: str = ""  # FLOOR: stopped undecided before max_n, out of reach by more seeds

    @property
    def decided(self) -> bool:
        """True once the comparison needs no more seeds (decided or capped)."""
        return self.decision != "continue"

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields as a plain dict (JSON/MLflow friendly), without ``table``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "table"}


def sequential_decide(
    diffs: Sequence[float] | np.ndarray | pd.Series,
    *,
    look_every: int = 10,
    max_n: int = 100,
    alpha: float = 0.05,
    margin: float = 0.002,
    spending: str = "obf",
    first_look: int | None = None,
    gamma: float = HSD_GAMMA,
    equivalence_alpha: float | None = None,
    estimate: Callable[[int, int], LookEstimate] | None = None,
) -> SequentialResult:
    """Run the group-sequential decision rule over paired differences in seed order.

    Args:
        diffs: Paired differences (treatment minus control), first seed first. Pairs beyond
            the deciding look (or beyond ``max_n``) are ignored.
        look_every: Pairs added between looks.
        max_n: Maximum pairs; the last planned look is at ``max_n``.
        alpha: This comparison's two-sided alpha (already split across comparisons).
        margin: Equivalence margin on the mean difference.
        spending: ``"obf"``, ``"pocock"`` or ``"hsd"``.
        first_look: Pairs at the first look (default ``look_every``).
        gamma: The ``hsd`` spending parameter (gsDesign's ``sfupar``).
        equivalence_alpha: Two-sided alpha of the equivalence RCI (two one-sided tests at
            half of it each); None: equivalence uses the benefit / harm interval.
        estimate: ``estimate(n, max_n)``, a look's estimate from the first n pairs; default
            the mean and SD of ``diffs[:n]`` (t at n - 1 df). ``sequential_decide_crossed``
            passes the crossed one.

    Returns:
        A ``SequentialResult``; ``decision`` is benefit, harm, equivalent, undecided (capped
        at ``max_n``) or continue (more pairs needed for the next look).

    Raises:
        ValueError: On non-finite diffs (their positions named) or a bad argument.
    """
    x = np.asarray(diffs, dtype=float).ravel()
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"diffs has non-finite values at positions {bad.tolist()}")

    def seed_only(n: int, _max_n: int) -> LookEstimate:
        d = x[:n]
        sd = float(d.std(ddof=1)) if n >= 2 else math.nan
        return LookEstimate(
            float(d.mean()), sd, sd / math.sqrt(n), float(n - 1) if n >= 2 else math.nan
        )

    at = estimate or seed_only
    des = _design(look_every, max_n, alpha, margin, spending, first_look, gamma, equivalence_alpha)
    rows: list[dict[str, Any]] = []
    decision, reason = "continue", ""
    for k, n in enumerate(des.ns):
        if n > x.size:
            break
        st = at(int(n), max_n)
        t_crit = float(t_critical_df(des.z[k], st.df))
        t_eq = float(t_critical_df(des.z_eq[k], st.df))
        half, half_eq = (_half(t, st.se) for t in (t_crit, t_eq))
        decision = str(_decide(np.array(st.mean), np.array(half), margin, np.array(half_eq)))
        if decision == "continue" and k == len(des.ns) - 1:
            decision = "undecided"
        elif decision == "continue" and _out_of_reach(des, st, margin):
            decision, reason = "undecided", FLOOR
        with np.errstate(divide="ignore", invalid="ignore"):
            t_stat = float(np.divide(st.mean, st.se))
        rows.append(
            {
                "look": k + 1,
                "n": int(n),
                "mean": st.mean,
                "sd": st.sd,
                "z_crit": float(des.z[k]),
                "t_crit": t_crit,
                "rci_low": st.mean - half,
                "rci_high": st.mean + half,
                "t_stat": t_stat,
                "alpha_spent": float(des.spent[k]),
                "decision": decision,
                "t_crit_eq": t_eq,
                "eq_low": st.mean - half_eq,
                "eq_high": st.mean + half_eq,
                "se": st.se,
                "df": st.df,
                "floor_se": st.floor_se,
            }
        )
        if decision != "continue":
            break
    table = pd.DataFrame(rows, columns=LOOK_COLUMNS)
    last = rows[-1] if rows else dict.fromkeys(LOOK_COLUMNS, math.nan) | {"n": 0, "look": 0}
    return SequentialResult(
        decision=decision,
        n=int(last["n"]),
        looks=int(last["look"]),
        rci_low=float(last["rci_low"]),
        rci_high=float(last["rci_high"]),
        mean=float(last["mean"]),
        sd=float(last["sd"]),
        alpha=float(alpha),
        max_n=int(max_n),
        look_every=int(look_every),
        spending=spending,
        margin=float(margin),
        planned_looks=len(des.ns),
        alpha_spent=float(last["alpha_spent"]) if rows else 0.0,
        table=table,
        first_look=None if first_look is None else int(first_look),
        gamma=float(gamma),
        equivalence_alpha=None if equivalence_alpha is None else float(equivalence_alpha),
        stop_reason=reason,
    )


@dataclass(frozen=True)
class LookEstimate:
    """One look's estimate: mean, per-pair SD (for a crossed SE: SE * sqrt(n)), its SE and df;
    ``floor_se`` / ``reach_se``: the SE that no number of seeds goes below, and the SE projected
    at max_n (NaN: no floor, the seed-only analysis)."""

    mean: float
    sd: float
    se: float
    df: float
    floor_se: float = math.nan
    reach_se: float = math.nan


def _out_of_reach(des: _Design, st: LookEstimate, margin: float) -> bool:
    """No decision is reachable by max_n: with the SE projected at max_n from this look's
    variance components (its test-example part does not shrink with seeds) and the last look's
    boundaries, even a mean of 0 gives an equivalence interval that reaches the margin, so
    "equivalent" is out of reach whatever the data; and this look's mean lies inside the
    benefit / harm half-width there, so more seeds are not expected to separate it from 0.
    Stopping only turns decisions that might have come later into "undecided", never into a
    wrong one, so the error rates stay as designed."""
    if not np.isfinite(st.reach_se):
        return False
    t_last = float(t_critical_df(des.z[-1], st.df))
    t_eq_last = float(t_critical_df(des.z_eq[-1], st.df))
    return bool(t_eq_last * st.reach_se >= margin and t_last * st.reach_se >= abs(st.mean))


def sequential_decide_crossed(d: np.ndarray, **design: Any) -> SequentialResult:
    """:func:`sequential_decide` at the population level: seeds and test examples crossed.

    ``d`` is the seeds x examples array of paired differences (treatment minus control
    correctness, first seed first); ``design`` are :func:`sequential_decide`'s design arguments
    (``look_every``, ``max_n``, ``alpha``, ``margin``, ``spending``, ``first_look``, ``gamma``,
    ``equivalence_alpha``). At a look at n pairs the mean, SE and Satterthwaite df are
    ``crossed_variance(d[:n])``'s, so the interval is about the population the examples were
    drawn from, not these examples only; the boundaries are the same z boundaries converted to
    t at those df. The example part of the SE does not shrink with seeds: a comparison whose
    decision is out of reach at ``max_n`` (``_out_of_reach``) stops "undecided" with
    ``stop_reason`` FLOOR instead of spending seeds up to ``max_n``. The table's ``sd`` is
    ``se * sqrt(n)`` and ``floor_se`` the SE that remains with any number of seeds,
    ``sqrt(s2_example / E)``.

    Raises:
        ValueError: If ``d`` is not 2-D with at least 2 examples, has non-finite values, or a
            design argument is bad.
    """
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"d must be a seeds x examples array with >= 2 examples, got {d.shape}")
    bad = np.flatnonzero(~np.isfinite(d).all(axis=1))
    if bad.size:
        raise ValueError(f"d has non-finite values in rows {bad.tolist()}")
    n_e = d.shape[1]

    def at(n: int, max_n: int) -> LookEstimate:
        cv = crossed_variance(d[:n])
        reach = math.sqrt(cv.s2_seed / max_n + cv.s2_example / n_e + cv.s2_resid / (max_n * n_e))
        # se 0 (every example's difference alike): a point interval, at any df.
        df = cv.df if math.isfinite(cv.df) else math.inf
        return LookEstimate(
            cv.mean, cv.se * math.sqrt(n), cv.se, df, math.sqrt(cv.s2_example / n_e), reach
        )

    # The per-seed differences: their count sets the looks reached; the estimate is crossed.
    return sequential_decide(d.mean(axis=1), estimate=at, **design)


def _half(t_crit: float, se: float) -> float:
    # A zero sd gives a point interval, but only where this look spends alpha at all.
    if se > 0:
        return t_crit * se
    return 0.0 if se == 0 and t_crit < math.inf else math.nan


def average_sample_number(
    effect: float,
    sd: float,
    *,
    look_every: int = 10,
    max_n: int = 100,
    alpha: float = 0.05,
    margin: float = 0.002,
    spending: str = "obf",
    first_look: int | None = None,
    gamma: float = HSD_GAMMA,
    equivalence_alpha: float | None = None,
    n_sim: int = 20000,
    seed: int = 0,
    floor_se: float = 0.0,
) -> dict[str, float]:
    """Operating characteristics of the design by Monte Carlo with normal differences.

    Simulates ``n_sim`` comparisons with differences ~ N(effect, sd^2) through the same rule
    as ``sequential_decide`` (same design arguments). This is the planning quantity: expected
    seed pairs to a decision for a planning sd, not a post-hoc power from an observed effect.

    ``floor_se`` > 0 plans the crossed analysis (``sequential_decide_crossed``): the test
    examples add a mean shift ~ N(0, floor_se^2) drawn once per comparison (the same examples
    at every look), the SE at n pairs is ``sqrt(s^2 / n + floor_se^2)`` with the floor taken as
    known (10,000 examples estimate it to ~1.4%), its df the Satterthwaite ones of the seed
    part, and a comparison out of reach at ``max_n`` stops undecided as there.

    Returns:
        ``asn`` (mean pairs used), ``p_benefit``, ``p_harm``, ``p_equivalent``,
        ``p_undecided``, ``p_max_n`` (share reaching ``max_n``, decided there or not), ``n_sim``.
    """
    if not (np.isfinite(effect) and np.isfinite(sd) and sd > 0):
        raise ValueError(f"effect must be finite and sd > 0, got effect={effect!r}, sd={sd!r}")
    if isinstance(n_sim, bool) or not isinstance(n_sim, int | np.integer) or n_sim < 1:
        raise ValueError(f"n_sim must be a positive integer, got {n_sim!r}")
    if not (np.isfinite(floor_se) and floor_se >= 0):
        raise ValueError(f"floor_se must be a finite number >= 0, got {floor_se!r}")
    des = _design(look_every, max_n, alpha, margin, spending, first_look, gamma, equivalence_alpha)
    ns = des.ns
    t_crit, t_eq = t_critical(des.z, ns), t_critical(des.z_eq, ns)
    rng = np.random.default_rng(seed)
    used = np.empty(n_sim)
    final = np.empty(n_sim, dtype=object)
    chunk = max(1, _SIM_CHUNK // max_n)
    for start in range(0, n_sim, chunk):
        m = min(chunk, n_sim - start)
        # Centred draws keep the running sums of squares exact enough; the mean is shifted back.
        y = rng.normal(0.0, sd, size=(m, max_n))
        s1 = np.cumsum(y, axis=1)[:, ns - 1]
        s2 = np.cumsum(y * y, axis=1)[:, ns - 1]
        mean_y = s1 / ns
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.maximum(s2 - ns * mean_y**2, 0.0) / (ns - 1)
        if floor_se > 0:
            mean_y += rng.normal(0.0, floor_se, size=(m, 1))
            codes = _crossed_codes(des, effect + mean_y, var, ns, floor_se, margin)
        else:
            se = np.sqrt(var / ns)
            codes = _decide(effect + mean_y, t_crit * se, margin, t_eq * se)
        codes[:, -1] = np.where(codes[:, -1] == "continue", "undecided", codes[:, -1])
        first = np.argmax(codes != "continue", axis=1)
        used[start : start + m] = ns[first]
        final[start : start + m] = codes[np.arange(m), first]
    out = {f"p_{d}": float(np.mean(final == d)) for d in SEQUENTIAL_DECISIONS[:4]}
    return {
        "asn": float(used.mean()),
        **out,
        "p_max_n": float(np.mean(used == max_n)),
        "n_sim": int(n_sim),
    }


def _crossed_codes(
    des: _Design, mean: np.ndarray, var: np.ndarray, ns: np.ndarray, floor: float, margin: float
) -> np.ndarray:
    """Decisions per simulated comparison and look under the crossed SE with a known floor
    (see :func:`average_sample_number`); "undecided" where out of reach at max_n."""
    seed_part = var / ns
    se = np.sqrt(seed_part + floor**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(seed_part > 0, se**4 / (seed_part**2 / (ns - 1)), np.inf)
    t_crit, t_eq = t_critical_df(des.z, df), t_critical_df(des.z_eq, df)
    codes = _decide(mean, t_crit * se, margin, t_eq * se)
    reach = np.sqrt(var / ns[-1] + floor**2)
    t_last, t_eq_last = t_critical_df(des.z[-1], df), t_critical_df(des.z_eq[-1], df)
    far = (t_eq_last * reach >= margin) & (t_last * reach >= np.abs(mean))
    return np.where((codes == "continue") & far, "undecided", codes)


def sequential_summary(per_stratum: Mapping[Any, SequentialResult]) -> pd.DataFrame:
    """One row per comparison: ``label, decision, n, looks, mean, rci_low, rci_high, alpha``.

    Also carries ``sd, max_n, margin, spending, alpha_spent`` after those columns.
    """
    extra = ["sd", "max_n", "margin", "spending", "alpha_spent"]
    rows = [
        {"label": label, **{c: getattr(r, c) for c in SEQUENTIAL_SUMMARY_COLUMNS[1:] + extra}}
        for label, r in per_stratum.items()
    ]
    return pd.DataFrame(rows, columns=SEQUENTIAL_SUMMARY_COLUMNS + extra)


def looks_frame(per_stratum: Mapping[Any, SequentialResult]) -> pd.DataFrame:
    """All looks of all comparisons in one long frame (the monitoring figure's input).

    Columns: ``comparison`` (the mapping's key), ``LOOK_COLUMNS``, then ``margin`` and
    ``final`` (the comparison's overall decision, repeated on each of its rows); rows in
    mapping order, then by look.
    """
    cols = ["comparison", *LOOK_COLUMNS, "margin", "final"]
    parts = [
        r.table.assign(comparison=label, margin=r.margin, final=r.decision)[cols]
        for label, r in per_stratum.items()
        if len(r.table)
    ]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)
