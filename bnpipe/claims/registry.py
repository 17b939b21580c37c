"""The claims of the notebook, one record each: adding a claim is adding a record here.

A claim's record holds its words, its study, what its test compares, the direction it predicts,
its test (a function of ``checks``) and its detail figure. ``bnpipe claims`` runs the studies in
``run_order()``; ``verdicts.check_claims`` runs the claims whose study ran.

Data only, with nothing heavy imported: ``bnpipe claims --study nope`` reads the study names
from here and answers before pandas or SciPy load. A claim's test is imported when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from bnpipe.claims.checks import ClaimTest, Settings, StudyData

Check = Callable[["StudyData", "Settings"], "ClaimTest"]


class DetailFigure(NamedTuple):
    """The detail columns a claim draws against its study's factor (log x axis)."""

    x: str
    control: str
    treatment: str
    label: str


@dataclass(frozen=True)
class Claim:
    """One claim of the notebook and how it is tested.

    Attributes:
        key: short id (``learning_rate``).
        words: the claim in the notebook's words.
        study: the study file (stem under ``studies/``) the data comes from.
        test: what is compared, in one line.
        direction: +1 when the claim predicts the outcome is larger with BN, -1 smaller.
        check: the test, on the study's data at the family's settings.
        run_rank: when ``bnpipe claims`` runs the study (lowest first; a study shared by
            several claims runs at the lowest of their ranks).
        figure: the per-level detail figure, if the claim has one.
    """

    key: str
    words: str
    study: str
    test: str
    direction: int
    check: Check
    run_rank: int
    figure: DetailFigure | None = None


def lazy_check(name: str, **options: Any) -> Check:
    """``checks.<name>`` with ``options``, imported when the claim is tested."""

    def run(data: StudyData, how: Settings) -> ClaimTest:
        from bnpipe.claims import checks

        return getattr(checks, name)(data, how, **options)

    run.__name__ = name
    return run


# Run ranks: the accuracy study first (it is `make run`'s grid, usually reused), the cheap ones
# next, the slow small-batch study last.
CLAIMS: tuple[Claim, ...] = (
    Claim("accuracy", 'BN is "better by 0.0013" (0.9764 vs 0.9751, one run each)', "accuracy",
          "test accuracy, BN - no BN, per seed averaged over batch sizes 16-128", +1,
          lazy_check("paired_outcome"), run_rank=0),
    Claim("convergence", "BN speeds up and stabilises convergence", "accuracy",
          "epochs to reach the validation threshold, BN - no BN (never reached: epochs + 1)", -1,
          lazy_check("epochs_to_threshold"), run_rank=0),
    Claim("init_scale", "BN makes training less sensitive to the initial weights", "init_scale",
          "spread (SD) of test accuracy across init scales per seed, BN - no BN", -1,
          lazy_check("spread_across", across="init_scale"), run_rank=2,
          figure=DetailFigure("init_scale", "mean_control", "mean_treatment", "test accuracy")),
    Claim("learning_rate", "BN enables the use of higher learning rates without causing the "
          "network to diverge", "learning_rate",
          "share of diverged cells over all learning rates, BN - no BN (paired 0/1)", -1,
          lazy_check("diverged_share"), run_rank=1,
          figure=DetailFigure("learning_rate", "diverged_control", "diverged_treatment",
                              "share diverged")),
    # The same words under SGD with momentum, where the BN paper made the claim (Adam's own
    # step-size adaptation hides much of it); its own study, the same test.
    Claim("learning_rate_sgd", "BN enables the use of higher learning rates without causing the "
          "network to diverge (under SGD with momentum 0.9)", "optimizer",
          "share of diverged cells over SGD learning rates 0.01-1, BN - no BN (paired 0/1)", -1,
          lazy_check("diverged_share"), run_rank=1,
          figure=DetailFigure("learning_rate", "diverged_control", "diverged_treatment",
                              "share diverged")),
    Claim("regularisation", "BN regularises (less overfitting)", "accuracy",
          "train - test accuracy gap, BN - no BN, per seed averaged over batch sizes", -1,
          lazy_check("train_test_gap"), run_rank=0),
    Claim("compute", "BN costs extra computation", "compute",
          "seconds per epoch (after the first), BN / no BN, keras fit", +1,
          lazy_check("time_ratio"), run_rank=3),
    Claim("small_batch", 'BN depends on batch size: "very small batch sizes (e.g. 1 or 2)" are '
          "unstable", "small_batch",
          "BN effect on test accuracy at the smallest batch minus at the largest (diverged = "
          "chance)", -1,
          lazy_check("interaction_contrast", across="batch_size"), run_rank=4,
          figure=DetailFigure("batch_size", "control", "treatment",
                              "test accuracy (diverged = chance)")),
)  # fmt: skip
CLAIM_BY_KEY = {c.key: c for c in CLAIMS}


def run_order(claims: tuple[Claim, ...] = CLAIMS) -> tuple[str, ...]:
    """Every claim's study once, in the order ``bnpipe claims`` runs them (``run_rank``)."""
    rank: dict[str, int] = {}
    for c in claims:
        rank[c.study] = min(rank.get(c.study, c.run_rank), c.run_rank)
    return tuple(sorted(rank, key=rank.__getitem__))
