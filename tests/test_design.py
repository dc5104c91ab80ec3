"""Experiment design: scientific sub-studies with equal budgets, fixed caveats, budgets, boundaries."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
from optuna.trial import TrialState

from llm_doe.cli import compose_config
from llm_doe.design import Arm
from llm_doe.runner import summarise
from llm_doe.search import main
from llm_doe.storage import make_storage
from tests.conftest import TINY, store_args

SCIENTIFIC = ("++study.space={train.weight_decay:{role:scientific,type:categorical,choices:[0.0,0.1]},"
              "train.learning_rate:{role:nuisance,type:float,low:1.0e-4,high:3.0e-3,log:true},"
              "train.warmup_ratio:{role:fixed}}")


def test_each_scientific_value_gets_its_own_sub_study_and_the_same_budget(tmp_path, caplog):
    code = main(["+study=smoke", *TINY, *store_args(tmp_path), SCIENTIFIC, "study.n_trials=4", "sampler=qmc"])
    assert code == 0
    storage = f"sqlite:///{tmp_path}/t.db"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["t[train.weight_decay=0.0]", "t[train.weight_decay=0.1]"]
    lrs = []
    for name, wd in zip(names, (0.0, 0.1)):
        study = optuna.load_study(study_name=name, storage=storage)
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        assert len(finished) == 2  # the same budget for every scientific value
        assert all(t.user_attrs["config.train.weight_decay"] == wd for t in study.trials)
        assert set(study.trials[0].params) == {"train.learning_rate"}  # only the nuisance is searched
        design = study.user_attrs["design"]
        assert design["study"] == "t" and design["scientific"] == {"train.weight_decay": wd}
        assert design["roles"]["train.warmup_ratio"] == "fixed"
        assert any("train.warmup_ratio is fixed at 0.1" in c for c in design["caveats"])
        lrs.append([t.params["train.learning_rate"] for t in study.trials])
    assert lrs[0] == lrs[1]  # seeded Sobol: each value is tuned over the same learning rates

    from llm_doe import scientific_isolation

    table = scientific_isolation(storage, "t")
    assert table["train.weight_decay"].tolist() == [0.0, 0.1] and table["trials"].tolist() == [2, 2]
    for row in table.itertuples():
        sub = optuna.load_study(study_name=row.sub_study, storage=storage)
        assert row.best_value == sub.best_value and row.best_trial == sub.best_trial.number
    assert table.attrs["scientific"] == ["train.weight_decay"] and table.attrs["caveats"]


def test_scientific_budget_must_divide_evenly(tmp_path, capsys):
    assert main(["+study=smoke", *TINY, *store_args(tmp_path), SCIENTIFIC, "study.n_trials=3"]) == 2
    err = capsys.readouterr().err
    assert "study.n_trials: 3 trials cannot be shared equally by the 2 scientific values" in err
    assert not any(tmp_path.iterdir())


def test_continuous_scientific_range_takes_quasi_random_points():
    from llm_doe.design import plan

    composed = compose_config(["+study=smoke", "model=tiny"])
    space = {"train.weight_decay": {"role": "scientific", "type": "float", "low": 0.0, "high": 0.2},
             "train.learning_rate": "tag(log, interval(1e-4, 1e-2))"}
    design = plan("s", composed.dict_config, space, 6, 3, 0)
    values = [arm.scientific["train.weight_decay"] for arm in design.arms]
    assert len(values) == 3 and values == sorted(values) and all(0.0 <= v <= 0.2 for v in values)
    assert [arm.n_trials for arm in design.arms] == [2, 2, 2]


def test_compute_budget_stops_the_study_cleanly(search, tmp_path, capsys):
    # 160 examples / batch 16 = 10 optimizer steps a trial: a 15-step budget allows two trials
    assert search("study.n_trials=5", "pruner=none", "study.max_train_steps=15") == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/t.db")
    assert len(study.trials) == 2
    assert study.user_attrs["totals"]["optimizer_steps"] == 20
    assert "compute budget reached" in capsys.readouterr().out
    assert search("study.n_trials=5", "pruner=none", "study.max_train_steps=15") == 0  # still spent
    assert len(optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/t.db").trials) == 2


def test_timeout_stops_the_study_cleanly(search, tmp_path):
    assert search("study.n_trials=50", "pruner=none", "study.timeout=2") == 0
    n = len(optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/t.db").trials)
    assert 1 <= n < 50


@pytest.mark.parametrize(("best_lr", "warned"), [(9.5e-3, True), (1e-3, False)])
def test_boundary_warning_after_a_study(tmp_path, caplog, best_lr, warned):
    composed = compose_config(["+study=smoke", *TINY, *store_args(tmp_path)])
    cfg = composed.config
    storage = make_storage(cfg.storage)
    study = optuna.create_study(storage=storage, study_name="t")
    dist = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    study.set_user_attr("space", {"train.learning_rate": optuna.distributions.distribution_to_json(dist)})
    study.set_user_attr("metric", "val_loss")
    for lr in (1e-5, 1e-4, 3e-4, best_lr):
        value = 0.1 if lr == best_lr else 0.5
        study.add_trial(optuna.create_trial(params={"train.learning_rate": lr},
                                            distributions={"train.learning_rate": dist}, value=value))
    with caplog.at_level(logging.WARNING, logger="llm_doe"):
        summarise(Arm("t", composed.dict_config, {"train.learning_rate": dist}, 4), study, cfg, time.perf_counter())
    stored = optuna.load_study(study_name="t", storage=storage).user_attrs["boundary"]
    if warned:
        assert stored and stored[0]["edge"] == "high" and stored[0]["param"] == "train.learning_rate"
        assert any("widen the range upward" in r.message for r in caplog.records)
    else:
        assert stored == [] and not any("boundary check" in r.message for r in caplog.records)


def test_each_sub_study_records_the_classes_of_its_own_data(tmp_path):
    """A scientific value may change the data (here data.path): each sub-study's ``classes`` are
    those its trials train on, not the base config's; a plain study that samples data.path
    records none (its trials have no one set of classes)."""
    import pandas as pd

    from llm_doe.finetune.data import tweets_path

    raw = pd.read_csv(tweets_path(), encoding="latin-1")
    tweets = pd.concat([raw[raw["sentiment"] == s].head(60) for s in ("negative", "positive")])
    paths = []
    for prefix in ("a", "b"):
        path = tmp_path / f"{prefix}.csv"
        tweets.assign(sentiment=prefix + "_" + tweets["sentiment"]).to_csv(path, index=False)
        paths.append(str(path))
    data = ["data=csv", f"data.path={paths[0]}", "data.label_column=sentiment", "data.train_size=48",
            "data.val_size=24", "data.test_size=24"]
    choices = f"{{type: categorical, choices: ['{paths[0]}', '{paths[1]}']"
    sci = ["+study=smoke", *TINY, *store_args(tmp_path, "sci"), *data, "study.n_trials=2",
           f"+study.space.data.path={choices}, role: scientific}}"]
    assert main(sci) == 0
    url = f"sqlite:///{tmp_path}/sci.db"
    classes = {s.study_name: s.user_attrs.get("classes") for s in optuna.get_all_study_summaries(url)}
    assert classes == {f"sci[data.path={paths[0]}]": "0: a_negative, 1: a_positive",
                       f"sci[data.path={paths[1]}]": "0: b_negative, 1: b_positive"}

    plain = ["+study=smoke", *TINY, *store_args(tmp_path, "plain"), *data, "study.n_trials=1",
             f"+study.space.data.path={choices}}}"]
    assert main(plain) == 0
    assert "classes" not in optuna.load_study(study_name="plain", storage=f"sqlite:///{tmp_path}/plain.db").user_attrs


def test_a_condition_on_a_scientific_parameter_is_decided_per_sub_study(tmp_path):
    # optimizer_effect's shape: momentum is searched in the sgd sub-study only, and QMC (which
    # cannot sample a conditional space) is fine there: each sub-study's space has no condition left.
    space = ("++study.space={train.optimizer:{role:scientific,type:categorical,choices:[adamw,sgd]},"
             "train.learning_rate:{type:float,low:1.0e-4,high:3.0e-3,log:true},"
             "train.momentum:{type:float,low:0.0,high:0.95,when:{train.optimizer:sgd}}}")
    assert main(["+study=smoke", *TINY, *store_args(tmp_path), space, "study.n_trials=4", "sampler=qmc",
                 "data.train_size=48", "data.val_size=16"]) == 0
    storage = f"sqlite:///{tmp_path}/t.db"
    for optimizer, params in (("adamw", {"train.learning_rate"}), ("sgd", {"train.learning_rate", "train.momentum"})):
        study = optuna.load_study(study_name=f"t[train.optimizer={optimizer}]", storage=storage)
        assert [set(t.params) for t in study.trials] == [params, params]
        assert all(t.user_attrs["config.train.optimizer"] == optimizer for t in study.trials)
        # Another optimizer's key is not recorded at all (it does not apply to adamw's trials).
        momenta = [t.user_attrs.get("config.train.momentum", "absent") for t in study.trials]
        assert momenta == (["absent", "absent"] if optimizer == "adamw" else [t.params["train.momentum"] for t in study.trials])
