"""The training loop: a lean PyTorch fine-tuning loop that knows nothing of Optuna.

It evaluates ``train.evals_per_epoch`` times per epoch and hands each evaluation to a
``report(step, metrics) -> stop?`` callback (convention 4); the caller decides what a report
means (an Optuna trial prunes, a test records). Step numbers are evaluation indices (1, 2, ...)
and index k always falls after the fraction k / (evals_per_epoch * num_epochs) of training,
whatever the batch size (:func:`eval_points`), so the pruner compares equal amounts of training.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import get_scheduler

from llm_doe.finetune.data import Encoded
from llm_doe.finetune.metrics import classification_metrics
from llm_doe.schema import TrainConfig

Report = Callable[[int, dict[str, float]], bool]


class Diverged(RuntimeError):
    """The training or validation loss became NaN or infinite."""


class Interrupted(Exception):
    """``should_stop`` asked to stop (a signal): the run was checkpointed first."""

    def __init__(self, step: int, checkpointed: bool) -> None:
        super().__init__(f"interrupted at optimizer step {step}" + (" (checkpointed)" if checkpointed else ""))
        self.step = step
        self.checkpointed = checkpointed


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only); the previous one is intact."""


CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Runtime:
    """Where a trial runs; not a hyperparameter."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    log_every_steps: int = 20
    progress: bool = False

    @property
    def precision(self) -> str:
        """What ``train.precision=auto`` resolved to: fp32 | bf16 | fp16."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (so bf16 autocast is faster, not emulated):
    NVIDIA GPUs of compute capability 8.0 and later (Ampere), ROCm GPUs with bf16, CPUs with
    AVX512-BF16 or AMX (Zen 4, Sapphire Rapids and later). Older CPUs and GPUs (V100, T4)
    would emulate bf16, slower than fp32."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_runtime(device: str, precision: str, log_every_steps: int = 20, progress: bool = False) -> Runtime:
    """auto device = CUDA when present; auto precision = bf16 autocast where the device computes
    bf16 natively (:func:`native_bf16`), else fp32. Weights and optimizer state stay fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if precision == "auto":
        dtype = torch.bfloat16 if native_bf16(dev) else None
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(dev, dtype, log_every_steps, progress)


@dataclass
class TrainResult:
    """What a fine-tuning run produced: per-eval history, the best eval, and its cost."""

    history: list[dict[str, float]]
    best_step: int
    best: dict[str, float]
    stop_reason: str  # completed | early_stopping | stopped_by_report | max_steps
    best_labels: np.ndarray
    best_probs: np.ndarray
    cost: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0  # evaluations restored from a checkpoint (0 = fresh start)
    last_learning_rate: float = float("nan")  # the schedule's rate after the last optimizer step


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches; with grouping, examples of similar length share a batch (less padding).

    Grouping sorts within seeded random mega-batches of 50 batches and then shuffles the batch
    order, so the order stays random across batches (as transformers' LengthGroupedSampler).
    """
    perm = rng.permutation(len(lengths))
    if group_by_length:
        mega = batch_size * 50
        chunks = [perm[i:i + mega] for i in range(0, len(perm), mega)]
        perm = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(data: Encoded, index: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest example of this batch only."""
    width = int(data.lengths[index].max())
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    for row, i in enumerate(index):
        seq = data.input_ids[i]
        ids[row, : len(seq)] = seq
    input_ids = torch.from_numpy(ids)
    # From lengths, not from pad ids: a pad id can be a real token for some tokenizers.
    mask = torch.from_numpy(np.arange(width)[None, :] < data.lengths[index][:, None])
    labels = torch.from_numpy(data.labels[index])
    non_blocking = device.type == "cuda"
    if non_blocking:
        input_ids, mask, labels = input_ids.pin_memory(), mask.pin_memory(), labels.pin_memory()
    return {
        "input_ids": input_ids.to(device, non_blocking=non_blocking),
        "attention_mask": mask.to(device, non_blocking=non_blocking).long(),
        "labels": labels.to(device, non_blocking=non_blocking),
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: weight decay on weight matrices (and embeddings) only.

    Decay pulls a weight towards 0, which is wrong for a normalisation's gain (its neutral value
    is 1) and pointless for a bias. The rule holds whatever the architecture: no decay for the
    parameters of any module whose class name contains "Norm" (LayerNorm, RMSNorm,
    LlamaRMSNorm, GroupNorm, BatchNorm...), nor for any parameter named ``*bias`` or with fewer
    than two dimensions (gains and biases of modules the first test misses).
    """
    norm_params = {id(p) for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = id(param) in norm_params or name.endswith("bias") or param.ndim < 2
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def eval_points(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """The optimizer step (within an epoch, 1-based) of each of the epoch's evaluations.

    One entry per evaluation index, so index k of a run always means the same fraction of
    training, k / (evals_per_epoch * num_epochs), within one optimizer step, whatever the
    batch size. When an epoch has fewer steps than evaluations, several indices share a step
    (the list repeats it): the loop evaluates once there and reports that evaluation for each
    index, rather than dropping indices and shifting the later ones to earlier training.
    """
    return [max(1, round(steps_per_epoch * k / evals_per_epoch)) for k in range(1, evals_per_epoch + 1)]


@torch.inference_mode()
def evaluate(model: nn.Module, data: Encoded, batch_size: int, pad_id: int, rt: Runtime) -> tuple[dict[str, float], np.ndarray]:
    """Validation loss (plain cross-entropy, no smoothing, so trials compare) and metrics.

    Examples are visited longest first in large batches: little padding, no gradients.
    """
    was_training = model.training
    model.eval()
    order = np.argsort(-data.lengths, kind="stable")
    loss_sum = torch.zeros((), device=rt.device)
    probs = torch.empty((len(data), model.config.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = collate(data, index, pad_id, rt.device)  # decoder classifiers pool on the last non-pad id
        with torch.autocast(rt.device.type, dtype=rt.dtype or torch.float32, enabled=rt.dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        probs[torch.from_numpy(index)] = logits.softmax(-1).cpu()
    model.train(was_training)
    val_loss = float(loss_sum.item()) / max(1, len(data))
    probs_np = probs.numpy()
    metrics = {"val_loss": val_loss, **classification_metrics(data.labels, probs_np)}
    return metrics, probs_np


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS: the process's peak resident set.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", disable=None, dynamic_ncols=True)


@dataclass
class _State:
    """Everything a resumed run needs besides the model/optimizer/scheduler/scaler states."""

    epoch: int = 0
    batches_done: int = 0  # batches of ``epoch`` already trained
    epoch_rng: dict[str, Any] | None = None  # batch-order RNG at the start of ``epoch``
    step: int = 0
    examples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    best_probs: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    since_best: int = 0
    running_sum: float = 0.0
    running_n: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    micro_batch_size: int = 0  # 0 = not chosen yet
    oom_retries: int = 0


def _payload(model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: _State,
             identity: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "identity": identity,  # whose checkpoint this is: only that run resumes it
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "state": state.__dict__, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _write(folder: Path, payload: dict[str, Any]) -> None:
    """Atomic write (temp file + rename): a failed write leaves the previous checkpoint intact."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, folder / CHECKPOINT_FILE)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write a checkpoint in {folder}: {err}") from err


def save_checkpoint(folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: _State,
                    identity: dict[str, Any] | None = None) -> None:
    """Write the latest checkpoint now, stamped with the run's ``identity``."""
    _write(folder, _payload(model, optimizer, scheduler, scaler, state, identity))


class _CheckpointWriter:
    """Writes checkpoints in a background thread, so training goes on while ~260 MB (MiniLM
    with AdamW) reach the disk: the loop pays only for a snapshot copy in memory. One write
    at a time; its error surfaces at the next checkpoint or at the end of training."""

    def __init__(self, folder: Path, identity: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.identity = identity
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def save(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: _State,
             background: bool = True) -> None:
        self.wait()
        # A snapshot: training mutates parameters and optimizer state in place.
        payload = copy.deepcopy(_payload(model, optimizer, scheduler, scaler, state, self.identity))
        if not background:
            _write(self.folder, payload)
            return

        def run() -> None:
            try:
                _write(self.folder, payload)
            except BaseException as err:  # re-raised in the training thread by wait()
                self._error = err

        self._thread = threading.Thread(target=run, name="llm_doe-checkpoint", daemon=True)
        self._thread.start()


def _load_checkpoint(folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                     device: torch.device, identity: dict[str, Any] | None = None) -> _State | None:
    """Restore the checkpoint in ``folder`` if it is ``identity``'s; None to start fresh.

    A checkpoint is found by its folder, and a folder can outlive its run (a study deleted and
    recreated under the same name reuses trial numbers): one stamped with another identity
    (or none, while this run has one) is another run's weights, optimizer and history, so it
    is deleted and the run starts fresh.
    """
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    if payload.get("identity") != identity:
        logging.getLogger("llm_doe").warning(
            "ignoring and deleting the checkpoint in %s: it was written by %s, not by this run (%s); starting fresh",
            folder, payload.get("identity") or "an unidentified run", identity)
        path.unlink(missing_ok=True)
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    if payload["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
    return _State(**payload["state"])


def train(
    model: nn.Module,
    train_data: Encoded,
    val_data: Encoded | None,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    pad_id: int,
    metric: str = "val_loss",
    maximize: bool = False,
    report: Report | None = None,
    started_at: float | None = None,
    desc: str = "train",
    checkpoint_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_steps: int | None = None,
    schedule_steps: int | None = None,
    checkpoint_every_s: float = 0.0,
    checkpoint_identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` and evaluate it on the validation split as configured.

    Args:
        metric: the metric whose best value over evaluations picks the best step, and the
            one early stopping watches.
        maximize: whether larger ``metric`` is better.
        report: called after every evaluation with (step, metrics); returning True stops
            training (``stop_reason='stopped_by_report'``).
        started_at: ``time.perf_counter()`` when the caller's trial began, for
            ``time_to_first_step_s``.
        checkpoint_dir: where the latest checkpoint lives. If it holds one, training resumes
            from it (same batches, same RNG, earlier evaluations kept); a new one is written
            after every evaluation and when ``should_stop`` fires. The caller removes it.
        should_stop: polled after every optimizer step; True checkpoints and raises
            :class:`Interrupted` (how SIGINT/SIGTERM stop a trial without losing it).
        checkpoint_every_s: checkpoint at an evaluation only when this much training time
            passed since the last checkpoint (0 = at every evaluation): a short trial then
            writes none, and a crash loses at most one evaluation interval or this long.
        checkpoint_identity: who this run is (opaque to the loop; the objective says which
            study and trial): stamped on the checkpoints written, and a checkpoint stamped
            otherwise is deleted instead of resumed.
        max_steps: stop after this many optimizer steps (``stop_reason='max_steps'``); the
            learning-rate schedule still spans ``schedule_steps``, so the first ``max_steps``
            steps are exactly those of the full run (how the final model reproduces a trial's
            best step). At most ``schedule_steps``.
        schedule_steps: the learning-rate schedule's total steps (warmup is
            ``train.warmup_ratio`` of it); default ``train.num_epochs`` epochs of
            ``train_data``. The final model on train+val passes the trial's own total (from
            the trial's train split), so it replays the trial's rates step for step while
            drawing batches from the larger pool, as many epochs of it as ``max_steps`` needs.

    With ``val_data=None`` nothing is evaluated (training on train+val for the final model).

    Raises:
        Diverged: the training loss (checked every ``log_every_steps``) or the validation
            loss is not finite.
        Interrupted: ``should_stop`` returned True.
        CheckpointError: a checkpoint could not be written.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    model.to(rt.device)
    model.train()
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    schedule_total = steps_per_epoch * cfg.num_epochs if schedule_steps is None else schedule_steps
    if schedule_total < 1 or (max_steps is not None and not 1 <= max_steps <= schedule_total):
        raise ValueError(f"need 1 <= max_steps ({max_steps}) <= schedule_steps ({schedule_total})")
    total_steps = schedule_total if max_steps is None else max_steps  # where this run stops
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
        # Fused AdamW on CPU too: one step of MiniLM's 22.7M params 78-103 ms -> 13-15 ms here.
        fused=rt.device.type in ("cuda", "cpu"),
    )
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * schedule_total),
                              num_training_steps=schedule_total)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    indices_at = Counter(eval_points(steps_per_epoch, cfg.evals_per_epoch))  # in-epoch step -> evaluation indices

    forward = torch.compile(model) if cfg.compile else model
    auto_micro = cfg.micro_batch_size == "auto"
    st = None
    if checkpoint_dir is not None:
        st = _load_checkpoint(checkpoint_dir, model, optimizer, scheduler, scaler, rt.device, checkpoint_identity)
    resumed_from = len(st.history) if st is not None else 0
    st = st or _State()
    if st.micro_batch_size == 0:
        st.micro_batch_size = cfg.batch_size if cfg.micro_batch_size in (None, "auto") else int(cfg.micro_batch_size)
    rng = np.random.default_rng(cfg.seed)
    if st.epoch_rng is not None:
        rng.bit_generator.state = st.epoch_rng

    writer = _CheckpointWriter(checkpoint_dir, checkpoint_identity) if checkpoint_dir is not None else None
    last_checkpoint = time.perf_counter()

    def checkpoint(background: bool = True) -> None:
        nonlocal last_checkpoint
        if writer is not None:
            writer.save(model, optimizer, scheduler, scaler, st, background=background)
            last_checkpoint = time.perf_counter()

    stop_reason = "completed"
    first_step_at: float | None = None
    running = torch.tensor(st.running_sum, device=rt.device)
    bar = _progress(total_steps, rt.progress, desc)
    if bar is not None:
        bar.update(st.step)
    t_train = time.perf_counter()
    try:
        for epoch in range(st.epoch, math.ceil(total_steps / steps_per_epoch)):
            if epoch != st.epoch or st.epoch_rng is None:
                st.epoch, st.batches_done = epoch, 0
            st.epoch_rng = rng.bit_generator.state
            batches = batch_order(train_data.lengths, cfg.batch_size, rng, cfg.group_by_length)
            for in_epoch, index in enumerate(batches, 1):
                if in_epoch <= st.batches_done:
                    continue  # trained before the checkpoint
                loss = _accumulate(forward, train_data, index, pad_id, rt, loss_fn, scaler, optimizer, st, auto_micro)
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                st.step += 1
                st.batches_done = in_epoch
                st.examples += len(index)
                running += loss.detach()
                st.running_n += 1
                if first_step_at is None:
                    first_step_at = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if st.step % rt.log_every_steps == 0 and not torch.isfinite(running).item():
                    raise Diverged(f"non-finite training loss at optimizer step {st.step}")
                if in_epoch in indices_at and val_data is not None:
                    st.train_time += time.perf_counter() - t_train
                    stop_reason = _evaluate_and_report(model, val_data, cfg, rt, st, running, pad_id, metric, maximize,
                                                       report, epoch + in_epoch / steps_per_epoch,
                                                       scheduler.get_last_lr()[0], indices_at[in_epoch])
                    if bar is not None:
                        bar.set_postfix(val_loss=f"{st.history[-1]['val_loss']:.4f}")
                    due = time.perf_counter() - last_checkpoint >= checkpoint_every_s
                    if stop_reason == "completed" and st.step < total_steps and due:  # none after the last eval
                        checkpoint()
                    t_train = time.perf_counter()
                    if stop_reason != "completed":
                        break
                if should_stop is not None and should_stop():
                    st.train_time += time.perf_counter() - t_train
                    st.running_sum = float(running.item())
                    checkpoint(background=False)
                    raise Interrupted(st.step, checkpoint_dir is not None)
                if max_steps is not None and st.step >= max_steps:
                    stop_reason = "max_steps"
                    break
            if stop_reason != "completed":
                break
        if val_data is None or stop_reason == "max_steps":
            st.train_time += time.perf_counter() - t_train
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            with contextlib.suppress(CheckpointError) if sys.exc_info()[0] is not None else contextlib.nullcontext():
                writer.wait()  # the caller may remove the folder next: no write may be left running
    cost = {
        "train_samples_per_second": st.examples / st.train_time if st.train_time > 0 else 0.0,
        "time_to_first_step_s": (first_step_at - started_at) if first_step_at else float("nan"),
        "train_time_s": st.train_time,
        "eval_time_s": st.eval_time,
        "optimizer_steps": st.step,
        "examples_seen": st.examples,
        "peak_memory_mb": _peak_memory_mb(rt.device),
        "micro_batch_size": st.micro_batch_size,
        "oom_retries": st.oom_retries,
        "precision": rt.precision,
    }
    labels = val_data.labels if val_data is not None else np.empty(0, dtype=np.int64)
    return TrainResult(st.history, st.best_step, st.best, stop_reason, labels, st.best_probs, cost, resumed_from,
                       scheduler.get_last_lr()[0])


def _accumulate(forward: Callable[..., Any], data: Encoded, index: np.ndarray, pad_id: int, rt: Runtime,
                loss_fn: nn.Module, scaler: Any, optimizer: Any, st: _State, auto: bool) -> torch.Tensor:
    """Forward and backward one batch as micro-batches of ``st.micro_batch_size``, so
    ``train.batch_size`` stays the effective batch while memory follows the micro-batch.

    With ``train.micro_batch_size=auto`` a CUDA out-of-memory error halves the micro-batch
    and retries the same batch (recorded in ``st.oom_retries``); on CPU, or at a
    micro-batch of 1, the error propagates and the trial fails with its reason.
    """
    while True:
        try:
            total = torch.zeros((), device=rt.device)
            for start in range(0, len(index), st.micro_batch_size):
                chunk = index[start:start + st.micro_batch_size]
                batch = collate(data, chunk, pad_id, rt.device)
                with torch.autocast(rt.device.type, dtype=rt.dtype or torch.float32, enabled=rt.dtype is not None):
                    logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                # mean over the micro-batch, weighted by its share: the sum is the batch mean
                loss = loss_fn(logits.float(), batch["labels"]) * (len(chunk) / len(index))
                scaler.scale(loss).backward()
                total += loss.detach()
            return total
        except torch.OutOfMemoryError:
            if not auto or st.micro_batch_size == 1:
                raise
            optimizer.zero_grad(set_to_none=True)
            batch = logits = loss = None  # drop the activations before retrying
            if rt.device.type == "cuda":
                torch.cuda.empty_cache()
            st.micro_batch_size = max(1, st.micro_batch_size // 2)
            st.oom_retries += 1


def _evaluate_and_report(model: nn.Module, val_data: Encoded, cfg: TrainConfig, rt: Runtime, st: _State,
                         running: torch.Tensor, pad_id: int, metric: str, maximize: bool, report: Report | None,
                         epoch: float, learning_rate: float, indices: int = 1) -> str:
    """One evaluation: metrics, history, best, early stopping, report. Returns the stop reason.

    The evaluation stands for ``indices`` consecutive evaluation indices that fall on this
    optimizer step (:func:`eval_points`): each gets its history record and its report, in
    order, and a stop at one of them ends the group there. Early-stopping patience counts
    indices since the last index at which the best model was evaluated: a repeat of an
    improving evaluation does not count (it is the best model), a repeat of a worse one does,
    so patience means the same amount of training for every batch size.
    """
    t_eval = time.perf_counter()
    train_loss = float(running.item()) / max(1, st.running_n)
    if not math.isfinite(train_loss):
        raise Diverged(f"non-finite training loss at optimizer step {st.step}")
    metrics, probs = evaluate(model, val_data, cfg.eval_batch_size, pad_id, rt)
    if not math.isfinite(metrics["val_loss"]):
        raise Diverged(f"non-finite validation loss at optimizer step {st.step}")
    running.zero_()
    st.running_sum, st.running_n = 0.0, 0
    st.eval_time += time.perf_counter() - t_eval
    improved = not st.best or _better(metrics[metric], st.best[metric], maximize)
    for repeat in range(indices):
        eval_index = len(st.history) + 1
        record = {"step": eval_index, "epoch": epoch, "optimizer_step": st.step, "examples_seen": st.examples,
                  "train_loss": train_loss, "learning_rate": learning_rate, **metrics}
        st.history.append(record)
        if improved and repeat == 0:
            st.best, st.best_step, st.best_probs = dict(record), eval_index, probs
        st.since_best = 0 if improved else st.since_best + 1
        if report is not None and report(eval_index, metrics):
            return "stopped_by_report"
        if cfg.early_stopping_patience is not None and st.since_best >= cfg.early_stopping_patience:
            return "early_stopping"
    return "completed"
