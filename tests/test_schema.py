"""The schema's defaults and the conf/ files that restate them agree.

Hydra needs the group files (``train: default`` must name a file), and each documents its
keys with a comment, so a default is written twice: in ``llm_doe/schema.py`` and in the yaml.
These tests make the copies fail loudly when they drift apart, instead of a run silently
taking the yaml's value while the docs and the code say another.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from llm_doe import schema
from tests.conftest import REPO

CONF = REPO / "conf"

#: Each config group and the dataclass its files fill.
GROUPS: dict[str, type] = {
    "model": schema.ModelConfig,
    "data": schema.DataConfig,
    "train": schema.TrainConfig,
    "sampler": schema.SamplerConfig,
    "pruner": schema.PrunerConfig,
    "storage": schema.StorageConfig,
    "confirm": schema.ConfirmConfig,
    "final": schema.FinalConfig,
    "task": schema.TaskConfig,
    "peft": schema.PeftConfig,
}

#: Group files that restate their dataclass in full: every field, every default.
FULL_RESTATEMENTS = ("train/default.yaml", "confirm/default.yaml", "final/default.yaml")

#: Group files chosen by default that set some fields: those must be the schema's defaults.
#: (model/minilm.yaml and data/tweets.yaml describe one model and one data set, on purpose
#: unlike the schema's generic defaults, so they are not listed.)
PARTIAL_RESTATEMENTS = ("sampler/tpe.yaml", "pruner/median.yaml", "storage/sqlite.yaml")

#: Groups with one file per declared plugin (llm_doe/plugins.py), and the key that chooses it.
#: Each file documents the keys that apply to its choice with the schema's defaults.
CHOICE_KEYS = {"task": "name", "peft": "method"}
#: Values a choice file sets unlike the schema on purpose.
DELIBERATE = {"peft/ia3.yaml": {"target_modules"}}  # IA3 rescales the feed-forward input too: attention_mlp


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: _default(f) for f in fields(cls)}


def _yaml(path: Path) -> dict[str, Any]:
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # ${study.name} stays text
    assert isinstance(loaded, dict)
    return loaded


def _defaults_list() -> dict[str, str]:
    chosen = {}
    for entry in _yaml(CONF / "config.yaml")["defaults"]:
        if isinstance(entry, dict):
            chosen.update(entry)
    return chosen


@pytest.mark.parametrize("name", FULL_RESTATEMENTS)
def test_full_restatements_list_every_field_with_its_default(name):
    group = name.split("/")[0]
    expected = _defaults(GROUPS[group])
    written = _yaml(CONF / name)
    assert list(written) == list(expected), f"conf/{name} and {GROUPS[group].__name__} list different keys"
    differ = {k: (written[k], expected[k]) for k in expected if written[k] != expected[k]}
    assert not differ, f"conf/{name} disagrees with {GROUPS[group].__name__} (yaml, schema): {differ}"


@pytest.mark.parametrize("name", PARTIAL_RESTATEMENTS)
def test_default_choices_restate_the_schema_defaults(name):
    group = name.split("/")[0]
    expected = _defaults(GROUPS[group])
    written = _yaml(CONF / name)
    differ = {k: (v, expected.get(k, "<no such field>")) for k, v in written.items() if expected.get(k) != v}
    assert not differ, f"conf/{name} disagrees with {GROUPS[group].__name__} (yaml, schema): {differ}"


def test_the_config_root_restates_runtime_and_workers():
    root = _yaml(CONF / "config.yaml")
    assert root["runtime"] == _defaults(schema.RuntimeConfig)
    assert root["workers"] == _defaults(schema.Config)["workers"]


def test_the_schema_defaults_are_the_default_choices():
    chosen = _defaults_list()
    assert set(GROUPS) <= set(chosen), "every group has a default choice in conf/config.yaml"
    for name in (*FULL_RESTATEMENTS, *PARTIAL_RESTATEMENTS):
        group, _, file = name.partition("/")
        assert chosen[group] == Path(file).stem, f"conf/config.yaml picks {group}: {chosen[group]}, not {file}"
    assert schema.SamplerConfig().name == chosen["sampler"]
    assert schema.PrunerConfig().name == chosen["pruner"]
    assert schema.DataConfig().source == chosen["data"]


@pytest.mark.parametrize("path", sorted(p.relative_to(CONF).as_posix() for group in GROUPS
                                        for p in (CONF / group).glob("*.yaml")))
def test_every_group_file_sets_only_schema_fields(path):
    cls = GROUPS[path.split("/")[0]]
    unknown = set(_yaml(CONF / path)) - set(_defaults(cls))
    assert not unknown, f"conf/{path} sets keys {cls.__name__} does not have: {sorted(unknown)}"


def test_the_sampler_and_pruner_files_are_named_after_their_choice():
    for group in ("sampler", "pruner"):
        for path in (CONF / group).glob("*.yaml"):
            assert _yaml(path)["name"] == path.stem, f"conf/{group}/{path.name}"


def test_applicable_leaves_out_keys_that_do_not_apply():
    """A MiniLM config lists no in-code model sizes, a classification task no SFT settings,
    peft=none no LoRA settings, tweets no other source's fields; the tiny model keeps its sizes."""
    from omegaconf import OmegaConf

    from llm_doe.cli import compose_config
    from llm_doe.schema import applicable

    minilm = OmegaConf.to_container(compose_config(["+study=lr_sweep"]).dict_config, resolve=True)
    shown = applicable(minilm)
    assert set(shown["model"]) == {"kind", "name_or_path", "tokenizer", "dropout", "keep_layers"}
    assert shown["task"] == {"name": "classification"} and shown["peft"] == {"method": "none"}
    assert "prompt_field" not in shown["data"] and "path" not in shown["data"] and "seed" in shown["data"]
    # adamw: no sgd momentum; no augmentation or teacher: their settings mean nothing
    assert shown["train"] == {k: v for k, v in minilm["train"].items() if k != "momentum"}
    assert shown["augment"] == {"method": "none"} and shown["distill"] == {"teacher": None}
    assert minilm["model"]["hidden_size"] == 64 and "momentum" in minilm["train"]  # the input is untouched
    sgd = OmegaConf.to_container(compose_config(["+study=lr_sweep", "train.optimizer=sgd"]).dict_config, resolve=True)
    assert "momentum" in applicable(sgd)["train"] and "adam_beta1" not in applicable(sgd)["train"]
    tiny = OmegaConf.to_container(compose_config(["+study=smoke"]).dict_config, resolve=True)
    assert applicable(tiny)["model"]["hidden_size"] == tiny["model"]["hidden_size"]
    lora = OmegaConf.to_container(compose_config(["+study=sft_smoke"]).dict_config, resolve=True)
    assert "r" in applicable(lora)["peft"] and "num_virtual_tokens" not in applicable(lora)["peft"]
    assert "loss_on" in applicable(lora)["task"]


@pytest.mark.parametrize("path", sorted(p.relative_to(CONF).as_posix() for group in CHOICE_KEYS
                                        for p in (CONF / group).glob("*.yaml")))
def test_plugin_choice_files_restate_the_schema_defaults_but_their_choice(path):
    """conf/peft/lora.yaml's r: 8 is PeftConfig's r: 8 (one default, two copies a test holds equal)."""
    group = path.split("/")[0]
    chooser = CHOICE_KEYS[group]
    written, expected = _yaml(CONF / path), _defaults(GROUPS[group])
    assert written[chooser] == Path(path).stem, f"conf/{path} must choose {chooser}: {Path(path).stem}"
    differ = {k: (v, expected[k]) for k, v in written.items()
              if k != chooser and k not in DELIBERATE.get(path, ()) and v != expected[k]}
    assert not differ, f"conf/{path} disagrees with {GROUPS[group].__name__} (yaml, schema): {differ}"


def test_every_declared_task_and_peft_method_has_its_choice_file():
    from llm_doe.plugins import peft_method_names, task_names

    assert {p.stem for p in (CONF / "task").glob("*.yaml")} == set(task_names())
    assert {p.stem for p in (CONF / "peft").glob("*.yaml")} == set(peft_method_names())


def test_applicable_leaves_a_chat_files_classification_keys_out_unless_the_choice_is_searched():
    from omegaconf import OmegaConf

    from llm_doe.cli import compose_config
    from llm_doe.schema import applicable

    jsonl = OmegaConf.to_container(compose_config(["+study=sft_smoke", "data=jsonl", "data.path=x.jsonl"]).dict_config,
                                   resolve=True)
    shown = applicable(jsonl)["data"]
    assert not {"text_column", "label_column", "labels", "label_names", "encoding", "drop_duplicates"} & set(shown)
    assert {"path", "prompt_field", "val_size", "seed"} <= set(shown)
    # A searched choice keeps its section whole: each trial may need any of its keys.
    assert "r" in applicable({"peft": {"method": "none", "r": 8}}, searched=["peft.method"])["peft"]
    assert "r" not in applicable({"peft": {"method": "none", "r": 8}}, searched=["train.learning_rate"])["peft"]
