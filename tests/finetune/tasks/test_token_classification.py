"""task=token_classification: sub-word alignment, padded batches, the token loss, seqeval's
entity scores, entities.csv, and a tiny BERT trained by the real loop on the shipped UNER data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from llm_doe.finetune.conll import Sentences
from llm_doe.finetune.loop import Budget, Hooks, Selection, TrainData, evaluate, train
from llm_doe.finetune.model import load_tokenizer
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks.token_classification import (
    IGNORE_INDEX,
    TokenClassificationTask,
    encode_sentences,
    entity_scores,
)
from llm_doe.schema import DataConfig, ModelConfig, TaskConfig, TrainConfig

TINY_MODEL = ModelConfig(kind="tiny", name_or_path="tiny-bert", tokenizer="sentence-transformers/all-MiniLM-L6-v2")
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TASK = TokenClassificationTask(TaskConfig(name="token_classification"))
ALL_TOKENS = TokenClassificationTask(TaskConfig(name="token_classification", label_all_tokens=True))
SENTENCES = Sentences([["Peter", "Kowalczyk", "visited", "Miramar", "Bay"], ["Hi", "."]],
                      [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "O"]], "two.txt")
#: The shipped UNER English EWT, a small slice: what the tiny BERT trains on.
UNER = DataConfig(source="uner_en_ewt", token_column=1, tag_column=2, train_size=96, val_size=32, test_size=40,
                  max_length=64)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY_MODEL)[0]


def test_the_first_sub_token_of_each_word_carries_its_label_the_rest_and_specials_are_ignored(tokenizer):
    enc = encode_sentences(SENTENCES, tokenizer, 64, LABELS)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert tokens == ["[CLS]", "peter", "ko", "##wal", "##cz", "##yk", "visited", "mira", "##mar", "bay", "[SEP]"]
    ignored = [IGNORE_INDEX] * 3
    assert enc.labels[0].tolist() == [IGNORE_INDEX, 3, 4, *ignored, 0, 1, IGNORE_INDEX, 2, IGNORE_INDEX]
    assert enc.first[0].tolist() == [1, 2, 6, 7, 9] and enc.tags[0].tolist() == [3, 4, 0, 1, 2]
    assert enc.label_counts.tolist() == [5, 2] and enc.lengths.tolist() == [11, 4]
    every = encode_sentences(SENTENCES, tokenizer, 64, LABELS, label_all_tokens=True)
    # A B- word's later sub-tokens take its I- tag (Hugging Face's b_to_i_label).
    assert every.labels[0].tolist() == [IGNORE_INDEX, 3, 4, 4, 4, 4, 0, 1, 2, 2, IGNORE_INDEX]
    assert every.first[0].tolist() == enc.first[0].tolist()  # scored per word either way


def test_words_cut_off_by_max_length_keep_their_gold_tags_and_no_start(tokenizer):
    enc = encode_sentences(SENTENCES, tokenizer, 5, LABELS)  # [CLS] peter ko ##wal [SEP]
    assert enc.first[0].tolist() == [1, 2, -1, -1, -1]
    assert enc.tags[0].tolist() == [3, 4, 0, 1, 2]


def test_collate_pads_labels_with_the_ignore_index_and_masks_the_padding(tokenizer):
    enc = encode_sentences(SENTENCES, tokenizer, 64, LABELS)
    batch = TASK.collate(enc, np.array([1, 0]), 0, torch.device("cpu"))
    assert batch["input_ids"].shape == (2, 11) and batch["input_ids"][0, 4:].tolist() == [0] * 7
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 0, 0, IGNORE_INDEX] + [IGNORE_INDEX] * 7
    assert batch["attention_mask"].tolist()[0] == [1] * 4 + [0] * 7
    assert TASK.loss_units(enc, np.array([1, 0])) == 7


def test_micro_batch_losses_sum_to_the_token_mean_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 0, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, IGNORE_INDEX,
                           IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 0, 0, 0, 0, IGNORE_INDEX]])
    units = int((labels != IGNORE_INDEX).sum())
    whole = TASK.loss(logits, {"labels": labels}, units, 0.0)
    parts = sum(TASK.loss(logits[i:i + 1], {"labels": labels[i:i + 1]}, units, 0.0) for i in range(3))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert whole.item() == pytest.approx(expected.item()) and parts.item() == pytest.approx(whole.item())


def test_entity_scores_are_seqevals_micro_figures_and_its_per_type_rows():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-PER"]]
    metrics, rows = entity_scores(gold, pred)
    assert metrics == pytest.approx({"precision": precision_score(gold, pred), "recall": recall_score(gold, pred),
                                     "f1": f1_score(gold, pred)})
    assert metrics == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert [(r["entity"], r["support"]) for r in rows] == [("LOC", 2), ("PER", 1)]
    assert rows[0]["recall"] == 0.5 and rows[1]["precision"] == 0.5


def test_the_evaluator_scores_words_by_their_first_sub_token_and_cut_words_as_o(tokenizer):
    enc = encode_sentences(SENTENCES, tokenizer, 5, LABELS)  # visited Miramar Bay cut off
    # Logits that predict each token's own label (and B-LOC on ignored positions, which must not count).
    evaluator = TASK.evaluator(enc, torch.nn.Module())
    for index in (np.array([1]), np.array([0])):
        batch = TASK.collate(enc, index, 0, torch.device("cpu"))
        target = torch.where(batch["labels"] == IGNORE_INDEX, 1, batch["labels"])
        logits = torch.nn.functional.one_hot(target, len(LABELS)).float() * 5
        evaluator.update(logits, batch, index)
    metrics, payload = evaluator.result()
    # PER found; LOC cut off, so predicted O: precision 1, recall 1/2.
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert [(r["entity"], r["recall"], r["support"]) for r in payload["entities"]] == [("LOC", 0.0, 1), ("PER", 1.0, 1)]
    assert metrics["val_loss"] > 0


def test_entities_csv_has_a_row_per_entity_type(tmp_path):
    rows = [{"entity": "LOC", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}]
    [path] = TASK.write_artifacts({"entities": rows}, tmp_path, "trial 1", "at best eval")
    assert path.name == "entities.csv"
    read = list(csv.DictReader(path.open(encoding="utf-8")))
    assert read == [{"entity": "LOC", "precision": "0.5", "recall": "1.0", "f1": str(2 / 3), "support": "2"}]
    assert TASK.write_artifacts(None, tmp_path / "none", "trial 2", "at best eval") == []


def test_a_tiny_bert_learns_to_tag_uner_english_with_the_real_loop(tmp_path):
    prepared = TASK.prepare(TINY_MODEL, UNER)
    assert prepared.splits.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert (len(prepared.train), len(prepared.val)) == (96, 32)
    model = prepared.factory.build(0, None)
    assert model.config.num_labels == 7 and type(model).__name__ == "BertForTokenClassification"
    rt = resolve_runtime("cpu", "fp32")
    cfg = TrainConfig(learning_rate=1e-3, batch_size=16, num_epochs=1, evals_per_epoch=2, warmup_ratio=0.0)
    result = train(model, TASK, TrainData(prepared.train, prepared.val, prepared.pad_id), cfg, rt,
                   select=Selection("f1"), hooks=Hooks(), budget=Budget(None, None))
    first, last = result.history[0], result.history[-1]
    assert set(TASK.metrics) <= set(last) and last["val_loss"] < first["val_loss"]
    assert 0.0 <= result.best["f1"] <= 1.0
    written = TASK.write_artifacts(result.best_payload, tmp_path, "trial 0", "at best eval")
    assert [p.name for p in written] == ["entities.csv"]
    assert {r["entity"] for r in csv.DictReader(written[0].open(encoding="utf-8"))} <= {"LOC", "ORG", "PER"}
    # The test split, encoded as the training splits were; evaluated once.
    test = TASK.encode(prepared.splits.test, prepared, UNER)
    metrics, _ = evaluate(model, TASK, test, 32, prepared.pad_id, rt)
    assert len(test) == 40 and set(metrics) == set(TASK.metrics)
