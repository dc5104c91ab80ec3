"""Many workers on one study: SQLite and a real PostgreSQL server, SIGKILL, exact totals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from llm_doe.schema import StorageConfig
from llm_doe.storage import make_storage
from llm_doe.study import _rdb_bulk_upsert, set_user_attrs
from tests.conftest import TINY, load, run_cli, store_args
from tests.pg import postgres_server

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FAST_HEARTBEAT = ["storage.heartbeat_interval=1", "storage.grace_period=3"]
EVERY_EVAL = "runtime.checkpoint_every_s=0"  # tiny trials are shorter than the default 30 s


def _check_exact(study: optuna.Study, n: int) -> None:
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == n, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert len({t.number for t in finished}) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in finished:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps, (trial.number, steps)  # every value present
    for trial in study.get_trials(states=(TrialState.FAIL,)):
        assert "locked" not in trial.user_attrs.get("fail_reason", ""), trial.user_attrs


def _storage(tmp_path: Path, kind: str) -> optuna.storages.BaseStorage:
    if kind == "journal":
        return make_storage(StorageConfig(kind="journal", journal_path=str(tmp_path / "s.journal")))
    return make_storage(StorageConfig(url=f"sqlite:///{tmp_path}/s.db", heartbeat_interval=None))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_set_user_attrs_stores_what_one_call_per_key_stores(tmp_path, kind):
    study = optuna.create_study(storage=_storage(tmp_path, kind), study_name="attrs")
    attrs = {"config.train.learning_rate": 3e-4, "config.model.kind": "tiny", "optimizer_steps": 25,
             "resumed": True, "nothing": None, "config.data.labels": "['negative', 'positive']", "uni": "é ✓"}
    one_by_one, bulk = study.ask(), study.ask()
    for key, value in attrs.items():
        one_by_one.set_user_attr(key, value)
    bulk.set_user_attr("optimizer_steps", -1)  # an existing key is overwritten, as set_user_attr does
    set_user_attrs(bulk, attrs)
    set_user_attrs(bulk, {})
    study.tell(one_by_one, 1.0)
    study.tell(bulk, 1.0)
    stored = optuna.load_study(study_name="attrs", storage=_storage(tmp_path, kind)).trials
    assert stored[0].user_attrs == stored[1].user_attrs == attrs
    assert bulk.user_attrs == attrs  # the live trial sees them, as after Trial.set_user_attr
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # as Optuna's own setter
        set_user_attrs(bulk, {"late": 1})
    # SQLite takes the one-statement path; a journal has no tables to upsert into.
    assert _rdb_bulk_upsert(study.ask(), {"x": 1}) is (kind == "sqlite")


def test_four_workers_on_sqlite_reach_the_exact_total_without_lock_failures(tmp_path):
    proc = run_cli(["+study=smoke", *TINY, *store_args(tmp_path), "workers=4", "study.n_trials=12",
                    "pruner=median", "pruner.n_startup_trials=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = load(tmp_path)
    _check_exact(study, 12)
    workers = {t.user_attrs["worker"] for t in study.get_trials(states=FINISHED)}
    assert len(workers) >= 2, workers  # trials really ran in several processes
    rates = [t.params["train.learning_rate"] for t in study.get_trials(states=FINISHED)]
    assert len(set(rates)) == 12, rates  # no two workers share a sampler stream (each trial has its own)
    assert "[w0]" in proc.stdout and "[w3]" in proc.stdout
    for index in range(4):
        assert (tmp_path / "run" / f"worker-{index}" / "search.log").is_file()


def test_three_workers_on_postgres(tmp_path):
    with postgres_server() as server:
        url = server.url
        bare = url.replace(":s3cret-pw@", "@")  # the password comes from the environment
        env = {"LLM_DOE_DB_PASSWORD": "s3cret-pw"}
        args = ["+study=smoke", *TINY, "storage=postgres", f"storage.url={bare}", f"storage.artifacts_dir={tmp_path}/art",
                f"storage.checkpoints_dir={tmp_path}/ck", f"hydra.run.dir={tmp_path}/run", "study.name=pg",
                "workers=3", "study.n_trials=12"]
        proc = subprocess.run([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        study = optuna.load_study(study_name="pg", storage=url)
        _check_exact(study, 12)
        for trial in study.get_trials(states=FINISHED):  # written by one upsert per trial end on PostgreSQL
            assert trial.user_attrs["config.model.kind"] == "tiny" and trial.user_attrs["optimizer_steps"] > 0
        # the password is never printed, logged or stored
        assert "s3cret-pw" not in proc.stdout + proc.stderr
        logs = "".join(p.read_text() for p in (tmp_path / "run").rglob("*") if p.is_file())
        assert "s3cret-pw" not in logs
        assert "s3cret-pw" not in repr(study.user_attrs)
        assert all("s3cret-pw" not in repr(t.user_attrs) for t in study.trials)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_with_checkpoint(tmp_path: Path):
    try:
        study = load(tmp_path)
    except Exception:
        return None
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        checkpointed = (tmp_path / "ck" / str(trial.number) / "checkpoint.pt").is_file()
        if len(trial.intermediate_values) >= 1 and "worker" in trial.user_attrs and checkpointed:
            return trial
    return None


def test_sigkilled_worker_trial_resumes_from_its_checkpoint(tmp_path):
    args = ["+study=smoke", *TINY, *store_args(tmp_path), *FAST_HEARTBEAT, EVERY_EVAL, "workers=2", "study.n_trials=6",
            "pruner=none", "data.train_size=400", "train.evals_per_epoch=4"]
    parent = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = _wait_for(lambda: _running_with_checkpoint(tmp_path), 240, "a running trial with a checkpoint")
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    parent.communicate(timeout=600)

    again = run_cli(args, cwd=tmp_path)  # the same command: nothing lost, totals exact
    assert again.returncode == 0, again.stdout[-3000:]
    study = load(tmp_path)
    _check_exact(study, 6)
    dead = study.trials[victim.number]
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.get_trials(states=FINISHED) if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.params == victim.params
    # it resumed from the checkpoint (written in the background, so possibly one eval behind
    # the last value the dead worker reported): it did not start over
    assert 1 <= retry.user_attrs["resumed_from_optimizer_step"] < retry.user_attrs["optimizer_steps"]
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert (tmp_path / "ck").is_dir()  # checkpoints were written there (the victim was picked for one)
    assert not list((tmp_path / "ck").glob("*/checkpoint.pt"))  # and each was removed when its trial ended


def test_sigterm_checkpoints_requeues_and_resumes(tmp_path):
    args = ["+study=smoke", *TINY, *store_args(tmp_path), EVERY_EVAL, "study.n_trials=3", "pruner=none",
            "data.train_size=400",
            "train.evals_per_epoch=4", "runtime.log_every_steps=1"]
    proc = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = _wait_for(lambda: _running_with_checkpoint(tmp_path), 240, "a running trial with a checkpoint")
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before preemption
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "interrupted (SIGTERM)" in out
    study = load(tmp_path)
    assert study.trials[victim.number].state == TrialState.FAIL
    assert "re-queued to resume from its checkpoint" in study.trials[victim.number].user_attrs["fail_reason"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == victim.params

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    study = load(tmp_path)
    _check_exact(study, 3)
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_optimizer_step"] >= 1


def test_two_workers_on_a_journal_file(tmp_path):
    journal = tmp_path / "shared" / "j.journal"
    proc = run_cli(["+study=smoke", *TINY, *store_args(tmp_path), "storage=journal", f"storage.journal_path={journal}",
                    "workers=2", "study.n_trials=4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(journal))))
    _check_exact(study, 4)
    assert not (tmp_path / "t.db").exists()  # the journal, not SQLite, holds the study


def test_a_brief_server_outage_loses_nothing(tmp_path):
    """The PostgreSQL server restarts mid-trial: the trial waits it out and the study completes."""
    with postgres_server() as server:
        args = ["+study=smoke", *TINY, "storage=postgres", f"storage.url={server.url}",
                f"storage.artifacts_dir={tmp_path}/art", f"storage.checkpoints_dir={tmp_path}/ck",
                f"hydra.run.dir={tmp_path}/run", "study.name=outage", "study.n_trials=3", "pruner=none",
                "data.train_size=400", "train.evals_per_epoch=8", "storage.retry_seconds=60"]
        proc = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def running_trial():
            try:
                study = optuna.load_study(study_name="outage", storage=server.url)
            except Exception:
                return None
            return next((t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values), None)

        _wait_for(running_trial, 240, "a running trial")
        server.stop()
        time.sleep(4)
        server.start()
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        assert "study store unreachable" in out  # it noticed, waited, and went on
        assert "s3cret-pw" not in out
        study = optuna.load_study(study_name="outage", storage=server.url)
        _check_exact(study, 3)
        assert not study.get_trials(states=(TrialState.FAIL,))
