"""Numbers as the reports print them: one home, so every surface shows a p the same way."""

from __future__ import annotations

import numpy as np


def fmt_p(p: float) -> str:
    """A p-value for a table cell: ``<0.001``, ``0.042`` or ``n/a`` (NaN, inf)."""
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
