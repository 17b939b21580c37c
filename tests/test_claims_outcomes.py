"""bnpipe.claims.outcomes: a study's cells as outcomes (diverged, typed levels, pairs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bnpipe import claims as C
from tests.claims_frames import (
    ACC_GRID,
    SEEDS,
    bn_effect,
    frames,
)


def test_cell_outcomes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        C.cell_outcomes(pd.DataFrame({"bn": [True]}))
    results, _ = frames(ACC_GRID, [0], bn_effect(0, 0))
    with pytest.raises(ValueError, match="diverged must be"):
        C.cell_outcomes(results, diverged="keep")
    with pytest.raises(ValueError, match="more than once"):
        C.pair_cells(C.cell_outcomes(pd.concat([results, results])))


def test_bool_levels_read_back_from_csv(tmp_path: Path) -> None:
    results, _ = frames(ACC_GRID, SEEDS, bn_effect(0.003, 0.001))
    path = tmp_path / "results.csv"
    results.assign(bn=results["bn"].map({True: "True", False: "False"})).to_csv(path)
    t = C.paired_outcome(
        C.StudyData(pd.read_csv(path, dtype={"bn": str})), C.Settings(n_resamples=999)
    )
    assert t.n == 10 and t.effect > 0


def test_a_finished_network_that_did_not_learn_counts_as_diverged() -> None:
    # Measured on full MNIST: Adam at 0.1 without BN finished at 0.2047 with a finite loss.
    results = pd.DataFrame(
        {"bn": [False, True, False, True], "learning_rate": [0.1, 0.1, 0.001, 0.001],
         "seed": 0, "status": "finished", "test_accuracy": [0.2047, 0.9408, 0.9762, 0.9765]}
    )  # fmt: skip
    cells = C.cell_outcomes(results, diverged="chance")
    assert cells["diverged"].tolist() == [1, 0, 0, 0]
    assert cells["value"].tolist() == [0.2047, 0.9408, 0.9762, 0.9765]  # measured, kept
    assert len(C.cell_outcomes(results)) == 3  # the accuracy study drops it
