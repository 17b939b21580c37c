"""Design search for issue 24: candidate group-sequential designs simulated with the project's
own rule (bnpipe.stats.average_sample_number), at the effects and SDs of the 2026-12-05 full run.

Run once: .venv/bin/python docs/design-asn/search.py > docs/design-asn/search.txt
"""

from __future__ import annotations

import itertools
import sys
import time

from bnpipe.stats import average_sample_number

ALPHA, M, MARGIN, MAX_N, SD_PLAN = 0.05, 4, 0.002, 100, 0.003
A = ALPHA / M
# (effect, sd) per batch size 16, 32, 64, 128 as measured in the 440-model run.
MEASURED = [(0.00174, 0.00293), (0.00174, 0.00261), (0.00070, 0.00204), (-0.00077, 0.00225)]
N_SIM = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000

SPENDINGS = [("obf", -4.0), ("pocock", -4.0)] + [("hsd", g) for g in (-2.0, -1.0, 0.0, 1.0, 2.0)]
SCHEDULES = [(10, 10), (10, 5), (15, 5), (20, 5), (20, 10)]  # (first look, look every)
EQUIVALENCE = [None, 2 * A]  # shared interval | TOST at alpha/m per side


def design(spending: str, gamma: float, first: int, every: int, eq: float | None) -> dict:
    """average_sample_number's design arguments for one candidate (alpha/m, margin, max_n)."""
    return {
        "look_every": every,
        "max_n": MAX_N,
        "alpha": A,
        "margin": MARGIN,
        "spending": spending,
        "first_look": first,
        "gamma": gamma,
        "equivalence_alpha": eq,
    }


def oc(effect: float, sd: float, design: dict, seed: int = 0) -> dict:
    return average_sample_number(effect, sd, n_sim=N_SIM, seed=seed, **design)


def main() -> None:
    print(f"alpha/m {A}, margin {MARGIN}, max_n {MAX_N}, n_sim {N_SIM} per scenario")
    print(
        "spending gamma first every equivalence | models | P(b/h|0) P(eq|+m) P(eq|-m) | "
        "P(undec|0) P(undec|m/2) P(undec|m) | ok"
    )
    t0 = time.time()
    for (sp, g), (first, every), eq in itertools.product(SPENDINGS, SCHEDULES, EQUIVALENCE):
        d = design(sp, g, first, every, eq)
        models = 2 * sum(oc(e, s, d, seed=i)["asn"] for i, (e, s) in enumerate(MEASURED))
        z = oc(0.0, SD_PLAN, d, seed=11)
        hi, lo = oc(MARGIN, SD_PLAN, d, seed=12), oc(-MARGIN, SD_PLAN, d, seed=13)
        half = oc(MARGIN / 2, SD_PLAN, d, seed=14)
        bh = z["p_benefit"] + z["p_harm"]
        und = (z["p_undecided"], half["p_undecided"], hi["p_undecided"])
        ok = models <= 250 and bh <= A and hi["p_equivalent"] <= A and lo["p_equivalent"] <= A
        ok = ok and max(und) < 0.02
        print(
            f"{sp:6s} {g:+.0f} {first:3d} {every:3d} {'tost' if eq else 'shared':6s} | "
            f"{models:6.1f} | {bh:.4f} {hi['p_equivalent']:.4f} {lo['p_equivalent']:.4f} | "
            f"{und[0]:.4f} {und[1]:.4f} {und[2]:.4f} | {'OK' if ok else '-'}",
            flush=True,
        )
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
