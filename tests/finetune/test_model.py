"""The model factory: seeded heads, dropout, and a released model rebuilt as a fresh copy."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_doe.finetune.model import ModelFactory, model_factory
from llm_doe.schema import ConfigError, ModelConfig, TrainConfig
from tests.finetune.conftest import CPU, fit


def test_dropout_and_seeded_head(setup):
    factory = setup[3]
    a, b = factory.build(3, 0.25), factory.build(3, 0.25)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert {m.p for m in a.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}
    assert a.config.hidden_dropout_prob == 0.25


def test_a_released_model_is_rebuilt_exactly_as_a_fresh_copy(setup):
    tokenizer, train_data, _, tiny = setup
    # A "pretrained" body (the template's weights) with a new head, as for MiniLM.
    factory = ModelFactory(copy.deepcopy(tiny.template), fresh_modules=["classifier"])
    model = factory.build(5, 0.2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(v, factory.template.state_dict()[k]) for k, v in expected.items())  # head re-drawn
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1)
    fit(model, train_data, None, cfg, CPU, pad_id=tokenizer.pad_token_id)
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)  # as if a trial failed mid-step
    assert not torch.equal(model.bert.encoder.layer[0].output.dense.weight, expected["bert.encoder.layer.0.output.dense.weight"])
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # as if a trial froze it
    factory.release(model)
    again = factory.build(5, 0.2)
    assert again is model  # its memory was reused, not allocated again
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in again.parameters()) and again.training
    assert factory.build(5, 0.2) is not again  # one spare only: the next build is a copy

    # What a state dict does not hold comes back too: a trial with the checkpoint's dropout
    # after one with dropout 0.2 gets the template's rates, as a fresh copy would.
    factory.release(again)
    kept = factory.build(5, None)
    assert kept is again
    fresh = copy.deepcopy(factory.template)
    assert [m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)] == \
        [m.p for m in fresh.modules() if isinstance(m, torch.nn.Dropout)] != [0.2] * 5
    assert kept.config.hidden_dropout_prob == fresh.config.hidden_dropout_prob != 0.2


def test_a_model_with_hooks_is_not_reused(setup):
    factory = ModelFactory(copy.deepcopy(setup[3].template), fresh_modules=["classifier"])
    model = factory.build(0, 0.1)
    model.register_forward_hook(lambda *a: None)
    factory.release(model)
    assert factory.build(0, 0.1) is not model


def test_keep_layers_gives_a_shallower_student_with_the_first_layers_of_the_checkpoint():
    full = model_factory(ModelConfig(), 2).template
    student = model_factory(ModelConfig(keep_layers=2), 2).template
    assert full.config.num_hidden_layers == 6 and len(full.bert.encoder.layer) == 6
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for i in range(2):  # DistilBERT-style: the checkpoint's layers 0 and 1, as they are
        for (name, a), b in zip(student.bert.encoder.layer[i].state_dict().items(),
                                full.bert.encoder.layer[i].state_dict().values()):
            assert torch.equal(a, b), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, full.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ConfigError, match="has 6 layers, cannot keep 7"):
        model_factory(ModelConfig(keep_layers=7), 2)
