"""The Task interface: what a new task must implement, and what it gets by default."""

from __future__ import annotations

from typing import Any

import pytest

from llm_doe.finetune.tasks import get_task
from llm_doe.finetune.tasks.base import Task
from llm_doe.plugins import task_names, task_spec
from llm_doe.schema import TaskConfig


class Toy(Task):
    """The least a task implements (no real data: what the interface provides is under test)."""

    name = "toy"
    metrics = {"val_loss": "minimize", "exact_match": "maximize"}

    def prepare(self, model_cfg, data_cfg):
        raise NotImplementedError

    def encode(self, split, prepared, data_cfg):
        return split

    @staticmethod
    def join(*splits: Any) -> Any:
        return [x for s in splits for x in s]

    def collate(self, data, index, pad_id, device):
        return {}

    def loss_units(self, data, index):
        return len(index)

    def loss(self, logits, batch, units, label_smoothing):
        return logits.sum()

    def evaluator(self, data, model):
        raise NotImplementedError

    def card(self, data_cfg, prepared, sizes, payload):
        raise NotImplementedError


def test_a_task_missing_a_method_cannot_be_built():
    class Half(Task):
        name = "half"
        metrics = {"val_loss": "minimize"}

    with pytest.raises(TypeError, match="abstract"):
        Half(TaskConfig())


def test_defaults_no_files_no_export_settings_and_directions_from_metrics(tmp_path):
    toy = Toy(TaskConfig())
    assert toy.cfg == TaskConfig()
    assert toy.write_artifacts({"anything": 1}, tmp_path, "trial 0", "at best eval") == []
    assert not any(tmp_path.iterdir())
    assert toy.prepare_export(object(), None) is None
    payload = {"probs": [0.5]}
    assert toy.finish(object(), None, 0, None, payload) is payload  # no after-training extras by default
    assert toy.maximized("exact_match") and not toy.maximized("val_loss")


@pytest.mark.parametrize("name", sorted(task_names()))
def test_every_registered_task_matches_its_metrics_and_name(name):
    task = get_task(TaskConfig(name=name))
    assert isinstance(task, Task) and task.name == name
    assert task.metrics == dict(task_spec(name).metrics) and next(iter(task.metrics)) == "val_loss"
