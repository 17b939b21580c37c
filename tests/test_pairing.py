"""Paired design, checked through the engines: for a seed, the BN and no-BN cells start from the
same Dense kernels and see the same batches in the same order, in both engines.

Each training example carries its index in its first pixel, so the batches an engine feeds can
be read back from what it hands to Keras (keras engine) or to its compiled epoch (fused engine).
Recording wrappers call straight through; the engines run unchanged.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from bnpipe.data import MnistData
from bnpipe.tfkeras import keras
from bnpipe.train import fused
from bnpipe.train.common import TrainSpec
from bnpipe.train.engines import train_group
from tests.conftest import make_tiny_mnist

N_TRAIN, BATCH, EPOCHS, SEEDS = 50, 16, 2, (3, 4)
DENSE = ("dense_0", "dense_1", "output")


def identified_data() -> MnistData:
    data = make_tiny_mnist(n_train=N_TRAIN, n_test=20, seed=7)
    x = data.x_train.copy()
    x[:, 0] = np.arange(N_TRAIN) / 1000  # the example's index, readable from any batch
    return MnistData(x, data.y_train, data.x_test, data.y_test, "ids", "generated")


def ids(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x)[..., 0] * 1000).astype(int)


def batches(order: np.ndarray, size: int) -> list[list[int]]:
    return [order[i : i + size].tolist() for i in range(0, len(order), size)]


def dense(model_weights: list[np.ndarray], bn: bool) -> list[np.ndarray]:
    """Dense kernels and biases from get_weights() order (BN adds 4 arrays per hidden layer)."""
    per_hidden = 6 if bn else 2
    out = []
    for layer in range(len(DENSE) - 1):
        out += model_weights[layer * per_hidden : layer * per_hidden + 2]
    return out + model_weights[-2:]


@pytest.fixture
def keras_record(monkeypatch):
    """(bn, seed) -> {"init": weights at the first fit, "batches": per epoch} from model.fit."""
    record: dict = defaultdict(lambda: {"batches": []})
    real_fit = keras.Model.fit

    def fit(self, x=None, y=None, *args, **kwargs):
        key = ("_bn_" in self.name, int(self.name.rpartition("seed")[2]))
        if not record[key]["batches"]:
            record[key]["init"] = self.get_weights()
        assert kwargs["shuffle"] is False  # fit keeps the order the engine gives it
        record[key]["batches"].append(batches(ids(x), kwargs["batch_size"]))
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    return record


@pytest.fixture
def fused_record(monkeypatch):
    """(bn, seed) -> {"init": its member's initial weights, "batches": per epoch} as the fused
    engine builds them and hands them to its compiled epoch (rows of ``perms`` are members)."""
    record: dict = defaultdict(lambda: {"batches": []})
    shards: list[list[int]] = []  # members of each shard, in the order the shards are built
    real_stack, real_compiled = fused.stack_initial_weights, fused._compiled

    def stack(bn, members, *args, **kwargs):
        stacked = real_stack(bn, members, *args, **kwargs)
        shards.append(list(members))
        for k, seed in enumerate(members):
            record[(bn, seed)].setdefault("init", [w[k] for w in stacked])
        return stacked

    def compiled(layout, batch_size):
        run_epoch = real_compiled(layout, batch_size)
        shard = len(shards)  # a shard gets its programs, then (same thread) its weights

        def recording_epoch(state, x, y, perms, *rest):
            members = shards[shard]
            for k, seed in enumerate(members):
                if seed not in members[:k]:  # padding repeats the first seed
                    order = ids(x.numpy()[perms.numpy()[k]])
                    record[(layout.bn, seed)]["batches"].append(batches(order, batch_size))
            return run_epoch(state, x, y, perms, *rest)

        return recording_epoch

    monkeypatch.setattr(fused, "stack_initial_weights", stack)
    monkeypatch.setattr(fused, "_compiled", compiled)
    return record


def test_bn_and_no_bn_cells_are_paired_in_both_engines(keras_record, fused_record):
    data = identified_data()
    for engine in ("keras", "fused"):
        for bn in (False, True):
            spec = TrainSpec.of(SEEDS, bn=bn, batch_size=BATCH, epochs=EPOCHS, engine=engine)
            results = train_group(spec, data)
            assert [r.status for r in results] == ["finished"] * len(SEEDS)
    for engine, record in (("keras", keras_record), ("fused", fused_record)):
        for seed in SEEDS:
            off, on = record[(False, seed)], record[(True, seed)]
            assert len(off["batches"]) == EPOCHS, engine
            # the same batches in the same order ...
            assert off["batches"] == on["batches"], (engine, seed)
            # ... each epoch every example once, in a fresh order ...
            for epoch in off["batches"]:
                assert sorted(sum(epoch, [])) == list(range(N_TRAIN))
                assert [len(b) for b in epoch] == [BATCH] * (N_TRAIN // BATCH) + [N_TRAIN % BATCH]
            assert off["batches"][0] != off["batches"][1]
            # ... from the same Dense kernels and biases
            for a, b in zip(dense(off["init"], False), dense(on["init"], True), strict=True):
                np.testing.assert_array_equal(a, b)
        # seeds differ from each other
        assert record[(False, SEEDS[0])]["batches"] != record[(False, SEEDS[1])]["batches"]
        assert not np.array_equal(
            record[(False, SEEDS[0])]["init"][0], record[(False, SEEDS[1])]["init"][0]
        )
    # and both engines pair the same way: same batches, same initial weights
    for key, rec in keras_record.items():
        assert fused_record[key]["batches"] == rec["batches"], key
        for a, b in zip(fused_record[key]["init"], rec["init"], strict=True):
            np.testing.assert_array_equal(a, b)
