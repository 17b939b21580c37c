"""The family of claims tested at once, and the verdicts read off their intervals."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from bnpipe.claims.checks import ClaimTest, Settings, StudyData
from bnpipe.claims.registry import CLAIMS
from bnpipe.stats import bonferroni_alpha, holm

VERDICTS = ("supported", "contradicted", "no meaningful difference", "undecided", "not run")


def check_claims(
    studies: Mapping[str, StudyData], *, alpha: float = 0.05, n_resamples: int = 9999
) -> dict[str, ClaimTest]:
    """Every claim whose study is in ``studies``, at the simultaneous level ``alpha / m``."""
    todo = [c for c in CLAIMS if c.study in studies]
    how = Settings(alpha=bonferroni_alpha(alpha, len(todo)), n_resamples=n_resamples)
    return {c.key: c.check(studies[c.study], how) for c in todo}


def verdict_of(test: ClaimTest | None, direction: int) -> str:
    """``supported`` / ``contradicted`` when the interval excludes the null on the claimed /
    other side, ``no meaningful difference`` inside the band, else ``undecided``."""
    if test is None:
        return VERDICTS[4]
    lo, hi = test.ci_low, test.ci_high
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return VERDICTS[3]
    if lo > test.null or hi < test.null:
        above = lo > test.null
        return VERDICTS[0] if above == (direction > 0) else VERDICTS[1]
    if test.band[0] <= lo and hi <= test.band[1]:
        return VERDICTS[2]
    return VERDICTS[3]


CLAIM_COLUMNS = [
    "claim",
    "words",
    "test",
    "study",
    "n",
    "n_label",
    "effect",
    "ci_low",
    "ci_high",
    "unit",
    "p",
    "p_holm",
    "verdict",
    "within_band",
    "method",
]


def claims_table(tests: Mapping[str, ClaimTest | None], alpha: float = 0.05) -> pd.DataFrame:
    """One row per claim of ``CLAIMS``, in their order; verdicts from the intervals.

    ``tests`` maps claim keys to their ClaimTest, computed at ``alpha / m``
    (``stats.bonferroni_alpha``); a claim missing or None is "not run". ``p_holm`` adjusts the
    directional p-values across the claims that were tested (Holm).
    """
    rows = []
    for claim in CLAIMS:
        t = tests.get(claim.key)
        rows.append(
            {
                "claim": claim.key,
                "words": claim.words,
                "test": claim.test,
                "study": claim.study,
                "n": t.n if t else 0,
                "n_label": t.n_label if t else "",
                "effect": t.effect if t else math.nan,
                "ci_low": t.ci_low if t else math.nan,
                "ci_high": t.ci_high if t else math.nan,
                "unit": t.unit if t else "",
                "p": t.p if t else math.nan,
                "verdict": verdict_of(t, claim.direction),
                # A nonzero effect whose whole interval is inside the margin is real but too
                # small to matter: the report says so beside "supported" / "contradicted".
                "within_band": bool(
                    t is not None and t.band[0] <= t.ci_low and t.ci_high <= t.band[1]
                ),
                "method": t.method if t else "",
            }
        )
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy(float))
    return out[CLAIM_COLUMNS]
