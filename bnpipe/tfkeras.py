"""TensorFlow and Keras, imported without two extras Keras loads for APIs bnpipe never calls.

Keras' package imports scikit-learn (for its scikit-learn wrappers) and matplotlib.pyplot (for
``plot_image_gallery``) whenever they are installed, and they are: MLflow depends on both. In a
process that only trains (the training process, a Dask worker, a test's subprocess) they were
~1.3 of the ~4-5 s an ``import tensorflow`` takes (scikit-learn pulls in scipy.stats and pandas;
README, Performance). The places that first import TensorFlow in a process (bnpipe.grid's
training and evaluation, the training process, the bench, the XLA cache's naming) import this
module first; the numeric modules keep their plain ``import keras``: their source is hashed into
every cell key (bnpipe.provenance.code_digest), and where TensorFlow comes from changes no number.

Both are hidden from this one import only (``sys.modules[name] = None`` makes ``import name``
raise ImportError, which Keras catches and goes without) and are importable as usual right
after; where one is loaded already (a notebook that imported pyplot first), it is left as it is.
While that import runs (4-5 s, once per process), another thread importing either one gets the
ImportError too (no thread of bnpipe's, Prefect's or MLflow's imports either).
Keras' scikit-learn wrappers then say scikit-learn is missing if called; bnpipe never calls them.
"""

from __future__ import annotations

import sys

EXTRAS = ("sklearn", "matplotlib.pyplot")


def _import_without_extras() -> None:
    hidden = [name for name in EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import keras  # noqa: F401 -- with the TensorFlow backend, it imports TensorFlow
        import tensorflow  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


if "keras" not in sys.modules:
    _import_without_extras()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
