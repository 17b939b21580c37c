"""bnpipe.claims.registry: every claim has a study that loads and varies what it is about."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnpipe import claims as C

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_every_claim_has_a_study_that_loads() -> None:
    from bnpipe.config import load_config

    for claim in C.CLAIMS:
        cfg = load_config(STUDIES / f"{claim.study}.yaml")
        assert cfg.grid.compare == "bn" and cfg.grid.compare_levels == (False, True)
    # The accuracy study is the default experiment: its cells are `make run`'s (same keys).
    accuracy = load_config(STUDIES / "accuracy.yaml")
    assert accuracy.model_dump() == load_config(STUDIES.parent / "params.yaml").model_dump()


@pytest.mark.parametrize(
    ("study", "factor", "must_have"),
    [
        ("small_batch", "batch_size", 2),
        ("learning_rate", "learning_rate", 0.1),
        ("init_scale", "init_scale", 4.0),
        ("optimizer", "learning_rate", 0.3),  # SGD: where no BN diverges and BN does not
    ],
)
def test_studies_vary_what_their_claim_is_about(study: str, factor: str, must_have: float):
    from bnpipe.config import load_config

    cfg = load_config(STUDIES / f"{study}.yaml")
    assert must_have in cfg.grid.levels[factor]
    assert cfg.stats.design == "fixed" and len(cfg.grid.seeds) >= 10


def test_the_sgd_claim_trains_under_sgd() -> None:
    from bnpipe.config import load_config

    assert load_config(STUDIES / "optimizer.yaml").train.optimizer == "sgd"


def test_compute_study_times_the_users_fit() -> None:
    from bnpipe.config import load_config

    cfg = load_config(STUDIES / "compute.yaml")
    assert cfg.train.engine == "keras" and cfg.train.steps_per_execution == 1
    assert cfg.train.epochs >= 2  # the first epoch (compile) is not timed


def test_claims_run_every_study_once() -> None:
    order = C.run_order()
    assert sorted(order) == sorted({c.study for c in C.CLAIMS})
    # The accuracy study first (`make run`'s grid, usually reused), the slow small-batch last.
    assert order == (
        "accuracy", "learning_rate", "optimizer", "init_scale", "compute", "small_batch"
    )  # fmt: skip


def test_every_claim_names_a_test_that_exists() -> None:
    from bnpipe.claims import checks

    # A claim's test is looked up by name when it runs: a typo must fail here, not in a study.
    for claim in C.CLAIMS:
        assert callable(getattr(checks, claim.check.__name__)), claim.key
