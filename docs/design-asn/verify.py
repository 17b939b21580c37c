"""The short-listed designs of docs/design-asn/search.txt again with 200,000 simulated comparisons
per scenario (Monte-Carlo SE of a rate near 0.0125: 0.00025), the errors also at SD 0.002 (about
the measured SDs) and at SD 0.1, where equivalence never stops a comparison early: the worst case
of P(benefit or harm | 0), which then depends on the design alone (the t statistic is scale-free).

Run once: .venv/bin/python docs/design-asn/verify.py > docs/design-asn/verify.txt
"""

from __future__ import annotations

import sys
import time

from search import MARGIN, MEASURED, A, design  # this folder's search script

from bnpipe.stats import average_sample_number

N_SIM = 200_000
CANDIDATES = {
    "obf 10/10 shared (before)": ("obf", -4.0, 10, 10, None),
    "pocock 10/10 shared": ("pocock", -4.0, 10, 10, None),
    "pocock 20/5 tost (chosen)": ("pocock", -4.0, 20, 5, 2 * A),
    "pocock 15/5 tost": ("pocock", -4.0, 15, 5, 2 * A),
    "pocock 10/5 tost": ("pocock", -4.0, 10, 5, 2 * A),
    "hsd(1) 20/5 tost": ("hsd", 1.0, 20, 5, 2 * A),
    "hsd(2) 20/10 tost": ("hsd", 2.0, 20, 10, 2 * A),
    "hsd(2) 20/5 tost": ("hsd", 2.0, 20, 5, 2 * A),
}


def main(only: list[str]) -> None:
    t0 = time.time()
    for name, (sp, g, first, every, eq) in CANDIDATES.items():
        if only and name not in only:
            continue
        d = design(sp, g, first, every, eq)

        def oc(effect: float, sd: float, seed: int, d: dict = d) -> dict:
            return average_sample_number(effect, sd, n_sim=N_SIM, seed=seed, **d)

        asn = [oc(e, s, i)["asn"] for i, (e, s) in enumerate(MEASURED)]
        print(f"{name}: expected models {2 * sum(asn):.1f} (pairs per size {asn})")
        for sd in (0.003, 0.002, 0.1):
            z = oc(0.0, sd, 10)
            hi, lo = oc(MARGIN, sd, 11), oc(-MARGIN, sd, 12)
            print(
                f"  sd {sd}: P(benefit or harm | 0) {z['p_benefit'] + z['p_harm']:.5f}  "
                f"P(equivalent | +m) {hi['p_equivalent']:.5f}  "
                f"P(equivalent | -m) {lo['p_equivalent']:.5f}  (budget {A})"
            )
        und = [oc(e, 0.003, 20 + i)["p_undecided"] for i, e in enumerate((0, MARGIN / 2, MARGIN))]
        print(f"  sd 0.003: P(undecided) at 0, m/2, m: {und}", flush=True)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])  # names of candidates to run; none: all
