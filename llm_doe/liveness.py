"""Dead workers on stores without heartbeats (journal): who runs a trial, whether that process
still lives, and failing and re-queueing the trials of the dead.

RDB stores do this themselves (Optuna's heartbeat fails a stale trial and its retry callback
re-queues it). A journal file has no heartbeat, so each trial records the process that runs it
(``worker``, ``worker_started``) and a worker on the same host checks it: a trial whose process
is gone is failed and re-queued as the heartbeat would; one on another host cannot be checked
and is reported instead (``unverifiable_trials``), with ``fail_and_requeue`` as the way out.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from llm_doe import optuna_compat as compat
from llm_doe.storage import retry_callback


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``); None where
    unknown or the process is a zombie (killed, not yet reaped: dead for our purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return None if fields[0] in ("Z", "X") else int(fields[19])  # field 3 is the state, 22 the start


def worker_attrs() -> dict[str, Any]:
    """The trial attributes that name its process: ``worker`` (host:pid) and, where the OS
    tells, ``worker_started``, so a later process with the same pid is not taken for it."""
    attrs: dict[str, Any] = {"worker": f"{platform.node()}:{os.getpid()}"}
    started = process_start(os.getpid())
    if started is not None:
        attrs["worker_started"] = started
    return attrs


def worker_alive(trial: optuna.trial.FrozenTrial) -> bool | None:
    """Whether the process running ``trial`` lives: True/False on this host, None when this
    host cannot tell (another host, or no ``worker`` recorded)."""
    worker = trial.user_attrs.get("worker")
    host, _, pid_text = str(worker or "").rpartition(":")
    if host != platform.node() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    if Path("/proc/self/stat").exists():
        started = process_start(pid)
        recorded = trial.user_attrs.get("worker_started")
        if started is None or (recorded is not None and started != recorded):
            return False  # a zombie, or the pid now belongs to another process
    return True


STARTING_S = 20.0  # a trial this young may not have recorded its worker yet: judged later


def _starting(trial: optuna.trial.FrozenTrial) -> bool:
    """Just started: a re-queued trial carries the attributes of the process it was copied
    from until its new worker records itself, a few milliseconds (or a busy second) later."""
    start = trial.datetime_start
    return start is not None and (_dt.datetime.now(start.tzinfo) - start).total_seconds() < STARTING_S


def heartbeats_on(study: optuna.Study) -> bool:
    """Whether the study's store fails the trials of dead workers itself (RDB heartbeats)."""
    interval = getattr(compat.study_storage(study), "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def fail_dead_workers(study: optuna.Study, max_retry: int | None) -> list[int]:
    """On a store without heartbeats, fail the RUNNING trials whose worker on this host is
    gone and re-queue them (what the heartbeat does on RDB stores); their numbers."""
    if heartbeats_on(study):
        return []
    dead = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if not _starting(t) and worker_alive(t) is False]
    return fail_and_requeue(study, dead, max_retry) if dead else []


def fail_and_requeue(study: optuna.Study, numbers: Sequence[int], max_retry: int | None = None) -> list[int]:
    """Mark RUNNING trials FAIL and re-queue them with their parameters and intermediate values
    (Optuna's ``RetryHeartbeatStaleTrialCallback``, as ``fail_stale_trials`` does), for a
    worker known to be gone: ``fail_dead_workers`` on its host, or by hand for a lost host.
    Returns the numbers this call failed (a trial another process failed first is skipped)."""
    storage = compat.study_storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    running = {t.number: t for t in study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.RUNNING,))}
    failed = []
    for number in numbers:
        trial = running.get(number)
        if trial is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", f"worker {trial.user_attrs.get('worker', '?')} "
                                                                 "gone; re-queued")
            if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first (and re-queued it)
        retry_callback(max_retry)(study, trial)  # the snapshot from before: without fail_reason
        failed.append(number)
    return failed


def unverifiable_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials on a store without heartbeats whose worker this host cannot check."""
    if heartbeats_on(study):
        return []
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if not _starting(t) and worker_alive(t) is None]
