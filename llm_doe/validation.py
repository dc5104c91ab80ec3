"""Validation of a composed config: what its types cannot say (ranges, choices, files).

:func:`validate` runs every section's checks in order and raises :class:`~llm_doe.schema.ConfigError`
for the first that fails, naming the key and what is wrong, before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_doe import constraints
from llm_doe.names import COST_METRICS
from llm_doe.plugins import peft_method, task_specs
from llm_doe.schema import (
    AUGMENT_METHODS,
    AUGMENT_OFF,
    OPTIMIZERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    SCHEDULERS,
    TRUNCATIONS,
    Config,
    ConfigError,
    applicable_keys,
    augment_methods,
    data_source_keys,
    objective_metrics,
    task_of,
)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate(cfg: Config) -> None:
    """Check what the types cannot: ranges and choices. Raises ConfigError (the first
    failing check, in the order of the sections below)."""
    _validate_task_and_model(cfg)
    _validate_data(cfg)
    _validate_train(cfg)
    _validate_peft(cfg)
    _validate_augment(cfg)
    _validate_distill(cfg)
    _validate_search(cfg)
    _validate_runtime(cfg)


def _validate_task_and_model(cfg: Config) -> None:
    """task.* and model.*."""
    m = cfg.model
    task_of(cfg)  # an unknown task.name, or a task.target that does not import, is refused here
    _check(m.kind in ("pretrained", "tiny", "tiny_llama"), "model.kind",
           f"must be 'pretrained', 'tiny' or 'tiny_llama', got {m.kind!r}")
    _check(cfg.task.loss_on in ("completion", "all"), "task.loss_on",
           f"must be completion or all, got {cfg.task.loss_on!r}")
    _check(cfg.task.packing in (True, False, "auto"), "task.packing",
           f"must be true, false or auto, got {cfg.task.packing!r}")
    _check(not (cfg.task.packing is True and peft_method(cfg.peft.method).virtual_tokens), "task.packing",
           f"peft.method={cfg.peft.method} puts virtual tokens before each row, so one packed row cannot hold "
           "several conversations: use task.packing=auto or false")
    _check(cfg.task.sample_prompts >= 0, "task.sample_prompts", f"must be >= 0, got {cfg.task.sample_prompts}")
    _check(cfg.task.sample_max_new_tokens >= 1, "task.sample_max_new_tokens",
           f"must be >= 1, got {cfg.task.sample_max_new_tokens}")
    _check(bool(m.name_or_path), "model.name_or_path", "must not be empty")
    if m.dropout is not None:
        _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    if m.keep_layers is not None:
        _check(m.kind == "pretrained", "model.keep_layers",
               f"applies to a pretrained model only (model.kind={m.kind} builds model.num_layers layers): leave it null")
        _check(m.keep_layers >= 1, "model.keep_layers", f"must be >= 1 or null, got {m.keep_layers}")
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        _check(getattr(m, key) >= 1, f"model.{key}", "must be >= 1")
    _check(m.hidden_size % m.num_heads == 0, "model.hidden_size", "must be a multiple of model.num_heads")


def _validate_data(cfg: Config) -> None:
    """data.*: the source the task reads, sizes, seeds, labels."""
    d = cfg.data
    sources = task_of(cfg).sources
    _check(not sources or d.source in sources, "data.source",
           f"task={cfg.task.name} reads data={'|'.join(sources)}, got {d.source!r}")
    if d.source in data_source_keys().get("path", ()):  # a source that reads a file of the user's
        _check(bool(d.path), "data.path", f"is required with data={d.source}")
    if d.source == "hub":
        _check(bool(d.name), "data.name", "is required with data=hub (a datasets id)")
    if d.train_size is not None:
        _check(d.train_size >= 2, "data.train_size", f"must be >= 2, got {d.train_size}")
    _check(d.val_size is None or d.val_size >= 2, "data.val_size", f"must be null or >= 2, got {d.val_size}")
    _check(d.test_size is None or d.test_size >= 0, "data.test_size", f"must be null or >= 0, got {d.test_size}")
    _check(d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}")
    _check(d.truncation in TRUNCATIONS, "data.truncation", f"must be keep or drop, got {d.truncation!r}")
    _check(d.truncation == "keep" or "truncation" in applicable_keys(cfg)["data"], "data.truncation",
           f"drop applies to chat data (answers cut by data.max_length); data={d.source} truncates every text to "
           "data.max_length")
    # The split draws with seed, seed + 1, seed + 2 (numpy seeds are 0..2**32-1).
    _check(0 <= d.seed < 2**32 - 2, "data.seed", f"must be in [0, 2**32 - 2), got {d.seed}")
    _check(d.test_seed is None or 0 <= d.test_seed < 2**32, "data.test_seed",
           f"must be null or in [0, 2**32), got {d.test_seed}")
    if d.labels is not None:
        _check(len(d.labels) >= 2, "data.labels", "needs at least two label values")
    if d.label_names is not None:
        _check(isinstance(d.label_names, dict), "data.label_names",
               f"must be a map {{label value: name}} or null, got {d.label_names!r}")
        _check(all(isinstance(n, (str, int, float)) and str(n).strip() for n in d.label_names.values()),
               "data.label_names", f"names must be non-empty text, got {list(d.label_names.values())}")
        names = [str(n) for n in d.label_names.values()]
        _check(len(set(names)) == len(names), "data.label_names", f"names must differ, got {names}")
        if d.labels is not None:
            unknown = sorted(str(k) for k in d.label_names if str(k) not in {str(v) for v in d.labels})
            _check(not unknown, "data.label_names", f"key(s) {unknown} are not in data.labels {list(d.labels)}")


def _validate_train(cfg: Config) -> None:
    """train.*."""
    t = cfg.train
    _check(t.learning_rate > 0, "train.learning_rate", f"must be > 0, got {t.learning_rate}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {t.eval_batch_size}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(t.num_epochs >= 1, "train.num_epochs", f"must be >= 1, got {t.num_epochs}")
    _check(0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    _check(t.max_grad_norm > 0, "train.max_grad_norm", f"must be > 0, got {t.max_grad_norm}")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    _check(t.evals_per_epoch >= 1, "train.evals_per_epoch", f"must be >= 1, got {t.evals_per_epoch}")
    _check(t.precision in PRECISIONS, "train.precision", f"must be one of {'|'.join(PRECISIONS)}, got {t.precision!r}")
    _check(t.lr_scheduler in SCHEDULERS, "train.lr_scheduler", f"must be one of {'|'.join(SCHEDULERS)}, got {t.lr_scheduler!r}")
    if t.early_stopping_patience is not None:
        _check(t.early_stopping_patience >= 1, "train.early_stopping_patience", "must be >= 1 or null")
    _check(0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1, "train.adam_beta1", "betas must be in [0, 1)")
    _check(t.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {'|'.join(OPTIMIZERS)}, got {t.optimizer!r}")
    if t.momentum is not None:
        _check(t.optimizer == "sgd", "train.momentum",
               f"applies to train.optimizer=sgd only, got optimizer {t.optimizer!r}: leave it null, or search it "
               "with when: {train.optimizer: sgd}")
        _check(0.0 <= t.momentum < 1.0, "train.momentum", f"must be in [0, 1) or null, got {t.momentum}")
    mb = t.micro_batch_size
    _check(mb is None or mb == "auto" or (isinstance(mb, int) and not isinstance(mb, bool) and 1 <= mb <= t.batch_size),
           "train.micro_batch_size", f"must be null, auto or an integer in [1, train.batch_size], got {mb!r}")


def _validate_peft(cfg: Config) -> None:
    """peft.*."""
    p = cfg.peft
    peft_method(p.method)  # an unknown method is refused here
    _check(p.r >= 1, "peft.r", f"must be >= 1, got {p.r}")
    if p.alpha is not None:
        _check(p.alpha > 0, "peft.alpha", f"must be > 0 or null, got {p.alpha}")
    _check(p.alpha_ratio > 0, "peft.alpha_ratio", f"must be > 0, got {p.alpha_ratio}")
    _check(0.0 <= p.dropout < 1.0, "peft.dropout", f"must be in [0, 1), got {p.dropout}")
    _check(p.num_virtual_tokens >= 1, "peft.num_virtual_tokens", f"must be >= 1, got {p.num_virtual_tokens}")
    _check(isinstance(p.target_modules, (str, list)) and bool(p.target_modules), "peft.target_modules",
           "must be attention, attention_mlp, all_linear or a non-empty list of module names")
    if p.lora_plus_ratio is not None:
        _check("lora_plus_ratio" in peft_method(p.method).keys, "peft.lora_plus_ratio",
               f"applies to peft.method=lora only, got method {p.method!r}: leave it null")
        _check(p.lora_plus_ratio > 0, "peft.lora_plus_ratio", f"must be > 0 or null, got {p.lora_plus_ratio}")


def _validate_augment(cfg: Config) -> None:
    """augment.*: which operations, how often, how many copies; only for tasks that augment."""
    a = cfg.augment
    methods = augment_methods(a.method)
    _check(isinstance(a.method, (str, list, tuple)) and (a.method == AUGMENT_OFF or bool(methods)), "augment.method",
           f"must be none, one of {'|'.join(AUGMENT_METHODS)} or a list of them, got {a.method!r}")
    for m in methods:
        _check(m != "synonym", "augment.method",
               "synonym needs an offline lexicon (NLTK's WordNet data), which is not installed here: use "
               f"{'|'.join(AUGMENT_METHODS)}")
        _check(m in AUGMENT_METHODS, "augment.method",
               f"unknown operation {m!r}: use none, one of {'|'.join(AUGMENT_METHODS)} or a list of them")
    _check(len(set(methods)) == len(methods), "augment.method", f"names an operation twice: {methods}")
    _check(0.0 < a.p <= 1.0, "augment.p", f"must be in (0, 1], got {a.p}")
    _check(a.copies >= 1, "augment.copies", f"must be >= 1, got {a.copies}")
    if methods:
        _check("augment" in task_of(cfg).levers, "augment.method",
               f"task={cfg.task.name} has no data augmentation (only {_tasks_with('augment')}): use "
               "augment.method=none")


def _validate_distill(cfg: Config) -> None:
    """distill.*: the weight and temperature of the distillation term; only for tasks that distil."""
    d = cfg.distill
    _check(0.0 <= d.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {d.alpha}")
    _check(d.temperature > 0, "distill.temperature", f"must be > 0, got {d.temperature}")
    if d.teacher is not None:
        _check(bool(str(d.teacher).strip()), "distill.teacher", "must be a model folder or id, or null")
        _check("distill" in task_of(cfg).levers, "distill.teacher",
               f"task={cfg.task.name} cannot distil from a teacher yet (only {_tasks_with('distill')}): use "
               "distill.teacher=null")


def _tasks_with(lever: str) -> str:
    return ", ".join(spec.name for spec in task_specs() if lever in spec.levers)


def _validate_search(cfg: Config) -> None:
    """sampler.*, pruner.* and study.*: what the search optimises and how long."""
    s = cfg.study
    _check(cfg.sampler.name in SAMPLERS, "sampler.name", f"must be one of {'|'.join(SAMPLERS)}, got {cfg.sampler.name!r}")
    _check(cfg.pruner.name in PRUNERS, "pruner.name", f"must be one of {'|'.join(PRUNERS)}, got {cfg.pruner.name!r}")
    _check(0 < cfg.pruner.percentile < 100, "pruner.percentile", "must be in (0, 100)")
    _check(bool(s.name), "study.name", "must not be empty (pick a study with +study=NAME)")
    _check_study_name(s.name or "")
    _check(s.n_trials >= 1, "study.n_trials", f"must be >= 1, got {s.n_trials}")
    _validate_objectives(cfg)
    _check(s.max_failures >= 1, "study.max_failures", "must be >= 1")
    if s.timeout is not None:
        _check(s.timeout > 0, "study.timeout", "must be > 0 seconds or null")
    if s.max_train_steps is not None:
        _check(s.max_train_steps >= 1, "study.max_train_steps", "must be >= 1 or null")
    _check(s.scientific_points >= 2, "study.scientific_points", "must be >= 2")
    warm = s.warm_start
    if not warm.study_name:  # its store and count mean nothing without the study to start from
        given = [key for key in ("storage", "top_k") if getattr(warm, key) is not None]
        _check(not given, f"study.warm_start.{given[0] if given else ''}",
               "is set but study.warm_start.study_name is not: name the study to start from")
    _check(warm.top_k is None or warm.top_k >= 1, "study.warm_start.top_k", f"must be >= 1, got {warm.top_k}")
    constraints.check(s.constraints, tuple(task_of(cfg).metrics), cfg.sampler.name)


def _check_study_name(name: str) -> None:
    """A study name is one folder and file name: the store, the artifacts, the checkpoints, the
    run folders and the final export are ``studies/<name>...`` by default, so a name that leaves
    the folder (``..``, ``/``, an absolute path) would write elsewhere.

    A scientific sub-study ("NAME[key=value]", as the search names them) may hold a value with a
    slash (``model.name_or_path=org/model``): its paths nest under ``studies/NAME[...`` but must
    not climb out of ``studies/``."""
    base, bracket, _ = name.partition("[")
    bad = next((part for part in ("/", "\\", "\0") if part in base), None)
    if bad is None and base in (".", ".."):
        bad = base
    _check(bad is None, "study.name", f"{name!r} is not a plain name ({bad!r} in it): it names the study's folder "
                                      "and files under studies/, so it may not contain / or \\ or be . or ..")
    if bracket:
        inside = os.path.normpath(os.path.join("studies", name))
        _check("\0" not in name and inside.startswith("studies" + os.sep), "study.name",
               f"{name!r} would name paths outside studies/")


def _validate_objectives(cfg: Config) -> None:
    """study.metric (a task metric, or a list: a task metric first, then task metrics or costs)
    and study.direction (one per metric)."""
    s = cfg.study
    metrics = task_of(cfg).metrics
    if not isinstance(s.metric, (list, tuple)):
        _check(isinstance(s.metric, str) and s.metric in metrics, "study.metric",
               f"must be one of task {cfg.task.name}'s metrics {'|'.join(metrics)}, or a list of them and costs "
               f"({'|'.join(COST_METRICS)}) for a multi-objective study, got {s.metric!r}")
    else:
        names = list(s.metric)
        _check(len(names) >= 1, "study.metric", "must not be an empty list")
        _check(names[0] in metrics, "study.metric", f"must start with a quality metric of task {cfg.task.name} "
                                                    f"({'|'.join(metrics)}), got {names[0]!r}")
        for name in names[1:]:
            _check(name in metrics or name in COST_METRICS, "study.metric",
                   f"{name!r} is neither a metric of task {cfg.task.name} ({'|'.join(metrics)}) nor a recorded "
                   f"cost ({'|'.join(COST_METRICS)})")
        _check(len(set(names)) == len(names), "study.metric", f"names a metric twice: {names}")
    if s.direction is None:
        return
    n = len(objective_metrics(cfg))
    given = list(s.direction) if isinstance(s.direction, (list, tuple)) else [s.direction]
    if isinstance(s.direction, (list, tuple)) or n > 1:
        _check(len(given) == n, "study.direction", f"needs one direction per metric ({n}), got {given}")
    for d in given:
        _check(d in ("minimize", "maximize"), "study.direction", f"must be minimize or maximize, got {d!r}")


def _validate_runtime(cfg: Config) -> None:
    """runtime.*, workers, storage.*, confirm.* and final.*: where and how runs go."""
    _check(cfg.runtime.device in ("auto", "cpu", "cuda") or cfg.runtime.device.startswith("cuda:"),
           "runtime.device", f"must be auto, cpu or cuda[:N], got {cfg.runtime.device!r}")
    if cfg.runtime.num_threads is not None:
        _check(cfg.runtime.num_threads >= 1, "runtime.num_threads", "must be >= 1 or null")
    _check(cfg.runtime.log_every_steps >= 1, "runtime.log_every_steps",
           f"must be >= 1, got {cfg.runtime.log_every_steps}")
    _check(cfg.runtime.log_every_s >= 0, "runtime.log_every_s", f"must be >= 0 seconds, got {cfg.runtime.log_every_s}")
    _check(cfg.workers >= 1, "workers", f"must be >= 1, got {cfg.workers}")
    _check(cfg.runtime.checkpoint_every_s >= 0, "runtime.checkpoint_every_s", "must be >= 0 seconds")
    st = cfg.storage
    _check(st.kind in ("rdb", "journal"), "storage.kind", f"must be rdb or journal, got {st.kind!r}")
    if st.heartbeat_interval is not None:
        _check(st.heartbeat_interval >= 1, "storage.heartbeat_interval", "must be >= 1 second or null")
        _check(st.grace_period is not None and st.grace_period > st.heartbeat_interval, "storage.grace_period",
               "must be larger than storage.heartbeat_interval")
    _check(st.max_retry >= 0, "storage.max_retry", "must be >= 0")
    c = cfg.confirm
    _check(c.top_k >= 1, "confirm.top_k", f"must be >= 1, got {c.top_k}")
    _check(c.seeds >= 1, "confirm.seeds", f"must be >= 1, got {c.seeds}")
    _check(c.first_seed >= 0 and c.first_seed + c.seeds <= 2**31, "confirm.first_seed",
           f"seeds must lie in [0, 2**31), got first_seed={c.first_seed}")
    _check(0.0 < c.alpha < 1.0, "confirm.alpha", f"must be in (0, 1), got {c.alpha}")
    if c.trials is not None:
        _check(len(c.trials) >= 1 and all(isinstance(t, int) and t >= 0 for t in c.trials), "confirm.trials",
               f"must be a list of trial numbers >= 0 or null, got {c.trials}")
    if cfg.final.trial is not None:
        _check(cfg.final.trial >= 0, "final.trial", f"must be a trial number >= 0 or null, got {cfg.final.trial}")
    _check(bool(cfg.final.output_dir), "final.output_dir", "must not be empty")


def check_files(cfg: Config) -> None:
    """The files a run reads (``data.path``, and ``data.val_path`` / ``data.test_path`` where the
    source reads them, as the tasks declare): present, files, and readable. Called by the
    commands that train (search, confirm) before they import torch, so a mistyped path is one
    line in a second, not after the 20-40 s the training stack takes to import; not part of
    :func:`validate`, as a report on a study whose data moved needs no data."""
    d = cfg.data
    reads = applicable_keys(cfg)["data"]
    for key in ("path", "val_path", "test_path"):
        value = getattr(d, key, None)
        if key not in reads or not value:
            continue
        path = Path(value)
        _check(not path.is_dir(), f"data.{key}", f"{path} is a folder, not a data file")
        _check(path.is_file(), f"data.{key}", f"{path}: no such file")
        _check(os.access(path, os.R_OK), f"data.{key}", f"{path}: not readable")
