"""Test-set metrics for one trained cell: loss, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnpipe.train.common import Architecture, Cell

# Keras clips probabilities by this epsilon in sparse categorical cross-entropy; using the same
# value keeps test_loss comparable with the val_loss in the training history.
_EPS = 1e-7


@dataclass(frozen=True)
class Evaluation:
    test_loss: float
    test_accuracy: float
    per_class_accuracy: np.ndarray
    confusion: np.ndarray  # rows: true class, columns: predicted class

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
    )


def evaluate_weights(
    cell: Cell,
    weights: list[np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    architecture: Architecture,
) -> Evaluation:
    """Rebuild the cell's Keras model from ``weights`` and evaluate it (BN in inference mode)."""
    # Here, not at the top: the flow's process imports Evaluation without loading TensorFlow.
    from bnpipe.models import build_model

    model = build_model(seed=cell.seed, **architecture.model_kwargs())
    model.set_weights(weights)
    # A direct call, not model.predict: predict traces a new tf.function for every rebuilt model,
    # which costs more than the forward pass itself on 10,000 rows.
    probs = np.asarray(model(x_test, training=False), dtype=np.float64)
    return metrics_from_probs(probs, np.asarray(y_test))
