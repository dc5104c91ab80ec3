"""The training loop: a lean PyTorch fine-tuning loop that knows nothing of Optuna.

It evaluates ``train.evals_per_epoch`` times per epoch and hands each evaluation to a
``report(step, metrics) -> stop?`` callback (convention 4); the caller decides what a report
means (an Optuna trial prunes, a test records). Step numbers are evaluation indices (1, 2, ...),
so trials with different batch sizes report comparable steps to the pruner.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class Runtime:
    """Where a trial runs; not a hyperparameter."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    log_every_steps: int = 20
    progress: bool = False


def resolve_runtime(device: str, precision: str, log_every_steps: int = 20, progress: bool = False) -> Runtime:
    """auto device = CUDA when present; auto precision = bf16 where the GPU supports it, else fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if precision == "auto":
        dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
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
    stop_reason: str  # completed | early_stopping | stopped_by_report
    best_labels: np.ndarray
    best_probs: np.ndarray
    cost: dict[str, float] = field(default_factory=dict)


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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: never on biases, LayerNorm or embeddings' norms."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm,)) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or id(param) in norm_params else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _eval_points(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Optimizer steps (within an epoch, 1-based) after which to evaluate."""
    points = {max(1, round(steps_per_epoch * k / evals_per_epoch)) for k in range(1, evals_per_epoch + 1)}
    return sorted(points)


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
        batch = collate(data, index, 0, rt.device)
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


def train(
    model: nn.Module,
    train_data: Encoded,
    val_data: Encoded,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    pad_id: int,
    metric: str = "val_loss",
    maximize: bool = False,
    report: Report | None = None,
    started_at: float | None = None,
    desc: str = "train",
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

    Raises:
        Diverged: the training loss (checked every ``log_every_steps``) or the validation
            loss is not finite.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    model.to(rt.device)
    model.train()
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.num_epochs
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, fused=rt.device.type == "cuda",
    )
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    rng = np.random.default_rng(cfg.seed)
    eval_points = set(_eval_points(steps_per_epoch, cfg.evals_per_epoch))

    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_step, best_probs, since_best = 0, np.empty((0, 0)), 0
    stop_reason = "completed"
    step = examples = 0
    first_step_at: float | None = None
    train_time = eval_time = 0.0
    running = torch.zeros((), device=rt.device)
    running_n = 0
    bar = _progress(total_steps, rt.progress, desc)
    t_train = time.perf_counter()
    try:
        for epoch in range(cfg.num_epochs):
            for in_epoch, index in enumerate(batch_order(train_data.lengths, cfg.batch_size, rng, cfg.group_by_length), 1):
                batch = collate(train_data, index, pad_id, rt.device)
                with torch.autocast(rt.device.type, dtype=rt.dtype or torch.float32, enabled=rt.dtype is not None):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = loss_fn(logits.float(), batch["labels"])
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                examples += len(index)
                running += loss.detach()
                running_n += 1
                if first_step_at is None:
                    first_step_at = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if step % rt.log_every_steps == 0 and not torch.isfinite(running).item():
                    raise Diverged(f"non-finite training loss at optimizer step {step}")
                if in_epoch not in eval_points:
                    continue
                train_time += time.perf_counter() - t_train
                t_eval = time.perf_counter()
                train_loss = float(running.item()) / max(1, running_n)
                if not math.isfinite(train_loss):
                    raise Diverged(f"non-finite training loss at optimizer step {step}")
                metrics, probs = evaluate(model, val_data, cfg.eval_batch_size, pad_id, rt)
                if not math.isfinite(metrics["val_loss"]):
                    raise Diverged(f"non-finite validation loss at optimizer step {step}")
                running.zero_()
                running_n = 0
                eval_index = len(history) + 1
                record = {"step": eval_index, "epoch": epoch + in_epoch / steps_per_epoch, "optimizer_step": step,
                          "examples_seen": examples, "train_loss": train_loss,
                          "learning_rate": scheduler.get_last_lr()[0], **metrics}
                history.append(record)
                eval_time += time.perf_counter() - t_eval
                if not best or _better(metrics[metric], best[metric], maximize):
                    best, best_step, best_probs, since_best = dict(record), eval_index, probs, 0
                else:
                    since_best += 1
                if bar is not None:
                    bar.set_postfix(val_loss=f"{metrics['val_loss']:.4f}")
                if report is not None and report(eval_index, metrics):
                    stop_reason = "stopped_by_report"
                elif cfg.early_stopping_patience is not None and since_best >= cfg.early_stopping_patience:
                    stop_reason = "early_stopping"
                t_train = time.perf_counter()
                if stop_reason != "completed":
                    break
            if stop_reason != "completed":
                break
    finally:
        if bar is not None:
            bar.close()
    cost = {
        "train_samples_per_second": examples / train_time if train_time > 0 else 0.0,
        "time_to_first_step_s": (first_step_at - started_at) if first_step_at else float("nan"),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "optimizer_steps": step,
        "examples_seen": examples,
        "peak_memory_mb": _peak_memory_mb(rt.device),
    }
    return TrainResult(history, best_step, best, stop_reason, val_data.labels, best_probs, cost)
