"""Kinds of fine-tuning (:class:`~llm_doe.finetune.tasks.base.Task`), chosen by ``task=NAME``.

:data:`TASK_METRICS` is plain data, importable without torch, so config validation can check
``study.metric`` against the task before anything heavy loads; :func:`get_task` imports the
task's module on first use. Adding a task: a module here with a ``Task`` subclass, and its
metrics and class path below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_doe.finetune.tasks.base import Task
    from llm_doe.schema import TaskConfig

#: Each task's metrics and their directions, ``val_loss`` first.
TASK_METRICS: dict[str, dict[str, str]] = {
    "classification": {"val_loss": "minimize", "accuracy": "maximize", "f1": "maximize", "roc_auc": "maximize"},
    "causal_lm": {"val_loss": "minimize", "perplexity": "minimize"},
}
#: The levers each task implements beyond the common ones: ``augment`` (``Task.augment``, data
#: augmentation of the training split) and ``distill`` (``Task.distill_loss``, a teacher's soft labels).
TASK_LEVERS: dict[str, frozenset[str]] = {
    "classification": frozenset({"augment", "distill"}),
    "causal_lm": frozenset(),
}
#: A classifier's evaluations also record how many distinct classes it predicted (1: a constant
#: predictor, which learned nothing); not a metric to optimise, a check.
PREDICTED_CLASSES = "predicted_classes"
_CLASSES = {
    "classification": "llm_doe.finetune.tasks.classification:ClassificationTask",
    "causal_lm": "llm_doe.finetune.tasks.causal_lm:CausalLMTask",
}
_INSTANCES: dict[tuple[str, str], Task] = {}


def get_task(cfg: TaskConfig) -> Task:
    """The task ``cfg`` configures (one instance per process and configuration)."""
    key = (cfg.name, repr(cfg))
    if key not in _INSTANCES:
        module, _, attr = _CLASSES[cfg.name].partition(":")
        _INSTANCES[key] = getattr(importlib.import_module(module), attr)(cfg)
    return _INSTANCES[key]
