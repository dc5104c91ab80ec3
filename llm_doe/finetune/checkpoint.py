"""Checkpoints of a training run: written in the background, resumed only by the run that wrote them.

A checkpoint holds the model's trained weights (its frozen ones, a PEFT model's base, are
rebuilt as they were), optimizer, scheduler and scaler states, the RNG states and the
:class:`TrainState` (step, batch position, history, best evaluation), so a resumed run trains
the same batches in the same order and keeps its earlier evaluations. Each is stamped with an
identity the caller gives (opaque here: the objective says which study and trial), and a
checkpoint stamped otherwise is deleted, never resumed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
log = logging.getLogger("llm_doe")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only); the previous one is intact."""


@dataclass
class CheckpointPlan:
    """Where a run keeps its latest checkpoint, how often, and whose it is.

    Attributes:
        folder: The checkpoint's folder. If it holds one of this run's, training resumes from it;
            the caller removes the folder when the run is over.
        every_s: Checkpoint at an evaluation only when this much time passed since the last
            checkpoint (0 = at every evaluation): a short run writes none, and a crash loses at
            most one evaluation interval or this long. Signals always checkpoint.
        identity: Who this run is, stamped on every checkpoint written.
    """

    folder: Path
    every_s: float = 0.0
    identity: dict[str, Any] | None = None


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model/optimizer/scheduler/scaler states."""

    epoch: int = 0
    batches_done: int = 0  # batches of ``epoch`` already trained
    epoch_rng: dict[str, Any] | None = None  # batch-order RNG at the start of ``epoch``
    step: int = 0
    examples: int = 0
    tokens: int = 0  # non-pad tokens through the model in training
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    best_payload: Any = None  # the task's evaluation payload at the best evaluation
    # The best evaluation's trainable weights (by parameter name, on the CPU), when the task's
    # after-training extras read the model; None otherwise.
    best_weights: dict[str, Any] | None = None
    since_best: int = 0
    running_sum: float = 0.0
    running_n: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    micro_batch_size: int = 0  # 0 = not chosen yet
    oom_retries: int = 0


def _frozen_names(model: nn.Module) -> set[str]:
    """The ``state_dict`` names of the parameters that do not train (every alias of a tied one)."""
    params = list(model.named_parameters(remove_duplicate=False))
    trained = {id(p) for _, p in params if p.requires_grad}
    return {name for name, p in params if id(p) not in trained}


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its frozen parameters: what training changes (the adapter and
    any trainable head of a PEFT model, every weight when all train) and its buffers. The frozen
    weights are the base model's as built; the run that resumes builds them again (the same
    pretrained weights, or the same seed), so a PEFT trial's checkpoint stays small."""
    frozen = _frozen_names(model)
    return {name: value for name, value in model.state_dict().items() if name not in frozen}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trained_state` into a model built as the run was; anything else missing from
    it, or left over, is an error (never a silent partial load)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    left_out = set(missing) - _frozen_names(model)
    if left_out or unexpected:
        raise RuntimeError(f"the checkpoint does not fit the model: missing {sorted(left_out)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


def _payload(model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: TrainState,
             identity: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "identity": identity,  # whose checkpoint this is: only that run resumes it
        "model": trained_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "state": dict(vars(state)), "torch_rng": torch.get_rng_state(),
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


class CheckpointWriter:
    """Writes checkpoints in a background thread, so training goes on while ~260 MB (MiniLM
    with AdamW) reach the disk: the loop pays only for a snapshot copy in memory. One write
    at a time; its error surfaces at the next checkpoint or at :meth:`wait`."""

    def __init__(self, plan: CheckpointPlan) -> None:
        self.plan = plan
        self.last_saved = time.perf_counter()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def due(self) -> bool:
        """Whether ``plan.every_s`` passed since the last checkpoint (or the run's start)."""
        return time.perf_counter() - self.last_saved >= self.plan.every_s

    def wait(self) -> None:
        """Block until the write under way is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def save(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: TrainState,
             background: bool = True) -> None:
        """Snapshot the run now and write it (in the background unless ``background=False``)."""
        self.wait()
        # A snapshot: training mutates parameters and optimizer state in place.
        payload = copy.deepcopy(_payload(model, optimizer, scheduler, scaler, state, self.plan.identity))
        self.last_saved = time.perf_counter()
        if not background:
            _write(self.plan.folder, payload)
            return

        def run() -> None:
            try:
                _write(self.plan.folder, payload)
            except BaseException as err:  # re-raised in the training thread by wait()
                self._error = err

        self._thread = threading.Thread(target=run, name="llm_doe-checkpoint", daemon=True)
        self._thread.start()


def load_checkpoint(plan: CheckpointPlan, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                    device: torch.device) -> TrainState | None:
    """Restore the checkpoint in ``plan.folder`` if it is ``plan.identity``'s; None to start fresh.

    A checkpoint is found by its folder, and a folder can outlive its run (a study deleted and
    recreated under the same name reuses trial numbers): one stamped with another identity
    (or none, while this run has one), or written by an older version whose state this one
    cannot read, is deleted and the run starts fresh.
    """
    path = plan.folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    known = {f.name for f in dataclasses.fields(TrainState)}
    reason = None
    if payload.get("identity") != plan.identity:
        reason = f"it was written by {payload.get('identity') or 'an unidentified run'}, not by this run " \
                 f"({plan.identity})"
    elif not set(payload.get("state", {})) <= known:
        reason = "it was written by another version of llm_doe"
    if reason is not None:
        log.warning("ignoring and deleting the checkpoint in %s: %s; starting fresh", plan.folder, reason)
        path.unlink(missing_ok=True)
        return None
    load_trained_state(model, payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    if payload["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
    return TrainState(**payload["state"])
