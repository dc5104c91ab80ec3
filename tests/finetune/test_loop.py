"""The training loop on its own: reports, stopping, schedules, micro-batches, max_steps, the
weight-decay groups and the evaluation. No Optuna anywhere in these tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from llm_doe.finetune.loop import Diverged, TrainData, make_optimizer, param_groups, train
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.schema import TrainConfig
from tests.finetune.conftest import CPU, TASK, evaluate, fit, join_encoded


def _run(setup, report=None, **overrides):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(**{"learning_rate": 3e-3, "num_epochs": 1, "evals_per_epoch": 4, **overrides})
    model = factory.build(cfg.seed, 0.1)
    return fit(model, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id, report=report)


def test_reports_every_eval_with_increasing_steps(setup):
    seen = []
    result = _run(setup, report=lambda step, m: seen.append((step, m["val_loss"])) or False)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [r["val_loss"] for r in result.history] == [v for _, v in seen]
    assert result.stop_reason == "completed"
    assert result.cost["optimizer_steps"] == 10 and result.cost["examples_seen"] == 160
    assert result.best["val_loss"] == min(v for _, v in seen)
    assert result.best_payload["probs"].shape == (64, 2)


def test_report_returning_true_stops_training(setup):
    result = _run(setup, report=lambda step, m: step == 2)
    assert len(result.history) == 2 and result.stop_reason == "stopped_by_report"
    assert result.cost["optimizer_steps"] < 10


def test_early_stopping_inside_the_trial(setup):
    # A learning rate of ~0 never improves on the first eval: patience 1 stops at eval 2.
    result = _run(setup, learning_rate=1e-12, early_stopping_patience=1, num_epochs=3)
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == 2


def test_same_seed_same_run_other_seed_other_run(setup):
    a = [r["val_loss"] for r in _run(setup).history]
    b = [r["val_loss"] for r in _run(setup).history]
    c = [r["val_loss"] for r in _run(setup, seed=7).history]
    assert a == b
    assert a != c


def test_divergence_raises(setup):
    with pytest.raises(Diverged, match="non-finite"):
        _run(setup, learning_rate=1e7)


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant_with_warmup"])
def test_schedules_and_label_smoothing_run(setup, scheduler):
    result = _run(setup, lr_scheduler=scheduler, label_smoothing=0.1, warmup_ratio=0.3)
    assert all(np.isfinite(r["val_loss"]) for r in result.history)
    if scheduler == "constant_with_warmup":
        assert result.history[-1]["learning_rate"] == pytest.approx(3e-3)
    else:
        assert result.history[-1]["learning_rate"] < 3e-3


def test_bf16_autocast_runs_on_cpu(setup):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1, precision="bf16")
    rt = resolve_runtime("cpu", "bf16")
    assert rt.dtype == torch.bfloat16
    result = fit(factory.build(0, 0.1), train_data, val_data, cfg, rt, pad_id=tokenizer.pad_token_id)
    assert np.isfinite(result.history[0]["val_loss"])
    assert result.cost["train_precision"] == "bf16"


def _tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=2, pad_token_id=0,
                         attention_bias=True, mlp_bias=True)  # biases too, as some decoders have
    return LlamaForSequenceClassification(config)


@pytest.mark.parametrize("arch", ["tiny-bert", "llama"])
def test_no_weight_decay_on_any_norm_weight_or_bias(setup, arch):
    model = setup[3].build(0, 0.1) if arch == "tiny-bert" else _tiny_llama()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    norms = {n for n in names.values() if "norm" in n.lower()}  # LayerNorm; input_/post_attention_layernorm, norm
    biases = {n for n in names.values() if n.endswith("bias")}
    assert norms and biases and norms | biases <= exempt
    assert all(p.ndim == 2 for p in decay["params"])  # the matrices (and embeddings) are decayed
    matrices = {n for n, p in model.named_parameters() if p.ndim == 2}
    assert decayed == matrices
    if arch == "llama":
        assert {"model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                "model.norm.weight"} <= exempt
        assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                "score.weight"} <= decayed


def test_micro_batches_accumulate_to_the_same_step(setup):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=2, batch_size=16)
    whole = fit(factory.build(0, 0.0), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    cfg_micro = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=2, batch_size=16, micro_batch_size=4)
    micro = fit(factory.build(0, 0.0), train_data, val_data, cfg_micro, CPU, pad_id=tokenizer.pad_token_id)
    assert micro.cost["optimizer_steps"] == whole.cost["optimizer_steps"] == 10  # batch_size is the effective batch
    assert micro.cost["micro_batch_size"] == 4
    for a, b in zip(whole.history, micro.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


class _MemoryCap(torch.nn.Module):
    """Fault injection: the wrapped model raises CUDA's out-of-memory error above a batch size,
    as a GPU with too little memory would."""

    def __init__(self, model, cap):
        super().__init__()
        self.model, self.cap, self.config = model, cap, model.config

    def forward(self, input_ids, attention_mask, **kwargs):
        if input_ids.shape[0] > self.cap:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_auto_micro_batch_halves_on_out_of_memory(setup):
    tokenizer, train_data, val_data, factory = setup
    capped = _MemoryCap(factory.build(0, 0.0), cap=5)
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1, batch_size=16, eval_batch_size=4,
                      micro_batch_size="auto")
    result = fit(capped, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    assert result.cost["micro_batch_size"] == 4 and result.cost["oom_retries"] == 2  # 16 -> 8 -> 4
    assert result.cost["optimizer_steps"] == 10 and np.isfinite(result.history[0]["val_loss"])
    with pytest.raises(torch.OutOfMemoryError):  # without auto the error is the trial's failure reason
        fit(_MemoryCap(factory.build(0, 0.0), cap=5), train_data, val_data,
              TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1, eval_batch_size=4), CPU,
              pad_id=tokenizer.pad_token_id)


def test_max_steps_reproduces_the_start_of_the_full_run_and_val_can_be_absent(setup):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, evals_per_epoch=2, seed=3)
    full = fit(factory.build(3, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    at_best = full.best["optimizer_step"]
    short = factory.build(3, 0.1)
    result = fit(short, train_data, None, cfg, CPU, pad_id=tokenizer.pad_token_id, max_steps=at_best)
    assert result.stop_reason == "max_steps" and result.history == []
    assert result.cost["optimizer_steps"] == at_best
    again = factory.build(3, 0.1)
    rerun = fit(again, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id, max_steps=at_best)
    assert rerun.history[-1]["val_loss"] == pytest.approx(full.best["val_loss"], rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(short.state_dict().values(), again.state_dict().values()))


def test_schedule_steps_replays_the_trials_learning_rates_on_a_larger_pool(setup):
    tokenizer, train_data, val_data, factory = setup
    # 160 examples, batch 16: 10 steps an epoch, a 20-step schedule with ceil(0.2 * 20) = 4 warmup
    # steps; an evaluation after every step records every step's rate.
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, evals_per_epoch=10, warmup_ratio=0.2, seed=3)
    trial = fit(factory.build(3, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    rates = {r["optimizer_step"]: r["learning_rate"] for r in trial.history}
    assert sorted(rates) == list(range(1, 21)) and rates[20] == 0.0

    # The final model on train+val (224 examples: 14 steps an epoch, so 28 steps and 5 warmup
    # steps if the schedule were sized on the pool) stops at step 15, in the pool's 2nd epoch.
    pool = join_encoded(train_data, val_data)
    final = fit(factory.build(3, 0.1), pool, val_data, dataclasses.replace(cfg, evals_per_epoch=14), CPU,
                  pad_id=tokenizer.pad_token_id, max_steps=15, schedule_steps=20)
    assert final.stop_reason == "max_steps" and final.cost["optimizer_steps"] == 15
    assert final.cost["examples_seen"] == 224 + 16  # batches drawn from the larger pool
    assert [r["optimizer_step"] for r in final.history] == list(range(1, 16))
    assert [r["learning_rate"] for r in final.history] == pytest.approx([rates[s] for s in range(1, 16)], abs=1e-12)
    assert final.last_learning_rate == pytest.approx(rates[15], abs=1e-12)
    with pytest.raises(ValueError, match="max_steps"):  # past the schedule's end no trial validated a rate
        fit(factory.build(3, 0.1), pool, None, cfg, CPU, pad_id=tokenizer.pad_token_id, max_steps=21,
              schedule_steps=20)


def test_patience_counts_indices_since_the_best_models_last_index(setup, two_hundred):
    tokenizer, _, val_data, factory = setup
    # A learning rate of ~0 never improves on the first evaluation (step 1, indices 1 and 2):
    # both indices show the best model, so patience 1 stops at index 3 (step 2).
    cfg = TrainConfig(learning_rate=1e-12, num_epochs=3, evals_per_epoch=4, batch_size=128,
                      early_stopping_patience=1)
    result = fit(factory.build(0, 0.1), two_hundred, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    assert result.stop_reason == "early_stopping" and result.best_step == 1
    assert [(r["step"], r["optimizer_step"]) for r in result.history] == [(1, 1), (2, 1), (3, 2)]


def test_a_stop_at_a_repeated_index_ends_the_group_there(setup, two_hundred):
    tokenizer, _, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=4, batch_size=128)
    seen = []
    result = fit(factory.build(0, 0.1), two_hundred, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
                   report=lambda step, m: seen.append(step) or step == 3)
    assert seen == [1, 2, 3] and result.stop_reason == "stopped_by_report" and len(result.history) == 3


PAD = 5  # a nonzero pad id: MiniLM's own is 0, which padding with 0 would get right by chance


def _tiny_gpt2(vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=2,
                        pad_token_id=PAD)
    return GPT2ForSequenceClassification(config)


def test_decoder_classifier_batched_and_single_probabilities_agree(setup):
    """GPT-2 pools on the last token that is not ``config.pad_token_id``: a batch padded with
    another id pools on a pad position. ``evaluate`` serves the validation and the final test."""
    tokenizer, train_data, val_data, _ = setup
    assert not any((x == PAD).any() for x in val_data.input_ids)  # PAD is never a real token here
    model = _tiny_gpt2(tokenizer.vocab_size)
    assert len(set(val_data.lengths.tolist())) > 1  # batches really are padded
    batched, p_batched = evaluate(model, val_data, 16, PAD, CPU)
    single, p_single = evaluate(model, val_data, 1, PAD, CPU)
    np.testing.assert_allclose(p_batched, p_single, rtol=0, atol=1e-5)
    assert batched["val_loss"] == pytest.approx(single["val_loss"], abs=1e-5)

    # The validation inside train(): the same model trained twice, evaluated in batches of 16 and of 1.
    results = []
    for eval_batch_size in (16, 1):
        cfg = TrainConfig(learning_rate=1e-3, num_epochs=1, evals_per_epoch=1, eval_batch_size=eval_batch_size)
        results.append(fit(_tiny_gpt2(tokenizer.vocab_size), train_data, val_data, cfg, CPU, pad_id=PAD))
    np.testing.assert_allclose(results[0].best_payload["probs"], results[1].best_payload["probs"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                           ("adafactor", torch.optim.Adafactor), ("sgd", torch.optim.SGD),
                                           ("rmsprop", torch.optim.RMSprop)])
def test_the_optimizer_is_the_configured_one_and_keeps_the_no_decay_rule(setup, name, cls):
    model = setup[3].build(0, 0.1)
    cfg = TrainConfig(optimizer=name, weight_decay=0.1, learning_rate=1e-3, momentum=0.9 if name == "sgd" else None)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    assert type(optimizer) is cls
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in param_groups(model, 0.1)[1]["params"]}
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups)
    if name == "sgd":
        assert decay["momentum"] == 0.9


def test_each_optimizer_trains_its_own_way(setup):
    # The configured optimizer is the one that steps: the same run with sgd and adamw ends elsewhere.
    adamw = _run(setup, optimizer="adamw", learning_rate=1e-3)
    sgd = _run(setup, optimizer="sgd", learning_rate=1e-3, momentum=0.9)
    assert adamw.history[-1]["val_loss"] != sgd.history[-1]["val_loss"]
    assert all(np.isfinite(r["val_loss"]) for r in sgd.history)


def test_lora_plus_gives_the_b_matrices_ratio_times_the_rate_and_keeps_the_no_decay_rule(setup):
    from llm_doe.finetune import peft as peft_methods
    from llm_doe.schema import PeftConfig

    peft_cfg = PeftConfig(method="lora", target_modules="attention", lora_plus_ratio=16.0)
    model = peft_methods.wrap(setup[3].build(0, 0.1), peft_cfg, "classification")
    scales = peft_methods.lr_scales(model, peft_cfg)
    assert scales and all(".lora_B." in n for n in scales)
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-3, weight_decay=0.1), torch.device("cpu"), scales)
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert {n for n, (lr, _) in rates.items() if lr == pytest.approx(16e-3)} == set(scales)
    assert all(lr == 1e-3 for n, (lr, _) in rates.items() if n not in scales)
    assert all(rates[n][1] == 0.1 for n in scales)  # B matrices: decayed, as every matrix
    assert {n for n, (_, wd) in rates.items() if wd == 0.0} == {n for n in rates if n.endswith("bias") or
                                                                 "LayerNorm" in n}
    assert peft_methods.lr_scales(model, PeftConfig(method="lora")) == {}  # null: off
    peft_methods.unwrap(model)


def test_lora_plus_changes_what_is_trained(setup):
    from llm_doe.finetune import peft as peft_methods
    from llm_doe.schema import PeftConfig

    tokenizer, train_data, val_data, factory = setup
    losses = []
    for ratio in (None, 16.0):
        peft_cfg = PeftConfig(method="lora", lora_plus_ratio=ratio)
        model = peft_methods.wrap(factory.build(0, 0.1), peft_cfg, "classification")
        cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1)
        result = train(model, TASK, TrainData(train_data, val_data, tokenizer.pad_token_id), cfg, CPU,
                       lr_scales=peft_methods.lr_scales(model, peft_cfg))
        losses.append(result.history[-1]["val_loss"])
        factory.release(peft_methods.unwrap(model))
    assert losses[0] != losses[1]


def test_warmup_steps_round_up_as_hugging_faces_do(setup):
    """An 8-step schedule with warmup_ratio 0.1 has one warmup step (ceil(0.8), as Hugging Face's
    get_warmup_steps): the first step runs at rate 0 and leaves the weights as they were."""
    from llm_doe.finetune.loop import warmup_steps

    assert [warmup_steps(0.1, n) for n in (8, 10, 30, 100)] == [1, 1, 3, 10]  # 0.1 * 30 is 3.0000000000000004
    assert warmup_steps(0.0, 8) == 0
    tokenizer, train_data, _, factory = setup
    pool = join_encoded(train_data, limit=128)  # 8 steps of 16
    model = factory.build(0, None)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(learning_rate=1e-3, num_epochs=1, warmup_ratio=0.1)
    result = fit(model, pool, None, cfg, CPU, pad_id=tokenizer.pad_token_id, max_steps=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert result.last_learning_rate == pytest.approx(1e-3)  # warmup over after one step: the peak rate
