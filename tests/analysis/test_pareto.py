"""The Pareto front of a multi-objective table: which trials no other beats in every objective."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json
from optuna.trial import TrialState, create_trial

from llm_doe import analysis as doe

SPACE = {"peft.r": CategoricalDistribution([2, 4, 8]), "train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}


def _study(tmp_path, directions: list[str], rows: list[tuple[TrialState, list[float] | None]]) -> optuna.Study:
    """A stored study with ``rows`` (state, values) and the attributes a search records."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db", study_name="p", directions=directions)
    study.set_user_attr("metric", "accuracy")
    study.set_user_attr("objectives", ["accuracy", "trainable_params"])
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in SPACE.items()})
    for i, (state, values) in enumerate(rows):
        params = {"peft.r": [2, 4, 8][i % 3], "train.learning_rate": 1e-3}
        study.add_trial(create_trial(state=state, values=values, params=params, distributions=SPACE,
                                     user_attrs={"trainable_params": values[1]} if values else {}))
    return study


def test_the_front_follows_each_objectives_direction_and_keeps_ties(tmp_path):
    # accuracy up, parameters down: #0 and #1 trade off, #2 is beaten by #1, #3 ties #1, #4 failed.
    rows = [(TrialState.COMPLETE, [0.9, 8000.0]), (TrialState.COMPLETE, [0.8, 2000.0]),
            (TrialState.COMPLETE, [0.7, 4000.0]), (TrialState.COMPLETE, [0.8, 2000.0]), (TrialState.FAIL, None)]
    study = _study(tmp_path, ["maximize", "minimize"], rows)
    trials = doe.load_trials(f"sqlite:///{tmp_path}/p.db", "p")
    assert trials["pareto"].tolist() == [True, True, False, True, False]
    assert sorted(trials.loc[trials["pareto"], "number"]) == sorted(t.number for t in study.best_trials)
    front = doe.pareto_front(trials)
    assert front["number"].tolist() == [0, 1, 3]  # best accuracy first
    assert front["trainable_params"].dtype == "Int64"  # counts stay whole
    assert doe.pareto_text(trials)[0].startswith("#0: accuracy 0.9, trainable_params 8000 with peft.r=2")
    assert doe.ranked_trials(trials)["number"].tolist() == [0, 1, 3, 2]  # the front first


def test_an_infeasible_trial_is_not_on_the_front(tmp_path):
    rows = [(TrialState.COMPLETE, [0.9, 8000.0]), (TrialState.COMPLETE, [0.95, 1000.0])]
    _study(tmp_path, ["maximize", "minimize"], rows)
    trials = doe.load_trials(f"sqlite:///{tmp_path}/p.db", "p")
    assert trials["pareto"].tolist() == [False, True]
    trials["feasible"] = [True, False]  # what a constraint marks
    assert doe.pareto_mask(trials).tolist() == [True, False]


def test_one_objective_at_a_time_for_the_single_objective_checks(tmp_path):
    rows = [(TrialState.COMPLETE, [0.9, 8000.0]), (TrialState.COMPLETE, [0.8, 2000.0]),
            (TrialState.COMPLETE, [0.7, 4000.0])]
    _study(tmp_path, ["maximize", "minimize"], rows)
    trials = doe.load_trials(f"sqlite:///{tmp_path}/p.db", "p")
    cost = doe.objective_view(trials, "trainable_params")
    assert cost.attrs["direction"] == "minimize" and int(doe.best_trial(cost)["number"]) == 1
    assert int(doe.best_trial(doe.objective_view(trials, 0))["number"]) == 0
    with pytest.raises(ValueError, match="no single best trial"):
        doe.best_trial(trials)
    assert doe.study_warnings(trials) == []  # no boundary check without a single best; no crash


def test_plot_pareto_draws_the_front_and_labels_its_trials(tmp_path):
    rows = [(TrialState.COMPLETE, [0.9, 8000.0]), (TrialState.COMPLETE, [0.8, 2000.0]),
            (TrialState.COMPLETE, [0.7, 4000.0])]
    _study(tmp_path, ["maximize", "minimize"], rows)
    trials = doe.load_trials(f"sqlite:///{tmp_path}/p.db", "p")
    ax = doe.plot_pareto(trials).axes[0]
    assert ax.get_xlabel() == "trainable_params (minimize)" and ax.get_ylabel() == "accuracy (maximize)"
    assert sorted(t.get_text() for t in ax.texts) == ["#0", "#1"]
    with pytest.raises(ValueError, match="not an objective"):
        doe.plot_pareto(trials, x="f1")


def test_single_objective_tables_have_no_front():
    table = pd.DataFrame({"number": [0], "state": ["COMPLETE"], "value": [1.0]})
    table.attrs.update(directions=["minimize"], direction="minimize")
    with pytest.raises(ValueError, match="multi-objective table"):
        doe.pareto_mask(table)
    assert doe.objective_view(table) is table


def test_ranked_trials_put_a_constrained_studys_infeasible_trials_last():
    # trial 1 has the best value but violates a bound: the report's best trials (ROC, generations) start at 2.
    trials = pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE"] * 3 + ["PRUNED"],
                           "value": [0.5, 0.1, 0.3, 0.05],
                           "feasible": pd.Series([True, False, True, True], dtype="boolean")})
    trials.attrs = {"direction": "minimize"}
    assert doe.ranked_trials(trials)["number"].tolist() == [2, 0, 1]
    assert doe.ranked_trials(trials.drop(columns="feasible"))["number"].tolist() == [1, 2, 0]

    # Two objectives: off the front too, a feasible trial comes before an infeasible one.
    two = pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE"] * 4, "values_0": [0.1, 0.2, 0.3, 0.4],
                        "values_1": [9.0, 1.0, 9.5, 9.9], "feasible": pd.Series([True, True, False, True],
                                                                                dtype="boolean")})
    two.attrs = {"directions": ["minimize", "minimize"], "objectives": ["val_loss", "peak_memory_mb"]}
    assert doe.ranked_trials(two)["number"].tolist() == [0, 1, 3, 2]
