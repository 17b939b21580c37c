"""bnpipe.report.figures: how the figures facet the strata."""

from __future__ import annotations

from bnpipe.analysis import comparison_of
from bnpipe.report import facets
from tests.report_frames import make_grid_frames


def test_a_two_factor_stratum_facets_rows_by_columns() -> None:
    factors = {"bn": [False, True], "batch_size": [32, 128], "init_scale": [0.5, 1.0, 2.0]}
    results, _ = make_grid_frames(factors)
    # A 2-factor stratum gives a rows x columns grid: 2 batch sizes x 3 init scales.
    cmp = comparison_of(results)
    nrows, ncols, panels = facets(cmp.strata, cmp.levels)
    assert (nrows, ncols, len(panels)) == (2, 3, 6)
    assert panels[1] == (0, 1, (("batch_size", 32), ("init_scale", 1.0)))
