"""The Task interface: what differs between kinds of fine-tuning, behind one seam.

The training loop, the objective, ``final`` and the analysis ask the task; none of them knows
whether a trial classifies tweets or fine-tunes a chat model. A task owns:

* its metrics and their directions (``val_loss`` first: what a study reports by default);
* how a data config becomes encoded train/validation splits and a held-out test split;
* which model class it fine-tunes (through the model factory);
* how examples become a batch, the training loss, and an evaluation's metrics and payload;
* the per-trial artifacts it writes from the best evaluation's payload.

Each task declares itself once in a :class:`~llm_doe.plugins.TaskSpec` (its ``spec``: name,
metrics and directions, the keys and data sources that apply, peft task type, pipeline tag):
everything outside the task asks that declaration. See :mod:`llm_doe.plugins`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from llm_doe.plugins import TaskSpec
from llm_doe.schema import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    TaskConfig,
    augment_methods,
)


@dataclass
class Prepared:
    """A task's data and model for a run: tokenised train/validation, the split object (which
    guards the test split), and the factory that hands each trial a fresh model."""

    tokenizer: Any
    tokenizer_key: str
    train: Any
    val: Any
    splits: Any
    factory: Any
    pad_id: int


@dataclass
class CardText:
    """What a task says in an exported model's card (``README.md``); the rest is the study's."""

    title: str  # "fine-tuned text classifier"
    files_note: str  # the task's files beside the figures ("ROC curve in `roc.png` / `roc.csv`; ")
    data_lines: list[str]  # the "## Data" section's bullets
    usage: list[str]  # a Python snippet that loads and uses the export
    extra: list[str] = field(default_factory=list)  # sections after the test metrics (sample generations)


class Evaluator(ABC):
    """Accumulates one evaluation pass, batch by batch."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The model's output on one batch, what :meth:`update` takes: the logits by default
        (a task may reduce them as it goes, to hold less)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    @abstractmethod
    def update(self, logits: Any, batch: dict[str, torch.Tensor], index: np.ndarray) -> None:
        """Add one batch's outputs, as :meth:`forward` gave them (``index``: the examples'
        positions in the split)."""

    @abstractmethod
    def result(self) -> tuple[dict[str, float], Any]:
        """The metrics (``val_loss`` among them) and the payload artifacts are drawn from."""


class Task(ABC):
    """One kind of fine-tuning, configured by ``task.*``."""

    #: The task's declaration (what it is called, its metrics, the keys that apply, ...).
    spec: ClassVar[TaskSpec]
    #: The config name (``task=NAME``): ``spec.name``.
    name: ClassVar[str]
    #: Each metric and its direction, ``val_loss`` first: ``spec.metrics``.
    metrics: ClassVar[dict[str, str]]
    #: Whether :meth:`finish` reads the model (sample generations): the loop then keeps the best
    #: evaluation's trainable weights and hands :meth:`finish` the model with those.
    finish_reads_model: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:
            cls.name = spec.name
            cls.metrics = dict(spec.metrics)

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def prepare(self, model_cfg: ModelConfig, data_cfg: DataConfig) -> Prepared:
        """Tokenizer, encoded splits and model factory (cached per process: trials after the
        first pay nothing). Raises ConfigError on bad input."""

    @abstractmethod
    def encode(self, split: Any, prepared: Prepared, data_cfg: DataConfig) -> Any:
        """Tokenise another split (the test split, train+val) as the training splits are."""

    @staticmethod
    @abstractmethod
    def join(*splits: Any) -> Any:
        """One split of several (train+val for the final model)."""

    @abstractmethod
    def collate(self, data: Any, index: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Examples ``index`` of ``data`` as one padded batch on ``device``."""

    def train_collate(self, model: torch.nn.Module, rt: Any) -> Callable[..., dict[str, torch.Tensor]]:
        """How a run of ``model`` makes its training batches, :meth:`collate`'s signature (by
        default :meth:`collate`; a task may pack examples where the model allows)."""
        return self.collate

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The keywords the model's forward takes from a batch (no key/value cache: nothing
        generates from a training forward)."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}

    @abstractmethod
    def loss_units(self, data: Any, index: np.ndarray) -> int:
        """What a batch's loss averages over (examples, or label tokens): micro-batches are
        weighted by their share of it, so their sum is the batch's loss."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], units: int, label_smoothing: float
             ) -> torch.Tensor:
        """This micro-batch's share of the batch's training loss (``units``: the whole batch's)."""

    @abstractmethod
    def evaluator(self, data: Any, model: torch.nn.Module) -> Evaluator:
        """A fresh accumulator for one evaluation pass of ``model`` over ``data``."""

    def augment(self, split: Any, cfg: AugmentConfig, seed: int) -> Any:
        """``split`` (training examples, raw) followed by ``cfg.copies`` augmented copies of each
        example, drawn from ``seed``. A task that augments overrides it (and lists ``augment`` in its
        spec's ``levers``, which validation reads); by default there is none."""
        raise ConfigError("augment.method", f"task={self.name} has no data augmentation: use augment.method=none")

    def training_data(self, prepared: Prepared, split: Any, data_cfg: DataConfig, augment_cfg: AugmentConfig,
                      seed: int) -> tuple[Any, Any]:
        """What a run trains on: the raw training examples (``split``, augmented when
        ``augment.method`` names operations) and their encoding. Validation and test data never
        pass through here. ``split`` is ``prepared.splits.train`` for a trial (encoded already:
        ``prepared.train``), train+val for a final model on both."""
        if not augment_methods(augment_cfg.method):
            encoded = prepared.train if split is prepared.splits.train else self.encode(split, prepared, data_cfg)
            return split, encoded
        augmented = self.augment(split, augment_cfg, seed)
        return augmented, self.encode(augmented, prepared, data_cfg)

    def check_teacher(self, teacher: str, prepared: Prepared) -> None:
        """Refuse (ConfigError on ``distill.teacher``) a teacher this task cannot learn from
        (another label set, no tokenizer), before anything is written. A task that distils
        overrides it, :meth:`teacher_outputs` and :meth:`distill_loss` (and lists ``distill`` in
        its spec's ``levers``); by default there is none."""
        raise ConfigError("distill.teacher", f"task={self.name} cannot distil from a teacher: use "
                                             "distill.teacher=null")

    def teacher_outputs(self, split: Any, cfg: DistillConfig, data_cfg: DataConfig, device: torch.device
                        ) -> np.ndarray:
        """The teacher's outputs on each example of ``split`` (the raw training examples, augmented
        copies included), in order: computed once per study and cached on disk."""
        raise ConfigError("distill.teacher", f"task={self.name} cannot distil from a teacher")

    def distill_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], teacher: torch.Tensor, units: int,
                     label_smoothing: float, alpha: float, temperature: float) -> torch.Tensor:
        """:meth:`loss` with a teacher's outputs for the micro-batch (``teacher``): at ``alpha=0``
        exactly :meth:`loss`."""
        raise NotImplementedError(f"task={self.name} cannot distil from a teacher")

    def finish(self, model: torch.nn.Module, data: Any, pad_id: int, rt: Any, payload: Any) -> Any:
        """The best evaluation's payload with whatever the task keeps of the trained model (the
        loop calls it once, after training, with the best evaluation's weights when
        :attr:`finish_reads_model`; ``final`` after its test evaluation)."""
        return payload

    def write_artifacts(self, payload: Any, folder: Path, subject: str, when: str) -> list[Path]:
        """Files drawn from an evaluation's payload into ``folder`` (none by default).

        ``subject`` and ``when`` name the model and the evaluation in titles ("trial 3",
        "at best eval"; "lr_sweep trial 3", "on the test split")."""
        return []

    def prepare_export(self, model: torch.nn.Module, prepared: Prepared) -> None:
        """Set what an exported model's config must say (label names, ...) before saving it."""

    def prepare_export_tokenizer(self, tokenizer: Any) -> None:
        """Set what an exported tokenizer must say before saving it (the chat template training
        rendered with, when the tokenizer came without one): nothing by default."""

    def study_attrs(self, prepared: Prepared) -> dict[str, Any]:
        """What a new study records of its prepared data, for a person to read (the dashboard's
        attributes, the note, the report): nothing by default."""
        return {}

    @abstractmethod
    def card(self, data_cfg: DataConfig, prepared: Prepared, sizes: dict[str, int], payload: Any) -> CardText:
        """The model card's task-specific parts (``payload``: the test evaluation's)."""

    def maximized(self, metric: str) -> bool:
        """Whether larger ``metric`` is better."""
        return self.metrics[metric] == "maximize"
