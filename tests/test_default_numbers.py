"""The reference grid trains bit for bit as before the general grid: the engines, the model
builder and the spec are new, the numbers are not.

The digests were taken with main at 86d33a8 (the loose-argument engines) on this project's
machine; floating-point bits depend on the CPU and the numeric packages, so elsewhere the test
is skipped (the fused-vs-keras and pairing tests still run everywhere).
"""

from __future__ import annotations

import hashlib

import pytest

from bnpipe.provenance import NUMERIC_PACKAGES, _cpu_model, package_versions
from bnpipe.train.common import TrainResult, TrainSpec
from bnpipe.train.fused import train_fused
from bnpipe.train.keras_engine import train_keras
from tests.conftest import make_tiny_mnist

RECORDED_ON = {
    "cpu": "AMD EPYC",
    "versions": {"tensorflow-cpu": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"},
}
# bn -> (fused: seeds 0-2 at batch 48, keras: seed 1 at batch 48), 2 epochs, lr 1e-3.
MAIN_DIGESTS = {
    False: ("5294215f58efd624", "c4052119d54ca7f3"),
    True: ("f92b52783ea66195", "dfd387d0f17a3452"),
}


def _digest(results: list[TrainResult]) -> str:
    h = hashlib.sha256()
    for r in results:
        for w in r.weights:
            h.update(w.tobytes())
        h.update(repr([(x["loss"], x["val_accuracy"]) for x in r.history]).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("bn", [False, True])
def test_reference_cells_train_bit_for_bit_as_on_main(bn):
    versions = package_versions(NUMERIC_PACKAGES)
    same = _cpu_model() == RECORDED_ON["cpu"] and all(
        versions.get(k) == v for k, v in RECORDED_ON["versions"].items()
    )
    if not same:
        pytest.skip(f"digests recorded on {RECORDED_ON}; bits differ across CPUs and versions")
    data = make_tiny_mnist(n_train=300, n_test=100, seed=3)
    fused = train_fused(TrainSpec.of([0, 1, 2], bn=bn, batch_size=48, epochs=2), data)
    keras = train_keras(TrainSpec.of([1], bn=bn, batch_size=48, epochs=2, engine="keras"), data)
    assert (_digest(fused), _digest(keras)) == MAIN_DIGESTS[bn]
