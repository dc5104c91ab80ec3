"""The trial loop across runs and workers: grids run each configuration once, resumed and
parallel samplers never replay a stream, and a dead worker never hangs a journal study."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import llm_doe.liveness
import llm_doe.study
from llm_doe.schema import SamplerConfig
from llm_doe.study import make_sampler
from tests.conftest import TINY, load, run_cli, store_args

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

GRID_STUDY = """# @package _global_
defaults:
  - override /model: tiny
  - override /sampler: grid
study:
  name: grid
  n_trials: 4
  space:
    train.learning_rate: {type: categorical, choices: [CHOICES]}
"""


def _grid_conf(tmp: Path, choices: str) -> str:
    conf = tmp / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "grid.yaml").write_text(GRID_STUDY.replace("CHOICES", choices))
    return f"hydra.searchpath=[file://{tmp / 'conf'}]"


def _rates(study: optuna.Study) -> list[float]:
    return [t.params["train.learning_rate"] for t in study.get_trials(states=FINISHED)]


def test_a_grid_smaller_than_n_trials_runs_each_configuration_once(tmp_path, capsys):
    from llm_doe.search import main

    args = ["+study=grid", _grid_conf(tmp_path, "1.0e-3, 2.0e-3"), *TINY, *store_args(tmp_path)]
    assert main([*args, "study.n_trials=4"]) == 0
    out = capsys.readouterr().out
    assert "grid exhausted: all 2 configurations ran; study.n_trials=4 is more than the grid" in out
    study = load(tmp_path)
    assert sorted(_rates(study)) == [1e-3, 2e-3]
    assert len(study.trials) == 2  # nothing ran twice, nothing was refused
    assert main([*args, "study.n_trials=4"]) == 0  # a rerun runs nothing either
    assert len(load(tmp_path).trials) == 2


def test_each_scientific_sub_study_ends_when_its_grid_is_exhausted(tmp_path, capsys):
    from llm_doe.search import main

    conf = _grid_conf(tmp_path, "1.0e-3, 2.0e-3")
    (tmp_path / "conf" / "study" / "grid.yaml").write_text(GRID_STUDY.replace(
        "train.learning_rate: {type: categorical, choices: [CHOICES]}",
        "train.weight_decay: {role: scientific, type: categorical, choices: [0.0, 0.1]}\n"
        "    train.learning_rate: {role: nuisance, type: categorical, choices: [1.0e-3, 2.0e-3]}"))
    assert main(["+study=grid", conf, *TINY, *store_args(tmp_path), "study.n_trials=6", "pruner=none"]) == 0
    out = capsys.readouterr().out
    for arm in ("t[train.weight_decay=0.0]", "t[train.weight_decay=0.1]"):
        assert f"grid exhausted: all 2 configurations ran; {arm}'s 3 trials are more than its grid" in out
        sub = optuna.load_study(study_name=arm, storage=f"sqlite:///{tmp_path}/t.db")
        assert sorted(_rates(sub)) == [1e-3, 2e-3] and len(sub.trials) == 2


def test_two_workers_on_a_grid_never_repeat_a_configuration(tmp_path):
    args = ["+study=grid", _grid_conf(tmp_path, "1.0e-3, 2.0e-3, 3.0e-3"), *TINY, *store_args(tmp_path),
            "workers=2", "study.n_trials=6"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = load(tmp_path)
    assert sorted(_rates(study)) == [1e-3, 2e-3, 3e-3], [(t.number, t.state, t.params) for t in study.trials]
    assert "grid exhausted: all 3 configurations ran" in proc.stdout


def test_grid_refuses_a_repeat_and_requeues_a_configuration_a_refused_trial_held(tmp_path):
    """The races of many workers, played out in order: a configuration held only by a refused
    trial is enqueued; once every one ran, a repeat is refused and the grid is exhausted."""
    from llm_doe.runner import grid_exhausted
    from llm_doe.space import suggest
    from llm_doe.study import grid_duplicate, grid_point

    space = {"train.learning_rate": optuna.distributions.CategoricalDistribution([1e-3, 2e-3, 3e-3])}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/g.db", study_name="g",
                                sampler=make_sampler(SamplerConfig(name="grid", seed=0), space))

    def run_one(refuse: bool = False) -> tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial | None]:
        """One trial through study.optimize (GridSampler stops the loop, as in the runner);
        the trial and the earlier trial it duplicates."""
        same = []

        def objective(trial: optuna.Trial) -> float:
            same.append(grid_duplicate(study, study.trials[trial.number], space))
            if refuse:
                trial.set_user_attr("surplus", True)
                raise RuntimeError("refused")
            suggest(trial, space)
            return 1.0

        study.optimize(objective, n_trials=1, catch=(RuntimeError,))
        return study.trials[-1], same[0]

    refused, _ = run_one(refuse=True)  # surplus: refused before it ran, so its configuration never ran
    orphan = grid_point(study, refused, space)
    assert run_one()[1] is None and run_one()[1] is None
    assert not grid_exhausted(study, space, waiting=0)  # GridSampler takes it as visited: enqueued
    assert grid_point(study, run_one()[0], space) == orphan
    assert sorted(_rates(study)) == [1e-3, 2e-3, 3e-3]
    assert grid_exhausted(study, space, waiting=0)
    _, same = run_one(refuse=True)  # the grid is used up: GridSampler hands out a visited one again
    assert same is not None and same.number in (1, 2, 3)


def _toy(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return (math.log(lr) + 7) ** 2 + trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.parametrize("name", ["random", "tpe", "qmc", "gp", "cmaes"])
def test_every_sampler_continues_its_sequence_when_resumed(tmp_path, name):
    """A new process (a new sampler object on the same seed) continues the study exactly where
    one uninterrupted process would have gone: no replay, and the seed still reproduces it."""
    cfg = SamplerConfig(name=name, seed=0, n_startup_trials=3)  # trial 2 a start-up draw, 3 a model one
    url = f"sqlite:///{tmp_path}/toy.db"
    for _ in range(2):  # two "runs" of 2 trials
        study = optuna.create_study(storage=url, study_name="resumed", sampler=make_sampler(cfg, {}),
                                    load_if_exists=True)
        study.optimize(_toy, n_trials=2)
    whole = optuna.create_study(storage=url, study_name="whole", sampler=make_sampler(cfg, {}))
    whole.optimize(_toy, n_trials=4)
    resumed = [t.params["lr"] for t in study.trials]
    assert len(set(resumed)) == 4, resumed
    assert resumed == [t.params["lr"] for t in whole.trials]


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_a_resumed_study_draws_new_learning_rates(search, tmp_path, sampler):
    assert search(f"sampler={sampler}", "study.n_trials=2", "pruner=none") == 0
    assert search(f"sampler={sampler}", "study.n_trials=4", "pruner=none") == 0
    rates = _rates(load(tmp_path))
    assert len(rates) == 4 and len(set(rates)) == 4, rates


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def test_a_trial_running_on_another_host_does_not_hang_a_journal_study(search, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(llm_doe.liveness, "STARTING_S", 0.0)  # the foreign trial has long recorded its worker
    journal = tmp_path / "j.journal"
    store = ["storage=journal", f"storage.journal_path={journal}"]
    assert search(*store, "study.n_trials=1") == 0
    study = optuna.load_study(study_name="t", storage=_journal(journal))
    foreign = study.ask()
    foreign.suggest_float("train.learning_rate", 1e-4, 3e-3, log=True)
    foreign.set_user_attr("worker", "gone-host:4242")
    capsys.readouterr()
    assert search(*store, "study.n_trials=2") == 0
    out = capsys.readouterr().out
    assert "not waiting for trial(s) 1: RUNNING in gone-host:4242 on another host" in out
    assert "run the same command on gone-host" in out

    llm_doe.study.fail_and_requeue(study, [1])  # the lost host's way out
    assert search(*store, "study.n_trials=2") == 0
    study = optuna.load_study(study_name="t", storage=_journal(journal))
    assert study.trials[1].state == TrialState.FAIL
    assert len(study.get_trials(states=FINISHED)) == 2
    assert study.get_trials(states=FINISHED)[-1].params == study.trials[1].params


def _running(journal: Path) -> optuna.trial.FrozenTrial | None:
    try:
        study = optuna.load_study(study_name="t", storage=_journal(journal))
    except Exception:
        return None
    return next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                 if t.intermediate_values and "worker" in t.user_attrs), None)


def test_a_sigkilled_worker_on_a_journal_is_requeued_on_resume(tmp_path):
    journal = tmp_path / "j.journal"
    args = ["+study=smoke", *TINY, *store_args(tmp_path), "storage=journal", f"storage.journal_path={journal}",
            "study.n_trials=3", "pruner=none", "data.train_size=400", "train.evals_per_epoch=4",
            "runtime.checkpoint_every_s=0"]
    proc = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    victim = None
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        victim = _running(journal)
    assert victim is not None, "no trial started"
    assert victim.user_attrs["worker"].endswith(f":{proc.pid}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)

    again = run_cli(args, cwd=tmp_path, timeout=120)  # hung forever before: the dead trial stayed RUNNING
    assert again.returncode == 0, again.stdout[-3000:]
    study = optuna.load_study(study_name="t", storage=_journal(journal))
    assert study.trials[victim.number].state == TrialState.FAIL
    assert "gone; re-queued" in study.trials[victim.number].user_attrs["fail_reason"]
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 3 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retry = next(t for t in finished if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.params == victim.params
    fresh = [t.params["train.learning_rate"] for t in finished if t is not retry]
    assert len(set(fresh + [victim.params["train.learning_rate"]])) == 3  # the resumed run drew a new rate


def test_a_trial_logs_progress_lines_when_its_output_goes_to_a_file(tmp_path):
    """Issue 22 A4: no progress bar when stdout and stderr are files (tqdm hides itself), so each
    trial logs a progress line every ``runtime.log_every_steps`` optimizer steps (and at least every
    ``runtime.log_every_s`` seconds): step, training loss, throughput and time so far."""
    args = ["+study=smoke", *[a for a in TINY if not a.startswith("runtime.progress")], *store_args(tmp_path),
            "study.n_trials=1", "runtime.progress=true", "runtime.log_every_steps=3", "runtime.log_every_s=0"]
    out = tmp_path / "out.log"
    with open(out, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, stdout=handle,
                              stderr=subprocess.STDOUT, timeout=300)
    text = out.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if line.startswith("trial 0: step ")]
    # 160 examples in batches of 16: 10 optimizer steps, a line at steps 3, 6 and 9.
    assert [line.split()[3] for line in lines] == ["3/10", "6/10", "9/10"], text
    assert all(re.search(r"train_loss [\d.]+, [\d.]+ examples/s, \d+ tokens/s, \d+s elapsed$", line)
               for line in lines), lines


_COUNTED_SEARCH = """
import sys
import llm_doe.finetune.data as data
import llm_doe.finetune.model as model
counts = {"encode": 0, "build_template": 0, "read_data": 0}
def counted(module, name, key):
    original = getattr(module, name)
    def call(*args, **kwargs):
        counts[key] += 1
        return original(*args, **kwargs)
    setattr(module, name, call)
counted(data, "encode", "encode")
counted(data, "load_frame", "read_data")
counted(model, "_tiny", "build_template")
from llm_doe.search import main
code = main(sys.argv[1:])
print("COUNTS", counts)
sys.exit(code)
"""


def test_later_trials_reuse_the_data_and_model_and_match_a_fresh_process(tmp_path):
    """Issue 22 A5: in one process the data is read and tokenised once and the model template built
    once, whatever the number of trials; and a trial that reuses them gives exactly what the same
    trial gives in a fresh process (the study resumed there)."""
    def run(name: str, n: int) -> str:
        args = ["+study=smoke", *TINY, *store_args(tmp_path, name), f"study.n_trials={n}", "pruner=none"]
        proc = subprocess.run([sys.executable, "-c", _COUNTED_SEARCH, *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return next(line for line in proc.stdout.splitlines() if line.startswith("COUNTS"))

    # train and validation tokenised once, one read, one template, for 3 trials
    assert run("one", 3) == "COUNTS {'encode': 2, 'build_template': 1, 'read_data': 1}"
    run("fresh", 1)
    run("fresh", 2)  # trial 1 in a new process
    run("fresh", 3)  # trial 2 in a new process
    one, fresh = load(tmp_path, "one"), load(tmp_path, "fresh")
    assert [t.params for t in one.trials] == [t.params for t in fresh.trials]
    assert [t.values for t in one.trials] == [t.values for t in fresh.trials]
    assert [t.intermediate_values for t in one.trials] == [t.intermediate_values for t in fresh.trials]
