"""data.bootstrap_train (issue 28): each seed trains on its own bootstrap resample of the training
set, the same for every cell of that seed (BN off and on stay paired), in both engines; the
option is keyless when off and in the key, the params and every population label when on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bnpipe.config import POPULATIONS, load_config, population_text
from bnpipe.data import MnistData
from bnpipe.factors import Cell
from bnpipe.grid import Group, cell_key_for, cell_params, train_cells
from bnpipe.tracking.names import logged_params
from bnpipe.train.common import bootstrap_sample, epoch_permutation, training_order
from tests.conftest import make_tiny_mnist
from tests.test_fused import KERAS_ATOL

# As tests/test_fused.py: 300 % 48 != 0, so every epoch ends with a partial batch.
N_TRAIN, BATCH = 300, 48
BOOT = ["data.bootstrap_train=true"]


@pytest.fixture(scope="module")
def data() -> MnistData:
    return make_tiny_mnist(n_train=N_TRAIN, n_test=100, seed=5)


def _cfg(engine: str, *overrides: str):
    fixed = [f"train.engine={engine}", "train.epochs=1", f"grid.batch_sizes=[{BATCH}]"]
    return load_config(None, [*fixed, *overrides])


def _train(cfg, data: MnistData, *cells: Cell):
    return train_cells(cfg, Group(tuple(cells)), data)


def _resampled(data: MnistData, seed: int) -> MnistData:
    rows = bootstrap_sample(seed, len(data.x_train))
    return dataclasses.replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


def test_the_resample_depends_on_the_seed_and_n_only() -> None:
    a = bootstrap_sample(4, 1000)
    assert np.array_equal(a, bootstrap_sample(4, 1000))  # deterministic
    assert not a.flags.writeable
    assert a.min() >= 0 and a.max() < 1000
    # Draws with replacement: about 1 - 1/e of the rows, some twice.
    assert 590 < len(np.unique(a)) < 680
    assert not np.array_equal(a, bootstrap_sample(5, 1000))
    assert len(bootstrap_sample(4, 500)) == 500
    # Its own stream: the epoch orders are the plain recipe's, applied to the resample.
    for epoch in (0, 3):
        plain = epoch_permutation(4, epoch, 1000)
        assert np.array_equal(training_order(4, epoch, 1000), plain)
        assert np.array_equal(training_order(4, epoch, 1000, bootstrap=True), a[plain])


# Seed 0 with BN off and on (one mixed program in the fused engine), and seed 1.
S0_OFF, S0_ON = Cell.of(0, bn=False, batch_size=BATCH), Cell.of(0, bn=True, batch_size=BATCH)
S1_OFF = Cell.of(1, bn=False, batch_size=BATCH)


@pytest.fixture(scope="module")
def trained(data: MnistData) -> dict:
    """Each engine on the data and on a copy whose rows outside seed 0's resample are noise
    (bootstrap on); the plain recipe on seed 0's resample; the plain cell on the data. Every
    fused group mixes BN off and on, so they share one compiled program."""
    outside = np.setdiff1d(np.arange(N_TRAIN), bootstrap_sample(0, N_TRAIN))
    x = data.x_train.copy()
    x[outside] = np.random.default_rng(9).random((len(outside), x.shape[1]), dtype=np.float32)
    other = dataclasses.replace(data, x_train=x)
    out = {}
    for engine, cells in (("fused", (S0_OFF, S0_ON, S1_OFF)), ("keras", (S0_ON,))):
        boot = _cfg(engine, *BOOT)
        out[engine] = dict(zip(cells, _train(boot, data, *cells), strict=True))
        out[engine, "other"] = dict(zip(cells, _train(boot, other, *cells), strict=True))
        recipe = _train(_cfg(engine), _resampled(data, 0), *cells)
        out[engine, "recipe"] = recipe[cells.index(S0_ON)]
    out["plain"] = _train(_cfg("fused"), data, S0_OFF, S0_ON)[1]
    return out


@pytest.mark.parametrize("engine", ["fused", "keras"])
def test_every_cell_of_a_seed_trains_on_that_seeds_resample(trained: dict, engine: str) -> None:
    """Rows outside seed 0's resample changed: seed 0's cells (BN off and on) train bit for bit
    as before, so they never read those rows; seed 1, whose resample differs, does (fused: in
    one stacked program with seed 0)."""
    same, other = trained[engine], trained[engine, "other"]
    for cell in same:
        assert same[cell].status == other[cell].status == "finished"
        assert _same(same[cell], other[cell]) == (cell.seed == 0), cell


def test_both_engines_train_the_recipe_on_the_resample(trained: dict) -> None:
    """A bootstrap cell is the plain recipe on ``x[bootstrap_sample]``, bit for bit (same initial
    weights, same permutation of positions), in both engines; it differs from the plain cell;
    and the engines agree as closely as tests/test_fused.py asks of them."""
    fused, keras = trained["fused"][S0_ON], trained["keras"][S0_ON]
    for engine, boot in (("fused", fused), ("keras", keras)):
        recipe = trained[engine, "recipe"]
        assert _same(boot, recipe), engine
        assert boot.history == [
            {**r, "epoch_time_s": b["epoch_time_s"]}
            for r, b in zip(recipe.history, boot.history, strict=True)
        ]
    assert not _same(fused, trained["plain"])
    worst = max(
        float(np.max(np.abs(a - b))) for a, b in zip(fused.weights, keras.weights, strict=True)
    )
    assert worst <= KERAS_ATOL[True]


def test_keyless_when_off_in_the_key_and_params_when_on() -> None:
    cell = Cell.of(3, bn=True, batch_size=32)
    default = load_config(None, [])
    off = load_config(None, ["data.bootstrap_train=false"])
    on = load_config(None, BOOT)
    assert "bootstrap_train" not in cell_params(default, cell, "d")
    assert cell_params(off, cell, "d") == cell_params(default, cell, "d")
    assert cell_key_for(off, cell, "d") == cell_key_for(default, cell, "d")
    params = cell_params(on, cell, "d")
    assert params == {**cell_params(default, cell, "d"), "bootstrap_train": True}
    assert cell_key_for(on, cell, "d") != cell_key_for(default, cell, "d")
    assert logged_params(params)["data.bootstrap_train"] is True


def test_a_bad_value_is_one_line_naming_the_field() -> None:
    from bnpipe.config import ConfigError

    for bad in ("maybe", "1", "[true]"):
        with pytest.raises(ConfigError, match=r"^--set: data\.bootstrap_train: ") as exc:
            load_config(None, [f"data.bootstrap_train={bad}"])
        assert "\n" not in str(exc.value)


def test_the_label_is_worded_in_one_place() -> None:
    from bnpipe.design import design_overrides, plan_of

    for population in POPULATIONS:
        plain = plan_of(load_config(None, [f"stats.population={population}"]))
        boot = plan_of(load_config(None, [f"stats.population={population}", *BOOT]))
        assert plain.population_text == POPULATIONS[population]
        assert boot.population_text == population_text(population, True)
        assert "bootstrap training sets" in boot.population_text
        assert boot.design_id() == plain.design_id()  # the cell keys tell the cells apart
    # `bnpipe report` rebuilds a run's report under the run's own option, whatever params say.
    assert design_overrides({"data.bootstrap_train": "True"}) == ["data.bootstrap_train=true"]
    assert design_overrides({"data.bootstrap_train": "False"}) == []


@pytest.mark.usefixtures("prefect_api")
def test_a_bootstrap_run_says_so_and_reproduces(monkeypatch, tiny_mnist, store) -> None:
    """Through the flow: the terminal heading, decisions.csv (and so the Prefect table), the
    MLflow tag and the report's paragraph carry the label; a cell's params carry the option;
    ``bnpipe reproduce`` reads the option back (its bit-for-bit retraining of such a cell was
    checked by hand on real MNIST: README, issue 28)."""
    import mlflow

    from bnpipe.cli import format_run_summary
    from bnpipe.reproduce import recorded_settings
    from bnpipe.tracking import Tracker
    from tests.test_resume import run_flow, search

    digits = population_text("digits", True)
    overrides = [
        *BOOT,
        "train.epochs=1",
        "grid.batch_sizes=[64]",
        "stats.first_look=2",
        "stats.look_every=2",
        "stats.max_seeds=2",
    ]
    out, cfg = run_flow(monkeypatch, tiny_mnist, store, overrides)
    assert f"about {digits}:" in format_run_summary(out)
    assert {d["population_text"] for d in out["decisions"]} == {digits}
    runs = search(store, cfg.tracking.experiment)
    parent = runs.loc[runs["run_id"] == out["parent_run_id"]].iloc[0]
    assert parent["tags.bnpipe.population"] == digits
    client = mlflow.MlflowClient(store)
    folder = Path(client.download_artifacts(out["parent_run_id"], "", str(Path(store[10:]).parent)))
    assert digits in (folder / "decisions.csv").read_text()
    assert "own bootstrap resample of the training images" in Path(out["report"]).read_text()

    # What `bnpipe reproduce` trains: the config it rebuilds from a cell's logged params has
    # the option and gives the cell's recorded key (everything that decides its numbers).
    finished = [r for r in out["results"] if r["status"] == "finished"]
    run = Tracker(store, cfg.tracking.experiment).cell_run(finished[0]["run_id"])
    assert run.params["data.bootstrap_train"] == "True"
    rebuilt = recorded_settings(run).config()
    assert rebuilt.data.bootstrap_train
    assert cell_key_for(rebuilt, run.cell, tiny_mnist.digest) == run.key
