"""Signals: Ctrl-C and SIGTERM say what they did, never a traceback, and reach every worker."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from llm_doe import objective as objective_module
from llm_doe import search as search_module
from llm_doe import study as study_module
from llm_doe.search import main
from tests.conftest import TINY, load, store_args


def _signal_once(monkeypatch, module, name):
    """``module.name`` as it is, followed the first time by a SIGINT to this process."""
    real, sent = getattr(module, name), []

    def then_sigint(*args, **kwargs):
        value = real(*args, **kwargs)
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)
        return value

    monkeypatch.setattr(module, name, then_sigint)


def _main(args):
    try:
        return main(args)
    except KeyboardInterrupt:  # would end the pytest session itself
        pytest.fail("a KeyboardInterrupt escaped the command (a raw traceback for the user)")


def test_a_ctrl_c_as_a_trial_completes_does_not_claim_a_re_queue(tmp_path, capsys, monkeypatch):
    # The signal arrives while trial 0 records its results: it completes, and no trial runs after.
    _signal_once(monkeypatch, objective_module, "upload_trial_artifacts")
    code = _main(["+study=smoke", *TINY, *store_args(tmp_path), "pruner=none"])
    out = capsys.readouterr().out
    assert code == 130, out
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # nothing re-queued, nothing waiting
    assert "interrupted (SIGINT): no trial was running, so none was re-queued" in out, out
    assert "checkpointed" not in out


def test_ctrl_c_during_start_up_is_one_line(tmp_path, capsys, monkeypatch):
    # While the data and weights load and the PEFT methods are checked, before any trial.
    monkeypatch.setattr(search_module, "check_peft", lambda *a: signal.raise_signal(signal.SIGINT))
    code = _main(["+study=smoke", *TINY, *store_args(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err.startswith("llm_doe: interrupted (SIGINT)") and "\n" not in err, err


def test_a_second_ctrl_c_while_shutting_down_is_one_line(tmp_path, capsys, monkeypatch):
    _signal_once(monkeypatch, objective_module, "upload_trial_artifacts")  # the first: the run stops
    _signal_once(monkeypatch, study_module, "record_totals")  # the second, while it records its totals
    code = _main(["+study=smoke", *TINY, *store_args(tmp_path), "pruner=none"])
    captured = capsys.readouterr()
    assert code == 130, captured
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.strip().startswith("llm_doe: interrupted (SIGINT)")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_to_the_parent_alone_stops_every_worker_and_re_queues_their_trials(tmp_path, signum):
    """``kill -INT <parent>`` (a tool that signals the main pid only): the workers checkpoint,
    re-queue and stop; the parent exits as a Ctrl-C does, and its summary counts no failure. A
    closed terminal (SIGHUP, which reaches the parent alone: the workers have groups of their
    own) stops them the same way, as SIGTERM."""
    args = ["+study=smoke", *TINY, *store_args(tmp_path), "workers=2", "study.n_trials=6", "pruner=none",
            "data.train_size=400", "train.evals_per_epoch=4", "runtime.checkpoint_every_s=0"]
    parent = subprocess.Popen([sys.executable, "-m", "llm_doe.search", *args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and parent.poll() is None:
        time.sleep(0.3)
        try:
            trials = load(tmp_path).trials
        except Exception:
            continue
        if any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
            break
    assert parent.poll() is None, "the study ended before it could be interrupted"
    parent.send_signal(signum)
    out, _ = parent.communicate(timeout=120)
    assert parent.returncode == (130 if signum == signal.SIGINT else 143), out[-3000:]
    study = load(tmp_path)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) < 6  # the workers did not run on to the end
    requeued = [t for t in study.get_trials(states=(TrialState.FAIL,)) if t.user_attrs.get("requeued")]
    assert requeued and len(study.get_trials(states=(TrialState.WAITING,))) == len(requeued)
    summary = re.search(r"workers done: .*", out)
    assert summary and f", 0 failed, {len(requeued)} re-queued" in summary.group(0), out[-3000:]
