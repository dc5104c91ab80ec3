"""The training loop: a lean PyTorch fine-tuning loop that knows nothing of Optuna.

It evaluates ``train.evals_per_epoch`` times per epoch and hands each evaluation to a
``report(step, metrics) -> stop?`` callback (convention 4); the caller decides what a report
means (an Optuna trial prunes, a test records). Step numbers are evaluation indices (1, 2, ...)
and index k always falls after the fraction k / (evals_per_epoch * num_epochs) of training,
whatever the batch size (:func:`~llm_doe.finetune.batching.eval_points`), so the pruner
compares equal amounts of training. What is task-specific (batches, loss, metrics) the
:class:`~llm_doe.finetune.tasks.base.Task` says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import get_scheduler

from llm_doe.finetune.batching import batch_order, eval_points
from llm_doe.finetune.checkpoint import (
    CheckpointError,
    CheckpointPlan,
    CheckpointWriter,
    TrainState,
    load_checkpoint,
)
from llm_doe.finetune.runtime import Runtime, peak_memory_mb
from llm_doe.finetune.tasks.base import Task
from llm_doe.schema import TrainConfig

Report = Callable[[int, dict[str, float]], bool]
log = logging.getLogger("llm_doe")


class Diverged(RuntimeError):
    """The training or validation loss became NaN or infinite."""


class Interrupted(Exception):
    """``should_stop`` asked to stop (a signal): the run was checkpointed first."""

    def __init__(self, step: int, checkpointed: bool) -> None:
        super().__init__(f"interrupted at optimizer step {step}" + (" (checkpointed)" if checkpointed else ""))
        self.step = step
        self.checkpointed = checkpointed


@dataclass
class Teacher:
    """Knowledge distillation: a teacher's outputs for every training example (row i for
    example i of ``TrainData.train``), and how the task's distillation loss weighs them."""

    outputs: np.ndarray
    alpha: float
    temperature: float


@dataclass
class TrainData:
    """The encoded splits a run trains and validates on (``val=None``: no evaluation, as for
    the final model on train+val), the id batches are padded with, and a teacher to distil from
    (None: the task's plain loss)."""

    train: Any
    val: Any | None
    pad_id: int
    teacher: Teacher | None = None


@dataclass
class Selection:
    """The metric whose best value over evaluations picks the best step (and that early
    stopping watches), and whether larger is better."""

    metric: str = "val_loss"
    maximize: bool = False


@dataclass
class Hooks:
    """How the caller follows and steers a run.

    Attributes:
        report: Called after every evaluation with (index, metrics); True stops training
            (``stop_reason='stopped_by_report'``).
        should_stop: Polled after every optimizer step; True checkpoints and raises
            :class:`Interrupted` (how SIGINT/SIGTERM stop a trial without losing it).
        started_at: ``time.perf_counter()`` when the caller's trial began, for
            ``time_to_first_step_s``.
        desc: The progress bar's label.
    """

    report: Report | None = None
    should_stop: Callable[[], bool] | None = None
    started_at: float | None = None
    desc: str = "train"


@dataclass
class Budget:
    """Where a run stops and how long its learning-rate schedule is.

    Attributes:
        max_steps: Stop after this many optimizer steps (``stop_reason='max_steps'``), at most
            ``schedule_steps``; the schedule still spans ``schedule_steps``, so the first
            ``max_steps`` steps are exactly those of the full run (how the final model
            reproduces a trial's best step).
        schedule_steps: The schedule's total steps (warmup is ``train.warmup_ratio`` of it);
            default ``train.num_epochs`` epochs of the training split. The final model on
            train+val passes the trial's own total, so it replays the trial's rates step for
            step while drawing batches from the larger pool, as many epochs as it needs.
    """

    max_steps: int | None = None
    schedule_steps: int | None = None


@dataclass
class TrainResult:
    """What a fine-tuning run produced: per-eval history, the best eval, and its cost."""

    history: list[dict[str, float]]
    best_step: int
    best: dict[str, float]
    stop_reason: str  # completed | early_stopping | stopped_by_report | max_steps
    best_payload: Any  # the task's evaluation payload at the best evaluation (ROC data, ...)
    cost: dict[str, float] = field(default_factory=dict)
    resumed_from_optimizer_step: int = 0  # the optimizer step a checkpoint restored (0 = fresh start)
    last_learning_rate: float = float("nan")  # the schedule's rate after the last optimizer step


def warmup_steps(ratio: float, steps: int) -> int:
    """The warmup of a ``steps``-long schedule: ``ratio`` of it, rounded up as Hugging Face's
    ``TrainingArguments.get_warmup_steps`` rounds it (an 8-step schedule at 0.1 warms up for
    one step, not none); the product is first rounded to 9 decimals, so float noise (0.1 x 30 =
    3.0000000000000004) does not add a step."""
    return math.ceil(round(ratio * steps, 9))


def param_groups(model: nn.Module, weight_decay: float, lr_scales: Mapping[str, float] | None = None,
                 learning_rate: float | None = None) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: weight decay on weight matrices (and embeddings) only,
    and, with ``lr_scales`` ({parameter name: multiple of ``learning_rate``}, LoRA+'s B matrices),
    a group of their own at their rate for the scaled parameters (decay rule kept).

    Decay pulls a weight towards 0, which is wrong for a normalisation's gain (its neutral value
    is 1) and pointless for a bias. The rule holds whatever the architecture: no decay for the
    parameters of any module whose class name contains "Norm" (LayerNorm, RMSNorm,
    LlamaRMSNorm, GroupNorm, BatchNorm...), nor for any parameter named ``*bias`` or with fewer
    than two dimensions (gains and biases of modules the first test misses).

    The first two groups are always the decayed and the exempt parameters at the base rate (the
    first group's rate is what a run reports as its learning rate).
    """
    norm_params = {id(p) for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters()}
    scales = dict(lr_scales or {})
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(False, 1.0): [], (True, 1.0): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = id(param) in norm_params or name.endswith("bias") or param.ndim < 2
        groups.setdefault((exempt, float(scales.get(name, 1.0))), []).append(param)
    out = []
    for (exempt, scale), params in groups.items():
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if exempt else weight_decay}
        if scale != 1.0:
            if learning_rate is None:
                raise ValueError("lr_scales need the base learning_rate")
            group["lr"] = learning_rate * scale
        out.append(group)
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   lr_scales: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """``train.optimizer``, torch's own implementation, over :func:`param_groups` (the no-decay
    rule and any ``lr_scales``) at ``train.learning_rate``.

    adamw and adam take ``train.adam_*``; sgd takes ``train.momentum`` (null: none); adafactor
    and rmsprop keep torch's other defaults. Weight decay is decoupled for adamw and adafactor,
    an L2 term in the gradient for adam, sgd and rmsprop (torch's definitions)."""
    groups = param_groups(model, cfg.weight_decay, lr_scales, cfg.learning_rate)
    lr = cfg.learning_rate
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "adamw":
        # Fused AdamW on CPU too: one step of MiniLM's 22.7M params 78-103 ms -> 13-15 ms here.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon,
                                 fused=device.type in ("cuda", "cpu"))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon, fused=device.type in ("cuda", "cpu"))
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum or 0.0)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


@torch.inference_mode()
def evaluate(model: nn.Module, task: Task, data: Any, batch_size: int, pad_id: int, rt: Runtime
             ) -> tuple[dict[str, float], Any]:
    """The task's metrics of ``model`` on ``data`` (``val_loss`` among them), and its payload.

    Examples are visited longest first in large batches: little padding, no gradients.
    """
    was_training = model.training
    model.eval()
    order = np.argsort(-data.lengths, kind="stable")
    evaluator = task.evaluator(data, model)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = task.collate(data, index, pad_id, rt.device)
        with rt.autocast():
            output = evaluator.forward(model, batch)
        evaluator.update(output, batch, index)
    model.train(was_training)
    return evaluator.result()


def _gradient_checkpointing(model: nn.Module, on: bool) -> None:
    """transformers' gradient (activation) checkpointing, non-reentrant: it recomputes what the
    backward pass needs with the forward's RNG state, so the result is the same (dropout too),
    and it needs no input that requires grad (PEFT); off again: no hook left behind."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's own
    if on:
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    if hasattr(base, "activation_checkpointing_disable"):
        base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_disable()
    base.disable_input_require_grads()


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights training changes (a PEFT model's adapters only)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", disable=None, dynamic_ncols=True)


def train(model: nn.Module, task: Task, data: TrainData, cfg: TrainConfig, rt: Runtime, *,
          select: Selection | None = None, hooks: Hooks | None = None, checkpoint: CheckpointPlan | None = None,
          budget: Budget | None = None, lr_scales: Mapping[str, float] | None = None) -> TrainResult:
    """Fine-tune ``model`` on ``data.train`` and evaluate it on ``data.val`` as ``cfg`` says.

    With a ``checkpoint`` plan the run resumes from the plan's folder when it holds this run's
    checkpoint (same batches, same RNG, earlier evaluations kept) and writes one at evaluations
    (every ``plan.every_s``) and when ``hooks.should_stop`` fires; the caller removes it.

    Raises:
        Diverged: the training loss (checked every ``log_every_steps``) or the validation
            loss is not finite.
        Interrupted: ``hooks.should_stop`` returned True.
        CheckpointError: a checkpoint could not be written.
        ValueError: ``budget.max_steps`` outside [1, schedule steps].
    """
    run = _Run(model, task, data, cfg, rt, select or Selection(), hooks or Hooks(), checkpoint, budget or Budget(),
               lr_scales)
    return run.execute()


class _Run:
    """One training run's moving parts (optimizer, schedule, state, checkpoints), so each step
    of the loop reads as a method instead of a closure over a dozen locals."""

    def __init__(self, model: nn.Module, task: Task, data: TrainData, cfg: TrainConfig, rt: Runtime,
                 select: Selection, hooks: Hooks, plan: CheckpointPlan | None, budget: Budget,
                 lr_scales: Mapping[str, float] | None = None) -> None:
        self.model, self.task, self.data, self.cfg, self.rt = model, task, data, cfg, rt
        self.select, self.hooks = select, hooks
        self.started_at = time.perf_counter() if hooks.started_at is None else hooks.started_at
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(rt.device)
        model.to(rt.device)
        model.train()
        if cfg.gradient_checkpointing:
            _gradient_checkpointing(model, True)
        self.steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        schedule = self.steps_per_epoch * cfg.num_epochs if budget.schedule_steps is None else budget.schedule_steps
        if schedule < 1 or (budget.max_steps is not None and not 1 <= budget.max_steps <= schedule):
            raise ValueError(f"need 1 <= max_steps ({budget.max_steps}) <= schedule_steps ({schedule})")
        self.max_steps = budget.max_steps
        self.total_steps = schedule if budget.max_steps is None else budget.max_steps  # where this run stops
        self.optimizer = make_optimizer(model, cfg, rt.device, lr_scales)
        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer,
                                       num_warmup_steps=warmup_steps(cfg.warmup_ratio, schedule), num_training_steps=schedule)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
        # in-epoch optimizer step -> how many evaluation indices fall on it
        self.indices_at = Counter(eval_points(self.steps_per_epoch, cfg.evals_per_epoch))
        self.forward = torch.compile(model) if cfg.compile else model
        self.collate = task.train_collate(model, rt)
        self.writer = CheckpointWriter(plan) if plan is not None else None
        st = None
        if plan is not None:
            st = load_checkpoint(plan, model, self.optimizer, self.scheduler, self.scaler, rt.device)
        self.resumed_from = st.step if st is not None else 0  # optimizer steps, as an interruption's fail_reason
        self.st = st or TrainState()
        if self.st.micro_batch_size == 0:
            auto = cfg.micro_batch_size in (None, "auto")
            self.st.micro_batch_size = cfg.batch_size if auto else int(cfg.micro_batch_size)
        self.rng = np.random.default_rng(cfg.seed)
        if self.st.epoch_rng is not None:
            self.rng.bit_generator.state = self.st.epoch_rng
        self.running = torch.tensor(self.st.running_sum, device=rt.device)
        self.first_step_at: float | None = None
        self.bar_shown = False  # a progress bar on a terminal: no progress lines then
        self.logged_at = time.perf_counter()  # the last progress line (or the run's start)
        self.finish_time = 0.0  # the task's after-training extras (sample generations), in eval_time too
        self.t_train = time.perf_counter()

    def execute(self) -> TrainResult:
        bar = _progress(self.total_steps, self.rt.progress, self.hooks.desc)
        if bar is not None:
            bar.update(self.st.step)
            self.bar_shown = not bar.disable  # tqdm disables itself when stderr is no terminal
        stop_reason = "completed"
        try:
            for epoch in range(self.st.epoch, math.ceil(self.total_steps / self.steps_per_epoch)):
                stop_reason = self._epoch(epoch, bar)
                if stop_reason != "completed":
                    break
            if self.data.val is None or stop_reason == "max_steps":
                self.st.train_time += time.perf_counter() - self.t_train
            if self.data.val is not None and self.st.best_payload is not None and stop_reason != "stopped_by_report":
                self._finish()
        finally:
            if self.cfg.gradient_checkpointing:
                _gradient_checkpointing(self.model, False)  # the caller may reuse the model (the factory's spare)
            if bar is not None:
                bar.close()
            if self.writer is not None:
                failing = sys.exc_info()[0] is not None
                with contextlib.suppress(CheckpointError) if failing else contextlib.nullcontext():
                    self.writer.wait()  # the caller may remove the folder next: no write may be left running
        return TrainResult(self.st.history, self.st.best_step, self.st.best, stop_reason, self.st.best_payload,
                           self._cost(), self.resumed_from, self.scheduler.get_last_lr()[0])

    def _finish(self) -> None:
        """What the task keeps of the trained model beyond its metrics (sample generations), from
        the best evaluation's weights, once per run whatever the number of evaluations, counted as
        evaluation time; never for a pruned run, and never at the price of the run's result. The
        model is left as training left it."""
        t_eval = time.perf_counter()
        st = self.st
        at_best = not st.best or st.best.get("optimizer_step") == st.step
        last = None
        try:
            if self.task.finish_reads_model and not at_best:
                if st.best_weights is None:  # resumed from a checkpoint written without them
                    log.warning("sample generations come from the last model, not the best evaluation's: its "
                                "weights were not kept")
                else:
                    last = _trainable(self.model)
                    _load_trainable(self.model, st.best_weights)
            st.best_payload = self.task.finish(self.model, self.data.val, self.data.pad_id, self.rt, st.best_payload)
        except Exception as err:
            log.warning("skipped the task's after-training extras (%s: %s)", type(err).__name__, err)
        finally:
            if last is not None:
                _load_trainable(self.model, last)
            st.best_weights = None
        self.finish_time = time.perf_counter() - t_eval
        st.eval_time += self.finish_time

    def _epoch(self, epoch: int, bar: Any) -> str:
        st = self.st
        if epoch != st.epoch or st.epoch_rng is None:
            st.epoch, st.batches_done = epoch, 0
        st.epoch_rng = dict(self.rng.bit_generator.state)
        batches = batch_order(self.data.train.lengths, self.cfg.batch_size, self.rng, self.cfg.group_by_length)
        for in_epoch, index in enumerate(batches, 1):
            if in_epoch <= st.batches_done:
                continue  # trained before the checkpoint
            self._optimizer_step(index, in_epoch)
            if bar is not None:
                bar.update(1)
            if in_epoch in self.indices_at and self.data.val is not None:
                stop_reason = self._evaluate(epoch + in_epoch / self.steps_per_epoch, self.indices_at[in_epoch])
                if bar is not None:
                    bar.set_postfix(val_loss=f"{st.history[-1]['val_loss']:.4f}")
                if stop_reason != "completed":
                    return stop_reason
            if self.hooks.should_stop is not None and self.hooks.should_stop():
                self._interrupt()
            if self.max_steps is not None and st.step >= self.max_steps:
                return "max_steps"
        return "completed"

    def _optimizer_step(self, index: np.ndarray, in_epoch: int) -> None:
        st = self.st
        loss = self._accumulate(index)
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.batches_done = in_epoch
        st.examples += len(index)
        st.tokens += int(self.data.train.lengths[index].sum())
        self.running += loss.detach()
        st.running_n += 1
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        by_steps = st.step % self.rt.log_every_steps == 0
        if by_steps and not torch.isfinite(self.running).item():
            raise Diverged(f"non-finite training loss at optimizer step {st.step}")
        if not self.bar_shown:
            now = time.perf_counter()
            if by_steps or (self.rt.log_every_s > 0 and now - self.logged_at >= self.rt.log_every_s):
                self._log_progress(now)

    def _log_progress(self, now: float) -> None:
        """One progress line, for output that goes to a file or a pipe (no bar there): the step,
        the mean training loss since the last evaluation, the throughput and the time so far."""
        st = self.st
        train_time = st.train_time + (now - self.t_train)  # this stretch of training is not counted yet
        loss = float(self.running.item()) / max(1, st.running_n)
        log.info("%s: step %d/%d (epoch %d), train_loss %.4g, %.1f examples/s, %.0f tokens/s, %.0fs elapsed",
                 self.hooks.desc, st.step, self.total_steps, st.epoch + 1, loss,
                 st.examples / train_time if train_time > 0 else 0.0, st.tokens / train_time if train_time > 0 else 0.0,
                 now - self.started_at)
        self.logged_at = now

    def _accumulate(self, index: np.ndarray) -> torch.Tensor:
        """Forward and backward one batch as micro-batches of ``st.micro_batch_size``, so
        ``train.batch_size`` stays the effective batch while memory follows the micro-batch.

        With ``train.micro_batch_size=auto`` a CUDA out-of-memory error halves the micro-batch
        and retries the same batch (recorded in ``st.oom_retries``); on CPU, or at a
        micro-batch of 1, the error propagates and the trial fails with its reason.
        """
        st, rt, task = self.st, self.rt, self.task
        units = task.loss_units(self.data.train, index)
        while True:
            try:
                total = torch.zeros((), device=rt.device)
                for start in range(0, len(index), st.micro_batch_size):
                    chunk = index[start:start + st.micro_batch_size]
                    batch = self.collate(self.data.train, chunk, self.data.pad_id, rt.device)
                    with rt.autocast():  # no key/value cache: nothing generates from a training forward
                        logits = self.forward(**task.model_inputs(batch)).logits
                    teacher = self.data.teacher
                    if teacher is None:
                        loss = task.loss(logits, batch, units, self.cfg.label_smoothing)
                    else:
                        soft = torch.from_numpy(teacher.outputs[chunk]).to(rt.device)
                        loss = task.distill_loss(logits, batch, soft, units, self.cfg.label_smoothing, teacher.alpha,
                                                 teacher.temperature)
                    self.scaler.scale(loss).backward()
                    total += loss.detach()
                return total
            except torch.OutOfMemoryError:
                if self.cfg.micro_batch_size != "auto" or st.micro_batch_size == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                batch = logits = loss = None  # type: ignore[assignment]  # drop the activations before retrying
                if rt.device.type == "cuda":
                    torch.cuda.empty_cache()
                st.micro_batch_size = max(1, st.micro_batch_size // 2)
                st.oom_retries += 1

    def _evaluate(self, epoch: float, indices: int) -> str:
        """One evaluation at this optimizer step, reported for each of the ``indices``
        evaluation indices that fall on it; then a checkpoint when one is due. Returns the
        stop reason (``completed`` to go on)."""
        st = self.st
        st.train_time += time.perf_counter() - self.t_train
        stop_reason = self._record(epoch, indices)
        if (self.writer is not None and stop_reason == "completed" and st.step < self.total_steps  # none after the last
                and self.writer.due):
            self.writer.save(self.model, self.optimizer, self.scheduler, self.scaler, st)
        self.t_train = time.perf_counter()
        return stop_reason

    def _record(self, epoch: float, indices: int) -> str:
        """Metrics, history, best, early stopping, report.

        The evaluation stands for ``indices`` consecutive evaluation indices: each gets its
        history record and its report, in order, and a stop at one of them ends the group
        there. Early-stopping patience counts indices since the last index at which the best
        model was evaluated: a repeat of an improving evaluation does not count (it is the best
        model), a repeat of a worse one does, so patience means the same amount of training
        for every batch size.
        """
        st, cfg, metric = self.st, self.cfg, self.select.metric
        t_eval = time.perf_counter()
        train_loss = float(self.running.item()) / max(1, st.running_n)
        if not math.isfinite(train_loss):
            raise Diverged(f"non-finite training loss at optimizer step {st.step}")
        metrics, payload = evaluate(self.model, self.task, self.data.val, cfg.eval_batch_size, self.data.pad_id, self.rt)
        if not math.isfinite(metrics["val_loss"]):
            raise Diverged(f"non-finite validation loss at optimizer step {st.step}")
        self.running.zero_()
        st.running_sum, st.running_n = 0.0, 0
        st.eval_time += time.perf_counter() - t_eval
        improved = not st.best or _better(metrics[metric], st.best[metric], self.select.maximize)
        learning_rate = self.scheduler.get_last_lr()[0]
        for repeat in range(indices):
            eval_index = len(st.history) + 1
            record = {"step": eval_index, "epoch": epoch, "optimizer_step": st.step, "examples_seen": st.examples,
                      "train_loss": train_loss, "learning_rate": learning_rate, **metrics}
            st.history.append(record)
            if improved and repeat == 0:
                st.best, st.best_step, st.best_payload = dict(record), eval_index, payload
                if self.task.finish_reads_model:
                    st.best_weights = _trainable(self.model)
            st.since_best = 0 if improved else st.since_best + 1
            if self.hooks.report is not None and self.hooks.report(eval_index, metrics):
                return "stopped_by_report"
            if cfg.early_stopping_patience is not None and st.since_best >= cfg.early_stopping_patience:
                return "early_stopping"
        return "completed"

    def _interrupt(self) -> None:
        st = self.st
        st.train_time += time.perf_counter() - self.t_train
        st.running_sum = float(self.running.item())
        if self.writer is not None:
            self.writer.save(self.model, self.optimizer, self.scheduler, self.scaler, st, background=False)
        raise Interrupted(st.step, self.writer is not None)

    def _cost(self) -> dict[str, Any]:
        st = self.st
        return {
            "train_samples_per_second": st.examples / st.train_time if st.train_time > 0 else 0.0,
            "time_to_first_step_s": (self.first_step_at - self.started_at) if self.first_step_at else float("nan"),
            "train_time_s": st.train_time,
            "eval_time_s": st.eval_time,
            "finish_time_s": self.finish_time,  # of eval_time_s: the task's extras after training (generations)
            "optimizer_steps": st.step,
            "examples_seen": st.examples,
            "train_tokens_per_second": st.tokens / st.train_time if st.train_time > 0 else 0.0,
            "peak_memory_mb": peak_memory_mb(self.rt.device),
            "micro_batch_size": st.micro_batch_size,
            "oom_retries": st.oom_retries,
            # What it computed in (fp32, bf16, fp16): not "precision", which a task may name a metric.
            "train_precision": self.rt.precision,
        }
