"""Constraints (llm_doe/constraints.py and llm_doe/analysis/feasibility.py): real tiny searches whose
trials record Optuna constraints; the best trial, confirm, final, the note and the report take
only feasible ones; bad bounds are refused before anything is written."""

from __future__ import annotations

import pandas as pd
import pytest

import llm_doe as doe
from llm_doe import constraints
from llm_doe.confirm import top_trials
from llm_doe.final import choose_trial
from llm_doe.notes import study_note
from llm_doe.plugins import task_spec
from llm_doe.report import render_report
from llm_doe.schema import ConfigError
from llm_doe.search import main
from tests.conftest import TINY, load, store_args

# optimizer_steps depends on the batch size only (160 examples, 1 epoch): 20 steps at batch 8,
# 5 at batch 32, so a bound of 10 makes the batch-8 trial infeasible on any machine. It learns
# more (four times the steps at the same rate): the best value, were it allowed to compete.
STEPS = ["++study.space={train.learning_rate:{type:float,low:1.0e-4,high:3.0e-3,log:true},"
         "train.batch_size:{type:categorical,choices:[8,32]}}", "pruner=none",
         "study.enqueue=[{train.batch_size:8,train.learning_rate:2.0e-3},{train.batch_size:32,train.learning_rate:2.0e-3}]",
         "+study.constraints.optimizer_steps.max=10", "+study.constraints.peak_memory_mb.max=1000000"]


@pytest.fixture(scope="module")
def constrained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three trials under GP (two enqueued, then one GP proposes with the constraints modelled)."""
    tmp = tmp_path_factory.mktemp("constrained")
    args = ["+study=smoke", *TINY, *store_args(tmp, "c"), *STEPS, "sampler=gp", "sampler.n_startup_trials=2",
            "study.n_trials=3"]
    assert main(args) == 0
    return {"tmp": tmp, "args": args, "study": load(tmp, "c"), "url": f"sqlite:///{tmp}/c.db"}


def test_trials_record_constraints_and_the_best_trial_is_feasible(constrained):
    study = constrained["study"]
    by_batch = {t.params["train.batch_size"]: t for t in study.trials[:2]}
    small, big = by_batch[8], by_batch[32]
    assert small.constraints["optimizer_steps.max"] == 20 - 10  # value - max: violated by 10
    assert big.constraints["optimizer_steps.max"] == 5 - 10
    assert set(small.constraints) == set(big.constraints) == {"optimizer_steps.max", "peak_memory_mb.max"}
    assert small.user_attrs["feasible"] is False and "optimizer_steps 20 > max 10" in small.user_attrs[
        "constraint_violations"]
    assert big.user_attrs["feasible"] is True and "constraint_violations" not in big.user_attrs
    assert all(t.constraints for t in study.trials)  # GP's trial too: every trial carries the same ones
    assert small.value < big.value  # the infeasible trial would have won
    assert constraints.is_feasible(study.best_trial)  # Optuna's best trial is the best feasible one
    assert study.best_trial.number != small.number
    assert study.user_attrs["constraints"] == {"optimizer_steps": {"max": 10.0}, "peak_memory_mb": {"max": 1e6}}


def test_the_analysis_note_and_report_show_the_infeasible_fraction_and_the_failed_constraint(constrained):
    study = constrained["study"]
    table = doe.load_trials(constrained["url"], "c")
    api = doe.load_trials(study)  # the SQL reader and Optuna's API agree on the constraint columns
    columns = ["feasible", "violated", "constraint.optimizer_steps.max", "constraint.peak_memory_mb.max"]
    pd.testing.assert_frame_equal(table[columns], api[columns])
    small = table[table["train.batch_size"] == 8].iloc[0]
    assert bool(small["feasible"]) is False and small["violated"] == "optimizer_steps.max"
    assert int(doe.best_trial(table)["number"]) == study.best_trial.number

    failures = doe.failure_report(table)
    infeasible = int((table["feasible"] == False).sum())  # noqa: E712 - a nullable boolean column
    assert failures["infeasible"] == infeasible >= 1
    report = doe.constraint_report(table)
    assert report.loc["optimizer_steps.max", "violated"] == infeasible and report.loc["optimizer_steps.max",
                                                                                      "worst"] == 20
    assert report.loc["peak_memory_mb.max", "violated"] == 0
    warning = next(w for w in doe.study_warnings(table) if "infeasible" in w)
    assert f"{infeasible} of 3 finished trials are infeasible" in warning and "optimizer_steps <= 10" in warning

    note = study_note(table)
    assert "infeasible" in note and f"Trial **#{study.best_trial.number}**" in note
    html = render_report(constrained["url"], "c")
    assert "<h2>Constraints</h2>" in html and "optimizer_steps.max" in html and "infeasible" in html


def test_confirm_and_final_take_only_feasible_trials(constrained):
    study = constrained["study"]
    feasible = [t.number for t in study.trials if constraints.is_feasible(t)]
    assert [t.number for t in top_trials(study, 3)] == sorted(feasible, key=lambda n: study.trials[n].value)
    chosen, how = choose_trial(study, None)
    assert chosen.number == study.best_trial.number and "feasible" in how
    small = next(t for t in study.trials if t.params["train.batch_size"] == 8)
    chosen, how = choose_trial(study, small.number)  # asked for by number: allowed, and said
    assert chosen.number == small.number and "infeasible" in how


def test_a_resume_with_other_constraints_is_refused(constrained, capsys):
    args = [a for a in constrained["args"] if not a.startswith("+study.constraints.optimizer_steps")]
    assert main([*args, "+study.constraints.optimizer_steps.max=30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm_doe: error: study.constraints: is ") and "use another study.name" in err, err


def test_no_feasible_trial_no_best_and_final_refuses(tmp_path):
    """A peak-memory bound no trial can meet (1 MB): every trial is infeasible, nothing is the best."""
    assert main(["+study=smoke", *TINY, *store_args(tmp_path, "m"), "pruner=none", "study.n_trials=2",
                 "+study.constraints.peak_memory_mb.max=1"]) == 0
    study = load(tmp_path, "m")
    assert all(t.user_attrs["feasible"] is False for t in study.trials)
    assert all(t.constraints["peak_memory_mb.max"] > 0 for t in study.trials)
    table = doe.load_trials(study)
    with pytest.raises(ValueError, match="no feasible COMPLETE trial"):
        doe.best_trial(table)
    assert any("no COMPLETE trial is feasible" in w for w in doe.study_warnings(table))
    with pytest.raises(ConfigError, match="no feasible COMPLETE trial"):
        choose_trial(study, None)
    assert top_trials(study, 3) == []


@pytest.mark.parametrize(("overrides", "key", "says"), [
    (["+study.constraints.peak_memory.max=8000"], "study.constraints.peak_memory", "peak_memory_mb"),
    (["+study.constraints.peak_memory_mb.maxi=8000"], "study.constraints.peak_memory_mb", "unknown field"),
    (["+study.constraints.peak_memory_mb=8000"], "study.constraints.peak_memory_mb", "must be a map"),
    (["+study.constraints.val_loss.max=0.5", "+study.constraints.val_loss.min=0.7"], "study.constraints.val_loss",
     "above max"),
    (["+study.constraints.peak_memory_mb.max=8000", "sampler=cmaes"], "study.constraints", "sampler=cmaes"),
])
def test_bad_constraints_are_refused_with_one_line_and_nothing_written(tmp_path, capsys, overrides, key, says):
    assert main(["+study=smoke", *TINY, *store_args(tmp_path, "bad"), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llm_doe: error: {key}: ") and says in err and "\n" not in err, err
    assert not (tmp_path / "bad.db").exists() and not (tmp_path / "run").exists()


def test_every_recordable_attribute_is_recorded_by_a_real_trial(constrained):
    """The list a bad constraint is answered with names only what trials really record."""
    trial = constrained["study"].trials[0]
    known = constraints.recordable(tuple(task_spec("classification").metrics))
    missing = [name for name in known if name not in trial.user_attrs]
    assert not missing


def test_constraint_values_and_words():
    bounds = {"peak_memory_mb": {"max": 8000}, "optimizer_steps": {"min": 10, "max": 500}}
    values = constraints.values(bounds, {"peak_memory_mb": 9000.0, "optimizer_steps": 5})
    assert values == {"optimizer_steps.max": -495.0, "optimizer_steps.min": 5.0, "peak_memory_mb.max": 1000.0}
    assert constraints.violated(values) == ["optimizer_steps.min", "peak_memory_mb.max"]
    words = constraints.trial_attrs(bounds, {"peak_memory_mb": 9000.0, "optimizer_steps": 5})
    assert words["feasible"] is False
    assert words["constraint_violations"] == "optimizer_steps 5 < min 10; peak_memory_mb 9000 > max 8000"
    assert constraints.values({"val_loss": {"max": 1}}, {"val_loss": None}) == {"val_loss.max": 1.0}
