"""Validation metrics with scikit-learn: accuracy, F1, ROC-AUC, and the ROC curve itself."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Metrics of one evaluation. ``probs`` is (n, K) softmax output.

    Binary tasks: F1 of class 1 and ROC-AUC of its probability; K > 2: macro F1 and
    one-vs-rest macro ROC-AUC. ROC-AUC is NaN when the split holds a single class.
    """
    preds = probs.argmax(axis=1)
    binary = probs.shape[1] == 2
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, average="binary" if binary else "macro", zero_division=0)),
    }
    if len(np.unique(labels)) < 2 or not np.isfinite(probs).all():
        out["roc_auc"] = float("nan")
    elif binary:
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        out["roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                             labels=list(range(probs.shape[1]))))
    return out


def roc_points(labels: np.ndarray, probs: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve of the positive class (binary) or of class 1 vs rest: fpr, tpr, thresholds."""
    fpr, tpr, thresholds = roc_curve(labels == 1, probs[:, 1])
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": np.nan_to_num(thresholds, posinf=1.0).tolist()}
