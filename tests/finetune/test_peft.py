"""PEFT methods on real (tiny and packaged) models: what trains, what is refused, what comes back."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_doe.finetune import peft as doe_peft
from llm_doe.finetune.model import ModelFactory, causal_lm_factory, model_factory
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


TINY_LLAMA = ModelConfig(kind="tiny_llama", name_or_path="tiny-llama", tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct",
                         hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
#: Three consecutive trials of one adapter structure: seed, model dropout, then what peft varies.
TRIALS = [(1, None, {"alpha_ratio": 2.0, "dropout": 0.05}), (2, 0.2, {"alpha": 3.0, "dropout": 0.0}),
          (3, None, {"alpha_ratio": 1.0, "dropout": 0.1, "use_rslora": True})]


def _new_factory(task: str, model_cfg: ModelConfig) -> ModelFactory:
    """A factory of its own (the cached one may hold another test's model), on the cached template."""
    cached = causal_lm_factory(model_cfg) if task == "causal_lm" else model_factory(model_cfg, 2)
    return ModelFactory(cached.template, list(cached.fresh_modules))


def _first_step(model, task: str, vocab: int):
    """The loss of one training forward (dropout on, seeded) and its gradients."""
    ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    labels = ids if task == "causal_lm" else torch.tensor([0, 1])
    model.train()
    torch.manual_seed(7)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _same_model(reused, fresh) -> None:
    a, b = dict(reused.named_parameters()), dict(fresh.named_parameters())
    assert a.keys() == b.keys()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []
    assert [n for n in a if a[n].requires_grad != b[n].requires_grad] == []
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(reused.named_buffers(), fresh.named_buffers(), strict=True))
    kinds = [(n, type(m).__name__, getattr(m, "p", None), getattr(m, "scaling", None))
             for n, m in reused.named_modules()]
    assert kinds == [(n, type(m).__name__, getattr(m, "p", None), getattr(m, "scaling", None))
                     for n, m in fresh.named_modules()]
    assert reused.peft_config["default"].to_dict() == fresh.peft_config["default"].to_dict()
    assert reused.get_base_model().config.to_dict() == fresh.get_base_model().config.to_dict()


@pytest.mark.parametrize(("task", "model_cfg", "method"), [
    ("causal_lm", TINY_LLAMA, "lora"), ("classification", TINY_BERT, "lora"), ("classification", ModelConfig(), "lora"),
    ("causal_lm", TINY_LLAMA, "ia3"), ("causal_lm", TINY_LLAMA, "prefix"), ("classification", TINY_BERT, "prompt"),
    ("classification", TINY_BERT, "ia3")])
def test_a_reused_wrapped_model_is_the_fresh_wrap_of_the_next_trial(task, model_cfg, method):
    """Three trials in one process (different seeds, model dropout, alpha, LoRA dropout, rsLoRA),
    each trained (its trainable weights, dropout rates and mode changed) and released: the next
    trial's model is the same object, yet every weight, buffer, dropout rate, scaling, config and
    the first step's loss and gradients equal those of a fresh build + wrap. IA3 is not kept
    (peft cannot re-add an adapter beside a trained head): its next trial is a fresh wrap."""
    factory = _new_factory(task, model_cfg)
    vocab = factory.template.config.vocab_size
    previous = None
    for seed, dropout, peft_kw in TRIALS:
        cfg = PeftConfig(method=method, r=4, num_virtual_tokens=3, **peft_kw)
        reused = doe_peft.build(factory, cfg, task, seed, dropout)
        assert previous is None or (reused is previous) == (method != "ia3")
        fresh = doe_peft.wrap(_new_factory(task, model_cfg).build(seed, dropout), cfg, task)
        _same_model(reused, fresh)
        (loss_a, grads_a), (loss_b, grads_b) = _first_step(reused, task, vocab), _first_step(fresh, task, vocab)
        assert torch.equal(loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
        with torch.no_grad():  # what a trial does to it: trains what trains, changes rates and mode
            for param in reused.parameters():
                if param.requires_grad:
                    param.add_(0.5)
        for module in reused.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.7
        reused.eval()
        doe_peft.release(factory, reused, cfg, task)
        previous = reused


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_lora_dropout_is_the_configured_one(dropout):
    """peft.dropout reaches peft's LoRA layers: a dropout module at that rate (none at 0), and
    two train-mode forwards that differ above 0."""
    factory = _new_factory("causal_lm", TINY_LLAMA)
    model = doe_peft.wrap(factory.build(0, None), PeftConfig(method="lora", r=4, dropout=dropout), "causal_lm")
    rates = {m.p for n, m in model.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)}
    assert rates == ({dropout} if dropout else set())
    ids = torch.arange(3, 15)[None]
    model.train()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # B starts at zero: without this no adapter output reaches the logits
                param.add_(0.1)
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b) == (dropout == 0.0)


def test_another_adapter_structure_or_method_none_gets_a_fresh_model_from_the_kept_one():
    factory = _new_factory("causal_lm", TINY_LLAMA)
    first = doe_peft.build(factory, PeftConfig(method="lora", r=4), "causal_lm", 1, None)
    doe_peft.release(factory, first, PeftConfig(method="lora", r=4), "causal_lm")
    wider = doe_peft.build(factory, PeftConfig(method="lora", r=8), "causal_lm", 1, None)
    assert wider is not first
    _same_model(wider, doe_peft.wrap(_new_factory("causal_lm", TINY_LLAMA).build(1, None),
                                     PeftConfig(method="lora", r=8), "causal_lm"))
    doe_peft.release(factory, wider, PeftConfig(method="lora", r=8), "causal_lm")
    plain = doe_peft.build(factory, PeftConfig(method="none"), "causal_lm", 2, None)
    reference = _new_factory("causal_lm", TINY_LLAMA).build(2, None)
    assert type(plain) is LlamaForCausalLM
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), reference.state_dict().values()))
    assert all(p.requires_grad for p in plain.parameters())
