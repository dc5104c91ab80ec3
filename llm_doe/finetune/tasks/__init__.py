"""Kinds of fine-tuning (:class:`~llm_doe.finetune.tasks.base.Task`), chosen by ``task=NAME``.

Each built-in task is two modules: ``<name>_spec.py`` declares it (a
:class:`~llm_doe.plugins.TaskSpec`: plain data, importable without torch, so config validation
checks ``study.metric`` before anything heavy loads) and ``<name>.py`` implements it (a ``Task``
subclass whose ``spec`` is that declaration). This package registers the declarations; a new
task adds its two modules and its ``SPEC`` to :data:`BUILTIN` below. :func:`get_task` imports a task's module on
first use. A user's own task needs no edit here: ``task.target`` names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_doe.finetune.tasks import causal_lm_spec, classification_spec
from llm_doe.plugins import import_object, register_task, task_spec

if TYPE_CHECKING:
    from llm_doe.finetune.tasks.base import Task

#: A classifier's evaluations also return how many classes it predicted (1: learned nothing).
PREDICTED_CLASSES = classification_spec.PREDICTED_CLASSES
#: The built-in tasks, the default first (error messages list them in this order).
BUILTIN = tuple(register_task(spec) for spec in (classification_spec.SPEC, causal_lm_spec.SPEC))
_INSTANCES: dict[tuple[str, str], Task] = {}


def get_task(cfg: Any) -> Task:
    """The task ``cfg`` (``task.*``) configures (one instance per process and configuration)."""
    key = (cfg.name, repr(cfg))
    if key not in _INSTANCES:
        spec = task_spec(cfg.name, getattr(cfg, "target", None))
        _INSTANCES[key] = import_object(spec.target)(cfg)
    return _INSTANCES[key]
