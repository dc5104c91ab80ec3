"""Two objectives, quality against cost: ``study.metric: [val_loss, trainable_params]``.

One real two-objective study (the tiny Llama with LoRA, rank searched) feeds the tests of what
it stores, what the analysis, report and note show, and what confirm and final accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from llm_doe import analysis as doe
from llm_doe.cli import compose_config
from llm_doe.confirm import main as confirm
from llm_doe.final import main as final
from llm_doe.notes import study_note
from llm_doe.report import render_report
from llm_doe.schema import resolved_directions
from llm_doe.search import main
from tests.conftest import REPO, store_args

SFT = ["+study=sft_smoke", "data.train_size=32", "data.val_size=16", "data.test_size=16", "data.max_length=64",
       "runtime.progress=false", "runtime.num_threads=1"]
TWO = ["study.metric=[val_loss,trainable_params]", '+study.space.peft.r="choice(2,8)"']


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """A finished 3-trial study of validation loss against trainable parameters."""
    tmp = tmp_path_factory.mktemp("mo")
    args = [*SFT, *store_args(tmp, "mo"), *TWO, "pruner=median"]
    assert main([*args, "study.n_trials=3"]) == 0
    return {"tmp": tmp, "args": args, "url": f"sqlite:///{tmp}/mo.db"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: ") and "\n" not in err, err
    return err


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_a_two_objective_study_stores_both_values_named_and_unpruned(study):
    stored = optuna.load_study(study_name="mo", storage=study["url"])
    assert [d.name for d in stored.directions] == ["MINIMIZE", "MINIMIZE"]
    assert stored.metric_names == ["val_loss", "trainable_params"]  # the dashboard's axis names
    assert stored.user_attrs["objectives"] == ["val_loss", "trainable_params"]
    done = stored.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3
    for trial in done:
        assert trial.values == [trial.user_attrs["val_loss"], trial.user_attrs["trainable_params"]]
        assert trial.intermediate_values == {}  # Optuna takes none from a multi-objective trial
    ranks = {t.params["peft.r"]: t.user_attrs["trainable_params"] for t in done}
    if len(ranks) == 2:
        assert ranks[8] == 4 * ranks[2]  # the cost objective is the adapters' size


def test_the_search_says_it_does_not_prune_and_logs_the_front(study):
    log = (study["tmp"] / "run" / "search.log").read_text()
    assert "Optuna's pruners take one objective" in log and "pruner.name=median not used" in log
    assert "Pareto front: trial #" in log


def test_load_trials_marks_the_pareto_front(study):
    trials = doe.load_trials(study["url"])
    assert trials.attrs["objectives"] == ["val_loss", "trainable_params"]
    assert trials.attrs["directions"] == ["minimize", "minimize"]
    assert (trials["values_1"] == trials["trainable_params"]).all()
    values = trials[["values_0", "values_1"]].to_numpy().tolist()
    for i, row in enumerate(values):
        beaten = any(_dominates(other, row) for j, other in enumerate(values) if j != i)
        assert bool(trials["pareto"].iloc[i]) == (not beaten)
    stored = optuna.load_study(study_name="mo", storage=study["url"])
    assert sorted(trials.loc[trials["pareto"], "number"]) == sorted(t.number for t in stored.best_trials)
    front = doe.pareto_front(trials)
    assert list(front.columns[:3]) == ["number", "val_loss", "trainable_params"]
    assert front["val_loss"].is_monotonic_increasing
    with pytest.raises(ValueError, match="no single best trial"):
        doe.best_trial(trials)
    fig = doe.plot_pareto(trials)
    assert fig.axes[0].get_xlabel().startswith("trainable_params")


def test_the_report_and_the_note_show_the_pareto_front(study):
    trials = doe.load_trials(study["url"])
    front = trials.loc[trials["pareto"], "number"].tolist()
    page = render_report(study["url"], "mo", artifacts_dir=study["tmp"] / "art")
    assert "<h2>Pareto front</h2>" in page and "the trade-off between minimize <code>val_loss</code>" in page
    assert "Parameter importance per objective" in page and "Best trial" not in page
    note = study_note(trials)
    assert "### Pareto front" in note and "### Best trial" not in note
    for number in front:
        assert f"| **#{number}** |" in note


def test_final_and_confirm_refuse_a_study_without_a_single_best(study, capsys):
    stored = optuna.load_study(study_name="mo", storage=study["url"])
    front = ", ".join(str(t.number) for t in sorted(stored.best_trials, key=lambda t: t.number))
    capsys.readouterr()
    assert final([*study["args"], f"final.output_dir={study['tmp']}/export"]) == 2
    assert f"final.trial: study 'mo' has several objectives and no single best trial: set final.trial to one of " \
           f"its Pareto front ({front})" in _one_line_error(capsys)
    assert not (study["tmp"] / "export").exists()
    assert confirm([*study["args"], "confirm.seeds=2"]) == 2
    assert "confirm.trials: study 'mo' has several objectives" in _one_line_error(capsys)
    failed = next((t.number for t in stored.trials if t.state.name != "COMPLETE"), 99)
    assert confirm([*study["args"], f"confirm.trials=[{failed}]"]) == 2
    assert f"confirm.trials: trial {failed} of study 'mo' is" in _one_line_error(capsys)


def test_confirm_and_final_take_an_explicit_trial(study):
    stored = optuna.load_study(study_name="mo", storage=study["url"])
    chosen = min(stored.best_trials, key=lambda t: t.values[1]).number  # the cheapest on the front
    assert confirm([*study["args"], f"confirm.trials=[{chosen}]", "confirm.seeds=2"]) == 0
    confirmation = optuna.load_study(study_name="mo-confirm", storage=study["url"])
    assert len(confirmation.directions) == 1  # seeds vary the quality, not the cost
    assert confirmation.user_attrs["metric"] == "val_loss" and confirmation.user_attrs["source_trials"] == [chosen]
    out = study["tmp"] / "export"
    assert final([*study["args"], f"final.trial={chosen}", f"final.output_dir={out}"]) == 0
    card = (out / "README.md").read_text()
    assert f"trial #{chosen}: set by final.trial" in card
    assert "Objective: minimize `val_loss` and minimize `trainable_params`" in card


def test_a_changed_metric_list_is_another_experiment(study, capsys):
    capsys.readouterr()
    assert main([*study["args"], "study.metric=[val_loss,train_time_s]", "study.n_trials=4"]) == 2
    err = _one_line_error(capsys)
    assert "study.metric: is ['val_loss', 'train_time_s'] here but ['val_loss', 'trainable_params']" in err
    assert main([*study["args"], "study.metric=val_loss", "study.n_trials=4"]) == 2
    assert "study.metric: is 'val_loss' here but ['val_loss', 'trainable_params']" in _one_line_error(capsys)
    assert main([*study["args"], "study.direction=[minimize,maximize]", "study.n_trials=4"]) == 2
    assert "study.direction: is ['minimize', 'maximize'] here but ['minimize', 'minimize']" in _one_line_error(capsys)


@pytest.mark.parametrize(("metric", "direction", "expected"), [
    ("[val_loss,trainable_params]", None, ["minimize", "minimize"]),
    ("[accuracy,train_time_s]", None, ["maximize", "minimize"]),
    ("[f1,peak_memory_mb,val_loss]", None, ["maximize", "minimize", "minimize"]),
    ("[accuracy,trainable_params]", "[maximize,maximize]", ["maximize", "maximize"]),
    ("accuracy", None, ["maximize"]),
])
def test_each_metric_has_its_own_default_direction(metric, direction, expected):
    overrides = ["+study=smoke", f"study.metric={metric}"] + ([f"study.direction={direction}"] if direction else [])
    assert resolved_directions(compose_config(overrides).config) == expected


@pytest.mark.parametrize(("overrides", "message"), [
    (["study.metric=[val_loss,bogus]"], "study.metric: 'bogus' is neither a metric of task classification"),
    (["study.metric=[trainable_params,val_loss]"], "study.metric: must start with a quality metric"),
    (["study.metric=bogus"], "study.metric: must be one of task classification's metrics"),
    (["study.metric=[val_loss,val_loss]"], "study.metric: names a metric twice"),
    (["study.metric=[val_loss,trainable_params]", "study.direction=[minimize]"],
     "study.direction: needs one direction per metric (2)"),
    (["study.metric=[val_loss,trainable_params]", "study.direction=[minimize,down]"],
     "study.direction: must be minimize or maximize, got 'down'"),
    (["study.metric=[val_loss,trainable_params]", "sampler=cmaes"], "sampler.name: cmaes optimises one objective"),
])
def test_bad_objectives_are_refused_with_one_line(tmp_path, capsys, overrides, message):
    from tests.conftest import TINY

    assert main(["+study=smoke", *TINY, *store_args(tmp_path), *overrides]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "t.db").exists()


def test_the_lora_tradeoff_study_searches_rank_and_targets_against_trainable_params():
    cfg = compose_config(["+study=lora_tradeoff"]).config
    assert cfg.study.metric == ["val_loss", "trainable_params"]
    assert resolved_directions(cfg) == ["minimize", "minimize"]
    assert {"peft.r", "peft.target_modules"} <= set(cfg.study.space)
    assert "SmolLM2" in cfg.model.name_or_path and cfg.peft.method == "lora"
    assert (Path(REPO) / "conf" / "study" / "lora_tradeoff.yaml").is_file()
