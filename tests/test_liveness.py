"""Dead workers on stores without heartbeats: who runs a trial, whether that process lives, and
failing and re-queueing its trial. (A whole search around them: test_runner, test_workers.)"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import llm_doe.liveness
from llm_doe.liveness import fail_and_requeue, fail_dead_workers, unverifiable_trials, worker_alive, worker_attrs
from tests.conftest import quiet_optuna


def test_worker_alive_tells_dead_and_reused_pids_on_this_host(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/w.db", study_name="w")
    host = platform.node()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()

    def trial_with(attrs: dict) -> optuna.trial.FrozenTrial:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return study.trials[trial.number]

    me = worker_attrs()
    assert me["worker"] == f"{host}:{os.getpid()}" and isinstance(me["worker_started"], int)
    assert worker_alive(trial_with(me)) is True
    assert worker_alive(trial_with({**me, "worker_started": me["worker_started"] - 1})) is False  # pid reused
    assert worker_alive(trial_with({"worker": f"{host}:{child.pid}"})) is False
    assert worker_alive(trial_with({"worker": f"elsewhere.{host}:{os.getpid()}"})) is None
    assert worker_alive(trial_with({})) is None


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_workers_trial_is_failed_and_requeued_with_its_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_doe.liveness, "STARTING_S", 0.0)  # the trials have long recorded their workers
    quiet_optuna()
    study = optuna.create_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    dead = study.ask()
    dead.suggest_float("lr", 1e-4, 1e-2, log=True)
    dead.report(0.5, 1)
    dead.set_user_attr("worker", f"{platform.node()}:{_dead_pid()}")
    alive = study.ask()
    alive.set_user_attr("worker", f"{platform.node()}:{os.getpid()}")
    foreign = study.ask()
    foreign.set_user_attr("worker", "gone-host:4242")

    assert [t.number for t in unverifiable_trials(study)] == [2]  # another host: this one cannot tell
    assert fail_dead_workers(study, max_retry=None) == [0]
    trials = study.trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].endswith("gone; re-queued")
    assert trials[1].state == TrialState.RUNNING  # alive: left alone
    requeued = trials[-1]
    assert requeued.state == TrialState.WAITING and requeued.params == trials[0].params
    assert requeued.system_attrs.get("failed_trial") == 0  # Optuna's retry bookkeeping
    assert fail_and_requeue(study, [0]) == []  # finished already: nothing to do
    assert fail_and_requeue(study, [2]) == [2]  # the lost host's way out, by hand
    assert study.trials[2].state == TrialState.FAIL


def test_rdb_stores_fail_dead_workers_themselves(tmp_path):
    quiet_optuna()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=60)
    study = optuna.create_study(study_name="h", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", f"{platform.node()}:{_dead_pid()}")
    assert fail_dead_workers(study, max_retry=None) == [] and unverifiable_trials(study) == []
