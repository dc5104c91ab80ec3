"""task=causal_lm: SFT trials of a tiny random-init Llama (SmolLM2's tokenizer) on real chat data."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
import torch

from llm_doe.finetune.loop import TrainData, evaluate, train
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks import get_task
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
    assert main([*SFT, *store_args(tmp_path, "sft"), "study.n_trials=2", "peft=lora", "peft.r=4"]) == 0
    study = optuna.load_study(study_name="sft", storage=f"sqlite:///{tmp_path}/sft.db")
    assert study.user_attrs["task"] == "causal_lm"
    assert study.user_attrs["metric_directions"] == {"val_loss": "minimize", "perplexity": "minimize"}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        attrs = trial.user_attrs
        assert attrs["perplexity"] == pytest.approx(math.exp(attrs["val_loss"]))
        assert 0 < attrs["trainable_params"] < attrs["total_params"]
        assert attrs["config.peft.method"] == "lora" and "accuracy" not in attrs
        assert sorted(trial.intermediate_values) == [1, 2]


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
])
def test_bad_sft_input_stops_with_one_line(tmp_path, capsys, override, key, words):
    assert main([*SFT, *store_args(tmp_path, "bad"), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"llm_doe: error: {key}:") and words in err[0], err
    assert not (tmp_path / "bad.db").exists()
