"""Search-space grammars: explicit specs and hydra-optuna-sweeper strings."""

from __future__ import annotations

import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from llm_doe.cli import compose_config
from llm_doe.schema import ConfigError
from llm_doe.space import apply_params, build_space, check_space, grid_values

SAME = [
    ({"type": "float", "low": 1e-5, "high": 1e-3, "log": True}, "tag(log, interval(1e-5, 1e-3))",
     FloatDistribution(1e-5, 1e-3, log=True)),
    ({"type": "float", "low": 0.0, "high": 0.1}, "interval(0.0, 0.1)", FloatDistribution(0.0, 0.1)),
    ({"type": "int", "low": 1, "high": 8}, "int(interval(1, 8))", IntDistribution(1, 8)),
    ({"type": "int", "low": 1, "high": 100, "log": True}, "tag(log, int(interval(1, 100)))", IntDistribution(1, 100, log=True)),
    ({"type": "int", "low": 16, "high": 64, "step": 16}, "range(16, 80, 16)", IntDistribution(16, 64, step=16)),
    ({"type": "float", "low": 0.0, "high": 0.3, "step": 0.1}, "range(0.0, 0.35, 0.1)", FloatDistribution(0.0, 0.3, step=0.1)),
    ({"type": "categorical", "choices": [16, 32, 64]}, "choice(16, 32, 64)", CategoricalDistribution([16, 32, 64])),
    ({"type": "categorical", "choices": ["linear", "cosine"]}, "choice(linear, cosine)", CategoricalDistribution(["linear", "cosine"])),
]


@pytest.mark.parametrize(("spec", "grammar", "expected"), SAME)
def test_both_grammars_give_the_same_distribution(spec, grammar, expected):
    a = build_space({"x": spec})["x"]
    b = build_space({"x": grammar})["x"]
    assert a == expected
    assert b == expected


def test_range_excludes_stop_like_hydra():
    # Hydra's range(1, 10, 2) sweeps 1,3,5,7,9: the Optuna distribution must hold exactly those.
    dist = build_space({"x": "range(1, 10, 2)"})["x"]
    assert grid_values({"x": dist})["x"] == [1, 3, 5, 7, 9]


def test_nested_keys_are_dotted_paths():
    space = build_space({"train": {"learning_rate": "interval(0.1, 0.2)"}, "model.dropout": "interval(0, 0.2)"})
    assert set(space) == {"train.learning_rate", "model.dropout"}


@pytest.mark.parametrize(("value", "needle"), [
    ({"type": "float", "low": 0.1, "high": 0.01}, "low must be < high"),
    ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log scale needs low > 0"),
    ({"type": "categorical", "choices": []}, "non-empty list of choices"),
    ({"type": "floaty", "low": 0, "high": 1}, "type must be"),
    ({"type": "float", "low": "a", "high": 1}, "low must be a number"),
    ({"type": "float", "low": 0, "high": 1, "bogus": 1}, "unknown field"),
    ("interval(0.5, 0.1)", "low must be < high"),
    ("tag(log, interval(0, 1))", "log scale needs low > 0"),
    ("choice()", "choice"),
    ("0.5", "single value"),
    ("interval(0.1", "cannot parse"),
    (3, "expected a spec"),
])
def test_bad_specs_name_the_key(value, needle):
    with pytest.raises(ConfigError) as err:
        build_space({"train.learning_rate": value})
    assert err.value.key == "study.space.train.learning_rate"
    assert needle in err.value.message


def test_grid_refuses_continuous_ranges():
    with pytest.raises(ConfigError, match="sampler=grid needs a discrete space"):
        grid_values(build_space({"train.learning_rate": "interval(0.1, 0.2)"}))


def test_space_is_checked_against_the_config():
    composed = compose_config(["+study=smoke", "model=tiny"])
    base = composed.dict_config
    with pytest.raises(ConfigError, match="not a config path"):
        check_space(base, build_space({"train.learnig_rate": "interval(0.1, 0.2)"}))
    with pytest.raises(ConfigError, match="does not fit"):
        check_space(base, build_space({"train.batch_size": "interval(0.5, 8.5)"}))
    with pytest.raises(ConfigError, match="out of range"):
        check_space(base, build_space({"model.dropout": "interval(0.1, 1.5)"}))
    applied = apply_params(base, {"train.batch_size": 8, "model.dropout": 0.25})
    assert applied.train.batch_size == 8 and applied.model.dropout == 0.25
    assert base.train.batch_size != 8  # the composed config is never mutated


@pytest.mark.parametrize("override", [
    "study.space.train.learning_rate={type: float, low: 1e-4, high: 2e-4, log: true}",
    "study.space.train.learning_rate=tag(log, interval(1e-4, 2e-4))",
    "+study.space.train.learning_rate='tag(log, interval(1e-4, 2e-4))'",
    "++study.space.train.learning_rate={type: float, low: 1e-4, high: 2e-4, log: true}",
])
def test_a_range_changed_on_the_command_line_is_the_one_searched(search, tmp_path, override):
    """Issue 22 A1: both natural spellings of changing an existing range work (Hydra alone says
    "Key 'train' is not in struct" or "requires --multirun"), and the trials sample that range."""
    from tests.conftest import load

    assert search(override, "study.n_trials=2", "pruner=none") == 0
    trials = load(tmp_path).trials
    assert [t.distributions for t in trials] == [{"train.learning_rate": FloatDistribution(1e-4, 2e-4, log=True)}] * 2
    assert all(1e-4 <= t.params["train.learning_rate"] <= 2e-4 for t in trials)


def test_cfg_job_shows_one_entry_per_parameter(capsys):
    """A range changed and one added on the command line: each parameter once, as a dotted key
    (no nested ``train: {learning_rate: ...}`` copy); ``~`` removes an entry."""
    import yaml

    from llm_doe.search import main

    assert main(["+study=lr_sweep", "study.space.train.learning_rate=tag(log, interval(1e-4, 2e-4))",
                 "+study.space.train.weight_decay={type: float, low: 0.0, high: 0.1}", "--cfg", "job"]) == 0
    space = yaml.safe_load(capsys.readouterr().out)["study"]["space"]
    assert space == {"train.learning_rate": "tag(log, interval(1e-4, 2e-4))",
                     "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1}}
    space = compose_config(["+study=lr_sweep", "+study.space.train.weight_decay=interval(0.0, 0.1)",
                            "~study.space.train.learning_rate"]).config.study.space
    assert space == {"train.weight_decay": "interval(0.0, 0.1)"}
    with pytest.raises(ConfigError, match=r"^study.space.train.epochs: is not in the space"):
        compose_config(["+study=lr_sweep", "~study.space.train.epochs"])


OPTIMIZER_SPACE = {"train.optimizer": {"type": "categorical", "choices": ["adamw", "adafactor", "sgd"]},
                   "train.momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"train.optimizer": "sgd"}},
                   "train.learning_rate": "tag(log, interval(1e-4, 1e-2))"}


def test_a_conditional_parameter_is_sampled_exactly_on_the_trials_that_meet_its_condition():
    import optuna
    from omegaconf import OmegaConf

    from llm_doe.space import conditions_of, resolve_conditions, suggest
    from llm_doe.validation import validate

    base = compose_config(["+study=smoke", "model=tiny"]).dict_config
    space = resolve_conditions(build_space(OPTIMIZER_SPACE), base)
    assert conditions_of(space) == {"train.momentum": {"train.optimizer": ["sgd"]}}
    check_space(base, space)  # momentum is checked with optimizer=sgd: valid
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, space)
        validate(OmegaConf.to_object(apply_params(base, params)))  # every trial's config is valid
        study.tell(trial, 0.0)
    optimizers = [t.params["train.optimizer"] for t in study.trials]
    assert "sgd" in optimizers and set(optimizers) - {"sgd"}  # both kinds of trial were drawn
    for t in study.trials:
        assert ("train.momentum" in t.params) == (t.params["train.optimizer"] == "sgd")


def test_a_condition_on_a_fixed_key_is_decided_once():
    from llm_doe.space import conditions_of, resolve_conditions

    space = build_space({k: v for k, v in OPTIMIZER_SPACE.items() if k != "train.optimizer"})
    adamw = compose_config(["+study=smoke", "model=tiny"]).dict_config
    sgd = compose_config(["+study=smoke", "model=tiny", "train.optimizer=sgd"]).dict_config
    assert set(resolve_conditions(space, adamw)) == {"train.learning_rate"}  # never met: not searched
    met = resolve_conditions(space, sgd)
    assert set(met) == {"train.learning_rate", "train.momentum"} and not conditions_of(met)


@pytest.mark.parametrize(("when", "needle"), [
    ({"train.optimizer": "lamb"}, "never ['lamb']"),
    ({"train.momentum": 0.5}, "itself"),
    ({"train.learning_rate": 0.1}, "over a range"),
    ("sgd", "must be a map"),
])
def test_bad_conditions_name_the_key(when, needle):
    space = {**OPTIMIZER_SPACE, "train.momentum": {**OPTIMIZER_SPACE["train.momentum"], "when": when}}
    with pytest.raises(ConfigError) as err:
        build_space(space)
    assert err.value.key == "study.space.train.momentum.when" and needle in err.value.message


def test_an_unconditioned_momentum_under_another_optimizer_is_refused():
    base = compose_config(["+study=smoke", "model=tiny"]).dict_config
    space = build_space({"train.momentum": {"type": "float", "low": 0.0, "high": 0.9}})
    with pytest.raises(ConfigError, match="applies to train.optimizer=sgd only"):
        check_space(base, space)


@pytest.mark.parametrize("sampler", ["grid", "qmc", "cmaes", "gp"])
def test_samplers_that_cannot_sample_a_conditional_space_are_refused(sampler):
    from llm_doe.schema import SamplerConfig
    from llm_doe.study import make_sampler

    space = build_space({**OPTIMIZER_SPACE, "train.momentum": {"type": "categorical", "choices": [0.0, 0.9],
                                                               "when": {"train.optimizer": "sgd"}},
                         "train.learning_rate": {"type": "categorical", "choices": [1e-3]}})
    with pytest.raises(ConfigError, match=f"{sampler} cannot sample conditional parameters"):
        make_sampler(SamplerConfig(name=sampler), space)
    make_sampler(SamplerConfig(name="tpe"), space)


def test_the_stored_space_keeps_the_condition_and_optuna_still_reads_it():
    import optuna

    from llm_doe.space import json_conditions, space_to_json

    stored = space_to_json(build_space(OPTIMIZER_SPACE))
    assert json_conditions(stored) == {"train.momentum": {"train.optimizer": ["sgd"]}}
    assert optuna.distributions.json_to_distribution(stored["train.momentum"]).high == 0.99
    plain = dict(OPTIMIZER_SPACE, **{"train.momentum": {"type": "float", "low": 0.0, "high": 0.99}})
    assert space_to_json(build_space(plain)) != stored  # a changed condition is another space (resume check)


def test_one_field_of_an_entry_set_on_the_command_line_is_refused_in_one_line():
    """study.space.train.learning_rate.high=0.01 would add a parameter named
    train.learning_rate.high beside the untouched entry: say to give the whole entry."""
    with pytest.raises(ConfigError, match=r"^study.space.train.learning_rate.high: sets one field of the entry "
                                          r"train.learning_rate: give the whole entry"):
        compose_config(["+study=lr_sweep", "study.space.train.learning_rate.high=0.01"])
