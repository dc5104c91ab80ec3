"""End to end: real tiny fine-tuning trials in a real SQLite study."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from llm_doe.cli import compose_config
from llm_doe.finetune.data import load_splits
from llm_doe.finetune.runtime import resolve_runtime
from tests.conftest import TINY, load, run_cli, store_args

DIVERGE_STUDY = """# @package _global_
defaults:
  - override /model: tiny
study:
  name: diverge
  n_trials: 3
  space:
    train.learning_rate: {type: categorical, choices: [3.0e-3, 1.0e+6]}
"""


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.trials]


def test_tiny_study_completes_with_values_params_and_artifacts(search, tmp_path):
    assert search("study.n_trials=4", "pruner=none") == 0
    study = load(tmp_path)
    assert _states(study) == [TrialState.COMPLETE] * 4
    assert len({t.params["train.learning_rate"] for t in study.trials}) == 4
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # one report per evaluation
        assert trial.value == pytest.approx(min(trial.intermediate_values.values()))  # best val loss
        for name in ("val_loss", "accuracy", "f1", "roc_auc", "train_samples_per_second", "time_to_first_step_s",
                     "train_time_s", "eval_time_s", "optimizer_steps", "examples_seen", "peak_memory_mb"):
            assert name in trial.user_attrs, name
        assert trial.user_attrs["examples_seen"] == 160
        assert trial.user_attrs["train_precision"] == resolve_runtime("cpu", "auto").precision  # what auto chose here
        assert trial.user_attrs["config.train.learning_rate"] == trial.params["train.learning_rate"]
        assert trial.user_attrs["config.model.kind"] == "tiny"
        names = {meta.filename for meta in get_all_artifact_meta(trial, storage=study._storage)}
        assert names == {"config.yaml", "metrics.jsonl", "roc.csv", "roc.png"}
    # the files are really in the artifact store
    assert len(list((tmp_path / "art").iterdir())) == 16
    prov = study.user_attrs["provenance"]
    assert "llm_doe.search" in prov["command"] and prov["versions"]["optuna"] == optuna.__version__
    assert study.user_attrs["config"]["study"]["name"] == "t"
    assert "train.learning_rate" in study.user_attrs["space"]
    # What a person reads in the dashboard's attribute table (JSON "space"/"config" are for code);
    # that they come first there (its first page of 5 rows), test_browser checks on the page.
    assert {"goal", "best", "setup", *(f"space:{p}" for p in study.user_attrs["space"])} <= set(study.user_attrs)
    assert study.user_attrs["goal"] == "minimize val_loss"
    assert study.user_attrs["best"] == f"val_loss {study.best_value:.4g} (trial #{study.best_trial.number})"
    assert study.user_attrs["space:train.learning_rate"] == "float 0.0001 .. 0.003 (log)"
    assert study.user_attrs["setup"].startswith("Model tiny-bert, data tweets (160 train / 64 val), 1 epoch(s)")
    totals = study.user_attrs["totals"]
    assert totals["examples_seen"] == 4 * 160 and totals["trials"] == 4
    assert totals["optimizer_steps"] == sum(t.user_attrs["optimizer_steps"] for t in study.trials)


def test_search_never_reads_the_test_split(search):
    cfg = compose_config(["+study=smoke", *TINY]).config
    splits = load_splits(cfg.data)  # the per-process cache the search uses
    before = splits.test_reads  # other tests in this process (final) may have read it
    assert search("study.n_trials=2") == 0
    assert load_splits(cfg.data) is splits and splits.test_reads == before


def test_aggressive_pruner_prunes(search, tmp_path):
    assert search("study.n_trials=6", "train.evals_per_epoch=4", "pruner=percentile", "pruner.percentile=1",
                  "pruner.n_startup_trials=1", "pruner.n_warmup_steps=0") == 0
    study = load(tmp_path)
    states = _states(study)
    assert states.count(TrialState.PRUNED) >= 2, states
    assert states.count(TrialState.PRUNED) + states.count(TrialState.COMPLETE) == 6
    for trial in study.get_trials(states=(TrialState.PRUNED,)):
        assert len(trial.intermediate_values) < 4
        assert trial.user_attrs["stop_reason"] == "stopped_by_report"
        assert get_all_artifact_meta(trial, storage=study._storage)  # pruned trials keep their files


def test_rerun_resumes_to_the_total_and_a_finished_study_runs_nothing(search, tmp_path, capsys):
    assert search("study.n_trials=2") == 0
    assert search("study.n_trials=3") == 0
    assert len(load(tmp_path).trials) == 3
    capsys.readouterr()
    assert search("study.n_trials=3") == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(load(tmp_path).trials) == 3


def test_resume_with_another_space_is_refused(search, tmp_path, capsys):
    assert search("study.n_trials=1") == 0
    assert search("++study.space={train.weight_decay:{type:float,low:0.0,high:0.1}}") == 2
    assert "study.space: differs from the space" in capsys.readouterr().err


def test_diverging_trials_fail_with_a_reason_and_the_study_goes_on(tmp_path):
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "diverge.yaml").write_text(DIVERGE_STUDY)
    args = ["+study=diverge", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *TINY, *store_args(tmp_path, "d"),
            "sampler=grid", "study.max_failures=3"]
    proc = run_cli(args, cwd=tmp_path)
    study = load(tmp_path, "d")
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert failed and complete, proc.stdout + proc.stderr
    for trial in failed:
        assert trial.params["train.learning_rate"] == 1e6
        assert trial.user_attrs["fail_reason"].startswith("diverged: non-finite")
        assert get_all_artifact_meta(trial, storage=study._storage)  # the config of a failure is kept
    assert all(t.params["train.learning_rate"] == 3e-3 for t in complete)


def test_too_many_failures_stop_the_study_with_a_message(tmp_path):
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "diverge.yaml").write_text(DIVERGE_STUDY.replace("3.0e-3, 1.0e+6", "1.0e+6, 1.0e+7"))
    proc = run_cli(["+study=diverge", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *TINY,
                    *store_args(tmp_path, "d"), "study.max_failures=2", "study.n_trials=5"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "stopped: 2 trials failed" in proc.stdout
    assert _states(load(tmp_path, "d")) == [TrialState.FAIL, TrialState.FAIL]


def test_interrupted_study_resumes_to_exactly_n_trials(tmp_path):
    """SIGINT (Ctrl-C) mid-study; the same command again ends with exactly n_trials finished."""
    args = ["+study=smoke", *TINY, *store_args(tmp_path), "study.n_trials=5", "pruner=none",
            "data.train_size=400", "train.evals_per_epoch=4"]
    proc = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Interrupt mid-trial: two trials done and a third one that has reported its first evaluation.
    # (Right after a trial completes the next one may not have started; a Ctrl-C then interrupts no trial.)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            trials = load(tmp_path).trials
        except Exception:  # the store may not exist yet
            continue
        finished = sum(t.state == TrialState.COMPLETE for t in trials)
        if finished >= 2 and any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
            break
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    study = load(tmp_path)
    done_before = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert 2 <= done_before < 5
    assert all(t.state != TrialState.RUNNING for t in study.trials)  # the interrupted trial is not left RUNNING
    totals = study.user_attrs.get("totals")  # written on the way out, not only by the next full run
    assert totals is not None and totals["trials"] == len(study.trials), totals
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert len(interrupted) == 1 and interrupted[0].user_attrs["requeued"] is True
    # What it says, and what the trial records, count optimizer steps, both named so.
    step = int(re.fullmatch(r"interrupted at optimizer step (\d+); re-queued to resume from its checkpoint",
                            interrupted[0].user_attrs["fail_reason"]).group(1))
    assert (f"interrupted (SIGINT): trial {interrupted[0].number} was checkpointed at optimizer step {step} and "
            "re-queued to resume from there") in out, out

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = load(tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    # A clean Ctrl-C is not a failure of the space: counted apart, no warning.
    from llm_doe import analysis

    table = analysis.load_trials(f"sqlite:///{tmp_path}/t.db")
    report = analysis.failure_report(table)
    assert (report["failed"], report["requeued"]) == (0, 1), report
    assert not any("failed" in w for w in analysis.study_warnings(table))
    # Its re-queued successor resumed the checkpoint it left (same origin trial: same identity).
    origin = interrupted[0]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == origin.number)
    assert retry.state == TrialState.COMPLETE
    assert origin.intermediate_values
    assert retry.user_attrs["resumed_from_optimizer_step"] == step  # the unit of the fail_reason


def _files(folder) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (SQLite's transient -wal/-shm left out)."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _settle(db) -> None:
    """Fold SQLite's write-ahead log into the database file, so its bytes are the study's."""
    import gc
    import sqlite3

    gc.collect()  # the in-process run's engines
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.fixture
def lr_study(tmp_path):
    """A one-trial tiny ``lr_sweep`` stored in tmp_path/lr.db: its command and the store's files."""
    from llm_doe.search import main

    args = ["+study=lr_sweep", *TINY, *store_args(tmp_path, "lr"), "pruner=none"]
    assert main([*args, "study.n_trials=1"]) == 0
    _settle(tmp_path / "lr.db")
    return args


@pytest.mark.parametrize("override, key, stored, requested", [
    ("study.metric=accuracy", "study.metric", "val_loss", "accuracy"),
    ("study.direction=maximize", "study.direction", "minimize", "maximize"),
    ("train.num_epochs=2", "train.num_epochs", 1, 2),
    ("data.train_size=100", "data.train_size", 160, 100),
    ("model.hidden_size=32", "model.hidden_size", 64, 32),
])
def test_resume_as_another_experiment_exits_2_and_writes_nothing(lr_study, tmp_path, capsys, override, key, stored,
                                                                  requested):
    """Resuming with another metric, direction or non-searched setting would mix two experiments
    in one study (the pruner and best_trial comparing them): one line, exit 2, not a byte written."""
    from llm_doe.search import main

    before = _files(tmp_path)
    capsys.readouterr()
    assert main([*lr_study, override, "study.n_trials=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"llm_doe: error: {key}: is {requested!r} here but {stored!r} in study 'lr'"), err
    assert "use another study.name" in err
    assert _files(tmp_path) == before  # the store's bytes included (sha256)
    study = load(tmp_path, "lr")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and len(study.trials) == 1


def test_resume_with_other_runtime_settings_is_accepted(lr_study, tmp_path):
    """Where and how fast trials run, how many there are and how they are searched may change."""
    from llm_doe.search import prepare

    composed = compose_config([*lr_study, "workers=2", "runtime.num_threads=2", "runtime.device=cpu",
                               "study.n_trials=12", "storage.heartbeat_interval=5", "storage.grace_period=20",
                               "pruner=median", "sampler.seed=7", "train.eval_batch_size=8", "study.timeout=60"])
    prepare(composed)  # no ConfigError


def test_resume_of_a_scientific_study_checks_each_sub_study(tmp_path, capsys):
    from llm_doe.search import main, prepare

    space = ("++study.space={train.weight_decay:{role:scientific,type:categorical,choices:[0.0,0.1]},"
             "train.learning_rate:{role:nuisance,type:float,low:1.0e-4,high:3.0e-3,log:true}}")
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "wd"), space, "pruner=none", "study.n_trials=2"]
    assert main(args) == 0
    prepare(compose_config(args))  # the same experiment: each sub-study's scientific value is its own
    capsys.readouterr()
    assert main([*args, "train.num_epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "train.num_epochs: is 2 here but 1 in study 'wd[train.weight_decay=0.0]'" in err, err



def _train_smoke(tmp_path, folder, stop_after: int | None = None, **identity):
    """A tiny smoke trial's training (10 optimizer steps, evaluations at 5 and 10) with its
    checkpoints in ``folder``; stopped as by Ctrl-C after ``stop_after`` steps; ``identity``
    (``checkpoint_identity=...``, if given) stamped on its checkpoints."""
    from llm_doe.finetune.checkpoint import CheckpointPlan
    from llm_doe.finetune.loop import Hooks, TrainData, train
    from llm_doe.finetune.tasks import get_task

    cfg = compose_config(["+study=smoke", *TINY, *store_args(tmp_path)]).config
    task = get_task(cfg.task)
    prepared = task.prepare(cfg.model, cfg.data)
    model = prepared.factory.build(cfg.train.seed, cfg.model.dropout)
    steps = iter(range(1, 100))
    stop = None if stop_after is None else (lambda: next(steps) >= stop_after)
    return train(model, task, TrainData(prepared.train, prepared.val, prepared.pad_id), cfg.train,
                 resolve_runtime("cpu", cfg.train.precision), hooks=Hooks(should_stop=stop),
                 checkpoint=CheckpointPlan(folder, identity=identity.get("checkpoint_identity")))


def _interrupt(tmp_path, folder, **identity) -> None:
    import shutil

    from llm_doe.finetune.loop import Interrupted

    shutil.rmtree(folder, ignore_errors=True)
    with pytest.raises(Interrupted):
        _train_smoke(tmp_path, folder, stop_after=6, **identity)
    assert (folder / "checkpoint.pt").is_file()


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path, caplog):
    folder = tmp_path / "ck" / "3"
    mine = {"study": "t", "study_uuid": "a" * 32, "trial": 3, "params": {"train.learning_rate": 1e-3}}
    _interrupt(tmp_path, folder, checkpoint_identity=mine)
    # The same identity (a re-queued trial names its origin trial): resumed at optimizer step 6.
    assert _train_smoke(tmp_path, folder, checkpoint_identity=mine).resumed_from_optimizer_step == 6
    for other in ({**mine, "study_uuid": "b" * 32},  # a study recreated under the same name
                  {**mine, "trial": 4}, {**mine, "params": {"train.learning_rate": 2e-3}}):
        _interrupt(tmp_path, folder, checkpoint_identity=mine)
        caplog.clear()
        result = _train_smoke(tmp_path, folder, checkpoint_identity=other)
        assert result.resumed_from_optimizer_step == 0 and len(result.history) == 2
        assert "ignoring and deleting the checkpoint" in caplog.text


def test_a_recreated_study_does_not_resume_a_checkpoint_left_behind(search, tmp_path):
    """The store deleted, ``checkpoints/0/`` left behind by a killed trial: the new study's
    trial 0 trains from scratch instead of resuming another run's weights and history."""
    _interrupt(tmp_path, tmp_path / "ck" / "0")  # a checkpoint the new study did not write
    assert search("study.n_trials=1", "pruner=none", "runtime.checkpoint_every_s=0") == 0
    trial = load(tmp_path).trials[0]
    assert trial.state == TrialState.COMPLETE
    assert "resumed_from_optimizer_step" not in trial.user_attrs
    assert sorted(trial.intermediate_values) == [1, 2]
