"""``python -m llm_doe.final``: train the chosen configuration, test it once, export a folder that loads offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from llm_doe.analysis import load_artifacts
from llm_doe.cli import compose_config
from llm_doe.confirm import main as confirm
from llm_doe.final import best_optimizer_step
from llm_doe.final import main as final
from llm_doe.finetune.data import Encoded, encoded_splits, load_splits
from llm_doe.finetune.loop import TrainData, train
from llm_doe.finetune.model import load_tokenizer, model_factory
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks import get_task
from llm_doe.schema import TaskConfig
from tests.conftest import REPO, TINY, searched_lr_study, store_args

# Loads the export in a fresh process with the hub unreachable, predicts the test split and
# prints the accuracy and the predicted label names.
PREDICT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from llm_doe.finetune.data import load_splits
from llm_doe.cli import compose_config

folder, overrides = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
test = load_splits(compose_config(overrides).config.data).test
correct, names = 0, set()
with torch.inference_mode():
    for start in range(0, len(test), 64):
        texts = test.texts[start:start + 64]
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1)
        correct += int((predicted.numpy() == test.labels[start:start + 64]).sum())
        names |= {model.config.id2label[int(i)] for i in predicted}
print(json.dumps({"accuracy": correct / len(test), "labels": sorted(names), "n": len(test)}))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """A tiny searched and confirmed study; the test split untouched so far."""
    searched = searched_lr_study(tmp_path_factory.mktemp("final"))
    assert confirm([*searched["args"], "confirm.top_k=2", "confirm.seeds=2"]) == 0
    return searched


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: ") and "\n" not in err, err
    return err


def test_final_reads_the_test_split_once_and_exports_a_folder_that_loads_offline(study):
    args, tmp = study["args"], study["tmp"]
    splits = load_splits(compose_config(args).config.data)
    assert splits.test_reads == 0  # search and confirmation never read it
    out = tmp / "export"
    assert final([*args, f"final.output_dir={out}"]) == 0
    assert splits.test_reads == 1  # the final evaluation, once

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.yaml",
            "test_metrics.json", "roc.csv", "roc.png", "README.md"} <= files
    metrics = json.loads((out / "test_metrics.json").read_text())
    parent = optuna.load_study(study_name="lr", storage=study["url"])
    confirmed = parent.user_attrs["confirmation"]["best_trial"]
    assert metrics["trial"] == confirmed and metrics["chosen_by"].startswith("the confirmed best")
    assert metrics["n_test"] == 200 and metrics["trained_on"] == "train" and metrics["n_train"] == 160
    assert metrics["train_precision"] == resolve_runtime("cpu", "auto").precision  # what training ran in, stated
    # Trained to the optimizer step of the trial's best evaluation, read from its metrics.jsonl.
    assert metrics["optimizer_steps"] == metrics["max_steps"] and "metrics.jsonl" in metrics["steps_source"]
    assert parent.user_attrs["final_exports"][-1]["test"]["accuracy"] == metrics["accuracy"]

    config = (out / "config.yaml").read_text()
    assert f"learning_rate: {parent.trials[confirmed].params['train.learning_rate']}" in config
    card = (out / "README.md").read_text()
    for heading in ("## Test metrics", "## Data", "## Search", "## Confirmation", "## The chosen configuration",
                    "## How to use it"):
        assert heading in card
    assert "train 160, validation 64, test 200" in card and "`train.learning_rate`" in card
    assert "3 trials: 3 complete" in card and parent.user_attrs["confirmation"]["summary"] in card
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PREDICT, str(out), json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    assert predicted["n"] == 200 and set(predicted["labels"]) <= {"negative", "positive"}
    assert predicted["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)


def _metrics_json(study: dict[str, Any], number: int) -> list[dict[str, Any]]:
    """A trial's metrics.jsonl (every evaluation), read from the study's artifact folder."""
    artifacts = load_artifacts(study["url"], "lr")
    row = artifacts[(artifacts["trial"] == number) & (artifacts["filename"] == "metrics.jsonl")].iloc[-1]
    lines = (study["tmp"] / "art" / row["artifact_id"]).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_use_val_trains_on_train_and_val_for_the_same_steps_and_learning_rates(study):
    out = study["tmp"] / "export_val"
    assert final([*study["args"], f"final.output_dir={out}", "final.use_val=true", "final.trial=0"]) == 0
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["trial"] == 0 and metrics["chosen_by"] == "set by final.trial"
    assert metrics["trained_on"] == "train+val" and metrics["n_train"] == 160 + 64
    assert metrics["optimizer_steps"] == metrics["max_steps"]
    # The trial's schedule (160 examples, batch 16, 1 epoch: 10 steps), not one stretched over
    # the 224 of train+val (14 steps): at the stop the rate is the trial's at its best evaluation.
    parent = optuna.load_study(study_name="lr", storage=study["url"])
    best = parent.trials[0].user_attrs["best_step"]
    at_best = next(r for r in _metrics_json(study, 0) if r["step"] == best)
    assert metrics["schedule_steps"] == 10 and metrics["max_steps"] == at_best["optimizer_step"]
    assert metrics["last_learning_rate"] == pytest.approx(at_best["learning_rate"], rel=1e-9, abs=1e-15)
    card = (out / "README.md").read_text()
    assert "train+val (224 examples)" in card
    assert "Learning-rate schedule: the trial's own, 10 steps long, 1 of them warmup" in card
    assert f"stopped at step {at_best['optimizer_step']}" in card


def test_best_step_fallback_places_evaluations_as_the_loop_does(tmp_path):
    """Without the trial's metrics.jsonl, the optimizer step of evaluation k is computed: it must be
    the loop's, also when an epoch has fewer steps than evaluations (batch 128 on 200 examples)."""
    cfg = compose_config(["+study=lr_sweep", *TINY, *store_args(tmp_path, "x"), "train.batch_size=128",
                          "train.evals_per_epoch=4", "train.num_epochs=2"]).config
    tokenizer, key = load_tokenizer(cfg.model)
    train_data, val_data, splits = encoded_splits(cfg.data, tokenizer, key)
    ids = [*train_data.input_ids, *val_data.input_ids][:200]
    pool = Encoded(ids, np.concatenate([train_data.labels, val_data.labels])[:200], np.array([len(x) for x in ids]))
    model = model_factory(cfg.model, splits.num_labels).build(cfg.train.seed, 0.1)
    result = train(model, get_task(TaskConfig()), TrainData(pool, val_data, tokenizer.pad_token_id), cfg.train,
                   resolve_runtime("cpu", "fp32"))
    assert len(result.history) == 8
    storage = optuna.storages.InMemoryStorage()
    for record in result.history:
        trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5,
                                          user_attrs={"best_step": record["step"]})
        step, source = best_optimizer_step(trial, cfg, 200, storage)
        assert step == record["optimizer_step"] and "placed as the training loop places it" in source
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5)
    assert best_optimizer_step(trial, cfg, 200, storage) == (4, "the trial recorded no best evaluation: the full run")


def test_an_existing_export_is_not_replaced_without_overwrite(study, capsys):
    out = study["tmp"] / "kept"
    out.mkdir()
    (out / "test_metrics.json").write_text("{}")
    assert final([*study["args"], f"final.output_dir={out}"]) == 2
    assert "final.overwrite=true" in _one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["test_metrics.json"]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(study, tmp_path, capsys):
    parent = optuna.load_study(study_name="lr", storage=study["url"])
    parent.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "test"}))
    failed = parent.trials[-1].number
    reads = load_splits(compose_config(study["args"]).config.data).test_reads
    run_dir = tmp_path / "run"
    for extra, message in ((f"final.trial={failed}", f"trial {failed} of study 'lr' is FAIL, not COMPLETE"),
                           ("final.trial=99", "study 'lr' has no trial 99"),
                           ("data.max_length=32", "data.max_length: is 32 here but 64 in study 'lr'")):
        out = tmp_path / "out"
        assert final([*study["args"], f"final.output_dir={out}", f"hydra.run.dir={run_dir}", extra]) == 2
        assert message in _one_line_error(capsys)
        assert not out.exists() and not run_dir.exists()
    assert load_splits(compose_config(study["args"]).config.data).test_reads == reads  # refused before the test

    empty = tmp_path / "empty"
    empty.mkdir()
    url = f"sqlite:///{empty}/e.db"
    optuna.create_study(study_name="e", storage=url).add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    out = empty / "out"
    assert final(["+study=lr_sweep", *TINY, *store_args(empty, "e"), f"final.output_dir={out}"]) == 2
    assert "study 'e' has no COMPLETE trial" in _one_line_error(capsys)
    assert {p.name for p in empty.iterdir()} <= {"e.db", "e.db-wal", "e.db-shm"}  # SQLite's own side files

    assert final(["+study=lr_sweep", *TINY, *store_args(tmp_path / "none", "x")]) == 2
    assert "no study store" in _one_line_error(capsys)
    assert not (tmp_path / "none").exists()


def test_the_real_command_prints_one_line_on_bad_input(study):
    proc = subprocess.run([sys.executable, "-m", "llm_doe.final", *study["args"], "final.trial=99"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("llm_doe: error: final.trial:") and "\n" not in proc.stderr.strip()


def test_help(capsys):
    assert final(["--help"]) == 0 and "final.use_val" in capsys.readouterr().out
    assert confirm(["--help"]) == 0 and "confirm.top_k" in capsys.readouterr().out


def test_exported_folder_is_all_an_outside_user_needs(study):
    """The card's own loading snippet, run as written (offline), on the first export."""
    out = study["tmp"] / "export"
    if not out.exists():
        assert final([*study["args"], f"final.output_dir={out}", "final.overwrite=true"]) == 0
    card = (out / "README.md").read_text()
    snippet = card.split("```python", 1)[1].split("```", 1)[0].replace('"path/to/this/folder"', repr(str(out)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", snippet + "\nprint(label)"], cwd=Path(out), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] in ("negative", "positive")


def test_label_names_name_the_classes_of_an_export_from_a_csv_labelled_0_1(tmp_path):
    """data.label_names carries display names into the study (its ``classes``, the report and the
    dashboard note), id2label/label2id, the card and pipeline's answer (a CSV's 0/1 used to come
    out as "0"/"1"); the CSV's blank label cell is dropped."""
    import pandas as pd
    from transformers import pipeline

    from llm_doe.analysis import load_trials
    from llm_doe.finetune.data import tweets_path
    from llm_doe.notes import study_note
    from llm_doe.report import render_report
    from llm_doe.search import main as search

    raw = pd.read_csv(tweets_path(), encoding="latin-1")
    rows = pd.concat([raw[raw["sentiment"] == name].head(100).assign(label=str(i))
                      for i, name in enumerate(("negative", "positive"))])
    rows = pd.concat([rows, pd.DataFrame({"text": ["a tweet nobody labelled"], "label": [""]})])
    path = tmp_path / "tweets01.csv"
    rows[["text", "label"]].to_csv(path, index=False)
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "csv01"), "data=csv", f"data.path={path}",
            "data.train_size=64", "data.val_size=32", "data.test_size=64", "data.label_names={0:negative,1:positive}"]
    assert search([*args, "study.n_trials=1"]) == 0
    url = f"sqlite:///{tmp_path}/csv01.db"
    assert optuna.load_study(study_name="csv01", storage=url).user_attrs["classes"] == "0: negative, 1: positive"
    assert "<b>Classes</b> (id: name): 0: negative, 1: positive." in render_report(url, "csv01")
    assert "Classes (id: name): 0: negative, 1: positive." in study_note(load_trials(url, "csv01"))
    out = tmp_path / "export"
    assert final([*args, f"final.output_dir={out}"]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert "- Labels (id: name): 0: negative, 1: positive." in (out / "README.md").read_text()
    assert json.loads((out / "test_metrics.json").read_text())["label_names"] == ["negative", "positive"]
    answers = pipeline("text-classification", model=str(out), device="cpu")(["what a great day", "awful, just awful"])
    assert answers and {a["label"] for a in answers} <= {"negative", "positive"}


def test_a_study_without_a_test_split_has_nothing_to_export(tmp_path, capsys):
    """data.test_size=0 holds out nothing: final refuses before training rather than report
    metrics on an empty split."""
    from llm_doe.search import main as search

    args = ["+study=smoke", *TINY, *store_args(tmp_path, "nt"), "data.test_size=0", "study.n_trials=1"]
    assert search(args) == 0
    out = tmp_path / "export"
    assert final([*args, f"final.output_dir={out}"]) == 2
    assert "data.test_size: is 0 in study 'nt'" in _one_line_error(capsys)
    assert not out.exists()


def test_a_decoder_classifiers_test_metrics_do_not_depend_on_the_test_batch(tmp_path):
    """A GPT-2 classifier pools on the last token that is not its pad id (here 2, not 0): the
    final test pads with the tokenizer's pad id, so batches of 16 and of 1 give the same test
    figures (padding with 0 pooled on a pad position and moved every padded example)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from llm_doe.finetune.model import resolve
    from llm_doe.search import main as search

    folder = tmp_path / "gpt2-cls"
    tokenizer = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    tokenizer.pad_token = "[unused1]"  # id 2: a token no tweet holds
    torch.manual_seed(0)
    GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2, num_labels=2,
        pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id == 2

    args = ["+study=smoke", *TINY, *store_args(tmp_path, "gpt2"), "model=hf", f"model.name_or_path={folder}",
            "data.train_size=64", "data.val_size=32", "data.test_size=64", "study.n_trials=1"]
    assert search(args) == 0
    figures = []
    for batch in (16, 1):
        out = tmp_path / f"export{batch}"
        assert final([*args, f"train.eval_batch_size={batch}", f"final.output_dir={out}"]) == 0
        figures.append(json.loads((out / "test_metrics.json").read_text()))
    for key in ("test_loss", "accuracy", "roc_auc"):
        assert figures[0][key] == pytest.approx(figures[1][key], abs=1e-5), key


def test_a_student_distils_from_an_exported_teacher_and_its_final_model_trains_as_its_trial_did(study, capsys):
    """distill_effect's chain on the tiny model: lr_sweep's export is the teacher of a study whose
    trials distil from it on augmented data; the final model distils and augments as they did."""
    from llm_doe.finetune import distill
    from llm_doe.search import main as search

    args, tmp = study["args"], study["tmp"]
    teacher = tmp / "teacher"
    assert final([*args, f"final.output_dir={teacher}"]) == 0
    student = [a for a in args if not a.startswith(("study.name", "storage.url", "+study"))]
    student = ["+study=smoke", *student, *store_args(tmp, "kd"), f"distill.teacher={teacher}", "distill.alpha=0.5",
               f"distill.cache_dir={tmp}/cache", "augment.method=swap", "augment.copies=1", "study.n_trials=1"]
    distill.clear_memory()
    before = distill.forwarded_examples()
    assert search(student) == 0
    forwarded = distill.forwarded_examples() - before
    assert 160 < forwarded <= 2 * 160  # the distinct training texts and copies (a swap may change nothing), once
    trial = optuna.load_study(study_name="kd", storage=f"sqlite:///{tmp}/kd.db").trials[0]
    assert trial.user_attrs["config.distill.teacher"] == str(teacher) and trial.user_attrs["examples_seen"] == 320
    capsys.readouterr()
    assert final([*student, f"final.output_dir={tmp}/student"]) == 0
    assert distill.forwarded_examples() - before == forwarded  # the final model read the cache
    metrics = json.loads((tmp / "student" / "test_metrics.json").read_text())
    assert metrics["n_train"] == 320 and "augmented copies (320 in all)" in capsys.readouterr().out
    assert metrics["optimizer_steps"] == metrics["max_steps"] <= metrics["schedule_steps"] == 20  # the trial's schedule
