"""bnpipe.claims.verdicts and .report: the family's table, its verdicts and the written report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bnpipe import claims as C
from tests.claims_frames import (
    ACC_GRID,
    LR_GRID,
    SEEDS,
    curve_outcome,
    frames,
    lr_outcome,
)


def test_claims_table_and_report(tmp_path: Path) -> None:
    acc_r, acc_h = frames(ACC_GRID, SEEDS, curve_outcome(2, 4))
    acc_r["test_accuracy"] += np.where(acc_r["bn"], 0.003, 0.0)
    lr_r, lr_h = frames(LR_GRID, list(range(20)), lr_outcome(False, True))
    studies = {
        "accuracy": C.StudyData(acc_r, acc_h, epochs=5),
        "learning_rate": C.StudyData(lr_r, lr_h),
    }
    tests = C.check_claims(studies, alpha=0.05, n_resamples=999)
    assert set(tests) == {"accuracy", "convergence", "regularisation", "learning_rate"}
    table = C.claims_table(tests, alpha=0.05)
    assert list(table["claim"]) == [c.key for c in C.CLAIMS]
    verdicts = dict(zip(table["claim"], table["verdict"], strict=True))
    assert verdicts["learning_rate"] == "supported"
    assert verdicts["convergence"] == "supported"
    assert verdicts["compute"] == verdicts["init_scale"] == "not run"
    # The 4 tested claims are the family: intervals at 1 - 0.05/4; Holm over their p only.
    assert np.isfinite(table["p_holm"]).sum() == 4
    assert (
        table.loc[table["claim"] == "learning_rate", "p_holm"].item()
        <= 4 * tests["learning_rate"].p + 1e-12
    )
    out = C.write_report(tests, tmp_path / "claims", alpha=0.05, studies={"accuracy": {"x": "1"}})
    text = out.markdown_path.read_text()
    assert text.startswith("# Claims of the notebook, checked")
    assert "98.75% CI (simultaneous)" in text
    body = [ln for ln in out.description.splitlines()[2:] if ln.startswith("| ")]
    assert len(body) == len(C.CLAIMS)  # one row per claim
    html = out.html_path.read_text()
    assert "data:image/png;base64," in html and 'src="claims.png"' not in html
    assert (tmp_path / "claims" / "claims.csv").is_file()
    assert {f.name for f in out.figures} == {"claims.png", "claim_learning_rate.png"}
    assert "![learning_rate](claim_learning_rate.png)" in text


def test_a_real_but_negligible_effect_is_flagged() -> None:
    # The accuracy claim on full MNIST: BN +0.08 pp, interval [+0.02, +0.13] pp, margin 0.2 pp.
    small = C.ClaimTest(
        n=50, n_label="50", effect=0.0008, ci_low=0.0002, ci_high=0.0013, p=1e-4,
        null=0.0, band=(-0.002, 0.002), unit="pp", method="paired t",
    )  # fmt: skip
    wide = dataclasses.replace(small, ci_high=0.0031)
    for t, flagged in ((small, True), (wide, False)):
        table = C.claims_table({"accuracy": t}, alpha=0.05)
        row = table.set_index("claim").loc["accuracy"]
        assert row["verdict"] == "supported"
        assert bool(row["within_band"]) is flagged
        assert (C.NEGLIGIBLE in C.claims_markdown_table(table, 0.05)) is flagged
