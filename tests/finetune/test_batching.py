"""Batching: length-grouped batch order, and evaluation points at the same fraction of training
for every batch size."""

from __future__ import annotations

import numpy as np
import pytest

from llm_doe.finetune import loop as loop_module
from llm_doe.finetune.batching import batch_order, eval_points
from llm_doe.finetune.loop import evaluate as loop_evaluate
from llm_doe.schema import TrainConfig
from tests.finetune.conftest import CPU, fit


def test_length_grouped_batches_cover_everything_once_and_pad_less():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000)
    grouped = batch_order(lengths, 16, np.random.default_rng(1), True)
    plain = batch_order(lengths, 16, np.random.default_rng(1), False)
    for batches in (grouped, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))

    def padding(batches):
        return sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in batches)

    assert padding(grouped) < padding(plain) / 3
    again = batch_order(lengths, 16, np.random.default_rng(1), True)
    assert all(np.array_equal(x, y) for x, y in zip(grouped, again))  # seeded


@pytest.mark.parametrize("batch_size", [16, 128])
def test_evaluation_index_k_means_the_same_fraction_of_training_for_every_batch_size(setup, two_hundred, batch_size,
                                                                                     monkeypatch):
    tokenizer, _, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, evals_per_epoch=4, batch_size=batch_size)
    steps_per_epoch = -(-200 // batch_size)
    assert len(eval_points(steps_per_epoch, 4)) == 4
    evaluated = []

    def counting(*args, **kwargs):  # the real evaluation, counted
        evaluated.append(1)
        return loop_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", counting)
    seen: list[tuple[int, float]] = []
    result = fit(factory.build(0, 0.1), two_hundred, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
                   report=lambda step, m: seen.append((step, m["val_loss"])) or False)
    assert [s for s, _ in seen] == list(range(1, 9))  # every index, for both batch sizes
    assert [r["step"] for r in result.history] == list(range(1, 9))
    for record in result.history:  # index k after k / 8 of training, within one optimizer step
        assert abs(record["epoch"] - record["step"] / 4) <= 1 / steps_per_epoch + 1e-9
    if batch_size == 128:  # 2 steps an epoch: indices 1-2 at step 1, 3-4 at step 2, ...
        assert [r["optimizer_step"] for r in result.history] == [1, 1, 2, 2, 3, 3, 4, 4]
        assert len(evaluated) == 4  # one evaluation per step, reported for each of its indices
        assert [v for _, v in seen][0::2] == [v for _, v in seen][1::2]
    else:
        assert [r["optimizer_step"] for r in result.history] == [3, 6, 10, 13, 16, 19, 23, 26]
        assert len(evaluated) == 8
