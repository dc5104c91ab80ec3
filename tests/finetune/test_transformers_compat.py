"""transformers' private API, behind llm_doe.finetune.transformers_compat, exercised on a real model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from llm_doe.finetune import transformers_compat as compat


def test_init_module_weights_initialises_one_module_as_from_pretrained_does():
    """A zeroed head gets the model's own initialisation back (normal, std initializer_range;
    bias zero), from the current torch RNG, and nothing else changes."""
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, initializer_range=0.5)
    model = BertForSequenceClassification(config)
    head = model.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(1.0)
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    torch.manual_seed(0)
    compat.init_module_weights(model, head)
    first = head.weight.detach().clone()
    assert 0.3 < float(first.std()) < 0.7 and torch.all(head.bias == 0)
    torch.manual_seed(0)
    compat.init_module_weights(model, head)
    assert torch.equal(head.weight, first)  # drawn from the seed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())


def test_no_module_but_the_compat_one_calls_private_transformers_initialisers():
    package = Path(compat.__file__).parent.parent
    callers = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name != "transformers_compat.py" and "._init_weights" in p.read_text(encoding="utf-8")]
    assert not callers, f"call transformers' initialisers through transformers_compat: {callers}"
