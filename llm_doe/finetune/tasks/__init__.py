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

#: Each task's metrics and their directions, ``val_loss`` first.
TASK_METRICS: dict[str, dict[str, str]] = {
    "classification": {"val_loss": "minimize", "accuracy": "maximize", "f1": "maximize", "roc_auc": "maximize"},
}
_CLASSES = {
    "classification": "llm_doe.finetune.tasks.classification:ClassificationTask",
}
_INSTANCES: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The task called ``name`` (one instance per process)."""
    if name not in _INSTANCES:
        module, _, attr = _CLASSES[name].partition(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), attr)()
    return _INSTANCES[name]
