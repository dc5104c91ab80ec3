"""Plugins: each kind of fine-tuning (a task) and each PEFT method, declared once.

A declaration is plain data (:class:`TaskSpec`, :class:`PeftMethodSpec`), importable without
torch, so config validation can read a task's metrics and which keys apply before anything heavy
loads. Every consumer asks the declaration (validation, the schema's applicable keys, the model
factory, ``final``, the objective, the report) instead of comparing names; the pattern is peft's
``register_peft_method`` and transformers' Auto registries: one call per plugin.

* A built-in task declares itself in ``llm_doe/finetune/tasks/<name>_spec.py`` (``SPEC =
  TaskSpec(...)``, torch-free) and implements itself in ``tasks/<name>.py`` (a ``Task`` subclass
  with ``spec = SPEC``); ``tasks/__init__.py`` registers each ``SPEC`` (its ``BUILTIN`` tuple), and
  ``conf/task/<name>.yaml`` makes it a choice.
* A user's task is a ``Task`` subclass with a ``spec = TaskSpec(...)`` class attribute in the
  user's own module, selected by ``task.target: my_module.MyTask`` (a task yaml in the user's
  config directory, found through ``hydra.searchpath``): :func:`task_spec` imports it then.
* A PEFT method declares itself in ``llm_doe/finetune/peft.py`` beside the function that builds
  peft's config for it.

This module imports nothing of llm_doe at import time: the built-in declarations are imported by
name on the first lookup, so nothing here forms an import loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from llm_doe.errors import ConfigError

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class TrialCheck:
    """A sign, in a metric a task's evaluation returns, that a trial learned nothing.

    The objective records the value as an integer trial attribute ``metric`` and logs
    ``warning`` (``str.format`` fields: ``trial`` and the best evaluation's metrics, as text)
    when it equals ``bad``; the analysis counts such trials in its warnings.
    """

    metric: str
    bad: float
    warning: str


@dataclass(frozen=True)
class TaskSpec:
    """One kind of fine-tuning, declared: what config validation, the schema, the model factory,
    ``final``, the objective and the report know of it without importing it."""

    #: The config name (``task=NAME``; ``task.name``).
    name: str
    #: Each metric its evaluations return and its direction, ``val_loss`` first (what a study
    #: optimises by default); any of them may be ``study.metric``.
    metrics: Mapping[str, str]
    #: The ``data.source`` values it reads (``data=NAME``); empty: any.
    sources: tuple[str, ...] = ()
    #: The ``task.*`` keys that apply to it (what a trial's config.yaml shows).
    keys: tuple[str, ...] = ("name", "target")
    #: ``data.*`` keys only some of its sources read, with those sources (``{"path": ("csv",)}``):
    #: elsewhere they do not apply (a trial's config.yaml leaves them out).
    source_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The ``data.*`` keys that choose its examples or their labels: a study that samples one of
    #: them has no single set of classes to record (``search.data_attrs``).
    data_keys: tuple[str, ...] = ()
    #: peft's ``TaskType`` name for its model (``SEQ_CLS``, ``CAUSAL_LM``, ``TOKEN_CLS``); None:
    #: peft's generic model.
    peft_task_type: str | None = None
    #: The transformers Auto class of its model (``AutoModelForSequenceClassification``): what
    #: the model factory loads; empty when the task builds its model otherwise.
    model_class: str = ""
    #: Hugging Face's pipeline task of an export (the model card's ``pipeline_tag``).
    pipeline_tag: str = ""
    #: Signs that a trial learned nothing (see :class:`TrialCheck`).
    checks: tuple[TrialCheck, ...] = ()
    #: The optional levers its ``Task`` implements: ``augment`` (``Task.augment``: augmented copies
    #: of training examples, ``augment.*``) and ``distill`` (``Task.teacher_outputs`` and
    #: ``Task.distill_loss``: a teacher's soft labels, ``distill.*``). Validation refuses the others.
    levers: tuple[str, ...] = ()
    #: ``package.module.Class`` of its ``Task`` subclass, imported on first use. A user's task
    #: selected by ``task.target`` leaves it empty: the registry fills it in.
    target: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "source_keys", MappingProxyType({k: tuple(v) for k, v in self.source_keys.items()}))
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a task needs a name, got {self.name!r}")
        if next(iter(self.metrics), None) != "val_loss":
            raise ValueError(f"task {self.name}: metrics must start with val_loss, got {list(self.metrics)}")
        wrong = {m: d for m, d in self.metrics.items() if d not in DIRECTIONS}
        if wrong:
            raise ValueError(f"task {self.name}: metric directions must be minimize or maximize, got {wrong}")

    def direction(self, metric: str) -> str | None:
        """``metric``'s direction, or None when the task has no such metric."""
        return self.metrics.get(metric)

    @property
    def test_metrics(self) -> tuple[str, ...]:
        """What ``final`` reports on the test split: the metrics, ``val_loss`` as ``test_loss`` (last)."""
        return (*(m for m in self.metrics if m != "val_loss"), "test_loss")


@dataclass(frozen=True)
class PeftMethodSpec:
    """One PEFT method, declared: the keys that apply, what it needs of the model and whether an
    export can merge it into plain weights."""

    #: The config name (``peft=NAME``; ``peft.method``).
    name: str
    #: The ``peft.*`` keys that apply to it.
    keys: tuple[str, ...] = ("method",)
    #: ``(PeftConfig, model, peft task type) -> peft config`` (imports peft lazily); None: no
    #: adapters, every weight trains.
    build: Callable[..., Any] | None = None
    #: Whether ``peft.target_modules`` names the modules it adapts (checked against the model).
    targets: bool = False
    #: Whether it needs a decoder that takes past key values (refused on an encoder).
    decoder_only: bool = False
    #: Whether ``final`` can merge it into weights ``from_pretrained`` loads.
    mergeable: bool = True
    #: Whether it puts virtual tokens before each row (prefix, prompt): no packed rows then.
    virtual_tokens: bool = False

    @property
    def adapters(self) -> bool:
        """Whether it wraps the model in adapters (False: full fine-tuning)."""
        return self.build is not None


_TASKS: dict[str, TaskSpec] = {}
_PEFT_METHODS: dict[str, PeftMethodSpec] = {}
#: The modules whose import registers the built-in declarations.
_BUILTINS = {"task": "llm_doe.finetune.tasks", "peft": "llm_doe.finetune.peft"}
_LOADED: set[str] = set()


def _builtins(kind: str) -> None:
    if kind not in _LOADED:
        _LOADED.add(kind)
        importlib.import_module(_BUILTINS[kind])


def register_task(spec: TaskSpec) -> TaskSpec:
    """Declare a task (its spec module calls this once). Returns ``spec``."""
    known = _TASKS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"task {spec.name!r} is declared twice ({known.target or '?'} and {spec.target or '?'})")
    _TASKS[spec.name] = spec
    return spec


def register_peft_method(spec: PeftMethodSpec) -> PeftMethodSpec:
    """Declare a PEFT method. Returns ``spec``."""
    known = _PEFT_METHODS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"PEFT method {spec.name!r} is declared twice")
    _PEFT_METHODS[spec.name] = spec
    return spec


def task_names() -> tuple[str, ...]:
    """The declared tasks (the built-in ones, and users' tasks loaded so far)."""
    _builtins("task")
    return tuple(_TASKS)


def task_specs() -> tuple[TaskSpec, ...]:
    """The declarations of :func:`task_names`."""
    _builtins("task")
    return tuple(_TASKS.values())


def peft_method_names() -> tuple[str, ...]:
    """The declared PEFT methods."""
    _builtins("peft")
    return tuple(_PEFT_METHODS)


def import_object(path: str) -> Any:
    """The object ``package.module.Name`` (or ``package.module:Name``) names, imported."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{path!r} is not package.module.Name")
    return getattr(importlib.import_module(module), attr)


def task_spec(name: str, target: str | None = None) -> TaskSpec:
    """The declaration of task ``name``; with ``target`` (``task.target``), the user's ``Task``
    subclass it names is imported and its ``spec`` declared first. Raises ConfigError."""
    _builtins("task")
    if target:
        return _user_task(name, target)
    spec = _TASKS.get(name)
    if spec is None:
        raise ConfigError("task.name", f"must be one of {'|'.join(_TASKS)} (or a task of your own with "
                                       f"task.target: my_module.MyTask), got {name!r}")
    return spec


def _user_task(name: str, target: str) -> TaskSpec:
    """``task.target`` names a ``Task`` subclass with a ``spec`` class attribute, or a ``TaskSpec``
    whose own ``target`` names the class (a declaration kept in a light module: validation then
    imports no torch)."""
    try:
        found = import_object(target)
    except (ImportError, AttributeError) as err:
        raise ConfigError("task.target", f"cannot import {target!r}: {err} (is its folder the working directory "
                                         "or on PYTHONPATH?)") from None
    if isinstance(found, TaskSpec):
        if not found.target:
            raise ConfigError("task.target", f"{target!r} is a TaskSpec without a target: set its target to the "
                                             "Task subclass, package.module.Class")
        spec, path = found, found.target
    elif isinstance(found, type) and isinstance(getattr(found, "spec", None), TaskSpec):
        # The class named is the one to build, whatever target a spec copied from another task says.
        spec, path = found.spec, f"{found.__module__}.{found.__qualname__}"  # type: ignore[attr-defined]
    else:
        raise ConfigError("task.target", f"{target!r} must be a Task subclass with a class attribute "
                                         "spec = TaskSpec(...), or a TaskSpec")
    if spec.name != name:
        raise ConfigError("task.name", f"is {name!r} but {target} declares the task {spec.name!r}: set task.name: "
                                       f"{spec.name}")
    known = _TASKS.get(name)
    if known is not None:
        if known.target != path:
            raise ConfigError("task.name", f"{name!r} is already the task {known.target}: give yours another name")
        return known
    keys = spec.keys if "target" in spec.keys else (*spec.keys, "target")  # a trial's config.yaml names the class
    return register_task(replace(spec, target=path, keys=keys))


def peft_method(name: str) -> PeftMethodSpec:
    """The declaration of PEFT method ``name``. Raises ConfigError."""
    _builtins("peft")
    spec = _PEFT_METHODS.get(name)
    if spec is None:
        raise ConfigError("peft.method", f"must be one of {'|'.join(_PEFT_METHODS)}, got {name!r}")
    return spec


__all__ = ["PeftMethodSpec", "TaskSpec", "TrialCheck", "import_object", "peft_method", "peft_method_names",
           "register_peft_method", "register_task", "task_names", "task_spec", "task_specs"]
