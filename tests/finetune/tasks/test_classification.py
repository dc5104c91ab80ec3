"""task=classification: padded batches, the training loss, the evaluation and the ROC files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from llm_doe.finetune.data import Encoded
from llm_doe.finetune.metrics import classification_metrics
from llm_doe.finetune.tasks import get_task
from llm_doe.finetune.tasks.classification import ClassificationTask
from llm_doe.plugins import task_spec
from llm_doe.schema import TaskConfig

TASK = get_task(TaskConfig())
PAD = 7


def _encoded(lengths: list[int], labels: list[int]) -> Encoded:
    ids = [np.arange(1, n + 1, dtype=np.int64) for n in lengths]
    return Encoded(ids, np.array(labels), np.array(lengths, dtype=np.int64))


def test_the_default_task_is_classification_with_its_metrics():
    assert isinstance(TASK, ClassificationTask) and TASK.name == "classification"
    assert list(TASK.metrics) == ["val_loss", "accuracy", "f1", "roc_auc"] == list(task_spec("classification").metrics)
    assert TASK.maximized("roc_auc") and not TASK.maximized("val_loss")
    assert get_task(TaskConfig()) is TASK  # one instance per configuration


def test_collate_pads_the_chosen_examples_with_the_pad_id_and_masks_the_padding():
    data = _encoded([3, 1, 2], [1, 0, 1])
    batch = TASK.collate(data, np.array([2, 0]), PAD, torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[1, 2, PAD], [1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["attention_mask"].dtype == torch.long
    assert batch["labels"].tolist() == [1, 1]
    assert TASK.loss_units(data, np.array([2, 0])) == 2


def test_micro_batch_losses_sum_to_the_batch_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    whole = TASK.loss(logits, {"labels": labels}, 4, 0.0)
    parts = TASK.loss(logits[:1], {"labels": labels[:1]}, 4, 0.0) + TASK.loss(logits[1:], {"labels": labels[1:]}, 4, 0.0)
    assert whole == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert parts.item() == pytest.approx(whole.item())


def test_the_evaluator_reports_mean_cross_entropy_and_the_metrics_of_its_probabilities():
    data = _encoded([1, 1, 1, 1], [0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    model = torch.nn.Module()
    model.config = type("Config", (), {"num_labels": 2})()
    evaluator = TASK.evaluator(data, model)
    for index in (np.array([3, 1]), np.array([0, 2])):  # out of order, as length-grouped batches are
        idx = torch.from_numpy(index)
        evaluator.update(logits[idx], {"labels": torch.from_numpy(data.labels[index])}, index)
    metrics, payload = evaluator.result()
    probs = logits.softmax(-1).numpy()
    np.testing.assert_allclose(payload["probs"], probs, rtol=1e-6)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1])).item()
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert {k: metrics[k] for k in ("accuracy", "f1", "roc_auc")} == classification_metrics(data.labels, probs)


def test_write_artifacts_draws_the_roc_or_nothing(tmp_path):
    payload = {"labels": np.array([0, 0, 1, 1]), "probs": np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])}
    written = TASK.write_artifacts(payload, tmp_path, "trial 3", "at best eval")
    assert [p.name for p in written] == ["roc.csv", "roc.png"]
    rows = list(csv.DictReader((tmp_path / "roc.csv").open(encoding="utf-8")))
    assert (rows[0]["fpr"], rows[0]["tpr"]) == ("0.0", "0.0") and (rows[-1]["fpr"], rows[-1]["tpr"]) == ("1.0", "1.0")
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = {"labels": np.array([1, 1]), "probs": np.array([[0.5, 0.5], [0.2, 0.8]])}
    assert TASK.write_artifacts(single, tmp_path / "none", "trial 4", "at best eval") == []  # no curve: no files
    assert TASK.write_artifacts(None, tmp_path, "trial 5", "at best eval") == []  # a failed trial


def test_the_evaluator_counts_the_classes_it_predicts():
    """1 predicted class: a constant predictor (it learned nothing), whatever its loss."""
    data = _encoded([1, 1, 1, 1], [0, 0, 1, 1])
    model = torch.nn.Module()
    model.config = type("Config", (), {"num_labels": 2})()
    for logits, classes in ((torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.3, 0.1], [0.9, 0.0]]), 1),
                            (torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]), 2)):
        evaluator = TASK.evaluator(data, model)
        index = np.arange(4)
        evaluator.update(logits, {"labels": torch.from_numpy(data.labels)}, index)
        metrics, _ = evaluator.result()
        assert metrics["predicted_classes"] == classes
