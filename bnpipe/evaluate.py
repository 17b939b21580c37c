"""Test-set metrics for one trained cell: loss, accuracy, per-class accuracy, confusion matrix,
and which test examples it got right (the per-example outcomes of the crossed analysis)."""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnpipe.train.common import Architecture, Cell

# Keras clips probabilities by this epsilon in sparse categorical cross-entropy; using the same
# value keeps test_loss comparable with the val_loss in the training history.
_EPS = 1e-7

# One Keras model per architecture, built once per process and given each cell's weights:
# building one (layers, initializers) cost more than the forward pass on 10,000 rows, and
# set_weights replaces every variable it has, so the outputs are the same bits.
_models: dict[Architecture, Any] = {}
_models_lock = threading.Lock()


@dataclass(frozen=True)
class Evaluation:
    test_loss: float
    test_accuracy: float
    per_class_accuracy: np.ndarray
    confusion: np.ndarray  # rows: true class, columns: predicted class
    # Per test example, in test-set order: predicted class == label. Its mean is test_accuracy.
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat metric dict (per-class accuracies as ``test_accuracy_class_<k>``)."""
        out = {"test_loss": self.test_loss, "test_accuracy": self.test_accuracy}
        for k, acc in enumerate(self.per_class_accuracy):
            out[f"test_accuracy_class_{k}"] = float(acc)
        return out


def metrics_from_probs(probs: np.ndarray, y: np.ndarray) -> Evaluation:
    """Metrics from predicted class probabilities ``probs`` (n, classes) and labels ``y``."""
    n_classes = probs.shape[1]
    p_true = np.clip(probs[np.arange(len(y)), y], _EPS, 1.0 - _EPS)
    pred = probs.argmax(axis=1)
    confusion = np.bincount(y * n_classes + pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / support
    return Evaluation(
        test_loss=float(-np.log(p_true).mean()),
        test_accuracy=float((pred == y).mean()),
        per_class_accuracy=per_class,
        confusion=confusion,
        correct=pred == y,
    )


def pack_correct(correct: np.ndarray) -> str:
    """Per-example correctness as text for a table cell: ``"<n>:<base64 of np.packbits>"``
    (10,000 examples: 1,250 bytes, 1,672 characters); "" for none."""
    bits = np.asarray(correct, dtype=bool).ravel()
    if not bits.size:
        return ""
    return f"{bits.size}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack_correct(text: str) -> np.ndarray | None:
    """:func:`pack_correct`'s inverse; None for "" or a missing value (NaN read back from CSV).

    Raises:
        ValueError: The text is not ``"<n>:<base64>"`` holding n bits.
    """
    if not isinstance(text, str) or not text:
        return None
    n, _, data = text.partition(":")
    try:
        packed = np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8)
        count = int(n)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"test_correct: not per-example outcomes ({exc})") from None
    if count < 1 or packed.size != (count + 7) // 8:
        raise ValueError(f"test_correct: {packed.size} bytes cannot hold {count} outcomes")
    return np.unpackbits(packed, count=count).astype(bool)


def evaluate_weights(
    cell: Cell,
    weights: list[np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    architecture: Architecture,
) -> Evaluation:
    """The cell's Keras model with ``weights``, evaluated (BN in inference mode)."""
    with _models_lock:  # one model per architecture: a call sets its weights, then runs it
        model = _models.get(architecture)
        if model is None:
            # Here, not at the top: the flow's process imports Evaluation without TensorFlow.
            from bnpipe.models import build_model

            model = _models[architecture] = build_model(
                seed=cell.seed, **architecture.model_kwargs()
            )
        model.set_weights(weights)
        # A direct call, not model.predict: predict traces a new tf.function per model, which
        # costs more than the forward pass itself on 10,000 rows.
        probs = np.asarray(model(x_test, training=False), dtype=np.float64)
    return metrics_from_probs(probs, np.asarray(y_test))
