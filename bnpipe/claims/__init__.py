"""The notebook's claims about BatchNormalization, each put to a paired test.

The notebook trained the MLP once with and once without BN and wrote six claims next to the
single accuracy difference. Each claim here has one study (a params file under ``studies/``),
one outcome and one primary test, paired by seed (a seed's BN and no-BN cells share data order
and initial weights). Pure functions: results/histories frames in, a ``ClaimTest`` out; the
claims table and the report are built from those. No tracking or orchestration imports.

By job: ``registry`` (the claims, one record each), ``checks`` (their tests), ``outcomes``
(a study's cells as paired outcomes), ``verdicts`` (the family tested at once, its table) and
``report`` (Markdown, HTML, figures). Each public name is importable from here and loads its
module when first used: the registry alone stays light (``bnpipe claims`` checks study names
with it before anything heavy loads).

Error control across claims (one family, ``alpha``): every claim's interval is a Bonferroni
``1 - alpha/m`` interval (m = claims tested), so all m intervals cover their true effects at
once with probability >= 1 - alpha. A verdict is read off its interval: it excludes "no effect"
on the claimed side (supported) or the other (contradicted), or lies inside the claim's margin
of no meaningful difference, or neither (undecided). Every verdict in the table is then right
with probability >= 1 - alpha, whichever kind it is (as the sequential design's Bonferroni
RCIs, README). Holm-adjusted p-values of the directional tests are shown beside them.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "EPOCH_MARGIN": "checks",
    "SHARE_MARGIN": "checks",
    "TIME_MARGIN": "checks",
    "ClaimTest": "checks",
    "Settings": "checks",
    "StudyData": "checks",
    "diverged_share": "checks",
    "epochs_to_threshold": "checks",
    "interaction_contrast": "checks",
    "paired_outcome": "checks",
    "spread_across": "checks",
    "time_ratio": "checks",
    "train_test_gap": "checks",
    "DIVERGED": "outcomes",
    "FAILED_ACCURACY": "outcomes",
    "cell_outcomes": "outcomes",
    "pair_cells": "outcomes",
    "seed_means": "outcomes",
    "stratum_detail": "outcomes",
    "CLAIM_BY_KEY": "registry",
    "CLAIMS": "registry",
    "Claim": "registry",
    "DetailFigure": "registry",
    "run_order": "registry",
    "CLAIM_COLUMNS": "verdicts",
    "VERDICTS": "verdicts",
    "check_claims": "verdicts",
    "claims_table": "verdicts",
    "verdict_of": "verdicts",
    "NEGLIGIBLE": "report",
    "ClaimsReport": "report",
    "claims_markdown_table": "report",
    "format_effect": "report",
    "plot_claims": "report",
    "plot_detail": "report",
    "render_markdown": "report",
    "write_report": "report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """A public name from its module, imported on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'bnpipe.claims' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bnpipe.claims.{_HOMES[name]}"), name)
