"""The reference grid trains bit for bit as before the general grid: the engines, the model
builder and the spec are new, the numbers are not.

The digests were taken with main at 86d33a8 (the loose-argument engines) on this project's AMD
machine, and with main at 6a718ee on its Intel one; floating-point bits depend on the CPU and the
numeric packages, so elsewhere the test is skipped (the fused-vs-keras and pairing tests still
run everywhere).
"""

from __future__ import annotations

import hashlib

import pytest

from bnpipe.provenance import NUMERIC_PACKAGES, _cpu_model, package_versions
from bnpipe.train.common import TrainResult, TrainSpec
from bnpipe.train.fused import train_fused
from bnpipe.train.keras_engine import train_keras
from tests.conftest import make_tiny_mnist

VERSIONS = {"tensorflow-cpu": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"}
# CPU model -> bn -> (fused: seeds 0-2 at batch 48, keras: seed 1 at batch 48), 2 epochs, lr 1e-3.
MAIN_DIGESTS = {
    # main at 86d33a8, before the general grid
    "AMD EPYC": {
        False: ("5294215f58efd624", "c4052119d54ca7f3"),
        True: ("f92b52783ea66195", "dfd387d0f17a3452"),
    },
    # main at 6a718ee (session 7), so that the pin also holds on the project's Intel box. Its
    # BN-off bits equal the AMD box's; with BN they differ (the batch statistics' reductions).
    "Intel(R) Xeon(R) Processor": {
        False: ("5294215f58efd624", "c4052119d54ca7f3"),
        True: ("f77863a8663be8a9", "08753f538be8c303"),
    },
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
    cpu = _cpu_model()
    if cpu not in MAIN_DIGESTS or any(versions.get(k) != v for k, v in VERSIONS.items()):
        pytest.skip(
            f"digests recorded on {sorted(MAIN_DIGESTS)} with {VERSIONS}, not on {cpu!r} with "
            f"these versions; bits differ across CPUs and versions"
        )
    data = make_tiny_mnist(n_train=300, n_test=100, seed=3)
    fused = train_fused(TrainSpec.of([0, 1, 2], bn=bn, batch_size=48, epochs=2), data)
    keras = train_keras(TrainSpec.of([1], bn=bn, batch_size=48, epochs=2, engine="keras"), data)
    assert (_digest(fused), _digest(keras)) == MAIN_DIGESTS[cpu][bn]
