"""Validation metrics on examples small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_doe.finetune.metrics import classification_metrics, roc_points

# Labels 0 0 1 1; class-1 probabilities 0.1 0.6 0.4 0.8, so predictions 0 1 0 1.
LABELS = np.array([0, 0, 1, 1])
POSITIVE = np.array([0.1, 0.6, 0.4, 0.8])
PROBS = np.stack([1 - POSITIVE, POSITIVE], axis=1)


def test_binary_metrics_match_the_hand_computed_values():
    metrics = classification_metrics(LABELS, PROBS)
    assert metrics["accuracy"] == 0.5  # 2 of 4 right
    assert metrics["f1"] == 0.5  # class 1: TP 1, FP 1, FN 1 -> precision 1/2, recall 1/2
    assert metrics["roc_auc"] == 0.75  # 3 of the 4 (positive, negative) pairs ranked right


def test_more_than_two_classes_use_macro_f1_and_one_vs_rest_auc():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    metrics = classification_metrics(labels, probs)
    assert metrics["accuracy"] == 0.75
    # per class F1: 0 -> 2/3 (TP 1, FP 1), 1 -> 1, 2 -> 2/3 (TP 1, FN 1); their mean
    assert metrics["f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    # one-vs-rest: every class's examples score higher on it than every other example
    # (class 2: 0.8 and 0.2 against 0.1 and 0.1), although the last one is misclassified
    assert metrics["roc_auc"] == 1.0


@pytest.mark.parametrize(("labels", "probs"), [
    (np.array([1, 1, 1, 1]), PROBS),  # a single class: ROC-AUC is undefined
    (LABELS, np.where(np.arange(8).reshape(4, 2) == 3, np.nan, PROBS)),  # a diverged model's output
])
def test_roc_auc_is_nan_when_undefined(labels, probs):
    assert math.isnan(classification_metrics(labels, probs)["roc_auc"])


def test_roc_points_run_from_the_origin_to_the_corner_with_finite_thresholds():
    points = roc_points(LABELS, PROBS)
    assert points["fpr"][0] == 0.0 and points["tpr"][0] == 0.0
    assert points["fpr"][-1] == 1.0 and points["tpr"][-1] == 1.0
    assert len(points["fpr"]) == len(points["tpr"]) == len(points["threshold"])
    assert all(math.isfinite(t) for t in points["threshold"])  # sklearn's +inf first threshold is written as 1.0
    assert points["threshold"][0] == 1.0
    # the trapezoid area under the points is the ROC-AUC
    assert np.trapezoid(points["tpr"], points["fpr"]) == pytest.approx(0.75)
