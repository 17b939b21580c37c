"""bnpipe.tfkeras: TensorFlow and Keras without the extras Keras loads for APIs never called."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys
if sys.argv[1] == "pyplot-first":
    import matplotlib.pyplot
import bnpipe.tfkeras
after_import = {name: name in sys.modules for name in ("sklearn", "matplotlib.pyplot")}
import sklearn.base, matplotlib.pyplot  # importable as usual right after
from bnpipe.train.fused import train_fused  # the engines take TensorFlow from there
print(json.dumps({"after_import": after_import, "keras": bnpipe.tfkeras.keras.__version__,
                  "sklearn": hasattr(sklearn.base, "BaseEstimator")}))
"""


def _probe(mode: str) -> dict:
    got = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    return json.loads(got.stdout.strip().splitlines()[-1])


def test_keras_is_imported_without_sklearn_or_pyplot_and_both_import_after() -> None:
    got = _probe("plain")
    assert got["after_import"] == {"sklearn": False, "matplotlib.pyplot": False}
    assert got["keras"].startswith("3.") and got["sklearn"]


def test_a_module_loaded_before_is_left_as_it_is() -> None:
    got = _probe("pyplot-first")
    assert got["after_import"] == {"sklearn": False, "matplotlib.pyplot": True}
