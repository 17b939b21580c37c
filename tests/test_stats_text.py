"""bnpipe.stats.text: how reports print p-values."""

from __future__ import annotations

import math

from bnpipe import stats as S


def test_fmt_p() -> None:
    assert [S.fmt_p(p) for p in (0.0004, 0.0421, math.nan, math.inf)] == [
        "<0.001",
        "0.042",
        "n/a",
        "n/a",
    ]
