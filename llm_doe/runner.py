"""Running a study: the trial loop of one worker, worker processes, signals, progress.

``optimize_arms`` is one worker's share of a study (or of a scientific study's sub-studies):
one trial at a time through ``study.optimize``, so Optuna's heartbeat covers it, until every
total is reached; ``run_workers`` starts ``workers=N`` such processes on the same study.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from llm_doe import optuna_compat as compat
from llm_doe.constraints import describe as describe_constraints
from llm_doe.formatting import fmt
from llm_doe.schema import Config, objective_metrics, resolved_directions

if TYPE_CHECKING:
    from llm_doe.cli import Composed

log = logging.getLogger("llm_doe")
WORKER_ENV = "LLM_DOE_WORKER"  # set in worker processes started by workers=N
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks at the study again


def setup_logging(run_dir: Path | None) -> None:
    """Trial lines to stdout (through tqdm, so bars stay intact) and everything to run_dir."""
    from tqdm.auto import tqdm

    class TqdmHandler(logging.StreamHandler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=sys.stdout)
            except Exception:  # pragma: no cover - logging must never kill a study
                self.handleError(record)

    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    console = TqdmHandler()
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if run_dir is not None:
        file_handler = logging.FileHandler(run_dir / "search.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


class ProgressCallback:
    """A study progress bar and one line per finished trial."""

    def __init__(self, study: optuna.Study, total: int, metrics: list[str], enabled: bool) -> None:
        from tqdm.auto import tqdm

        from llm_doe.study import count_finished

        self.total, self.metric, self.metrics = total, metrics[0], metrics
        self.bar = tqdm(total=total, initial=count_finished(study), desc=f"study {study.study_name}",
                        unit="trial", disable=None if enabled else True, dynamic_ncols=True)
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from llm_doe.study import count_finished

        state = trial.state.name
        if trial.user_attrs.get("surplus"):
            log.debug("trial %d not run: %s", trial.number, trial.user_attrs.get("fail_reason"))
            return
        if trial.state == optuna.trial.TrialState.FAIL:
            self.failures += 1
            value = f"reason={trial.user_attrs.get('fail_reason', '?')}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            last = None if trial.last_step is None else trial.intermediate_values.get(trial.last_step)
            value = f"pruned at eval {trial.last_step} ({self.metric}={fmt(last, 4)})"
        else:
            value = " ".join(f"{m}={fmt(v, 4)}" for m, v in zip(self.metrics, trial.values or ()))
        if len(self.metrics) > 1:  # no single best: the Pareto front so far
            front = sorted(t.number for t in study.best_trials)
            best = f"Pareto front {', '.join(f'#{n}' for n in front) or '-'}"
        else:
            try:
                best = f"best {fmt(study.best_value, 4)} (#{study.best_trial.number})"
            except ValueError:
                best = "best -"
        value += describe_constraints(trial)
        params = " ".join(f"{k}={fmt(v, 4)}" for k, v in trial.params.items())
        duration = trial.duration.total_seconds() if trial.duration else float("nan")
        done = count_finished(study)
        self.bar.n = done
        self.bar.refresh()
        log.info("[%d/%d] trial %d %s %s | %s | %.1fs | %s", done, self.total, trial.number, state, value,
                 params, duration, best)

    def close(self) -> None:
        self.bar.close()


class FailureLimit:
    """Stop the study after ``max_failures`` failed trials in this run."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL and not trial.user_attrs.get("surplus"):
            self.failures += 1
            if self.failures >= self.max_failures:
                self.tripped = True
                study.stop()


class StopRequest:
    """SIGINT/SIGTERM handling: the first signal asks the running trial to checkpoint and stop
    at the next optimizer step; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: checkpointing the running trial and stopping (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def write_run_dir(composed: Composed) -> None:
    from llm_doe.storage import mask_overrides, masked_config

    hydra_dir = composed.run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(masked_config(composed.dict_config)))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(mask_overrides(composed.overrides)))


def optimize(composed: Composed, study: optuna.Study, space: Any, *, review: bool = True) -> int:
    """Run one study to ``composed.config.study.n_trials`` (see :func:`optimize_arms`)."""
    from llm_doe.design import Arm

    cfg = composed.config
    return optimize_arms(composed, [(Arm(study.study_name, composed.dict_config, space, cfg.study.n_trials), study)],
                         review=review)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in name)


def optimize_arms(composed: Composed, arms: list[tuple[Any, optuna.Study]], *, review: bool = True) -> int:
    """This process's share of the study: trials until every arm reaches its total.

    Each iteration runs one trial of the arm with the fewest trials finished or under way
    (scientific sub-studies advance together, so an interrupted study stays balanced),
    through ``study.optimize`` so Optuna's heartbeat thread covers it and stale trials of dead
    workers are failed and re-queued first. When every remaining trial is already running
    elsewhere, the worker waits for those to finish or go stale instead of starting surplus
    trials, so each total is exact across workers. ``study.timeout`` and
    ``study.max_train_steps`` stop it cleanly between trials. ``review=False`` (a confirmation:
    fixed configurations run with several seeds) ends with the totals alone: no best trial of
    one seed, no boundary check of a space nothing searched.
    """
    import torch

    from llm_doe.objective import TrialFailed, TrialInterrupted, storage_failure
    from llm_doe.storage import mask_url, storage_label
    from llm_doe.study import record_totals, trial_counts

    cfg = composed.config
    if cfg.runtime.num_threads is not None:
        torch.set_num_threads(cfg.runtime.num_threads)
    n_total = sum(arm.n_trials for arm, _ in arms)
    done = sum(_finished(trial_counts(study)) for _, study in arms)
    if done >= n_total:
        log.info("study %s already has %d/%d finished trials in %s: nothing to run (raise study.n_trials to "
                 "run more)", cfg.study.name, done, n_total, storage_label(cfg.storage))
        return 0
    _log_start(composed, arms, done, n_total)

    stop = StopRequest()
    runners = _runners(cfg, arms, stop)
    failures = FailureLimit(cfg.study.max_failures)
    started = time.perf_counter()
    deadline = None if cfg.study.timeout is None else started + cfg.study.timeout
    waited = False
    interrupted: BaseException | None = None
    exhausted: set[str] = set()  # grid arms whose every configuration ran
    with stop:
        try:
            while not stop() and not failures.tripped:
                if _budget_spent(cfg, arms, deadline):
                    break
                open_arms = _open_arms(cfg, runners, exhausted)
                if not open_arms:
                    break
                startable = [item for item in open_arms if item[0] is not None]
                if not startable:
                    if _unverifiable(runners):
                        break
                    if not waited:
                        log.info("waiting for the trials running elsewhere to finish (or to go stale and be "
                                 "re-queued)")
                        waited = True
                    time.sleep(POLL_SECONDS)
                    continue
                waited = False
                _, _, (arm, study, objective, progress) = min(startable, key=lambda item: (item[0], item[1]))
                study.optimize(objective, n_trials=1, callbacks=[progress, failures], catch=(TrialFailed,),
                               gc_after_trial=False)
        except (TrialInterrupted, KeyboardInterrupt) as err:
            interrupted = err
        except Exception as err:
            cause = storage_failure(err)
            if cause is None:
                raise
            log.error("stopped: %s. Nothing already stored is lost; the running trial keeps its checkpoint and is "
                      "re-queued by its heartbeat: run the same command again when the store is back",
                      mask_url(str(cause).splitlines()[0]))
            return 1
        finally:
            for runner in runners:
                runner[3].close()
    if interrupted is not None or stop():
        for _, study in arms:
            record_totals(study)  # the study's compute so far, as on a finished run
        log.error("interrupted (%s): %s; run the same command to resume to %d trials",
                  signal.Signals(stop.signum or signal.SIGINT).name, _what_was_stopped(runners, interrupted), n_total)
        return stop.exit_code
    for arm, study in arms:
        summarise(arm, study, cfg, started, review=review)
    if failures.tripped:
        log.error("stopped: %d trials failed in this run (study.max_failures=%d); see fail_reason on the trials "
                  "and %s", failures.failures, cfg.study.max_failures, composed.run_dir / "search.log")
        return 1
    return 0


def _what_was_stopped(runners: list[Any], interrupted: BaseException | None) -> str:
    """What a signal did to the running trial, as the store has it: re-queued (and from which
    optimizer step), stopped at once and failed (a second Ctrl-C), or no trial was running
    (the signal came between trials, or as one had just completed)."""
    from llm_doe.objective import TrialInterrupted

    running = next(((runner[1], runner[2].running) for runner in runners if runner[2].running is not None), None)
    if isinstance(interrupted, TrialInterrupted):
        where = (f"checkpointed at optimizer step {interrupted.step} and re-queued to resume from there"
                 if interrupted.checkpointed else f"stopped at optimizer step {interrupted.step} and re-queued "
                 "(no checkpoint: it starts again)")
        return f"trial {interrupted.number} was {where}"
    if running is None:
        return "no trial was running, so none was re-queued"
    study, number = running
    retried = any(number in compat.retry_history(t)
                  for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    return (f"trial {number} was stopped at once and re-queued" if retried else
            f"trial {number} was stopped at once (a second signal) and marked FAIL, not re-queued; its checkpoint, "
            "if any, is not resumed")


def _log_start(composed: Composed, arms: list[tuple[Any, optuna.Study]], done: int, n_total: int) -> None:
    """The run's first log lines: where the study stands and what it runs with."""
    from llm_doe.storage import storage_label

    cfg = composed.config
    log.info("study %s: %d/%d trials finished, %s %s, sampler=%s pruner=%s, store %s, logs %s", cfg.study.name, done,
             n_total, "/".join(resolved_directions(cfg)), "/".join(objective_metrics(cfg)), cfg.sampler.name,
             cfg.pruner.name if len(objective_metrics(cfg)) == 1 else "none",
             storage_label(cfg.storage), composed.run_dir)
    if len(arms) > 1:
        log.info("%d scientific values, %d trials each: %s", len(arms), arms[0][0].n_trials,
                 "; ".join(arm.name for arm, _ in arms))


def _finished(counts: dict[TrialState, int]) -> int:
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def _runners(cfg: Config, arms: list[tuple[Any, optuna.Study]], stop: StopRequest
             ) -> list[tuple[Any, optuna.Study, Any, ProgressCallback]]:
    """(arm, study, objective, progress) for each arm; each arm checkpoints in its own folder."""
    from llm_doe.artifacts import artifact_store
    from llm_doe.objective import Objective

    store = artifact_store(cfg.storage.artifacts_dir)
    checkpoints = Path(cfg.storage.checkpoints_dir) if cfg.runtime.checkpoint else None
    runners = []
    for arm, study in arms:
        folder = None if checkpoints is None else checkpoints if len(arms) == 1 else checkpoints / _slug(arm.name)
        objective = Objective(arm.config, arm.space, store, progress=cfg.runtime.progress, checkpoints_dir=folder,
                              should_stop=stop, n_trials=arm.n_trials, storage_retry_s=cfg.storage.retry_seconds)
        runners.append((arm, study, objective, ProgressCallback(study, arm.n_trials, objective_metrics(cfg),
                                                                cfg.runtime.progress and len(arms) == 1)))
    return runners


def _budget_spent(cfg: Config, arms: list[tuple[Any, optuna.Study]], deadline: float | None) -> bool:
    """Whether ``study.timeout`` or ``study.max_train_steps`` says to stop (logged once, here)."""
    from llm_doe.study import study_totals

    if deadline is not None and time.perf_counter() >= deadline:
        log.info("study.timeout of %ss reached: stopping cleanly", cfg.study.timeout)
        return True
    if cfg.study.max_train_steps is not None:
        spent = sum(study_totals(study)["optimizer_steps"] for _, study in arms)
        if spent >= cfg.study.max_train_steps:
            log.info("compute budget reached: %d optimizer steps spent (study.max_train_steps=%d): "
                     "stopping cleanly", spent, cfg.study.max_train_steps)
            return True
    return False


def _open_arms(cfg: Config, runners: list[Any], exhausted: set[str]) -> list[tuple[int | None, int, Any]]:
    """The arms with trials left, as (trials finished or under way, position, runner); None
    for an arm whose remaining work all runs elsewhere. Stale trials and those of dead workers
    are failed and re-queued first; an exhausted grid arm is added to ``exhausted``."""
    from llm_doe.liveness import fail_dead_workers
    from llm_doe.study import grid_points, trial_counts

    open_arms: list[tuple[int | None, int, Any]] = []
    for runner in runners:
        arm, study = runner[0], runner[1]
        optuna.storages.fail_stale_trials(study)
        for number in fail_dead_workers(study, cfg.storage.max_retry):
            log.warning("trial %d: its worker is gone; marked FAIL and re-queued", number)
        counts = trial_counts(study)
        if _finished(counts) >= arm.n_trials or arm.name in exhausted:
            continue
        if cfg.sampler.name == "grid" and grid_exhausted(study, arm.space, counts[TrialState.WAITING]):
            exhausted.add(arm.name)
            log.info("grid exhausted: all %d configurations ran; %s", len(grid_points(arm.space)),
                     f"study.n_trials={arm.n_trials} is more than the grid" if len(runners) == 1 else
                     f"{arm.name}'s {arm.n_trials} trials are more than its grid")
            continue
        under_way = _finished(counts) + counts[TrialState.RUNNING]
        if counts[TrialState.WAITING] or under_way < arm.n_trials:
            open_arms.append((under_way, len(open_arms), runner))
        else:
            open_arms.append((None, len(open_arms), runner))  # all its work runs elsewhere
    return open_arms


def grid_exhausted(study: optuna.Study, space: Any, waiting: int) -> bool:
    """sampler=grid: whether every configuration ran, runs or waits to run (no trial to start).

    GridSampler alone would start visited configurations again once the grid is used up
    (its ``study.stop()`` ends only the one-trial ``optimize`` call). A configuration held only
    by a trial the objective refused (a surplus trial) is one GridSampler never offers again:
    it is enqueued instead.
    """
    from llm_doe.study import grid_left, grid_names

    left, orphaned = grid_left(study, space)
    if not left:
        return not waiting
    if not waiting and len(orphaned) == len(left):
        study.enqueue_trial(dict(zip(grid_names(space), orphaned[0])))
    return False


def _unverifiable(runners: list[Any]) -> bool:
    """A worker with nothing to start, on a store without heartbeats, does not wait for trials
    whose worker runs on another host: it cannot tell whether that worker is alive. One line
    says which trials, whose, and how to clear them; True if it should stop."""
    from llm_doe.liveness import unverifiable_trials

    blocked = [trial for runner in runners for trial in unverifiable_trials(runner[1])]
    if not blocked:
        return False
    workers = sorted({str(t.user_attrs.get("worker", "an unknown worker")) for t in blocked})
    hosts = sorted({worker.rpartition(":")[0] or "its host" for worker in workers})
    log.warning("not waiting for trial(s) %s: RUNNING in %s on another host, and this store has no heartbeats "
                "to tell whether they are alive; alive, they finish the study; if that worker is gone, run the "
                "same command on %s to fail and re-queue them (host lost: llm_doe.study.fail_and_requeue, see "
                "the README)", ", ".join(str(t.number) for t in blocked), ", ".join(workers), " or ".join(hosts))
    return True


def summarise(arm: Any, study: optuna.Study, cfg: Config, started: float, *, review: bool = True) -> None:
    """The end-of-run lines: totals, best trial, and the playbook's boundary check (stored too);
    the totals alone without ``review``."""
    from llm_doe import analysis
    from llm_doe.study import record_totals, trial_counts

    counts = trial_counts(study)
    totals = record_totals(study)
    log.info("study %s: %d/%d trials finished; this run took %.1fs; the study so far: %d optimizer steps, %d "
             "examples, %.0fs training, %.0fs evaluating", study.study_name,
             counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], arm.n_trials, time.perf_counter() - started,
             totals["optimizer_steps"], totals["examples_seen"], totals["train_time_s"], totals["eval_time_s"])
    if not review:
        return
    metrics = objective_metrics(cfg)
    if len(metrics) > 1:  # no single best trial: the trade-off, and no boundary check (it needs one)
        front = sorted(study.best_trials, key=lambda t: t.number)
        if not front:
            log.info("no trial completed")
        for trial in front:
            log.info("Pareto front: trial #%d: %s with %s", trial.number,
                     " ".join(f"{m}={fmt(v, 4)}" for m, v in zip(metrics, trial.values)),
                     " ".join(f"{k}={fmt(v, 4)}" for k, v in trial.params.items()))
        return
    try:
        best = study.best_trial
    except ValueError:  # Optuna's best trial is a feasible one
        log.info("no feasible trial completed" if cfg.study.constraints else "no trial completed")
        return
    log.info("best trial #%d: %s=%s with %s", best.number, metrics[0], fmt(best.value, 4),
             " ".join(f"{k}={fmt(v, 4)}" for k, v in best.params.items()))
    try:
        report = analysis.boundary_report(analysis.load_trials(study))
    except Exception as err:  # a review aid must never fail the run
        log.debug("boundary check skipped: %s", err)
        return
    near = report[report["near_edge"]]
    study.set_user_attr("boundary", [{"param": r.param, "edge": r.edge, "best": float(r.best), "advice": r.advice}
                                     for r in near.itertuples()])
    for advice in near["advice"]:
        log.warning("boundary check: %s", advice)


def _worker_command(composed: Composed, index: int, threads: int) -> list[str]:
    keep = [o for o in composed.overrides if not o.lstrip("+~").startswith(("workers=", "hydra.run.dir=",
                                                                               "runtime.num_threads=",
                                                                               "runtime.progress="))]
    return [sys.executable, "-m", "llm_doe.search", *keep, "workers=1", f"runtime.num_threads={threads}",
            f"hydra.run.dir={composed.run_dir / f'worker-{index}'}", "runtime.progress=false"]


def run_workers(composed: Composed, studies: list[optuna.Study]) -> int:
    """``workers=N``: N worker processes on this study, each asking for its next trial the
    moment it finishes one (no batches). Each gets its own GPU where there are GPUs, else an
    equal share of the CPU threads; their lines are printed prefixed with ``[wI]`` and each
    keeps its own log under ``<run dir>/worker-I/``."""
    import subprocess

    import torch

    from llm_doe.study import trial_counts

    cfg = composed.config
    n = cfg.workers
    gpus = torch.cuda.device_count() if cfg.runtime.device != "cpu" else 0
    threads = cfg.runtime.num_threads or max(1, (os.cpu_count() or 1) // n)
    log.info("starting %d workers on study %s (%s)", n, cfg.study.name,
             f"{gpus} GPU(s)" if gpus else f"{threads} CPU thread(s) each")
    procs: list[subprocess.Popen[str]] = []

    def forward(signum: int, frame: Any) -> None:
        log.warning("%s: passed on to the %d workers (each checkpoints its trial and stops; again to stop them at "
                    "once)", signal.Signals(signum).name, sum(proc.poll() is None for proc in procs))
        # A closed terminal (SIGHUP) stops the workers as SIGTERM does: each checkpoints its trial.
        passed = signal.SIGTERM if signum == getattr(signal, "SIGHUP", None) else signum
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(passed)

    def pump(index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("[w%d] %s", index, line.rstrip())

    # The handlers go in before the first worker starts: a signal while they start reaches those
    # started so far. SIGHUP (the terminal closed) too: the workers are in groups of their own,
    # so it would reach this process alone.
    signums = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {signum: signal.signal(signum, forward) for signum in signums}
    readers: list[threading.Thread] = []
    codes: list[int] = []
    try:
        for index in range(n):
            env = {**os.environ, WORKER_ENV: str(index), "PYTHONUNBUFFERED": "1"}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
            # Each worker in a process group of its own: a Ctrl-C at the terminal reaches this process
            # alone, which passes it on once (workers that got it twice would stop at once, without a
            # checkpoint), and so does a signal sent to this process only (kill -INT <pid>).
            proc = subprocess.Popen(_worker_command(composed, index, threads), env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
            procs.append(proc)
            reader = threading.Thread(target=pump, args=(index, proc), daemon=True)
            reader.start()
            readers.append(reader)
        codes = [proc.wait() for proc in procs]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for proc in procs:  # leaving abnormally (an error here): no worker runs on without us
            if proc.poll() is None:
                proc.terminate()
        for reader in readers:
            reader.join(timeout=5)
    counts = dict.fromkeys(TrialState, 0)
    for study in studies:
        for state, count in trial_counts(study).items():
            counts[state] += count
    failed, requeued = _failed_and_requeued(studies)
    log.info("workers done: %d/%d trials finished (%d pruned), %d failed, %d re-queued (interrupted or their worker "
             "lost: not failures); exit codes %s", counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
             cfg.study.n_trials, counts[TrialState.PRUNED], failed, requeued, codes)
    return max(codes, key=lambda c: (c != 0, c))


def _failed_and_requeued(studies: list[optuna.Study]) -> tuple[int, int]:
    """FAIL trials that failed (their parameters, or a bug), and those only interrupted and
    re-queued (a signal, a dead worker: a copy runs them again). Surplus trials, never run, are
    neither."""
    failed = requeued = 0
    for study in studies:
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in compat.retry_history(t)}  # every trial a waiting one retries
        for trial in trials:
            if trial.state != TrialState.FAIL or trial.user_attrs.get("surplus"):
                continue
            if trial.user_attrs.get("requeued") or trial.number in retried:
                requeued += 1
            else:
                failed += 1
    return failed, requeued
