"""Knowledge distillation: the teacher's checks, its cached outputs (forwarded once), and the
Hinton loss the loop trains with (the plain loss at alpha=0). No Optuna here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_doe.finetune import distill
from llm_doe.finetune.loop import Teacher, TrainData, train
from llm_doe.schema import ConfigError, DistillConfig, TrainConfig
from tests.finetune.conftest import CPU, DATA, TASK


def save_teacher(folder, setup, labels=None):
    """A real classifier folder (the tiny BERT, as ``final`` would export it) with its tokenizer."""
    tokenizer, _, _, factory = setup
    model = factory.build(7, 0.1)
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {n: i for i, n in enumerate(labels)}
        model.config.num_labels = len(labels)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    factory.release(model)
    return str(folder)


@pytest.fixture(scope="module")
def teacher(setup, tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"), setup, ["negative", "positive"])


def test_a_teacher_with_the_data_labels_passes_and_others_are_refused(setup, teacher, tmp_path):
    distill.check_teacher(teacher, ["negative", "positive"])
    distill.check_teacher(save_teacher(tmp_path / "generic", setup), ["negative", "positive"])  # LABEL_0, LABEL_1
    with pytest.raises(ConfigError, match="names its labels"):
        distill.check_teacher(teacher, ["positive", "negative"])
    with pytest.raises(ConfigError, match="predicts 2 labels"):
        distill.check_teacher(teacher, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="no such folder"):
        distill.check_teacher(str(tmp_path / "nowhere"), ["negative", "positive"])
    with pytest.raises(ConfigError, match="no such folder"):
        distill.check_teacher("studies/lr_sweep/final", ["negative", "positive"])
    bare = tmp_path / "bare"
    model = setup[3].build(0, 0.1)
    model.save_pretrained(bare)
    setup[3].release(model)
    with pytest.raises(ConfigError, match="has no tokenizer"):
        distill.check_teacher(str(bare), ["negative", "positive"])


def test_the_teacher_forwards_each_text_once_and_the_cache_is_on_disk(teacher, tmp_path):
    texts = ["good day", "bad day", "what a day", "good day"]
    before = distill.forwarded_examples()
    first = distill.teacher_logits(teacher, texts, 64, tmp_path, torch.device("cpu"))
    assert first.shape == (4, 2) and (first[0] == first[3]).all()
    assert distill.forwarded_examples() - before == 3  # distinct texts
    again = distill.teacher_logits(teacher, texts[:2], 64, tmp_path, torch.device("cpu"))
    assert (again == first[:2]).all() and distill.forwarded_examples() - before == 3
    distill.clear_memory()  # another process: reads the file
    assert (distill.teacher_logits(teacher, texts, 64, tmp_path, torch.device("cpu")) == first).all()
    assert distill.forwarded_examples() - before == 3
    distill.teacher_logits(teacher, [*texts, "an augmented copy"], 64, tmp_path, torch.device("cpu"))
    assert distill.forwarded_examples() - before == 4  # only the new text
    assert len(list(tmp_path.glob("teacher-*.npz"))) == 1
    distill.teacher_logits(teacher, texts, 8, tmp_path, torch.device("cpu"))  # another length: another key
    assert len(list(tmp_path.glob("teacher-*.npz"))) == 2


def _fit(setup, teacher_outputs=None, alpha=0.5, temperature=2.0):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=2)
    outputs = None if teacher_outputs is None else Teacher(teacher_outputs, alpha, temperature)
    model = factory.build(0, 0.1)
    result = train(model, TASK, TrainData(train_data, val_data, tokenizer.pad_token_id, outputs), cfg, CPU)
    factory.release(model)
    return [(r["train_loss"], r["val_loss"]) for r in result.history]


def test_the_distillation_loss_is_the_plain_loss_at_alpha_zero_and_differs_above(setup, teacher, tmp_path):
    from llm_doe.finetune.data import load_splits

    texts = load_splits(DATA).train.texts
    outputs = TASK.teacher_outputs(load_splits(DATA).train, DistillConfig(teacher=teacher, cache_dir=str(tmp_path)),
                                   DATA, torch.device("cpu"))
    assert outputs.shape == (len(texts), 2)
    plain = _fit(setup)
    assert _fit(setup, outputs, alpha=0.0) == plain
    assert _fit(setup, outputs, alpha=0.5) != plain
    assert _fit(setup, outputs, alpha=0.5, temperature=4.0) != _fit(setup, outputs, alpha=0.5)


def test_hinton_loss_by_hand():
    student, teacher = torch.tensor([[1.0, -1.0], [0.5, 0.0]]), torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    hard = torch.tensor(0.7)
    t, alpha = 3.0, 0.25
    p = torch.softmax(teacher / t, -1)
    kl = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean()
    expected = (1 - alpha) * hard + alpha * t * t * kl
    assert distill.hinton_loss(student, teacher, hard, alpha, t).item() == pytest.approx(expected.item())
    assert distill.hinton_loss(student, teacher, hard, 0.0, t) is hard
    assert np.isfinite(distill.hinton_loss(student, teacher, hard, 1.0, t).item())
