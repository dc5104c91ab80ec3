"""PEFT methods on real (tiny and packaged) models: what trains, what is refused, what comes back."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_doe.finetune import peft as doe_peft
from llm_doe.finetune.model import ModelFactory, model_factory
from llm_doe.schema import ConfigError, ModelConfig, PeftConfig

TINY_BERT = ModelConfig(kind="tiny", name_or_path="tiny-bert", tokenizer="sentence-transformers/all-MiniLM-L6-v2")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def _lora_modules(model):
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def test_lora_trains_r_times_in_plus_out_per_target_and_scales_by_the_ratio():
    base = tiny_llama()
    linears = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    cfg = PeftConfig(method="lora", r=4, alpha_ratio=2.0, target_modules="attention")
    model = doe_peft.wrap(base, cfg, "causal_lm")
    wrapped = _lora_modules(model)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    expected = sum(4 * (m.in_features + m.out_features) for n, m in linears.items()
                   if n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert doe_peft.param_counts(model)["trainable_params"] == expected
    assert all(m.scaling["default"] == pytest.approx(2.0) for m in wrapped.values())  # alpha / r = ratio
    rs = doe_peft.wrap(tiny_llama(), PeftConfig(method="lora", r=16, alpha=16, use_rslora=True), "causal_lm")
    assert all(m.scaling["default"] == pytest.approx(16 / math.sqrt(16)) for m in _lora_modules(rs).values())


def test_presets_and_lists_pick_the_named_modules():
    mlp = doe_peft.wrap(tiny_llama(), PeftConfig(method="lora", target_modules="attention_mlp"), "causal_lm")
    assert {n.rsplit(".", 1)[-1] for n in _lora_modules(mlp)} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"}
    listed = doe_peft.wrap(tiny_llama(), PeftConfig(method="lora", target_modules=["q_proj", "v_proj"]), "causal_lm")
    assert {n.rsplit(".", 1)[-1] for n in _lora_modules(listed)} == {"q_proj", "v_proj"}
    every = doe_peft.wrap(tiny_llama(), PeftConfig(method="lora", target_modules="all_linear"), "causal_lm")
    assert len(_lora_modules(every)) == 14 and "lm_head" not in " ".join(_lora_modules(every))


def test_adapters_are_drawn_from_the_seed():
    def adapter(seed):
        base = tiny_llama()
        torch.manual_seed(seed)
        model = doe_peft.wrap(base, PeftConfig(method="lora"), "causal_lm")
        return next(iter(_lora_modules(model).values())).lora_A["default"].weight.detach().clone()

    assert torch.equal(adapter(3), adapter(3)) and not torch.equal(adapter(3), adapter(4))


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix", "prompt"])
def test_unwrap_gives_back_the_untouched_base_model(method):
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = doe_peft.wrap(base, PeftConfig(method=method, num_virtual_tokens=4), "causal_lm")
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(1.0)  # as training would
    assert doe_peft.param_counts(model)["trainable_params"] > 0
    back = doe_peft.unwrap(model)
    assert type(back) is LlamaForCausalLM
    assert set(back.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in back.state_dict().items())


def test_the_next_trial_starts_from_the_template_weights_after_a_lora_trial():
    """Build, wrap, train (the classifier head too: modules_to_save), unwrap, release, build:
    every tensor equals the template's again."""
    factory: ModelFactory = model_factory(TINY_BERT, 2)
    model = factory.build(seed=1, dropout=None)
    wrapped = doe_peft.wrap(model, PeftConfig(method="lora", r=4), "classification")
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(1.0)
    factory.release(doe_peft.unwrap(wrapped))
    again = factory.build(seed=1, dropout=None)
    fresh = factory.build(seed=1, dropout=None)  # a deep copy: the reference
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))
    assert all(p.requires_grad for p in again.parameters())  # peft froze the base; the rebuild thaws it


def test_lora_on_the_packaged_minilm_trains_about_74k_parameters():
    factory = model_factory(ModelConfig(), 2)
    model = doe_peft.wrap(factory.build(seed=0, dropout=None), PeftConfig(method="lora", r=8,
                                                                          target_modules=["query", "value"]),
                          "classification")
    counts = doe_peft.param_counts(model)
    assert 70_000 < counts["trainable_params"] < 80_000 and counts["total_params"] > 22_000_000


def test_prefix_tuning_on_an_encoder_is_refused_before_it_runs():
    model = model_factory(TINY_BERT, 2).build(seed=0, dropout=None)
    with pytest.raises(ConfigError) as err:
        doe_peft.check(PeftConfig(method="prefix"), model, "classification")
    assert err.value.key == "peft.method" and "encoder" in err.value.message
    doe_peft.check(PeftConfig(method="prompt"), model, "classification")  # prompt tuning works on BERT


def test_a_target_module_the_model_lacks_is_refused_with_what_it_has():
    with pytest.raises(ConfigError) as err:
        doe_peft.check(PeftConfig(method="lora", target_modules=["q_proj", "qkv"]), tiny_llama(), "causal_lm")
    assert err.value.key == "peft.target_modules" and "'qkv'" in err.value.message
    assert "gate_proj" in err.value.message and "q_proj," in err.value.message
    with pytest.raises(ConfigError, match="unknown preset 'mlp'"):
        doe_peft.check(PeftConfig(method="lora", target_modules="mlp"), tiny_llama(), "causal_lm")


def test_prompt_tuning_on_a_classifier_gives_back_the_template_structure():
    """peft wraps the head it trains beside the prompt; unwrapping puts the original back, so the
    factory can reuse the model and the next trial's build starts from the template."""
    factory: ModelFactory = model_factory(TINY_BERT, 2)
    model = factory.build(seed=1, dropout=None)
    keys = set(model.state_dict())
    back = doe_peft.unwrap(doe_peft.wrap(model, PeftConfig(method="prompt", num_virtual_tokens=4), "classification"))
    assert set(back.state_dict()) == keys
    factory.release(back)
    again = factory.build(seed=1, dropout=None)
    fresh = factory.build(seed=1, dropout=None)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))
