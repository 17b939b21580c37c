"""The keras engine: reproducible, paired data order, speed knob that changes no numbers."""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe.data import MnistData
from bnpipe.train.common import HISTORY_KEYS, Cell, TrainSpec, epoch_permutation
from bnpipe.train.keras_engine import train_keras
from tests.conftest import make_tiny_mnist

# 200 % 48 != 0: the last batch of every epoch is partial.
CELL = Cell.of(11, bn=True, batch_size=48)


@pytest.fixture(scope="module")
def data() -> MnistData:
    return make_tiny_mnist(n_train=200, n_test=80, seed=5)


def _train(data: MnistData, cell: Cell = CELL, on_epoch=None, **kwargs):
    kwargs = {"epochs": 2, "learning_rate": 1e-3, **kwargs}
    spec = TrainSpec.of(
        [cell.seed], bn=cell["bn"], batch_size=cell["batch_size"], engine="keras", **kwargs
    )
    (result,) = train_keras(spec, data, on_epoch)
    assert result.cell == cell
    return result


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_history_has_one_row_per_epoch_with_every_key(data: MnistData) -> None:
    result = _train(data)
    assert result.status == "finished" and result.error is None and result.engine == "keras"
    assert len(result.history) == 2
    for row in result.history:
        assert set(row) == set(HISTORY_KEYS)
        assert all(np.isfinite(v) for v in row.values())
    assert result.train_time_s > 0


def test_same_cell_twice_gives_identical_bits(data: MnistData) -> None:
    assert _same(_train(data).weights, _train(data).weights)


def test_steps_per_execution_changes_no_numbers(data: MnistData) -> None:
    one, many = _train(data, steps_per_execution=1), _train(data, steps_per_execution=3)
    assert _same(one.weights, many.weights)
    assert one.history[-1]["val_loss"] == many.history[-1]["val_loss"]


def test_seed_decides_init_and_order(data: MnistData) -> None:
    other = _train(data, Cell.of(12, bn=True, batch_size=48))
    assert not _same(_train(data).weights, other.weights)
    assert not np.array_equal(epoch_permutation(11, 0, 200), epoch_permutation(12, 0, 200))
    assert not np.array_equal(epoch_permutation(11, 0, 200), epoch_permutation(11, 1, 200))


def test_on_epoch_sees_every_epoch(data: MnistData) -> None:
    seen: list[int] = []
    _train(data, on_epoch=lambda cell, epoch, row: seen.append(epoch))
    assert seen == [1, 2]


def test_huge_learning_rate_diverges_and_stops(data: MnistData) -> None:
    result = _train(data, Cell.of(1, bn=False, batch_size=48), epochs=3, learning_rate=1e8)
    assert result.status == "diverged"
    assert result.error
    assert len(result.history) < 3
    assert not np.isfinite(result.history[-1]["loss"])
