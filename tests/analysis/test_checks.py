"""The tuning playbook's checks: failures (re-queued trials apart), boundaries, precisions,
isolation, importances, the best config and the command that reruns it."""

from __future__ import annotations

import math
import shlex

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.trial import TrialState, create_trial

import llm_doe as doe
from llm_doe.search import main
from tests.conftest import build_interrupted, quiet_optuna


def test_failure_report_counts_failed_and_diverged(synthetic):
    report = doe.failure_report(doe.load_trials(synthetic["url"], "syn"))
    assert report[["trials", "complete", "pruned", "failed", "diverged", "running"]].tolist() == [9, 3, 2, 2, 1, 2]
    assert report["failed_fraction"] == pytest.approx(2 / 9)
    assert report["diverged_fraction"] == pytest.approx(1 / 9)


@pytest.mark.parametrize("path", ["sql", "api"])
def test_interrupted_and_requeued_trials_are_not_failures(tmp_path, path):
    """Ctrl-C and dead workers re-queue their trial: counted apart, never as a failure of the space."""
    url = f"sqlite:///{tmp_path}/i.db"
    study = build_interrupted(url)
    table = doe.load_trials(url if path == "sql" else study, "i")
    assert table.loc[table["requeued"], "number"].tolist() == [6, 7, 8]
    report = doe.failure_report(table)
    assert report[["trials", "complete", "failed", "requeued", "running"]].tolist() == [10, 5, 1, 3, 1]
    assert report["failed_fraction"] == pytest.approx(1 / 7)
    warnings = doe.study_warnings(table)
    assert any(w.startswith("1 of 7 trials failed (14%)") and "3 interrupted and re-queued" in w for w in warnings), \
        warnings
    assert "3 interrupted (re-queued)" in doe.analysis.trial_counts_text(report)


def test_a_study_whose_only_failures_were_interrupted_has_no_failure_warning(tmp_path):
    url = f"sqlite:///{tmp_path}/i.db"
    study = optuna.create_study(storage=url, study_name="i")
    x = FloatDistribution(0.0, 1.0)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "requeued": True, "fail_reason": "interrupted at optimizer step 7; re-queued to resume from its checkpoint"}))
    for i in range(5):
        study.add_trial(create_trial(value=0.5 + i / 10, params={"x": 0.3 + i / 10}, distributions={"x": x}))
    assert not any("failed" in w for w in doe.study_warnings(doe.load_trials(url, "i")))


def test_boundary_report_flags_a_best_trial_on_the_edge(synthetic):
    table = doe.load_trials(synthetic["url"], "syn")
    report = doe.boundary_report(table).set_index("param")
    assert "train.batch_size" not in report.index  # categorical: no edge
    lr = report.loc["train.learning_rate"]  # best trial #6: 9.5e-3 in [1e-5, 1e-2], log scale
    assert lr["best"] == 9.5e-3 and lr["edge"] == "high" and lr["near_edge"]
    assert lr["position"] == pytest.approx((math.log(9.5e-3) - math.log(1e-5)) / (math.log(1e-2) - math.log(1e-5)))
    assert "widen the range upward" in lr["advice"]
    decay = report.loc["train.weight_decay"]  # 0.05 in [0, 0.1]
    assert decay["edge"] == "" and not decay["near_edge"] and decay["position"] == pytest.approx(0.5)
    warnings = doe.study_warnings(table)
    assert any("2 of 9 trials failed" in w and "1 of them diverged" in w for w in warnings)
    assert any("train.learning_rate" in w for w in warnings)
    assert not any("train.weight_decay" in w for w in warnings)


def test_a_study_run_in_two_precisions_is_flagged(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    study = optuna.create_study(storage=url, study_name="p")
    x = FloatDistribution(0.0, 1.0)
    for i, precision in enumerate(["bf16", "bf16", "fp32"]):
        study.add_trial(create_trial(value=0.5 + i, params={"x": i / 4}, distributions={"x": x},
                                     user_attrs={"precision": precision}))
    warnings = doe.study_warnings(doe.load_trials(url, "p"))
    assert any("different precisions (bf16: 2, fp32: 1)" in w for w in warnings), warnings
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"precision": "fp16"}))  # failed: not compared
    assert any("different precisions (bf16: 2, fp32: 1)" in w for w in doe.study_warnings(doe.load_trials(url, "p")))
    same = optuna.create_study(storage=url, study_name="same")
    same.add_trial(create_trial(value=0.5, params={"x": 0.5}, distributions={"x": x}, user_attrs={"precision": "bf16"}))
    assert not any("precision" in w for w in doe.study_warnings(doe.load_trials(url, "same")))
    # A study resumed after an upgrade: its first trials recorded no precision.
    same.add_trial(create_trial(value=0.6, params={"x": 0.6}, distributions={"x": x}))
    warnings = doe.study_warnings(doe.load_trials(url, "same"))
    assert any("(bf16: 1, not recorded: 1)" in w for w in warnings), warnings
    old = optuna.create_study(storage=url, study_name="old")  # nothing recorded anywhere: nothing to say
    old.add_trial(create_trial(value=0.6, params={"x": 0.6}, distributions={"x": x}))
    assert not any("precision" in w for w in doe.study_warnings(doe.load_trials(url, "old")))


def test_a_precision_metric_is_a_number_and_no_precision_the_trials_ran_in(tmp_path):
    # A token classifier's entity-level precision is a metric; what a trial computed in is
    # train_precision (a store written before it was renamed keeps "precision" as text).
    url = f"sqlite:///{tmp_path}/n.db"
    study = optuna.create_study(storage=url, study_name="n", direction="maximize")
    x = FloatDistribution(0.0, 1.0)
    for i, precision in enumerate([0.5, 0.25, 0.75]):
        study.add_trial(create_trial(value=0.5, params={"x": i / 4}, distributions={"x": x},
                                     user_attrs={"precision": precision, "train_precision": "bf16"}))
    table = doe.load_trials(url, "n")
    assert table["train_precision"].tolist() == ["bf16"] * 3
    assert not any("precision" in w for w in doe.study_warnings(table))
    study.add_trial(create_trial(value=0.5, params={"x": 0.9}, distributions={"x": x},
                                 user_attrs={"precision": 0.1, "train_precision": "fp32"}))
    warnings = doe.study_warnings(doe.load_trials(url, "n"))
    assert any("different precisions (bf16: 3, fp32: 1)" in w for w in warnings), warnings


def test_isolation_gives_the_best_trial_per_value(synthetic):
    table = doe.load_trials(synthetic["url"], "syn")
    iso = doe.isolation(table, "train.batch_size")
    assert iso.index.name == "train.batch_size"
    # finite COMPLETE trials: #0 (16, 0.5), #6 (32, 0.3); #1 has value inf
    assert iso.loc[16, "best_trial"] == 0 and iso.loc[32, "best_trial"] == 6
    assert iso.loc[32, "best_value"] == 0.3 and iso.loc[32, "train.learning_rate"] == 9.5e-3
    binned = doe.isolation(table, "train.learning_rate", bins=3)
    assert binned["trials"].sum() == 2 and len(binned) == 2


def test_importances_are_optunas_and_find_the_parameter_that_matters():
    quiet_optuna()
    rng = np.random.default_rng(0)
    study = optuna.create_study(study_name="imp")
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in
                                  {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}.items()})
    study.add_trials([create_trial(params={"a": float(a), "b": float(b)}, value=float((a - 0.3) ** 2),
                                   distributions={"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)})
                      for a, b in rng.random((40, 2))])
    table = doe.load_trials(study)
    importances = doe.param_importances(table)
    assert list(importances.index) == ["a", "b"] and importances["a"] > 0.7
    assert importances.to_dict() == pytest.approx(optuna.importance.get_param_importances(study))
    fanova = doe.param_importances(table, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert fanova.index[0] == "a"
    assert doe.param_importances(table.head(1)).empty


def test_best_config_and_rerun_command_reproduce_the_best_trial(tiny):
    table = doe.load_trials(tiny["url"], tiny["name"])
    best = doe.best_trial(table)
    assert best["value"] == table[table["state"] == "COMPLETE"]["value"].min()
    config = doe.best_config(table)
    study = optuna.load_study(study_name=tiny["name"], storage=tiny["url"])
    meta = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study.trials[int(best["number"])],
                                                                          storage=study._storage)}
    stored = yaml.safe_load((tiny["art"] / meta["config.yaml"].artifact_id).read_text())
    for section in ("model", "data", "train"):  # the config the trial actually ran
        assert config[section] == stored[section], section
    assert yaml.safe_load(doe.best_config(table, as_yaml=True)) == config

    command = doe.rerun_command(table)
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "llm_doe.search"]
    assert f"study.name={tiny['name']}_trial{int(best['number'])}" in args and "study.n_trials=1" in args
    assert repr(float(best["train.learning_rate"])) in command
    assert main(args[3:]) == 0  # the command really reruns it: same value
    rerun = optuna.load_study(study_name=f"{tiny['name']}_trial{int(best['number'])}", storage=tiny["url"])
    assert rerun.trials[0].params["train.learning_rate"] == best["train.learning_rate"]
    assert rerun.trials[0].value == pytest.approx(best["value"], rel=1e-6)


def test_confirm_command_keeps_the_searchs_overrides_and_really_confirms(tmp_path):
    """The suggested confirm command is the search's own (a study found through the user's
    ``hydra.searchpath`` included), so it runs, and passes the same-experiment check."""
    from llm_doe.confirm import main as confirm_main
    from tests.conftest import REPO, TINY, store_args

    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text((REPO / "conf" / "study" / "smoke.yaml").read_text().replace("name: smoke",
                                                                                                  "name: mine"))
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    args = [searchpath, "+study=mine", *TINY, *store_args(tmp_path, "mine"), "study.n_trials=2"]
    assert main(args) == 0
    table = doe.load_trials(f"sqlite:///{tmp_path}/mine.db", "mine")
    command = shlex.split(doe.confirm_command(table, top_k=1, seeds=1))
    assert command[:3] == ["python", "-m", "llm_doe.confirm"]
    assert searchpath in command and "+study=mine" in command  # what the rerun command keeps too
    assert "confirm.top_k=1" in command and "confirm.seeds=1" in command
    assert searchpath in shlex.split(doe.rerun_command(table))
    assert confirm_main(command[3:]) == 0
    confirmation = doe.confirmation_table(f"sqlite:///{tmp_path}/mine.db", "mine")
    assert confirmation.attrs["n_seeds"] == 1
    text = doe.format_confirmation(None, "mine", command=doe.confirm_command(table))
    assert text.startswith("No confirmation study yet: python -m llm_doe.confirm 'hydra.searchpath=")


@pytest.mark.parametrize("path", ["sql", "api"])
def test_trials_that_predict_one_class_are_counted_as_learning_nothing(tmp_path, path):
    """A trial whose best evaluation predicts one class for every example (accuracy = majority
    share) learned nothing: study_warnings counts them (the note and the report show it)."""
    url = f"sqlite:///{tmp_path}/c.db"
    study = optuna.create_study(storage=url, study_name="c")
    x = FloatDistribution(0.0, 1.0)
    for i, classes in enumerate([1, 2, 1, 2, None]):
        attrs = {"accuracy": 0.585 if classes == 1 else 0.8}
        if classes is not None:  # a trial from before the count was recorded
            attrs["predicted_classes"] = classes
        study.add_trial(create_trial(value=0.6 - i / 100, params={"x": i / 5}, distributions={"x": x},
                                     user_attrs=attrs))
    table = doe.load_trials(url if path == "sql" else study, "c")
    assert table["predicted_classes"].tolist()[:4] == [1, 2, 1, 2] and pd.isna(table["predicted_classes"].iloc[4])
    (warning,) = [w for w in doe.study_warnings(table) if "learned nothing" in w]
    assert warning.startswith("2 of 5 finished trials learned nothing (#0, #2)")
    from llm_doe.notes import study_note

    assert warning in study_note(table)
    old = doe.load_trials(url, "c").drop(columns="predicted_classes")  # studies from before: no warning
    assert not [w for w in doe.study_warnings(old) if "learned nothing" in w]


def test_best_config_of_a_pretrained_model_lists_no_in_code_sizes(tiny):
    """A MiniLM study's best config once listed the tiny model's hidden_size, num_layers, ...:
    only what applies is shown; ``full=True`` keeps the stored copy's every key."""
    import copy

    table = doe.load_trials(tiny["url"], tiny["name"])
    table.attrs = copy.deepcopy(table.attrs)
    table.attrs["study_user_attrs"]["config"]["model"].update(kind="pretrained", name_or_path="minilm")
    shown = doe.best_config(table)
    assert "hidden_size" not in shown["model"] and "num_layers" not in shown["model"]
    assert "hidden_size:" not in doe.best_config(table, as_yaml=True)
    assert shown["peft"] == {"method": "none"} and shown["task"] == {"name": "classification"}
    assert doe.best_config(table, full=True)["model"]["hidden_size"] == 64
