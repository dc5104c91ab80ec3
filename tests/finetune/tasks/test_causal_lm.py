"""task=causal_lm: SFT trials of a tiny random-init Llama (SmolLM2's tokenizer) on real chat data."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

import llm_doe as doe
from llm_doe.finetune.chat import prompt_and_reference
from llm_doe.finetune.loop import Budget, TrainData, evaluate, train
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks import get_task
from llm_doe.report import render_report
from llm_doe.schema import DataConfig, ModelConfig, TaskConfig, TrainConfig
from llm_doe.search import main
from tests.conftest import store_args

SFT = ["+study=sft_smoke", "data.train_size=32", "data.val_size=16", "data.test_size=16", "data.max_length=64",
       "runtime.progress=false", "runtime.num_threads=1"]
TINY_LLAMA = ModelConfig(kind="tiny_llama", name_or_path="tiny-llama", tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct",
                         hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
CHAT = DataConfig(source="chat_pairs", train_size=32, val_size=16, test_size=16, max_length=64)
CPU = resolve_runtime("cpu", "fp32")


@pytest.fixture(scope="module")
def prepared():
    task = get_task(TaskConfig(name="causal_lm"))
    return task, task.prepare(TINY_LLAMA, CHAT)


def test_validation_loss_is_the_token_mean_over_the_split_whatever_the_batch(prepared):
    """A mean of batch means would weigh a short answer's tokens more in a small batch."""
    task, data = prepared
    model = data.factory.build(0, None)
    one, _ = evaluate(model, task, data.val, 1, data.pad_id, CPU)
    many, payload = evaluate(model, task, data.val, 16, data.pad_id, CPU)
    assert one["val_loss"] == pytest.approx(many["val_loss"], rel=1e-5)
    assert many["perplexity"] == pytest.approx(math.exp(many["val_loss"]))
    assert payload["label_tokens"] == sum(int((lab[1:] != -100).sum()) for lab in data.val.labels)
    assert many["val_loss"] == pytest.approx(math.log(model.config.vocab_size), rel=0.05)  # an untrained model


def test_micro_batches_give_the_batch_token_mean(prepared):
    """Cut into micro-batches of 2, a batch of 8 takes the same steps as whole."""
    task, data = prepared
    runs = []
    for micro in (None, 2):
        cfg = TrainConfig(learning_rate=1e-3, batch_size=8, num_epochs=1, evals_per_epoch=1, micro_batch_size=micro,
                          seed=3)
        model = data.factory.build(cfg.seed, None)
        result = train(model, task, TrainData(data.train, data.val, data.pad_id), cfg, CPU)
        runs.append((result.best["val_loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[0][1], runs[1][1]))


def test_padding_is_neither_attended_nor_a_label(prepared):
    task, data = prepared
    index = np.argsort(data.train.lengths)[[0, -1]]  # the shortest and the longest: padding in the first
    batch = task.collate(data.train, index, data.pad_id, torch.device("cpu"))
    short = int(data.train.lengths[index[0]])
    assert batch["attention_mask"][0, short:].sum() == 0 and (batch["labels"][0, short:] == -100).all()
    assert batch["input_ids"][0, short:].eq(data.pad_id).all()


def test_sft_smoke_trials_record_loss_perplexity_and_sizes(tmp_path):
    assert main([*SFT, *store_args(tmp_path, "sft"), "study.n_trials=2"]) == 0  # LoRA r=4 (the study's)
    study = optuna.load_study(study_name="sft", storage=f"sqlite:///{tmp_path}/sft.db")
    assert study.user_attrs["task"] == "causal_lm"
    assert study.user_attrs["metric_directions"] == {"val_loss": "minimize", "perplexity": "minimize"}
    # Answers cut by data.max_length=64, counted per split for a person to read (kept, without their eos).
    prepared = get_task(TaskConfig(name="causal_lm")).prepare(TINY_LLAMA, CHAT)
    assert study.user_attrs["cut_answers"] == {"train": prepared.train.cut, "val": prepared.val.cut}
    assert prepared.train.cut + prepared.val.cut > 0
    store = FileSystemArtifactStore(str(tmp_path / "art"))
    prompts = []
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        attrs = trial.user_attrs
        assert attrs["perplexity"] == pytest.approx(math.exp(attrs["val_loss"]))
        assert 0 < attrs["trainable_params"] < attrs["total_params"]
        assert attrs["train_tokens_per_second"] > 0
        assert 0 < attrs["finish_time_s"] < attrs["eval_time_s"]  # the generations' time, counted in eval time
        assert attrs["config.peft.method"] == "lora" and "accuracy" not in attrs
        assert sorted(trial.intermediate_values) == [1, 2]
        metas = {m.filename: m for m in get_all_artifact_meta(trial, storage=study._storage)}
        assert set(metas) == {"config.yaml", "metrics.jsonl", "generations.csv"}  # no ROC for a language model
        with store.open_reader(metas["generations.csv"].artifact_id) as reader:
            rows = list(csv.DictReader(io.StringIO(reader.read().decode("utf-8"))))
        assert len(rows) == 4 and all(set(r) == {"prompt", "reference", "generated"} for r in rows)
        prompts.append([r["prompt"] for r in rows])
    assert prompts[0] == prompts[1]  # every trial answers the same validation prompts
    side = doe.load_generations(study._storage, "sft", artifacts_dir=tmp_path / "art")
    assert sorted(side["trial"].unique()) == [0, 1] and len(side) == 8
    page = render_report(f"sqlite:///{tmp_path}/sft.db", "sft", artifacts_dir=tmp_path / "art")
    assert "<h2>Sample generations of the best trials</h2>" in page and "<h2>ROC curves</h2>" not in page
    assert html.escape(prompts[0][0]) in page and "perplexity" in page


def test_jsonl_chat_files_train_in_either_layout(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = []
    for i in range(40):
        if i % 2:
            rows.append({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                      {"role": "assistant", "content": f"It is {i + 1}."}]})
        else:
            rows.append({"question": f"Say {i} twice.", "answer": f"{i} {i}"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = [*SFT, *store_args(tmp_path, "j"), "data=jsonl", f"data.path={path}", "data.prompt_field=question",
            "data.response_field=answer", "data.train_size=24", "data.val_size=8", "data.test_size=8",
            "study.n_trials=1"]
    assert main(args) == 0
    trial = optuna.load_study(study_name="j", storage=f"sqlite:///{tmp_path}/j.db").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and math.isfinite(trial.user_attrs["val_loss"])


@pytest.mark.parametrize("override, key, words", [
    (["model=minilm"], "model.name_or_path", "is a 'bert' encoder"),
    (["model=tiny"], "model", "model=tiny is a BERT encoder"),
    (["study.metric=accuracy"], "study.metric", "val_loss|perplexity"),
    (["data=tweets"], "data.source", "task=causal_lm reads data=chat_pairs|jsonl"),
    (["data=jsonl", "data.path=/nonexistent.jsonl"], "data.path", "no such file"),
    (["peft=lora", "peft.target_modules=[qkv_proj]"], "peft.target_modules", "no module 'qkv_proj'"),
    (["data.max_length=24"], "data.max_length", "24 tokens leave no train conversation"),
    (["data.truncation=cut"], "data.truncation", "must be keep or drop, got 'cut'"),
    (["task.packing=sometimes"], "task.packing", "must be true, false or auto"),
    (["task.packing=true", "peft=prompt"], "task.packing", "virtual tokens before each row"),
])
def test_bad_sft_input_stops_with_one_line(tmp_path, capsys, override, key, words):
    assert main([*SFT, *store_args(tmp_path, "bad"), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"llm_doe: error: {key}:") and words in err[0], err
    assert not (tmp_path / "bad.db").exists()


def test_final_exports_a_merged_model_and_its_adapter_that_agree(tmp_path):
    """The merged export loads with from_pretrained and pipeline; the adapter on the same base
    (rebuilt from the trial's seed) computes the same logits; the card shows test perplexity and
    sample generations."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from llm_doe.cli import compose_config
    from llm_doe.final import main as final

    args = [*SFT, *store_args(tmp_path, "f"), "study.n_trials=1"]
    assert main(args) == 0
    out = tmp_path / "export"
    assert final([*args, f"final.output_dir={out}"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    cfg = compose_config(args).config
    base = get_task(cfg.task).prepare(cfg.model, cfg.data).factory.build(cfg.train.seed, cfg.model.dropout)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        torch.testing.assert_close(adapted(**ids).logits, merged(**ids).logits, atol=1e-4, rtol=1e-4)
    reply = pipeline("text-generation", model=str(out))([{"role": "user", "content": "Hi"}], max_new_tokens=4)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "## Sample generations (test split, greedy)" in card
    assert "ROC" not in card and (out / "generations.csv").is_file()


def test_prompt_tuning_trains_and_final_refuses_what_cannot_merge(tmp_path, capsys):
    """Prompt tuning's virtual tokens lengthen the logits: the loss must take the input's own
    positions. Its learned tokens cannot be merged into plain weights, so final says so."""
    from llm_doe.final import main as final

    args = [*SFT, *store_args(tmp_path, "p"), "study.n_trials=1", "peft=prompt", "peft.num_virtual_tokens=4"]
    assert main(args) == 0
    trial = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/p.db").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["trainable_params"] == 4 * 64  # 4 virtual tokens of the hidden size
    capsys.readouterr()
    assert final([*args, f"final.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm_doe: error: peft.method: is 'prompt' in trial 0")
    assert not (tmp_path / "out").exists()


def test_generations_decode_with_the_tokenizer_that_encoded_the_data(prepared):
    """One cached task serves every model of its config: a second model with another tokenizer
    must not change how the first one's prompts are encoded and its answers decoded."""
    task, data = prepared
    other = dataclasses.replace(TINY_LLAMA, tokenizer="sentence-transformers/all-MiniLM-L6-v2")
    task.prepare(other, CHAT)  # the same task instance, another tokenizer
    assert data.val.tokenizer is data.tokenizer
    model = data.factory.build(0, None)
    payload = task.finish(model, data.val, data.pad_id, CPU, {})
    prompts = [r["prompt"] for r in payload["generations"]]
    assert prompts == [next(m["content"] for m in reversed(c[:-1]) if m["role"] == "user")
                       for c in data.val.conversations[:4]]


def test_final_saves_the_chat_template_training_rendered_with(tmp_path):
    """A tokenizer with no chat template trains on the built-in ChatML; the export saves that
    template, so the card's pipeline snippet answers a chat message."""
    from transformers import AutoTokenizer, pipeline

    from llm_doe.final import main as final
    from llm_doe.finetune.chat import DEFAULT_CHAT_TEMPLATE

    bare = AutoTokenizer.from_pretrained(get_task(TaskConfig(name="causal_lm")).prepare(TINY_LLAMA, CHAT)
                                         .tokenizer.name_or_path)
    bare.chat_template = None
    bare.save_pretrained(tmp_path / "bare")
    args = [*SFT, *store_args(tmp_path, "bare"), "study.n_trials=1", f"model.tokenizer={tmp_path / 'bare'}",
            "task.sample_prompts=0"]
    assert main(args) == 0
    out = tmp_path / "export"
    assert final([*args, f"final.output_dir={out}"]) == 0
    assert AutoTokenizer.from_pretrained(out).chat_template == DEFAULT_CHAT_TEMPLATE
    reply = pipeline("text-generation", model=str(out))([{"role": "user", "content": "What is AI?"}], max_new_tokens=4)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"


def test_data_truncation_drop_leaves_out_the_conversations_whose_answer_was_cut(prepared):
    task, kept = prepared
    dropped = task.prepare(TINY_LLAMA, dataclasses.replace(CHAT, truncation="drop"))
    assert kept.train.cut > 0 and dropped.train.cut == kept.train.cut
    assert len(dropped.train) == len(kept.train) - kept.train.cut
    assert len(dropped.val) == len(kept.val) - kept.val.cut
    assert task.study_attrs(dropped) == {"cut_answers": {"train": kept.train.cut, "val": kept.val.cut}}


class _Probe(type(get_task(TaskConfig(name="causal_lm")))):
    """The causal_lm task, noting the validation loss of the model its generations come from."""

    seen: list[float] = []

    def finish(self, model, data, pad_id, rt, payload):
        self.seen.append(evaluate(model, self, data, 16, pad_id, rt)[0]["val_loss"])
        return super().finish(model, data, pad_id, rt, payload)


@pytest.mark.parametrize("method, learning_rate, epochs", [("none", 0.05, 2), ("lora", 0.3, 2)])
def test_generations_come_from_the_best_evaluations_weights(prepared, method, learning_rate, epochs):
    """generations.csv is drawn "at best eval": from the best evaluation's weights, though the
    run trained on past them; the model is left as training left it."""
    from llm_doe.finetune import peft as peft_methods
    from llm_doe.schema import PeftConfig

    _, data = prepared
    task = _Probe(TaskConfig(name="causal_lm", sample_prompts=1, sample_max_new_tokens=2))
    cfg = TrainConfig(learning_rate=learning_rate, batch_size=8, num_epochs=epochs, evals_per_epoch=4,
                      warmup_ratio=0.0, seed=1)
    model = peft_methods.wrap(data.factory.build(cfg.seed, None), PeftConfig(method=method, r=4), "causal_lm")
    result = train(model, task, TrainData(data.train, data.val, data.pad_id), cfg, CPU)
    last = result.history[-1]["val_loss"]
    assert result.best_step < len(result.history) and result.best["val_loss"] < last  # trained past its best
    assert task.seen[-1] == pytest.approx(result.best["val_loss"], rel=1e-5)
    assert evaluate(model, task, data.val, 16, data.pad_id, CPU)[0]["val_loss"] == pytest.approx(last, rel=1e-5)
    assert len(result.best_payload["generations"]) == 1


def test_training_and_evaluation_forwards_build_no_key_value_cache(prepared):
    task, data = prepared
    model = data.factory.build(0, None)
    caches: dict[str, list] = {"train": [], "eval": []}
    phase = "train"
    # The decoder's own output: the validation loss is reduced from its hidden states (chunked),
    # without the causal LM's forward around it.
    model.model.register_forward_hook(lambda module, args, out: caches[phase].append(out.cache))
    cfg = TrainConfig(learning_rate=1e-3, batch_size=8, num_epochs=1, evals_per_epoch=1)
    train(model, task, TrainData(data.train, None, data.pad_id), cfg, CPU, budget=Budget(max_steps=1))
    phase = "eval"
    evaluate(model, task, data.val, 16, data.pad_id, CPU)
    assert caches["train"] and caches["eval"]
    assert all(cache is None for cache in caches["train"] + caches["eval"]), {k: [type(c).__name__ for c in v] for k, v in caches.items()}


@pytest.mark.parametrize("method", ["none", "lora"])
def test_gradient_checkpointing_gives_the_same_steps(prepared, method):
    """Recomputing activations in the backward pass changes memory, not the result (dropout
    included: the recompute replays the RNG); it is switched off again after the run."""
    from llm_doe.finetune import peft as peft_methods
    from llm_doe.schema import PeftConfig

    task, data = prepared
    runs = []
    for checkpointing in (False, True):
        cfg = TrainConfig(learning_rate=1e-3, batch_size=8, num_epochs=1, evals_per_epoch=1, seed=2,
                          gradient_checkpointing=checkpointing)
        model = peft_methods.wrap(data.factory.build(cfg.seed, 0.1), PeftConfig(method=method, r=4), "causal_lm")
        initial = [p.detach().clone() for p in model.parameters()]
        train(model, task, TrainData(data.train, None, data.pad_id), cfg, CPU, budget=Budget(max_steps=2))
        runs.append([p.detach().clone() for p in model.parameters()])
        base = model.get_base_model() if method != "none" else model
        assert not base.is_gradient_checkpointing
    assert any(not torch.equal(a, b) for a, b in zip(initial, runs[1]))  # it trained
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[0], runs[1]))


def _one_at_a_time(model, tokenizer, prompts, max_new_tokens, pad_id):
    """The reference: each prompt alone, unpadded, through generate."""
    answers = []
    for prompt in prompts:
        encoded = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                             temperature=None, top_p=None, top_k=None)
        answers.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


@pytest.mark.parametrize("method", ["none", "lora"])
def test_batched_generations_are_the_one_at_a_time_greedy_text(prepared, method):
    """Prompts of different lengths in one left-padded generate call: every answer is the one
    the prompt gets alone, also when one row ends before the others."""
    from llm_doe.finetune import peft as doe_peft
    from llm_doe.finetune.tasks.causal_lm import generate_greedy
    from llm_doe.schema import PeftConfig

    _, data = prepared
    model = doe_peft.wrap(data.factory.build(0, None), PeftConfig(method=method, r=4), "causal_lm")
    torch.manual_seed(0)
    with torch.no_grad():  # a random tiny model repeats one token: shaken, its answers differ
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    prompts = [prompt_and_reference(data.tokenizer, c)[0] for c in data.val.conversations[:6]]
    assert len({len(data.tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding in the batch
    with torch.inference_mode():
        # As end-of-sequence, the token that ends the answers at the most different places.
        model.generation_config.eos_token_id = None
        raw = []
        for prompt in prompts:
            encoded = data.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            out = model.generate(**encoded, max_new_tokens=16, do_sample=False, pad_token_id=data.pad_id)
            raw.append(out[0, encoded["input_ids"].shape[1]:].tolist())
        def ends(token):
            return len({row.index(token) if token in row else len(row) for row in raw})

        model.generation_config.eos_token_id = max(sorted({t for row in raw for t in row}), key=ends)
        alone = _one_at_a_time(model, data.tokenizer, prompts, 16, data.pad_id)
        batched = generate_greedy(model, data.tokenizer, prompts, 16, data.pad_id, CPU)
        in_pairs = generate_greedy(model, data.tokenizer, prompts, 16, data.pad_id, CPU, batch_size=4)
    assert batched == alone and in_pairs == alone
    assert len(set(alone)) > 1 and min(map(len, alone)) < max(map(len, alone))


@pytest.mark.parametrize("method", ["none", "lora", "prompt"])
def test_validation_loss_reduced_by_chunks_equals_the_full_logits_one(prepared, monkeypatch, method):
    """The evaluation's loss (hidden states, then head + cross-entropy on label tokens, a few
    at a time) equals the token mean of the full-vocabulary logits of every position."""
    from llm_doe.finetune import peft as doe_peft
    from llm_doe.finetune.tasks import causal_lm
    from llm_doe.schema import PeftConfig

    task, data = prepared
    model = doe_peft.wrap(data.factory.build(1, None), PeftConfig(method=method, r=4, num_virtual_tokens=3),
                          "causal_lm")
    with torch.no_grad():  # adapters that change the output (LoRA's B starts at zero)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    assert (causal_lm._decoder_and_head(model) is None) == (method == "prompt")
    monkeypatch.setattr(causal_lm, "LOSS_CHUNK_TOKENS", 7)  # several chunks a batch
    metrics, _ = evaluate(model, task, data.val, 5, data.pad_id, CPU)
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(data.val), 5):
            index = np.arange(start, min(start + 5, len(data.val)))
            batch = task.collate(data.val, index, data.pad_id, torch.device("cpu"))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, -batch["labels"].shape[1]:-1].float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             batch["labels"][:, 1:].reshape(-1), reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != -100).sum())
    assert metrics["val_loss"] == pytest.approx(total / tokens, rel=1e-5)


def _loss_and_grads(model, task, batch, units):
    model.zero_grad(set_to_none=True)
    logits = model(**task.model_inputs(batch)).logits
    loss = task.loss(logits, batch, units, 0.0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("method", "loss_on"), [("none", "completion"), ("lora", "all"), ("none", "all")])
def test_a_packed_batch_has_the_unpacked_loss_and_gradients(method, loss_on):
    """The same examples as one padding-free row: the same token-mean loss, the same gradients
    (loss_on=all: a conversation's first token is a label the previous one must not predict)."""
    from llm_doe.finetune import peft as doe_peft
    from llm_doe.finetune.tasks.causal_lm import pack
    from llm_doe.schema import PeftConfig

    task = get_task(TaskConfig(name="causal_lm", loss_on=loss_on))
    data = task.prepare(TINY_LLAMA, CHAT)
    model = doe_peft.wrap(data.factory.build(2, None), PeftConfig(method=method, r=4), "causal_lm")
    model.eval()  # no dropout: the two forwards must see the same weights
    index = np.argsort(data.train.lengths)[[0, 5, 11, -1]]  # four lengths: padding when unpacked
    units = task.loss_units(data.train, index)
    padded = task.collate(data.train, index, data.pad_id, torch.device("cpu"))
    packed = pack(data.train, index, data.pad_id, torch.device("cpu"))
    assert packed["input_ids"].shape == (1, int(data.train.lengths[index].sum())) < padded["input_ids"].shape
    loss_a, grads_a = _loss_and_grads(model, task, padded, units)
    loss_b, grads_b = _loss_and_grads(model, task, packed, units)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-4, atol=1e-6) for n in grads_a)


def test_packed_conversations_do_not_attend_to_each_other(prepared):
    """Other tokens in the first conversation leave the second one's logits as they were; with
    plain positions (one long sequence) they would not."""
    from llm_doe.finetune.tasks.causal_lm import pack

    task, data = prepared
    model = data.factory.build(3, None).eval()
    index = np.array([0, 1])
    first = int(data.train.lengths[0])
    batch = pack(data.train, index, data.pad_id, torch.device("cpu"))
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][0, :first] = torch.randint(3, 1000, (first,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        second = model(**task.model_inputs(batch)).logits[0, first:]
        assert torch.allclose(second, model(**task.model_inputs(other)).logits[0, first:], atol=1e-5)
        plain = {"input_ids": batch["input_ids"], "use_cache": False}  # positions 0..n-1: one sequence
        leaked = model(**plain).logits[0, first:], model(**dict(plain, input_ids=other["input_ids"])).logits[0, first:]
        assert not torch.allclose(*leaked, atol=1e-5)


def test_training_with_packing_takes_the_unpacked_steps(prepared):
    """task.packing=true through the loop: the same validation loss and weights as unpacked."""
    _, data = prepared
    runs = []
    for packing in (False, True):
        task = get_task(TaskConfig(name="causal_lm", packing=packing))
        cfg = TrainConfig(learning_rate=1e-3, batch_size=8, num_epochs=1, evals_per_epoch=1, seed=3)
        model = data.factory.build(cfg.seed, 0.0)  # no dropout: the same computation either way
        assert task.train_collate(model, CPU).__name__ == ("pack" if packing else "collate")
        result = train(model, task, TrainData(data.train, data.val, data.pad_id), cfg, CPU)
        runs.append((result.best["val_loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[0][1], runs[1][1]))


def test_packing_auto_packs_short_rows_under_sdpa_and_pads_long_ones(prepared, monkeypatch):
    from llm_doe.finetune.tasks import causal_lm

    _, data = prepared
    task = get_task(TaskConfig(name="causal_lm", packing="auto"))
    model = data.factory.build(0, None)
    collate = task.train_collate(model, CPU)
    index = np.arange(4)
    assert "position_ids" in collate(data.train, index, data.pad_id, torch.device("cpu"))
    monkeypatch.setattr(causal_lm, "PACK_DENSE_TOKENS", int(data.train.lengths[index].sum()) - 1)
    assert "attention_mask" in collate(data.train, index, data.pad_id, torch.device("cpu"))


def test_a_model_whose_attention_ignores_restarting_positions_is_never_packed(prepared):
    """OPT's attention does not read packed sequences from restarting position ids, so a packed
    row would let one conversation attend to the one before it: auto pads there, and true is
    refused; a Llama still packs."""
    from transformers import OPTConfig, OPTForCausalLM

    _, data = prepared
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=len(data.tokenizer), hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, ffn_dim=32, max_position_embeddings=256,
                                   word_embed_proj_dim=16))
    index = np.arange(4)
    auto = get_task(TaskConfig(name="causal_lm", packing="auto"))
    assert "attention_mask" in auto.train_collate(opt, CPU)(data.train, index, data.pad_id, torch.device("cpu"))
    with pytest.raises(ValueError, match="lets packed conversations attend to each other"):
        get_task(TaskConfig(name="causal_lm", packing=True)).train_collate(opt, CPU)
    llama = data.factory.build(0, None)
    assert "position_ids" in auto.train_collate(llama, CPU)(data.train, index, data.pad_id, torch.device("cpu"))
