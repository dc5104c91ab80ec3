"""The names writers and readers share: metric lists and what a study says its metrics are."""

from __future__ import annotations

from llm_doe.names import ALL_METRICS, CONFIRM_SUFFIX, METRICS, SEED_PARAMS, study_metrics
from llm_doe.plugins import task_specs


def test_a_study_names_its_own_metrics_in_its_order():
    directions = {"val_loss": "minimize", "perplexity": "minimize"}
    assert study_metrics({"metric_directions": directions}) == ("val_loss", "perplexity")


def test_a_study_from_before_tasks_is_a_classification_study():
    assert study_metrics({}) == METRICS == ("val_loss", "accuracy", "f1", "roc_auc")
    assert study_metrics({"metric_directions": {}}) == METRICS  # empty: nothing recorded
    assert study_metrics({"metric_directions": ["val_loss"]}) == METRICS  # not a mapping: not trusted


def test_every_tasks_metrics_are_read_once_and_the_stored_names_stay():
    assert ALL_METRICS == ("val_loss", "accuracy", "f1", "roc_auc", "perplexity")
    assert set(ALL_METRICS) == {m for spec in task_specs() for m in spec.metrics}
    assert SEED_PARAMS == ("train.seed", "data.seed") and CONFIRM_SUFFIX == "-confirm"  # written into stores
