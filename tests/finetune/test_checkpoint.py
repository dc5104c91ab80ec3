"""Checkpoints: interrupt and resume the same run, atomic writes, failures, the time interval."""

from __future__ import annotations

import pytest

from llm_doe.finetune.checkpoint import CheckpointError
from llm_doe.finetune.loop import Interrupted
from llm_doe.schema import TrainConfig
from tests.finetune.conftest import CPU, fit


def test_interrupt_checkpoints_and_resume_continues_the_same_run(setup, tmp_path):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, evals_per_epoch=2, seed=5)
    straight = fit(factory.build(cfg.seed, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)

    calls = {"n": 0}

    def stop_after_13_steps() -> bool:  # mid-epoch 2 (10 steps an epoch), after 2 evals
        calls["n"] += 1
        return calls["n"] == 13

    with pytest.raises(Interrupted) as err:
        fit(factory.build(cfg.seed, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
              checkpoint_dir=tmp_path, should_stop=stop_after_13_steps)
    assert err.value.step == 13 and err.value.checkpointed
    assert (tmp_path / "checkpoint.pt").is_file()

    seen = []
    resumed = fit(factory.build(cfg.seed, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
                    checkpoint_dir=tmp_path, report=lambda step, m: seen.append(step) or False)
    assert resumed.resumed_from_optimizer_step == 13  # where it stopped, in fail_reason's unit
    assert seen == [3, 4]  # only evaluations after the checkpoint are reported again
    assert resumed.cost["optimizer_steps"] == straight.cost["optimizer_steps"] == 20
    for a, b in zip(straight.history, resumed.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
        assert a["optimizer_step"] == b["optimizer_step"]


def test_failed_checkpoint_write_keeps_the_previous_one(setup, tmp_path):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=2)
    model = factory.build(0, 0.1)
    with pytest.raises(Interrupted):
        fit(model, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id, checkpoint_dir=tmp_path,
              should_stop=lambda: True)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt.tmp").mkdir()  # the temp file cannot be written: as on a full disk
    with pytest.raises(CheckpointError, match="cannot write a checkpoint"):
        fit(factory.build(0, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
              checkpoint_dir=tmp_path, should_stop=lambda: True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_a_failed_background_checkpoint_fails_the_run(setup, tmp_path):
    tokenizer, train_data, val_data, factory = setup
    (tmp_path / "checkpoint.pt.tmp").mkdir()  # every write fails, as on a full disk
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=2)
    with pytest.raises(CheckpointError, match="cannot write a checkpoint"):
        fit(factory.build(0, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
              checkpoint_dir=tmp_path)


def test_checkpoints_follow_the_time_interval(setup, tmp_path):
    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=1, evals_per_epoch=4)
    fit(factory.build(0, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
          checkpoint_dir=tmp_path / "rare", checkpoint_every_s=3600)
    assert not (tmp_path / "rare").exists()  # a short trial writes none
    fit(factory.build(0, 0.1), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
          checkpoint_dir=tmp_path / "every", checkpoint_every_s=0)
    assert (tmp_path / "every" / "checkpoint.pt").is_file()


def test_a_peft_checkpoint_holds_the_trained_weights_only_and_resumes_exactly(setup, tmp_path):
    """LoRA on the tiny BERT: the checkpoint leaves out the frozen base weights (rebuilt from the
    same seed when the run resumes), and the resumed run ends where the straight one does."""
    import torch

    from llm_doe.finetune import peft as peft_methods
    from llm_doe.finetune.checkpoint import CHECKPOINT_FILE
    from llm_doe.schema import PeftConfig

    tokenizer, train_data, val_data, factory = setup
    cfg = TrainConfig(learning_rate=3e-3, num_epochs=2, evals_per_epoch=2, seed=5)
    lora = PeftConfig(method="lora", r=4, alpha=8)

    def build():
        return peft_methods.wrap(factory.build(cfg.seed, 0.1), lora, "classification")

    straight_model = build()
    straight = fit(straight_model, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id)
    calls = {"n": 0}

    def stop_after_13_steps() -> bool:
        calls["n"] += 1
        return calls["n"] == 13

    with pytest.raises(Interrupted):
        fit(build(), train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id, checkpoint_dir=tmp_path,
            should_stop=stop_after_13_steps)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)["model"]
    model = build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable <= set(saved) and not frozen & set(saved)  # the adapter and the head, no base weight
    full = sum(t.numel() for t in model.state_dict().values())
    assert sum(t.numel() for t in saved.values()) < full / 5, (sum(t.numel() for t in saved.values()), full)

    resumed_model = build()
    resumed = fit(resumed_model, train_data, val_data, cfg, CPU, pad_id=tokenizer.pad_token_id,
                  checkpoint_dir=tmp_path)
    assert resumed.resumed_from_optimizer_step == 13
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
