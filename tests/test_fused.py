"""The fused engine changes speed, not results.

Fast tests run on tiny generated data; the slow one compares both engines on real MNIST with a
paired equivalence test (TOST) over seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe.data import MnistData
from bnpipe.models import build_model
from bnpipe.train import fused
from bnpipe.train.common import HISTORY_KEYS, Cell, TrainResult, TrainSpec
from bnpipe.train.engines import train_group
from bnpipe.train.fused import train_fused
from bnpipe.train.keras_engine import train_keras
from tests.conftest import REAL_DATA, make_tiny_mnist, requires_mnist

# 300 % 48 == 12: every epoch ends with a partial batch, as 60000 % 64 does on MNIST.
N_TRAIN, BATCH = 300, 48
SEEDS = [0, 1, 2]
LR = 1e-3
# Observed max |fused - keras| after 2 epochs on this data: ~5e-7 without BN, ~3e-5 with BN.
# BN is looser because the bias in front of BN gets a near-zero gradient made of round-off,
# and Adam normalizes that noise into lr-sized steps; the two engines round differently.
KERAS_ATOL = {False: 1e-5, True: 3e-4}


@pytest.fixture(scope="module")
def data() -> MnistData:
    return make_tiny_mnist(n_train=N_TRAIN, n_test=100, seed=3)


def _fused(
    data: MnistData, bn: bool, seeds: list[int], on_epoch=None, **kwargs
) -> list[TrainResult]:
    kwargs = {"epochs": 1, "learning_rate": LR, **kwargs}
    return train_fused(TrainSpec.of(seeds, bn=bn, batch_size=BATCH, **kwargs), data, on_epoch)


def _keras(data: MnistData, cell: Cell, **kwargs) -> TrainResult:
    """The keras engine on one cell named by BN and batch size (``**kwargs``: TrainSpec.of)."""
    spec = TrainSpec.of(
        [cell.seed], bn=cell["bn"], batch_size=cell["batch_size"], engine="keras", **kwargs
    )
    return train_keras(spec, data)[0]


def _max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _assert_identical(a: TrainResult, b: TrainResult) -> None:
    """Bit for bit: every weight and every per-epoch metric (wall times aside)."""
    assert a.cell == b.cell and a.status == b.status
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    for ours, theirs in zip(a.history, b.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("bn", [False, True])
def test_fused_group_equals_members_trained_alone(data: MnistData, bn: bool) -> None:
    """A member's result does not depend on the other seeds of its group, bit for bit.

    Every shard is padded to the same width, so a seed trained alone (as ``bnpipe reproduce`` and
    a resumed group train it) runs the same program as inside the full group, at another position.
    The partial last batch is included (300 % 48 != 0).
    """
    together = _fused(data, bn, SEEDS, epochs=2)
    for result in together:
        _assert_identical(result, _fused(data, bn, [result.cell.seed], epochs=2)[0])


def test_seed_order_and_parallel_shards_change_no_bits(data: MnistData) -> None:
    """Shards on threads side by side, or one after another, in any seed order: same results."""
    seeds = [0, 1, 2, 3, 4]
    serial = _fused(data, True, seeds, shard_size=2, parallel_shards=1)
    parallel = _fused(data, True, seeds[::-1], shard_size=2, parallel_shards=3)
    assert [r.cell.seed for r in parallel] == seeds[::-1]
    for a, b in zip(serial, parallel[::-1], strict=True):
        _assert_identical(a, b)


def test_shards_must_be_positive(data: MnistData) -> None:
    with pytest.raises(ValueError, match="shard_size"):
        _fused(data, True, SEEDS, shard_size=0)
    with pytest.raises(ValueError, match="parallel_shards"):
        _fused(data, True, SEEDS, parallel_shards=0)


@pytest.mark.parametrize("bn", [False, True])
def test_fused_matches_keras_engine(data: MnistData, bn: bool) -> None:
    """Same init, data order, BN, loss, Adam and metrics as model.fit, up to float round-off."""
    results = _fused(data, bn, SEEDS[:2], epochs=2)
    for result in results:
        ref = _keras(data, result.cell, epochs=2, learning_rate=LR)
        assert result.engine == "fused" and ref.engine == "keras"
        assert result.status == ref.status == "finished"
        assert _max_abs_diff(result.weights, ref.weights) <= KERAS_ATOL[bn]
        assert len(result.history) == len(ref.history) == 2
        for ours, theirs in zip(result.history, ref.history, strict=True):
            assert set(ours) == set(theirs) == set(HISTORY_KEYS)
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-4)


@pytest.mark.parametrize("bn", [False, True])
def test_weights_load_into_an_ordinary_keras_model(data: MnistData, bn: bool) -> None:
    """Unstacked weights are in get_weights order; inference BN uses the moving averages."""
    result = _fused(data, bn, [7], epochs=2)[0]
    model = build_model(bn=bn, seed=7)
    model.set_weights(result.weights)
    probs = model.predict(data.x_test, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == data.y_test))
    assert accuracy == pytest.approx(result.history[-1]["val_accuracy"], abs=1e-6)


def test_huge_learning_rate_diverges(data: MnistData) -> None:
    results = _fused(data, False, SEEDS[:2], epochs=3, learning_rate=1e8)
    for result in results:
        assert result.status == "diverged"
        assert result.error
        assert len(result.history) == 1  # stopped after the epoch whose loss was non-finite
        assert not np.isfinite(result.history[0]["loss"])


def test_a_diverged_member_leaves_the_others_untouched(
    data: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poison member 1's initial weights: it diverges, members 0 and 2 train as without it."""
    clean = _fused(data, True, SEEDS, epochs=2)
    real_init = fused.stack_initial_weights

    def poisoned(bn: bool, seeds, hidden_units, num_classes=10, **kwargs):
        weights = real_init(bn, seeds, hidden_units, num_classes, **kwargs)
        weights[0][1, 0, 0] = np.inf
        return weights

    monkeypatch.setattr(fused, "stack_initial_weights", poisoned)
    mixed = _fused(data, True, SEEDS, epochs=2)
    assert [r.status for r in mixed] == ["finished", "diverged", "finished"]
    assert len(mixed[1].history) == 1
    for i in (0, 2):
        assert _max_abs_diff(mixed[i].weights, clean[i].weights) <= 1e-6
        assert mixed[i].history[-1]["val_loss"] == clean[i].history[-1]["val_loss"]


def test_on_epoch_called_per_member_per_epoch(data: MnistData) -> None:
    calls: list[tuple[Cell, int]] = []
    rows = _fused(data, False, SEEDS[:2], epochs=2, on_epoch=lambda c, e, r: calls.append((c, e)))
    cells = [r.cell for r in rows]
    assert sorted(calls) == sorted((c, e) for c in cells for e in (1, 2))


@pytest.mark.parametrize("engine", ["keras", "fused"])
def test_train_group_dispatches(data: MnistData, engine: str) -> None:
    spec = TrainSpec.of([4, 5], bn=True, batch_size=BATCH, learning_rate=LR, engine=engine)
    results = train_group(spec, data)
    assert [r.cell for r in results] == [
        Cell.of(4, bn=True, batch_size=BATCH),
        Cell.of(5, bn=True, batch_size=BATCH),
    ]
    assert {r.engine for r in results} == {engine}


def test_train_group_rejects_unknown_engine(data: MnistData) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        train_group(TrainSpec.of([0], bn=True, batch_size=BATCH, engine="torch"), data)


@pytest.mark.slow
@requires_mnist
def test_fused_and_keras_test_accuracy_equivalent_on_mnist() -> None:
    """Paired by seed, fused and keras test accuracies differ by less than 0.003 (TOST)."""
    from bnpipe.data import load_mnist
    from bnpipe.stats import compare_paired

    mnist = load_mnist(REAL_DATA).subset(10_000, 5_000)
    seeds = list(range(8))
    kwargs = {"epochs": 2, "learning_rate": LR}
    fused_runs = train_fused(TrainSpec.of(seeds, bn=True, batch_size=64, **kwargs), mnist)
    keras_runs = [
        _keras(mnist, Cell.of(s, bn=True, batch_size=64), steps_per_execution=100, **kwargs)
        for s in seeds
    ]
    fused_acc = np.array([r.history[-1]["val_accuracy"] for r in fused_runs])
    keras_acc = np.array([r.history[-1]["val_accuracy"] for r in keras_runs])
    result = compare_paired(fused_acc, keras_acc, equivalence_margin=0.003)
    # Identical pairs have zero variance, so TOST is undefined (NaN): that is the best outcome.
    identical = bool(np.all(fused_acc == keras_acc))
    assert identical or result.equivalent, (fused_acc, keras_acc, result.tost_pvalue)


@pytest.mark.parametrize(
    "settings",
    [
        {"bn": True, "bn_position": "before_relu"},
        {"bn": False, "bn_position": "before_relu"},  # no BN: the position changes nothing
        {"bn": True, "init_scale": 0.5, "learning_rate": 3e-3},
        {"bn": False, "init_scale": 2.0, "learning_rate": 3e-3},
    ],
    ids=["bn-before-relu", "no-bn-before-relu", "bn-init-0.5-lr-3e-3", "no-bn-init-2-lr-3e-3"],
)
def test_fused_matches_keras_engine_for_other_factor_levels(data: MnistData, settings) -> None:
    """BN before the ReLU (Dense -> BN -> ReLU), a scaled init and another learning rate train
    in the fused engine as model.fit trains them, up to float round-off."""
    bn = settings["bn"]
    spec = TrainSpec.of(SEEDS[:2], batch_size=BATCH, epochs=2, **settings)
    fused_runs = train_fused(spec, data)
    keras_runs = train_keras(spec, data)
    # Round-off grows with the learning rate (Adam steps are lr-sized). Measured here: weights
    # within 1e-4 (BN) / 1e-5 (no BN), every metric within 1e-5.
    atol = KERAS_ATOL[bn] * max(1.0, spec.level("learning_rate", 0) / LR)
    for ours, ref in zip(fused_runs, keras_runs, strict=True):
        assert ours.cell == ref.cell and ours.status == ref.status == "finished"
        assert _max_abs_diff(ours.weights, ref.weights) <= atol
        for a, b in zip(ours.history, ref.history, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert a[key] == pytest.approx(b[key], abs=1e-4)


def test_factor_levels_change_the_results(data: MnistData) -> None:
    base = _fused(data, True, [0], epochs=1)[0]
    for change in ({"bn_position": "before_relu"}, {"init_scale": 0.5}, {"learning_rate": 1e-2}):
        other = _fused(data, True, [0], epochs=1, **change)[0]
        assert not all(
            np.array_equal(a, b) for a, b in zip(base.weights, other.weights, strict=True)
        ), change


def test_members_with_other_rates_and_scales_train_as_alone(data: MnistData) -> None:
    """One spec whose members differ in learning rate and init scale: each member is bit for
    bit what it is trained alone (rates never share a shard; scales only change the init)."""
    cells = [Cell.of(s, bn=True, batch_size=BATCH) for s in (0, 1, 2)]
    lrs, scales = (1e-3, 1e-2, 1e-3), (1.0, 1.0, 0.5)
    base = TrainSpec.of([0, 1, 2], bn=True, batch_size=BATCH, epochs=2)
    mixed = TrainSpec(
        cells=tuple(cells),
        levels=tuple(
            {**dict(lv), "learning_rate": lr, "init_scale": scale}
            for lv, lr, scale in zip(base.levels, lrs, scales, strict=True)
        ),
        epochs=2,
    )
    together = train_fused(mixed, data)
    assert [r.cell for r in together] == cells
    for i, result in enumerate(together):
        alone = train_fused(mixed.members([i]), data)[0]
        _assert_identical(result, alone)
        single = TrainSpec.of(
            [i], bn=True, batch_size=BATCH, epochs=2, learning_rate=lrs[i], init_scale=scales[i]
        )
        _assert_identical(result, train_fused(single, data)[0])


def _mixed_spec(seeds: list[int], bn_position: str = "after_relu", **kwargs) -> TrainSpec:
    """One group of both arms: ``seeds`` without BN, then with (cells named as TrainSpec.of's)."""
    off = TrainSpec.of(seeds, bn=False, batch_size=BATCH, bn_position=bn_position, **kwargs)
    on = TrainSpec.of(seeds, bn=True, batch_size=BATCH, bn_position=bn_position, **kwargs)
    spec = off + on
    assert spec.all("bn") == (False,) * len(seeds) + (True,) * len(seeds)
    return spec


@pytest.mark.parametrize("bn_position", ["after_relu", "before_relu"])
def test_members_with_and_without_bn_in_one_program_train_as_apart(
    data: MnistData, bn_position: str
) -> None:
    """A shard of both arms is one masked program; each member trains bit for bit as in the
    plain program of its arm, so a cell's numbers do not depend on what shares its group."""
    seeds = [0, 1]  # 2 + 2 members: one mixed shard of 5 (padded)
    spec = _mixed_spec(seeds, bn_position, epochs=2, learning_rate=LR)
    mixed = train_fused(spec, data)
    assert fused.shard_layout(spec, spec.all("bn")[:5]).mixed
    apart = [
        r
        for bn in (False, True)
        for r in _fused(data, bn, seeds, epochs=2, bn_position=bn_position)
    ]
    for a, b in zip(mixed, apart, strict=True):
        _assert_identical(a, b)
    # The members without BN come back with their own model's weights (no BN slots).
    assert [len(r.weights) for r in mixed] == [6, 6, 14, 14]


def test_a_mixed_group_is_cut_into_plain_shards_where_it_can(data: MnistData) -> None:
    """Ten members of each arm fill plain shards (no member pays for BN it does not use); a
    group of two seeds per arm needs one mixed shard instead of two half-empty plain ones."""
    big = _mixed_spec(list(range(5)))
    shards = [fused.shard_layout(big, big.all("bn")[i : i + 5]) for i in (0, 5)]
    assert [s.mixed for s in shards] == [False, False] and [s.bn for s in shards] == [False, True]
    small = _mixed_spec([0, 1])
    assert fused.shard_layout(small, small.all("bn")).mixed


@pytest.mark.slow
def test_the_speed_flags_change_no_bit(tmp_path) -> None:
    """XLA's thunk runtime (its default) and the whole-program emitter bnpipe picks give the same
    bits; XLA reads its flags once per process, hence two processes."""
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, numpy as np\n"
        "from bnpipe.train.common import TrainSpec\n"
        "from bnpipe.train.fused import train_fused\n"
        "from tests.conftest import make_tiny_mnist\n"
        "data = make_tiny_mnist(n_train=300, n_test=100, seed=3)\n"
        "spec = TrainSpec.of([0, 1], bn=True, batch_size=48, epochs=2)\n"
        "h = hashlib.sha256()\n"
        "for r in train_fused(spec, data):\n"
        "    for w in r.weights: h.update(w.tobytes())\n"
        "import os; print(os.environ['XLA_FLAGS'], h.hexdigest())\n"
    )
    out = {}
    for value in ("true", "false"):
        env = {**os.environ, "XLA_FLAGS": f"--xla_cpu_use_thunk_runtime={value}"}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        flags, digest = proc.stdout.split()[-2:]
        assert flags == f"--xla_cpu_use_thunk_runtime={value}"  # the user's value wins
        out[value] = digest
    assert out["true"] == out["false"]
