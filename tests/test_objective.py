"""The Optuna objective on its own: one trial of the tiny model on a real SQLite study, driven by
``study.optimize`` as a worker drives it; what the trial records. (The whole search, workers and
resumes included, is tested end to end in test_search and test_runner.)"""

from __future__ import annotations

import optuna
import pytest
import torch

from llm_doe.artifacts import artifact_store
from llm_doe.cli import compose_config
from llm_doe.finetune.loop import Diverged
from llm_doe.objective import Objective, TrialFailed
from llm_doe.space import build_space
from tests.conftest import TINY, quiet_optuna, store_args


@pytest.fixture
def objective(tmp_path):
    quiet_optuna()
    composed = compose_config(["+study=smoke", *TINY, *store_args(tmp_path)])
    space = build_space(composed.config.study.space)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/t.db", study_name="t")
    return study, Objective(composed.dict_config, space, artifact_store(tmp_path / "art"), n_trials=1)


def test_a_trial_records_its_value_metrics_config_and_worker(objective):
    study, run = objective
    study.optimize(run, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    attrs = trial.user_attrs
    assert trial.value == attrs["val_loss"]  # the study's metric at the best evaluation
    assert {"accuracy", "f1", "roc_auc", "best_step", "stop_reason", "duration_s", "worker"} <= set(attrs)
    assert attrs["stop_reason"] == "completed" and len(trial.intermediate_values) == 2  # evals_per_epoch=2
    # the sampled value and the rest of the trial's own config, one attribute per key
    assert attrs["config.train.learning_rate"] == trial.params["train.learning_rate"]
    assert attrs["config.model.kind"] == "tiny" and attrs["config.data.labels"] == str(["negative", "positive"])
    assert not any(k.startswith(("config.storage", "config.sampler")) for k in attrs)  # recorded on the study


def test_a_trial_beyond_the_study_total_is_surplus_and_does_not_run(objective):
    study, run = objective
    study.enqueue_trial({"train.learning_rate": 1e-3})
    study.ask()  # another worker's trial, still running: it covers the total of 1
    study.optimize(run, n_trials=1, catch=(TrialFailed,))
    surplus = study.trials[-1]
    assert surplus.state == optuna.trial.TrialState.FAIL and surplus.user_attrs["surplus"] is True
    assert surplus.user_attrs["fail_reason"] == "surplus: 1 trials were already running or done"
    assert "val_loss" not in surplus.user_attrs


@pytest.mark.parametrize(("error", "reason"), [
    (Diverged("non-finite loss at step 7"), "diverged: non-finite loss at step 7"),
    (torch.OutOfMemoryError("CUDA out of memory.\nTried to allocate"), "out of memory: CUDA out of memory."),
    (ValueError("bad\nsecond line"), "ValueError: bad"),
    (RuntimeError(), "RuntimeError"),
])
def test_fail_reasons_are_one_line(error, reason):
    assert Objective._fail_reason(error) == reason


def test_a_trial_that_learned_nothing_is_recorded_and_warned(search, tmp_path, capsys):
    """At a learning rate of ~1e-9 the tiny model stays its random init and predicts one class:
    the trial records predicted_classes=1, the log says so once, as what the tiny model does (issue
    22 A10: not an alarm on every trial of an install check), and the note and the report count it."""
    import llm_doe as doe
    from llm_doe.notes import study_note
    from llm_doe.report import render_report

    space = "++study.space={train.learning_rate:{type:float,low:1.0e-9,high:2.0e-9,log:true}}"
    assert search("study.n_trials=2", space, name="flat") == 0
    out = capsys.readouterr().out
    assert "learned nothing" not in out
    assert out.count("shows no learning (predicted_classes=1): expected of model=tiny") == 1
    url = f"sqlite:///{tmp_path}/flat.db"
    study = optuna.load_study(study_name="flat", storage=url)
    assert [t.user_attrs["predicted_classes"] for t in study.trials] == [1, 1]
    table = doe.load_trials(url, "flat")
    warning = "2 of 2 finished trials learned nothing (#0, #1)"
    assert any(w.startswith(warning) for w in doe.study_warnings(table))
    assert warning in study_note(table) and warning in render_report(url, "flat")


def test_a_searched_augmentation_reaches_the_trial_and_its_copies_count_as_examples_seen(search, tmp_path):
    # copies is searched: 0 added copies are not allowed, so compare 1 and 2 copies with none (fixed).
    assert search("data.train_size=48", "data.val_size=16", "study.n_trials=1", name="plain") == 0
    space = "++study.space={augment.copies:{type:categorical,choices:[1,2]}}"
    assert search("data.train_size=48", "data.val_size=16", "study.n_trials=3", "augment.method=[swap,char]",
                  "augment.p=0.3", space, name="aug") == 0
    plain = optuna.load_study(study_name="plain", storage=f"sqlite:///{tmp_path}/plain.db").trials[0]
    assert plain.user_attrs["examples_seen"] == 48
    for trial in optuna.load_study(study_name="aug", storage=f"sqlite:///{tmp_path}/aug.db").trials:
        copies = trial.params["augment.copies"]
        assert trial.user_attrs["examples_seen"] == 48 * (1 + copies)
        assert trial.user_attrs["config.augment.method"] == "['swap', 'char']"


def save_classifier(folder, labels):
    """The tiny BERT saved as a classifier with these labels and its tokenizer (as ``final`` exports)."""
    from llm_doe.finetune.model import load_tokenizer, model_factory
    from tests.finetune.conftest import TINY_MODEL

    tokenizer, _ = load_tokenizer(TINY_MODEL)
    model = model_factory(TINY_MODEL, len(labels)).build(7, 0.1)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {n: i for i, n in enumerate(labels)}
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("teacher"), ["negative", "positive"])


def test_the_teacher_forwards_once_per_study_and_every_trial_records_it(search, tmp_path, teacher_folder):
    from llm_doe.finetune import distill

    distill.clear_memory()
    before = distill.forwarded_examples()
    space = "++study.space={distill.alpha:{type:categorical,choices:[0.0,0.5,0.9]}}"
    args = ["data.train_size=48", "data.val_size=16", f"distill.teacher={teacher_folder}",
            f"distill.cache_dir={tmp_path}/cache", space]
    assert search(*args, "study.n_trials=2", name="kd") == 0
    assert distill.forwarded_examples() - before == 48  # 2 trials, one pass over the training texts
    distill.clear_memory()  # a resumed study in a new process reads the cache from disk
    assert search(*args, "study.n_trials=3", name="kd") == 0
    assert distill.forwarded_examples() - before == 48
    trials = optuna.load_study(study_name="kd", storage=f"sqlite:///{tmp_path}/kd.db").trials
    assert len(trials) == 3 and all(t.user_attrs["config.distill.teacher"] == teacher_folder for t in trials)


@pytest.mark.parametrize(("labels", "says"), [(["spam", "ham"], "names its labels"),
                                              (["negative", "neutral", "positive"], "predicts 3 labels"),
                                              (None, "no such folder")])
def test_a_bad_teacher_is_refused_before_anything_is_written(search, tmp_path, capsys, labels, says):
    folder = save_classifier(tmp_path / "teacher", labels) if labels else f"{tmp_path}/missing"
    space = "++study.space={distill.teacher:{type:categorical,choices:[null," + folder + "]}}"
    assert search("data.train_size=48", "data.val_size=16", space, name="bad") == 2  # a searched teacher too
    err = capsys.readouterr().err
    assert "llm_doe: error: distill.teacher: " in err and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.db").exists() and not (tmp_path / "art").exists()
