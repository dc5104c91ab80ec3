"""What makes two runs the same experiment: experiment_diffs and check_same_experiment on
configs composed as the commands compose them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import OmegaConf
from optuna.study import StudyDirection

from llm_doe.cli import Composed, compose_config
from llm_doe.experiment import check_same_experiment, experiment_diffs, flatten, scientific_values
from llm_doe.schema import ConfigError

SMOKE = ["+study=smoke", "model=tiny"]
DEFAULTS = compose_config(SMOKE).config
MAX_LENGTH, WEIGHT_DECAY = DEFAULTS.data.max_length, DEFAULTS.train.weight_decay


@dataclass
class Stored:
    """A stored study as the check reads it (an ``optuna.Study`` or a ``StudySummary``)."""

    study_name: str
    user_attrs: dict[str, Any]
    directions: list[Any] = field(default_factory=lambda: [StudyDirection.MINIMIZE])


def stored(composed: Composed, **attrs: Any) -> Stored:
    """``composed`` as the search records it: its resolved config and metric (and ``attrs``)."""
    config = OmegaConf.to_container(composed.dict_config, resolve=True)
    return Stored("smoke", {"config": config, "metric": composed.config.study.metric, **attrs})


@pytest.fixture(scope="module")
def smoke() -> Stored:
    return stored(compose_config(SMOKE), space={"train.learning_rate": "(recorded distribution)"})


def test_the_same_config_and_runtime_settings_are_the_same_experiment(smoke):
    again = compose_config([*SMOKE, "workers=2", "runtime.device=cpu", "train.eval_batch_size=8", "sampler.seed=9",
                            "study.n_trials=7", "train.learning_rate=1e-3"])  # the last is the searched parameter
    assert experiment_diffs(again.dict_config, again.config, smoke) == []
    check_same_experiment(again.dict_config, again.config, smoke, hint="fine")


def test_changed_settings_are_listed_metric_first(smoke):
    other = compose_config([*SMOKE, "train.weight_decay=0.05", "data.max_length=32", "study.metric=accuracy"])
    diffs = experiment_diffs(other.dict_config, other.config, smoke)
    assert diffs[:2] == [("study.metric", "accuracy", "val_loss"), ("study.direction", "maximize", "minimize")]
    assert sorted(diffs[2:]) == [("data.max_length", 32, MAX_LENGTH), ("train.weight_decay", 0.05, WEIGHT_DECAY)]
    assert experiment_diffs(other.dict_config, other.config, smoke, frozenset({"data.max_length"}))[2:] == \
        [d for d in diffs[2:] if d[0] != "data.max_length"]
    with pytest.raises(ConfigError, match=r"study.metric: is 'accuracy' here but 'val_loss' in study 'smoke' "
                                          r"\(and 3 more: study.direction, .*\): use another name"):
        check_same_experiment(other.dict_config, other.config, smoke, hint="use another name")


def test_a_changed_space_is_refused_naming_the_parameters(smoke):
    recorded = Stored("smoke", {**smoke.user_attrs, "space": {"train.learning_rate": "a", "train.seed": "b"}})
    composed = compose_config(SMOKE)
    with pytest.raises(ConfigError, match=r"study.space: differs .* \(in train.learning_rate, train.seed\): hint"):
        check_same_experiment(composed.dict_config, composed.config, recorded, hint="hint",
                              space={"train.learning_rate": "other"})


def test_a_sub_studys_scientific_values_and_keys_one_side_lacks_are_not_compared(smoke):
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in smoke.user_attrs["config"].items()}
    del config["peft"]  # a section written before it existed held its defaults: compared with those
    config["train"] = {**config["train"], "weight_decay": 0.1}
    del config["train"]["group_by_length"]  # a key an older version did not write: not compared
    recorded = Stored("smoke", {**smoke.user_attrs, "config": config,
                                "design": {"scientific": {"train.weight_decay": 0.1}}})
    other = compose_config([*SMOKE, "train.weight_decay=0.0", "train.group_by_length=false"])
    assert experiment_diffs(other.dict_config, other.config, recorded) == []
    lora = compose_config([*SMOKE, "peft.method=lora"])
    assert [k for k, _, _ in experiment_diffs(lora.dict_config, lora.config, recorded)] == ["peft.method"]


def test_flatten_and_scientific_values():
    assert flatten({"train": {"lr": 1, "opt": {"beta": 2}}, "x": 3}) == {"train.lr": 1, "train.opt.beta": 2, "x": 3}
    assert scientific_values({"design": {"scientific": {"train.lr": 1}}}) == {"train.lr": 1}
    assert scientific_values({}) == scientific_values({"design": "odd"}) == {}


@pytest.mark.parametrize("override", ["train.optimizer=sgd", "peft.lora_plus_ratio=16", "augment.method=swap",
                                      "augment.copies=2", "augment.p=0.3", "distill.teacher=some/folder",
                                      "distill.alpha=0.9", "distill.temperature=4"])
def test_each_fixed_lever_is_part_of_the_experiment(smoke, override):
    key = override.split("=")[0]
    args = [*SMOKE, override] if key != "peft.lora_plus_ratio" else [*SMOKE, "peft=lora", override]
    other = compose_config(args)
    assert key in [d[0] for d in experiment_diffs(other.dict_config, other.config, smoke)]
    # A study recorded before the lever existed held its default: the default is the same experiment.
    old = stored(compose_config(SMOKE), space={"train.learning_rate": "(recorded distribution)"})
    section, name = key.split(".")
    recorded = old.user_attrs["config"]
    if section in ("augment", "distill"):
        del recorded[section]  # a section that did not exist
    else:
        del recorded[section][name]  # a key that did not exist
    same = compose_config(SMOKE)
    assert experiment_diffs(same.dict_config, same.config, old) == []


def test_the_teacher_cache_folder_is_a_runtime_setting(smoke):
    other = compose_config([*SMOKE, "distill.cache_dir=/elsewhere"])
    assert experiment_diffs(other.dict_config, other.config, smoke) == []


def test_a_key_added_since_a_study_was_recorded_is_compared_with_what_the_study_ran_as():
    """data.truncation came later: a study recorded without it kept cut answers, so a resume with
    data.truncation=drop is another experiment, and one with keep the same."""
    sft = ["+study=sft_smoke"]
    recorded = stored(compose_config(sft))
    config = recorded.user_attrs["config"]
    config["data"] = {k: v for k, v in config["data"].items() if k != "truncation"}
    drop = compose_config([*sft, "data.truncation=drop"])
    assert experiment_diffs(drop.dict_config, drop.config, recorded) == [("data.truncation", "drop", "keep")]
    keep = compose_config(sft)
    assert experiment_diffs(keep.dict_config, keep.config, recorded) == []
