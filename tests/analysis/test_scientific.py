"""Scientific sub-studies read back from a real SQLite store: which sub-studies belong to a study,
in the design's order, and the isolation table and curves of their best trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.trial import TrialState, create_trial

import llm_doe as doe
from tests.conftest import quiet_optuna

LR = FloatDistribution(1e-5, 1e-2, log=True)
ARMS = ["sci[train.weight_decay=0.1]", "sci[train.weight_decay=0.0]"]  # the design's order, not sorted order


def _sub_study(url: str, name: str, decay: float, trials: list[tuple[TrialState, float, float | None, dict]]) -> None:
    study = optuna.create_study(storage=url, study_name=name, direction="minimize")
    study.set_user_attr("space", {"train.learning_rate": distribution_to_json(LR)})
    study.set_user_attr("metric", "val_loss")
    study.set_user_attr("design", {"study": "sci", "arms": ARMS, "scientific": {"train.weight_decay": decay},
                                   "caveats": ["train.batch_size fixed at 16"]})
    study.add_trials([create_trial(state=state, value=value, params={"train.learning_rate": lr},
                                   distributions={"train.learning_rate": LR}, intermediate_values=steps)
                      for state, lr, value, steps in trials])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    quiet_optuna()
    url = f"sqlite:///{tmp_path_factory.mktemp('sci') / 's.db'}"
    _sub_study(url, ARMS[0], 0.1, [(TrialState.COMPLETE, 1e-3, 0.40, {1: 0.6, 2: 0.4}),
                                   (TrialState.COMPLETE, 1e-4, 0.55, {1: 0.7, 2: 0.55}),
                                   (TrialState.PRUNED, 1e-2, None, {1: 0.9})])
    _sub_study(url, ARMS[1], 0.0, [(TrialState.COMPLETE, 3e-4, 0.50, {1: 0.8, 2: 0.65, 3: 0.5}),
                                   (TrialState.FAIL, 5e-3, None, {})])
    optuna.create_study(storage=url, study_name="sci_other")  # shares the prefix, not the brackets
    optuna.create_study(storage=url, study_name="other[train.weight_decay=0.1]")  # another study's arm
    return url


def test_sub_studies_are_the_studys_own_in_the_designs_order(store):
    assert doe.scientific_substudies(store, "sci") == ARMS
    assert doe.scientific_substudies(store, "sci_other") == []


def test_isolation_compares_each_values_best_trial(store):
    table = doe.scientific_isolation(store, "sci")
    assert list(table["sub_study"]) == ARMS
    assert list(table["train.weight_decay"]) == [0.1, 0.0]
    assert list(table["best_value"]) == [0.40, 0.50]
    assert list(table["best_trial"]) == [0, 0]
    assert list(table["train.learning_rate"]) == [1e-3, 3e-4]  # the best trial's nuisance parameter
    assert list(table["trials"]) == [3, 1] and list(table["complete"]) == [2, 1]  # FAIL is not finished
    assert table.attrs["scientific"] == ["train.weight_decay"]
    assert table.attrs["caveats"] == ["train.batch_size fixed at 16"]
    assert table.attrs["metric"] == "val_loss" and table.attrs["direction"] == "minimize"


def test_curves_are_the_best_trials_only_in_long_form(store):
    curves = doe.scientific_curves(store, "sci")
    assert list(curves.columns) == ["train.weight_decay", "sub_study", "trial", "step", "value"]
    first = curves[curves["sub_study"] == ARMS[0]]
    assert list(first["step"]) == [1, 2] and list(first["value"]) == [0.6, 0.4]  # trial 0, not trial 1's 0.7
    second = curves[curves["sub_study"] == ARMS[1]]
    assert list(second["value"]) == [0.8, 0.65, 0.5] and set(second["train.weight_decay"]) == {0.0}


def test_a_study_without_sub_studies_is_refused_by_name(store):
    with pytest.raises(ValueError, match="'sci_other' has no scientific sub-studies"):
        doe.scientific_isolation(store, "sci_other")
