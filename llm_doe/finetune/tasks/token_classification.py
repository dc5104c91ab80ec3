"""Token classification (named-entity recognition): a tag for every word of a sentence.

The recipe is Hugging Face's (``run_ner.py``): sentences arrive split into words
(:mod:`llm_doe.finetune.conll`), the tokenizer splits words into sub-tokens
(``is_split_into_words``), and ``word_ids()`` gives each word's label to its first sub-token;
the word's other sub-tokens and the special tokens get -100, which the loss ignores
(``task.label_all_tokens=true`` labels every sub-token instead, a ``B-`` word's later sub-tokens
with its ``I-`` tag). The loss is the mean cross-entropy over a batch's labelled tokens; the
validation loss is the mean over every labelled token of the split.

Evaluation is per word, on its first sub-token's prediction, with seqeval's entity-level
micro ``precision``, ``recall`` and ``f1`` (conlleval's rules, as the recipe's ``seqeval``
metric); a word that ``data.max_length`` cut off counts as predicted ``O`` (its entities are
missed, not dropped from the score). Per-entity figures go to ``entities.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_doe.finetune.batching import labelled_batch
from llm_doe.finetune.conll import UNER_DIR, Sentences, TaggedSplits, conll_files, load_conll
from llm_doe.finetune.model import load_tokenizer, model_factory
from llm_doe.finetune.tasks.base import CardText, Evaluator, Prepared, Task
from llm_doe.finetune.tasks.token_classification_spec import SPEC
from llm_doe.schema import ConfigError, DataConfig, ModelConfig

IGNORE_INDEX = -100
#: The columns of ``entities.csv``.
ENTITY_COLUMNS = ("entity", "precision", "recall", "f1", "support")


@dataclass
class TokenEncoded:
    """A tokenised split: unpadded token ids and labels per sentence, and where each word starts.

    ``first[i]`` holds, for each word of sentence ``i``, the position of its first sub-token
    (-1 for a word that truncation cut off or that has no sub-token); ``tags[i]`` the words' gold
    label ids, every word of the sentence.
    """

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    lengths: np.ndarray
    first: list[np.ndarray]
    tags: list[np.ndarray]
    label_counts: np.ndarray  # labelled tokens per sentence
    label_names: list[str]  # label id -> tag

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_sentences(sentences: Sentences, tokenizer: Any, max_length: int, label_names: Sequence[str],
                     label_all_tokens: bool = False) -> TokenEncoded:
    """Tokenise words into sub-tokens and align the word labels (first sub-token, or all of them)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.tokenizer", "token classification needs a fast tokenizer (word_ids() aligns "
                                             "sub-tokens to words); this one is a slow, Python tokenizer")
    label2id = {name: i for i, name in enumerate(label_names)}
    # A B- word's later sub-tokens carry its I- label when every sub-token is labelled (the recipe's b_to_i).
    inside = [label2id.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(label_names)]
    try:
        out = tokenizer(sentences.words, is_split_into_words=True, truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
    except ValueError as err:  # RoBERTa-style tokenizers want add_prefix_space for words
        raise ConfigError("model.tokenizer", f"cannot tokenise words with it: {str(err).splitlines()[0]}") from None
    input_ids, labels, first, tags = [], [], [], []
    for i, words in enumerate(sentences.words):
        gold = np.fromiter((label2id[t] for t in sentences.tags[i]), dtype=np.int64, count=len(words))
        starts = np.full(len(words), -1, dtype=np.int64)
        row = np.full(len(out["input_ids"][i]), IGNORE_INDEX, dtype=np.int64)
        previous = None
        for position, word in enumerate(out.word_ids(i)):
            if word is None:
                pass
            elif word != previous:
                starts[word] = position
                row[position] = gold[word]
            elif label_all_tokens:
                row[position] = inside[gold[word]]
            previous = word
        input_ids.append(np.asarray(out["input_ids"][i], dtype=np.int64))
        labels.append(row)
        first.append(starts)
        tags.append(gold)
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    counts = np.fromiter(((x != IGNORE_INDEX).sum() for x in labels), dtype=np.int64, count=len(labels))
    return TokenEncoded(input_ids, labels, lengths, first, tags, counts, list(label_names))


def _token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over the labelled tokens. Prompt tuning puts its virtual tokens
    before the input, so only the last ``labels.shape[1]`` positions count."""
    logits = logits[:, -labels.shape[1]:].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """seqeval's entity-level micro precision, recall and F1, and each entity type's figures
    (``entity``, ``precision``, ``recall``, ``f1``, ``support``), by type name."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {})
    metrics = {"precision": float(micro.get("precision", 0.0)), "recall": float(micro.get("recall", 0.0)),
               "f1": float(micro.get("f1-score", 0.0))}
    rows = [{"entity": name, "precision": float(r["precision"]), "recall": float(r["recall"]),
             "f1": float(r["f1-score"]), "support": int(r["support"])}
            for name, r in sorted(report.items()) if not name.endswith(" avg")]
    return metrics, rows


class _TokenEvaluator(Evaluator):
    """Token-mean validation loss, and each word's predicted tag (its first sub-token's) for seqeval."""

    def __init__(self, data: TokenEncoded, label_names: list[str]) -> None:
        self.data = data
        self.names = label_names
        self.loss_sum: torch.Tensor | None = None
        self.predicted: list[np.ndarray | None] = [None] * len(data)

    def update(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], index: np.ndarray) -> None:
        labels = batch["labels"]
        loss = _token_loss(logits, labels)
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        best = logits[:, -labels.shape[1]:].argmax(-1).cpu().numpy()
        for row, i in enumerate(index):
            starts = self.data.first[i]
            words = np.full(len(starts), -1, dtype=np.int64)
            kept = starts >= 0
            words[kept] = best[row, starts[kept]]
            self.predicted[i] = words

    def result(self) -> tuple[dict[str, float], Any]:
        total = 0.0 if self.loss_sum is None else float(self.loss_sum.item())
        names = self.names
        gold = [[names[t] for t in tags] for tags in self.data.tags]
        predicted = [["O" if p is None or p < 0 else names[p] for p in (row if row is not None else [None] * len(g))]
                     for row, g in zip(self.predicted, gold, strict=True)]
        scores, rows = entity_scores(gold, predicted)
        return {"val_loss": total / max(1, int(self.data.label_counts.sum())), **scores}, {"entities": rows}


_ENCODED: dict[tuple[Any, ...], tuple[TokenEncoded, TokenEncoded]] = {}


class TokenClassificationTask(Task):
    """``task=token_classification``: ``AutoModelForTokenClassification`` on CoNLL / IOB2 sentences."""

    spec = SPEC

    def prepare(self, model_cfg: ModelConfig, data_cfg: DataConfig) -> Prepared:
        tokenizer, key = load_tokenizer(model_cfg)
        splits = load_conll(data_cfg)
        cache = (repr(data_cfg), key, self.cfg.label_all_tokens)
        if cache not in _ENCODED:
            _ENCODED[cache] = (self._encode(splits.train, tokenizer, data_cfg, splits),
                               self._encode(splits.val, tokenizer, data_cfg, splits))
        train, val = _ENCODED[cache]
        factory = model_factory(model_cfg, splits.num_labels, self.spec.model_class)
        return Prepared(tokenizer, key, train, val, splits, factory, tokenizer.pad_token_id or 0)

    def _encode(self, split: Sentences, tokenizer: Any, data_cfg: DataConfig, splits: TaggedSplits) -> TokenEncoded:
        return encode_sentences(split, tokenizer, data_cfg.max_length, splits.label_names, self.cfg.label_all_tokens)

    def encode(self, split: Sentences, prepared: Prepared, data_cfg: DataConfig) -> TokenEncoded:
        return self._encode(split, prepared.tokenizer, data_cfg, prepared.splits)

    @staticmethod
    def join(*splits: Sentences) -> Sentences:
        return Sentences([w for s in splits for w in s.words], [t for s in splits for t in s.tags],
                         " + ".join(s.origin for s in splits))

    def collate(self, data: TokenEncoded, index: np.ndarray, pad_id: int, device: torch.device
                ) -> dict[str, torch.Tensor]:
        return labelled_batch(data.input_ids, data.labels, data.lengths, index, pad_id, IGNORE_INDEX, device)

    def loss_units(self, data: TokenEncoded, index: np.ndarray) -> int:
        return max(1, int(data.label_counts[index].sum()))

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], units: int, label_smoothing: float
             ) -> torch.Tensor:
        # The micro-batch's summed token loss over the whole batch's labelled tokens: the shares
        # sum to the batch's token mean, however the batch is cut into micro-batches.
        return _token_loss(logits, batch["labels"], label_smoothing) / units

    def evaluator(self, data: TokenEncoded, model: nn.Module) -> Evaluator:
        return _TokenEvaluator(data, data.label_names)

    def write_artifacts(self, payload: Any, folder: Path, subject: str, when: str) -> list[Path]:
        """``entities.csv``: each entity type's precision, recall, F1 and support."""
        rows = (payload or {}).get("entities")
        if rows is None:
            return []
        path = folder / "entities.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ENTITY_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        return [path]

    def prepare_export(self, model: nn.Module, prepared: Prepared) -> None:
        """The tag names in ``id2label``: ``pipeline`` names the entities with them."""
        names = prepared.splits.label_names
        config: Any = model.config
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}

    def study_attrs(self, prepared: Prepared) -> dict[str, Any]:
        """``classes``: each tag id with its name, as the export's ``id2label`` will say it."""
        return {"classes": ", ".join(f"{i}: {n}" for i, n in enumerate(prepared.splits.label_names))}

    def card(self, data_cfg: DataConfig, prepared: Prepared, sizes: dict[str, int], payload: Any) -> CardText:
        d = data_cfg
        files = conll_files(d)
        shipped = files.train.parent == UNER_DIR
        source = ("Universal NER English EWT (CC BY-SA 4.0; Mayhew et al., NAACL 2024) as shipped with llm_doe: "
                  "its dev file for training and validation" if shipped else f"CoNLL file `{d.path}`")
        cut = [name for name, path in (("validation", files.val), ("test", files.test)) if path is None]
        given = [f"{name} from " + ("its test file" if shipped else f"`{path}`")
                 for name, path in (("validation", files.val), ("test", files.test)) if path is not None]
        names = prepared.splits.label_names
        data_lines = [
            f"- Source: {source}; words in column {files.token_column}, tags in column {files.tag_column}.",
            f"- Tags (id: name): {', '.join(f'{i}: {n}' for i, n in enumerate(names))}.",
            f"- Sentences: train {sizes['train']}, validation {sizes['val']}, test {sizes['test']}"
            + (f"; {' and '.join(cut)} cut from the training file (seeded, `data.seed={d.seed}`, the test split "
               "first)" if cut else "") + (f"; {', '.join(given)}" if given else "") + ".",
            f"- Sentences truncated to {d.max_length} tokens; "
            + ("every sub-token labelled" if self.cfg.label_all_tokens else "each word's first sub-token labelled")
            + "; scored per word with seqeval (entity level, micro average)."]
        usage = ["from transformers import pipeline", "",
                 "ner = pipeline(\"token-classification\", model=\"path/to/this/folder\", "
                 "aggregation_strategy=\"simple\")",
                 "ner(\"Barack Obama visited Paris with Google engineers.\")",
                 "# [{'entity_group': 'PER', 'word': 'barack obama', 'score': ..., 'start': 0, 'end': 12}, ...]"]
        rows = (payload or {}).get("entities") or []
        extra: list[str] = []
        if rows:
            extra = ["## Per-entity test figures", "", "| entity | precision | recall | F1 | support |",
                     "|---|---|---|---|---|"]
            extra += [f"| {r['entity']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
                      for r in rows]
            extra += [""]
        return CardText("fine-tuned named-entity tagger",
                        "per-entity figures in `entities.csv`, ", data_lines, usage, extra)
