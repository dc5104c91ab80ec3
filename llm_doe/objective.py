"""The Optuna objective: the only module that drives an ``optuna.Trial`` (suggest, report, prune).

It samples the space, overlays the values on the composed config, runs the Optuna-free
fine-tuning loop with a report callback that feeds ``trial.report`` / ``trial.should_prune``,
and turns the outcome into a value, user attributes and artifacts. Anything that goes wrong
inside a trial (divergence, out-of-memory, a bug) becomes a FAIL with ``fail_reason`` and the
study goes on (convention 5).
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import optuna
import sqlalchemy.exc
import torch
from omegaconf import DictConfig, OmegaConf

from llm_doe import constraints
from llm_doe.artifacts import upload_trial_artifacts
from llm_doe.experiment import flatten
from llm_doe.finetune import peft as peft_methods
from llm_doe.finetune.checkpoint import CheckpointPlan
from llm_doe.finetune.loop import (
    Diverged,
    Hooks,
    Interrupted,
    Selection,
    Teacher,
    TrainData,
    TrainResult,
    train,
)
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks import get_task
from llm_doe.formatting import fmt
from llm_doe.liveness import worker_attrs
from llm_doe.schema import Config, applicable, objective_metrics, primary_metric, resolved_direction
from llm_doe.space import SearchSpace, apply_params, suggest
from llm_doe.storage import retry_callback
from llm_doe.study import grid_duplicate, set_user_attrs
from llm_doe.warm_start import duplicate_of

if TYPE_CHECKING:
    from llm_doe.finetune.tasks.base import Task

log = logging.getLogger("llm_doe")


class TrialFailed(RuntimeError):
    """A trial that failed for a recorded reason; the study catches it and goes on."""


class TrialInterrupted(RuntimeError):
    """A signal stopped trial ``number`` at optimizer step ``step``; it was re-queued (to resume
    from its checkpoint at that step when ``checkpointed``). Ends the worker's loop."""

    def __init__(self, number: int, step: int, checkpointed: bool) -> None:
        super().__init__(f"trial {number} interrupted at optimizer step {step}")
        self.number, self.step, self.checkpointed = number, step, checkpointed


class StorageUnavailable(RuntimeError):
    """The study store stayed unreachable: the worker stops; nothing stored is lost."""


# Connection-level failures worth waiting out (a restarting server, a locked SQLite file).
STORAGE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                  optuna.exceptions.StorageInternalError)


def storage_failure(err: BaseException) -> BaseException | None:
    """The storage error behind ``err``, if any (Optuna may raise another error while
    recording a trial on a store that went away)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, (StorageUnavailable, *STORAGE_ERRORS)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def with_storage_retry(call: Callable[[], Any], what: str, patience_s: float) -> Any:
    """Run a storage call, retrying with backoff while the store is briefly unreachable."""
    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            return call()
        except STORAGE_ERRORS as err:
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable(f"the study store was unreachable for {patience_s:.0f}s while {what}: "
                                         f"{str(err).splitlines()[0]}") from err
            log.warning("study store unreachable while %s; retrying in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


ACTIVE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
          optuna.trial.TrialState.WAITING)


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return next(t for t in running if t.number == trial.number)


def origin_number(frozen: optuna.trial.FrozenTrial) -> int:
    """The number of the first trial in a retry chain: re-queued trials share its checkpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return frozen.number if origin is None else origin


def checkpoint_identity(study: optuna.Study, frozen: optuna.trial.FrozenTrial,
                        params: dict[str, Any]) -> dict[str, Any]:
    """Whose checkpoint it is: the study (name and the ``uuid`` it was created with, so a study
    recreated under the same name is another), the origin trial of the retry chain (a re-queued
    trial resumes its origin's checkpoint) and the parameters. The loop stamps it on every
    checkpoint and resumes only a checkpoint stamped the same."""
    return {"study": study.study_name, "study_uuid": study.user_attrs.get("uuid"), "trial": origin_number(frozen),
            "params": dict(params)}


def distill_teacher(task: Task, examples: Any, cfg: Config, device: torch.device) -> Teacher | None:
    """The teacher a run distils from (``distill.*``), its outputs on the run's training
    ``examples`` (cached per study on disk), or None without ``distill.teacher``."""
    if cfg.distill.teacher is None:
        return None
    outputs = task.teacher_outputs(examples, cfg.distill, cfg.data, device)
    return Teacher(outputs, cfg.distill.alpha, cfg.distill.temperature)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class Objective:
    """Callable for ``study.optimize``: one fine-tuning run per trial."""

    base: DictConfig  # the composed, validated config (structured)
    space: SearchSpace
    artifact_store: Any
    progress: bool = False
    checkpoints_dir: Path | None = None  # None: no checkpoints
    should_stop: Callable[[], bool] | None = None  # polled every optimizer step (signals)
    n_trials: int | None = None  # the study's total, for the surplus check
    storage_retry_s: float = 60.0  # how long a report waits out an unreachable study store
    #: The trial this objective runs now (None between trials), kept when a KeyboardInterrupt
    #: (a second Ctrl-C) ends it, so the runner can say which trial it stopped.
    running: int | None = field(default=None, init=False)
    #: A random-init tiny model (model=tiny) predicting one class was said once this run: no more lines.
    told_tiny_constant: bool = field(default=False, init=False)

    def trial_config(self, params: dict[str, Any]) -> tuple[DictConfig, Config]:
        cfg_dc = apply_params(self.base, params)
        return cfg_dc, OmegaConf.to_object(cfg_dc)  # type: ignore[return-value]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.running = trial.number
        try:
            value = self._run(trial)
        except KeyboardInterrupt:
            raise  # stopped at once: ``running`` still names the trial
        except BaseException:
            self.running = None
            raise
        self.running = None
        return value

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        started = time.perf_counter()
        frozen = self._claim(trial)
        params, cfg_dc, cfg = self._configure(trial)
        task = get_task(cfg.task)
        plan = None
        if self.checkpoints_dir is not None:
            plan = CheckpointPlan(self.checkpoints_dir / str(origin_number(frozen)), cfg.runtime.checkpoint_every_s,
                                  checkpoint_identity(trial.study, frozen, params))
        history: list[dict[str, float]] = []
        result, sizes, failure = self._train(trial, cfg, task, plan, history, started)
        if plan is not None:
            shutil.rmtree(plan.folder, ignore_errors=True)  # the trial is over: its checkpoint is not needed
        # What a person reads: only the keys that apply (no in-code model sizes for a pretrained model).
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(applicable(OmegaConf.to_container(cfg_dc, resolve=True))))
        if failure is not None:
            self._record_failure(trial, failure, started, config_yaml, history, task)
        assert result is not None
        return self._record_result(trial, result, sizes, objective_metrics(cfg), task, config_yaml, started,
                                   cfg.study.constraints, cfg.model.kind)

    def _claim(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The trial as stored, once it is known to be one the study still needs: a trial past
        the study's total, or a grid configuration another trial covers, fails as surplus."""
        active = trial.study.get_trials(deepcopy=False, states=ACTIVE)  # one read for both uses
        frozen = next(t for t in active if t.number == trial.number)
        if self.n_trials is not None:
            ahead = [t for t in active if t.number < trial.number]
            if len(ahead) >= self.n_trials:
                # Another worker started the last trial at the same moment: the study total
                # is already covered, so this one does not run (and does not count).
                trial.set_user_attr("surplus", True)
                trial.set_user_attr("fail_reason", f"surplus: {self.n_trials} trials were already running or done")
                raise TrialFailed("surplus")
        same = duplicate_of(trial.study, frozen)
        if same is not None:
            # Two processes enqueued one warm-start point at once: it runs once, as the earlier trial.
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", f"duplicate: trial {same.number} holds the same enqueued point")
            raise TrialFailed("duplicate")
        if self.base.sampler.name == "grid":
            same = grid_duplicate(trial.study, frozen, self.space)
            if same is not None:
                # Not run and not counted, as a surplus trial: a grid configuration runs once.
                trial.set_user_attr("surplus", True)
                trial.set_user_attr("fail_reason", f"duplicate: trial {same.number} has the same grid configuration")
                raise TrialFailed("duplicate")
        return frozen

    def _configure(self, trial: optuna.Trial) -> tuple[dict[str, Any], DictConfig, Config]:
        """Sample the trial's parameters and record its worker and its own config sections."""
        worker = worker_attrs()
        try:
            params = suggest(trial, self.space)
            cfg_dc, cfg = self.trial_config(params)
        except BaseException:
            set_user_attrs(trial, worker)
            raise
        resolved = OmegaConf.to_container(cfg_dc, resolve=True)
        # The trial's own sections, one attribute per key (pandas columns, dashboard table);
        # study-wide sections (storage, sampler, ...) are recorded once on the study.
        shown = applicable(resolved)  # not the keys that do not apply (a chat file's label column)
        trial_sections = {k: shown[k] for k in ("task", "model", "data", "train", "peft", "augment", "distill")}
        config_attrs = {key: value if not isinstance(value, (list, dict)) else str(value)
                        for key, value in flatten(trial_sections, "config.").items()}
        set_user_attrs(trial, {**worker, **config_attrs})  # one write for ~45 attributes
        return params, cfg_dc, cfg

    def _train(self, trial: optuna.Trial, cfg: Config, task: Task, plan: CheckpointPlan | None,
               history: list[dict[str, float]], started: float
               ) -> tuple[TrainResult | None, dict[str, int], Exception | None]:
        """Fine-tune the trial's model, reporting each evaluation to the trial (``history``
        collects them): the result, the parameter counts, and the failure that ended it, if any.
        An interrupted trial is re-queued and raises TrialInterrupted."""
        metric = primary_metric(cfg)
        maximize = resolved_direction(cfg) == "maximize"
        # Optuna takes no intermediate values from a multi-objective trial (trial.report raises):
        # nothing to report, nothing to prune; the history still goes to metrics.jsonl.
        reporting = len(objective_metrics(cfg)) == 1

        def report(step: int, metrics: dict[str, float]) -> bool:
            history.append({"step": step, **metrics})
            if not reporting:
                return False
            with_storage_retry(lambda: trial.report(metrics[metric], step), f"reporting step {step}",
                               self.storage_retry_s)
            return with_storage_retry(trial.should_prune, f"asking the pruner at step {step}", self.storage_retry_s)

        model = result = factory = None
        sizes: dict[str, int] = {}
        failure: Exception | None = None
        try:
            prepared = task.prepare(cfg.model, cfg.data)
            factory = prepared.factory
            # The adapters are drawn from the trial's seed too, after the fresh modules (the same
            # model as a fresh wrap; the wrapped model of the previous trial is reused when it can be).
            model = peft_methods.build(factory, cfg.peft, task.name, cfg.train.seed, cfg.model.dropout)
            sizes = peft_methods.param_counts(model)
            runtime = resolve_runtime(cfg.runtime.device, cfg.train.precision, cfg.runtime.log_every_steps, self.progress,
                                      cfg.runtime.log_every_s)
            # Augmented (augment.*, from the trial's seed) or not: the training examples only.
            examples, train_data = task.training_data(prepared, prepared.splits.train, cfg.data, cfg.augment,
                                                      cfg.train.seed)
            teacher = distill_teacher(task, examples, cfg, runtime.device)
            result = train(model, task, TrainData(train_data, prepared.val, prepared.pad_id, teacher), cfg.train, runtime,
                           select=Selection(metric, maximize),
                           hooks=Hooks(report, self.should_stop, started, f"trial {trial.number}"), checkpoint=plan,
                           lr_scales=peft_methods.lr_scales(model, cfg.peft))
        except Interrupted as err:
            # Re-queue with the same params and intermediate values (Optuna's own mechanism, as
            # for a dead worker); the new trial resumes from the checkpoint left in place.
            retry_callback()(trial.study, _frozen(trial))
            # After the re-queue, so the new trial does not inherit them: this one is not a
            # failure of its parameters, and the analysis counts it apart (``requeued``).
            set_user_attrs(trial, {"requeued": True,
                                   "fail_reason": f"interrupted at optimizer step {err.step}; re-queued"
                                   + (" to resume from its checkpoint" if err.checkpointed else "")})
            raise TrialInterrupted(trial.number, err.step, err.checkpointed) from None
        except StorageUnavailable:
            raise  # keep the checkpoint: the heartbeat re-queues the trial and it resumes
        except Exception as err:  # every failure is data: recorded, then the study goes on
            failure = err
        finally:
            if factory is not None and model is not None:
                # Kept for the next trial's build(), wrapped or unwrapped: it starts from the
                # pretrained weights again and reuses this model's memory.
                peft_methods.release(factory, model, cfg.peft, task.name)
            del model
        return result, sizes, failure

    def _record_failure(self, trial: optuna.Trial, failure: Exception, started: float, config_yaml: str,
                        history: list[dict[str, float]], task: Task) -> NoReturn:
        """Record why the trial failed and the files it got so far; raise TrialFailed."""
        reason = self._fail_reason(failure)
        set_user_attrs(trial, {"fail_reason": reason, "duration_s": time.perf_counter() - started})
        log.debug("trial %d failed:\n%s", trial.number, "".join(traceback.format_exception(failure)))
        failure.__traceback__ = None  # frames hold the model's tensors: let them go now
        if isinstance(failure, torch.OutOfMemoryError):
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        upload_trial_artifacts(self.artifact_store, trial, config_yaml, history, task)
        raise TrialFailed(reason) from failure

    def _record_result(self, trial: optuna.Trial, result: TrainResult, sizes: dict[str, int], metrics: list[str],
                       task: Task, config_yaml: str, started: float, bounds: dict[str, Any],
                       model_kind: str = "pretrained") -> float | list[float]:
        """Record the finished trial's metrics, cost and files, and its constraints (Optuna's
        ``set_constraint``, read by the samplers and ``best_trial``); its value, or its values for
        several objectives (metrics first, then recorded costs), or TrialPruned."""
        attrs: dict[str, Any] = {name: _finite_or_none(result.best[name]) for name in task.metrics}
        for name, value in result.cost.items():
            attrs[name] = _finite_or_none(float(value)) if isinstance(value, float) else value
        attrs.update(sizes)
        attrs["best_step"] = result.best_step
        for check in task.spec.checks:  # the task's signs that a trial learned nothing
            seen = result.best.get(check.metric)
            if seen is not None and not math.isnan(seen):
                attrs[check.metric] = int(seen)
                if seen == check.bad:
                    shown = defaultdict(lambda: "-", {k: fmt(v, 4) for k, v in result.best.items()})
                    shown["trial"] = str(trial.number)
                    self._warn_check(trial.number, check.warning.format_map(shown), model_kind, f"{check.metric}={int(seen)}")
        if result.resumed_from_optimizer_step:  # the unit of an interruption's fail_reason
            attrs["resumed_from_optimizer_step"] = result.resumed_from_optimizer_step
        attrs["stop_reason"] = result.stop_reason
        pruned = result.stop_reason == "stopped_by_report"
        if pruned:
            attrs["pruned_at_step"] = len(result.history)
        attrs["duration_s"] = time.perf_counter() - started
        if bounds:
            attrs.update(constraints.trial_attrs(bounds, attrs))
        set_user_attrs(trial, attrs)
        upload_trial_artifacts(self.artifact_store, trial, config_yaml, result.history, task, result.best_payload)
        # Last before the value: a worker that dies earlier leaves no constraint values for the
        # re-queued copy to inherit (Optuna keeps a constraint already set).
        for name, value in constraints.values(bounds, attrs).items():
            trial.set_constraint(name, value)
        if pruned:
            raise optuna.TrialPruned(f"pruned at evaluation {len(result.history)}")
        if len(metrics) == 1:
            return float(result.best[metrics[0]])
        values = {**attrs, **result.best}
        return [math.nan if values.get(name) is None else float(values[name]) for name in metrics]

    def _warn_check(self, number: int, warning: str, model_kind: str, check_metric: str) -> None:
        """A trial shows a sign of its task that it learned nothing (a classifier predicting one
        class for every validation example): a warning per trial, but for the random-init tiny
        model (``smoke``, an install check), which rarely learns anything on so little data, one
        line a run that says so (each trial still records the check's attribute)."""
        if model_kind != "tiny":
            log.warning("%s", warning)
            return
        log.debug("%s", warning)
        if not self.told_tiny_constant:
            self.told_tiny_constant = True
            log.info("trial %d shows no learning (%s): expected of model=tiny, a random-init model this small "
                     "trained this briefly (an install check, not a model that learns); said once, each trial "
                     "records it", number, check_metric)

    @staticmethod
    def _fail_reason(err: BaseException) -> str:
        if isinstance(err, Diverged):
            return f"diverged: {err}"
        if isinstance(err, torch.OutOfMemoryError):
            return "out of memory: " + str(err).splitlines()[0]
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
