"""Data augmentation of the training split: the operations, the task's augmented copies, and
what a run trains on (never the validation or test examples). No Optuna here."""

from __future__ import annotations

import numpy as np
import pytest

from llm_doe.finetune.augment import augment_text, augmented_texts
from llm_doe.finetune.data import encoded_splits
from llm_doe.finetune.loop import TrainData, train
from llm_doe.finetune.model import load_tokenizer
from llm_doe.schema import AugmentConfig, TrainConfig
from tests.finetune.conftest import CPU, DATA, TASK, TINY_MODEL

TEXT = "the quick brown fox jumps over the lazy dog today"


@pytest.mark.parametrize("method", ["delete", "swap", "insert", "char"])
def test_each_operation_changes_the_text_and_is_a_function_of_the_seed(method):
    a = augment_text(TEXT, [method], 0.5, np.random.default_rng(0))
    b = augment_text(TEXT, [method], 0.5, np.random.default_rng(0))
    c = augment_text(TEXT, [method], 0.5, np.random.default_rng(1))
    assert a != TEXT and a == b and c != a
    words, out = TEXT.split(), a.split()
    if method == "delete":
        assert 1 <= len(out) < len(words) and all(w in words for w in out)
    if method == "swap":
        assert sorted(out) == sorted(words)
    if method == "insert":
        assert len(out) > len(words) and set(out) == set(words)
    if method == "char":
        assert len(out) == len(words)


def test_delete_always_keeps_a_word_and_empty_texts_pass():
    assert len(augment_text("one two", ["delete"], 1.0, np.random.default_rng(0)).split()) == 1
    assert augment_text("   ", ["delete", "char"], 1.0, np.random.default_rng(0)) == "   "


def test_copies_follow_the_originals_and_the_same_seed_gives_the_same_copies():
    texts = [TEXT, "a short one", "and a third text here"]
    one = augmented_texts(texts, ["swap", "char"], 0.3, 2, seed=5)
    assert len(one) == 9 and one[:3] == texts and one[3:] != texts * 2
    assert augmented_texts(texts, ["swap", "char"], 0.3, 2, seed=5) == one
    assert augmented_texts(texts, ["swap", "char"], 0.3, 2, seed=6) != one


@pytest.fixture(scope="module")
def prepared():
    from llm_doe.finetune.tasks.base import Prepared

    tokenizer, key = load_tokenizer(TINY_MODEL)
    train_data, val_data, splits = encoded_splits(DATA, tokenizer, key)
    from llm_doe.finetune.model import model_factory

    return Prepared(tokenizer, key, train_data, val_data, splits, model_factory(TINY_MODEL, splits.num_labels),
                    tokenizer.pad_token_id)


def test_the_training_examples_change_and_validation_and_test_never_do(prepared):
    splits = prepared.splits
    reads = splits.test_reads
    val_texts, test_texts = list(splits.val.texts), list(splits.test.texts)
    val_ids = [x.copy() for x in prepared.val.input_ids]
    raw, encoded = TASK.training_data(prepared, splits.train, DATA, AugmentConfig(method=["swap", "char"], p=0.3,
                                                                                   copies=1), seed=3)
    n = len(splits.train)
    assert len(raw) == len(encoded) == 2 * n
    assert raw.texts[:n] == splits.train.texts and raw.texts[n:] != splits.train.texts
    assert (raw.labels[n:] == splits.train.labels).all()
    assert splits.test_reads == reads + 1  # augmentation never read the test split
    assert splits.val.texts == val_texts and splits.test.texts == test_texts
    assert all((a == b).all() for a, b in zip(prepared.val.input_ids, val_ids))
    again, _ = TASK.training_data(prepared, splits.train, DATA, AugmentConfig(method=["swap", "char"], p=0.3,
                                                                               copies=1), seed=3)
    assert again.texts == raw.texts  # the same trial seed, the same augmented data
    plain_raw, plain = TASK.training_data(prepared, splits.train, DATA, AugmentConfig(), seed=3)
    assert plain_raw is splits.train and plain is prepared.train  # none: the cached encoding, untouched


def test_one_copy_doubles_the_examples_seen(prepared):
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=1)
    seen = []
    for copies in (None, 1):
        augment = AugmentConfig() if copies is None else AugmentConfig(method="delete", copies=copies)
        _, data = TASK.training_data(prepared, prepared.splits.train, DATA, augment, seed=0)
        model = prepared.factory.build(0, 0.1)
        result = train(model, TASK, TrainData(data, prepared.val, prepared.pad_id), cfg, CPU)
        seen.append(result.cost["examples_seen"])
    assert seen == [160, 320]
