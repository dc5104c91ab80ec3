"""llm_doe.validation: the checks the types cannot make, one ConfigError naming the key.

The command-line side (exit 2, one line, nothing written) is tests/test_config.py's; here each
section's checks are called on typed configs directly.
"""

from __future__ import annotations

import dataclasses

import pytest

from llm_doe import schema
from llm_doe.validation import validate


def _config(**sections: dict) -> schema.Config:
    """The schema's defaults with a study name, and the given fields of each section replaced."""
    cfg = schema.Config(study=schema.StudyConfig(name="t"))
    for section, changes in sections.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **changes))
    return cfg


def test_the_defaults_with_a_study_name_are_valid():
    validate(_config())


@pytest.mark.parametrize(("sections", "key", "says"), [
    ({"study": {"name": ""}}, "study.name", "must not be empty"),
    ({"task": {"name": "translation"}}, "task.name", "must be one of classification|causal_lm"),
    ({"model": {"dropout": 1.0}}, "model.dropout", "must be in [0, 1)"),
    ({"model": {"hidden_size": 30, "num_heads": 4}}, "model.hidden_size", "multiple of model.num_heads"),
    ({"train": {"learning_rate": 0.0}}, "train.learning_rate", "must be > 0"),
    ({"peft": {"method": "dora"}}, "peft.method", "dora"),
    ({"study": {"name": "t", "n_trials": 0}}, "study.n_trials", ">= 1"),
    ({"study": {"name": "t", "metric": "bleu"}}, "study.metric", "must be one of task classification's metrics"),
    ({"study": {"name": "t", "timeout": 0}}, "study.timeout", "must be > 0 seconds"),
    ({"study": {"name": "t", "scientific_points": 1}}, "study.scientific_points", ">= 2"),
    ({"data": {"val_size": 1}}, "data.val_size", "must be null or >= 2"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_section_names_the_bad_key(sections, key, says):
    with pytest.raises(schema.ConfigError) as caught:
        validate(_config(**sections))
    assert caught.value.key == key
    assert says in caught.value.message
    assert str(caught.value) == f"{key}: {caught.value.message}" and "\n" not in str(caught.value)


def test_token_classification_reads_conll_whose_sizes_may_be_null():
    ner = {"task": {"name": "token_classification"}, "study": {"name": "t", "metric": "f1"}}
    validate(_config(**ner, data={"source": "conll", "path": "train.txt", "val_size": None, "test_size": None}))
    with pytest.raises(schema.ConfigError, match="^data.path: is required with data=conll"):
        validate(_config(**ner, data={"source": "conll"}))
    validate(_config(**ner, data={"source": "uner_en_ewt"}))  # the shipped files: no path
    validate(_config(**ner, data={"source": "uner_en_ewt", "val_size": None}))  # a tenth of the dev file
    with pytest.raises(schema.ConfigError, match=r"reads data=conll\|uner_en_ewt, got 'tweets'"):
        validate(_config(task={"name": "token_classification"}))


def test_the_first_failing_section_is_the_one_reported():
    # model comes before train and study in validate's order: the model key is named, once.
    cfg = _config(model={"dropout": 2.0}, train={"learning_rate": -1.0}, study={"name": "t", "n_trials": 0})
    with pytest.raises(schema.ConfigError, match=r"^model\.dropout: "):
        validate(cfg)


@pytest.mark.parametrize(("sections", "key", "says"), [
    ({"train": {"optimizer": "lamb"}}, "train.optimizer", "must be one of adamw|adam|adafactor|sgd|rmsprop"),
    ({"train": {"momentum": 0.9}}, "train.momentum", "applies to train.optimizer=sgd only"),
    ({"train": {"optimizer": "sgd", "momentum": 1.0}}, "train.momentum", "must be in [0, 1)"),
    ({"peft": {"lora_plus_ratio": 16.0}}, "peft.lora_plus_ratio", "applies to peft.method=lora only"),
    ({"peft": {"method": "lora", "lora_plus_ratio": 0.0}}, "peft.lora_plus_ratio", "must be > 0"),
    ({"augment": {"method": "shuffle"}}, "augment.method", "unknown operation 'shuffle'"),
    ({"augment": {"method": "synonym"}}, "augment.method", "offline lexicon"),
    ({"augment": {"method": ["swap", "swap"]}}, "augment.method", "twice"),
    ({"augment": {"method": []}}, "augment.method", "must be none"),
    ({"augment": {"method": "swap", "p": 0.0}}, "augment.p", "must be in (0, 1]"),
    ({"augment": {"method": "swap", "copies": 0}}, "augment.copies", ">= 1"),
    ({"task": {"name": "causal_lm"}, "data": {"source": "chat_pairs"}, "augment": {"method": "swap"}},
     "augment.method", "task=causal_lm has no data augmentation"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha", "must be in [0, 1]"),
    ({"model": {"kind": "tiny", "keep_layers": 1}}, "model.keep_layers", "applies to a pretrained model only"),
    ({"model": {"keep_layers": 0}}, "model.keep_layers", "must be >= 1"),
    ({"distill": {"temperature": 0.0}}, "distill.temperature", "must be > 0"),
    ({"task": {"name": "causal_lm"}, "data": {"source": "chat_pairs"}, "distill": {"teacher": "x"}},
     "distill.teacher", "task=causal_lm cannot distil"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_the_levers_name_the_bad_key(sections, key, says):
    with pytest.raises(schema.ConfigError) as err:
        validate(_config(**sections))
    assert err.value.key == key and says in err.value.message


def test_the_levers_valid_settings_pass():
    validate(_config(train={"optimizer": "sgd", "momentum": 0.9}))
    validate(_config(peft={"method": "lora", "lora_plus_ratio": 16.0}))
    validate(_config(augment={"method": ["delete", "char"], "p": 0.2, "copies": 2}))
    validate(_config(augment={"method": "delete+char"}))
    assert schema.augment_methods("delete+char") == ["delete", "char"] == schema.augment_methods(["delete", "char"])
    with pytest.raises(schema.ConfigError, match="unknown operation 'dleete'"):
        validate(_config(augment={"method": "dleete+char"}))
    validate(_config(distill={"teacher": "some/folder", "alpha": 0.0}))


@pytest.mark.parametrize(("task", "source"), [("classification", "csv"), ("causal_lm", "jsonl")])
def test_a_source_that_reads_a_file_needs_data_path(task, source):
    """Which sources read data.path comes from the tasks' declarations (source_keys)."""
    with pytest.raises(schema.ConfigError) as caught:
        validate(_config(task={"name": task}, data={"source": source, "path": None}))
    assert caught.value.key == "data.path" and f"data={source}" in caught.value.message
    validate(_config(task={"name": task}, data={"source": source, "path": "somewhere.file"}))
    validate(_config(data={"source": "tweets", "path": None}))
