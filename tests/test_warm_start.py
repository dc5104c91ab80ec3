"""Warm starts (llm_doe/warm_start.py): study.enqueue and study.warm_start run real tiny searches
against real SQLite files; refusals are checked to write nothing."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import llm_doe as doe
from llm_doe import warm_start
from llm_doe.cli import compose_config
from llm_doe.design import plan as plan_design
from llm_doe.schema import ConfigError
from llm_doe.search import main
from llm_doe.study import ranked_trials
from tests.conftest import TINY, load, run_cli, store_args


def _enqueued(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.user_attrs[warm_start.ATTR] for t in study.trials if warm_start.ATTR in t.user_attrs}


@pytest.fixture(scope="module")
def smoke_source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished 3-trial ``smoke`` study to start from (its own store and folder)."""
    tmp = tmp_path_factory.mktemp("source")
    assert main(["+study=smoke", *TINY, *store_args(tmp, "smoke"), "pruner=none"]) == 0
    study = load(tmp, "smoke")
    return {"db": f"{tmp}/smoke.db", "top": [t.number for t in ranked_trials(study)],
            "params": {t.number: t.params for t in study.trials}}


def test_a_warm_started_search_runs_the_top_two_first_and_resume_does_not_enqueue_again(
        tmp_path, smoke_source, capsys):
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "full"), "pruner=none",
            "study.warm_start.study_name=smoke", f"study.warm_start.storage={smoke_source['db']}",
            "study.warm_start.top_k=2"]
    assert main([*args, "study.n_trials=3"]) == 0
    study = load(tmp_path, "full")
    best, second = smoke_source["top"][:2]
    assert _enqueued(study) == {0: f"smoke#{best}", 1: f"smoke#{second}"}  # the best first, then the next
    assert study.trials[0].params == smoke_source["params"][best]
    assert study.trials[1].params == smoke_source["params"][second]
    assert "enqueued 2 trial(s) to run first" in capsys.readouterr().out
    rerun = doe.rerun_command(doe.load_trials(study))  # a one-point rerun enqueues nothing
    assert "study.warm_start.study_name=null" in rerun and "warm_start.storage=null" in rerun
    assert f"warm_start.storage={smoke_source['db']}" not in rerun

    assert main([*args, "study.n_trials=4"]) == 0  # resume: one more trial, sampled, nothing enqueued again
    study = load(tmp_path, "full")
    assert len(study.trials) == 4 and _enqueued(study) == {0: f"smoke#{best}", 1: f"smoke#{second}"}
    assert "enqueued" not in capsys.readouterr().out


def test_config_points_run_first_and_other_spaces_are_fitted_with_a_line_each(tmp_path, smoke_source, capsys):
    # This study searches a narrower learning rate and the weight decay, which smoke did not.
    space = ("++study.space={train.learning_rate:{type:float,low:2.0e-4,high:1.0e-3,log:true},"
             "train.weight_decay:{type:float,low:0.0,high:0.1,step:0.01}}")
    args = ["+study=smoke", *TINY, *store_args(tmp_path, "narrow"), space, "pruner=none", "study.n_trials=4",
            "study.warm_start.study_name=smoke", f"study.warm_start.storage={smoke_source['db']}",
            "study.warm_start.top_k=3", "study.enqueue=[{train.weight_decay:0.05,train.learning_rate:5.0e-4}]"]
    assert main(args) == 0
    study = load(tmp_path, "narrow")
    first = study.trials[0]
    assert first.user_attrs[warm_start.ATTR] == "config"
    assert first.params == {"train.weight_decay": 0.05, "train.learning_rate": 5.0e-4}
    out = capsys.readouterr().out
    warm = [t for t in study.trials if str(t.user_attrs.get(warm_start.ATTR, "")).startswith("smoke#")]
    assert warm, out
    for trial in warm:  # clipped into this study's range; weight decay sampled
        assert 2.0e-4 <= trial.params["train.learning_rate"] <= 1.0e-3
    source_lrs = [smoke_source["params"][n]["train.learning_rate"] for n in smoke_source["top"]]
    clipped = [lr for lr in source_lrs if not 2.0e-4 <= lr <= 1.0e-3]
    assert out.count("clipped to") >= min(1, len(clipped))


def test_a_smaller_study_warm_starts_within_its_own_store(tmp_path):
    """storage null: the other study is in this study's store (the classic small-then-full use)."""
    assert main(["+study=smoke", *TINY, *store_args(tmp_path, "small"), "pruner=none", "study.n_trials=2"]) == 0
    # Same store file, another study name.
    args = ["+study=smoke", *TINY, "study.name=big", f"storage.url=sqlite:///{tmp_path}/small.db",
            f"storage.artifacts_dir={tmp_path}/art", f"storage.checkpoints_dir={tmp_path}/ck",
            f"hydra.run.dir={tmp_path}/run2", "pruner=none", "study.n_trials=2", "study.warm_start.study_name=small",
            "study.warm_start.top_k=1"]
    assert main(args) == 0
    big = optuna.load_study(study_name="big", storage=f"sqlite:///{tmp_path}/small.db")
    small = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path}/small.db")
    assert big.trials[0].params == small.best_trial.params
    assert big.trials[0].user_attrs[warm_start.ATTR] == f"small#{small.best_trial.number}"


@pytest.mark.parametrize(("override", "key", "says"), [
    ("study.enqueue=[{train.learning_rate:0.5}]", "study.enqueue[0].train.learning_rate", "outside the search space"),
    ("study.enqueue=[{train.learnin_rate:0.001}]", "study.enqueue[0].train.learnin_rate", "not a searched parameter"),
    ("study.enqueue=[3]", "study.enqueue[0]", "non-empty map"),
    ("study.enqueue=[{train.learning_rate:0.001},{train.learning_rate:0.002},{train.learning_rate:0.0005},"
     "{train.learning_rate:0.0003}]", "study.enqueue", "study.n_trials=3"),
    ("study.warm_start.study_name=nope", "study.warm_start.storage", "no study store"),
])
def test_bad_warm_starts_are_refused_with_one_line_and_nothing_written(tmp_path, capsys, override, key, says):
    code = main(["+study=smoke", *TINY, *store_args(tmp_path, "bad"), override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"llm_doe: error: {key}: ") and says in err and "\n" not in err, err
    assert not (tmp_path / "bad.db").exists() and not (tmp_path / "run").exists()


def test_a_warm_start_from_a_missing_study_names_what_the_store_holds(tmp_path, smoke_source, capsys):
    code = main(["+study=smoke", *TINY, *store_args(tmp_path, "bad"), "study.warm_start.study_name=nope",
                 f"study.warm_start.storage={smoke_source['db']}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "study.warm_start.study_name: no study 'nope'" in err and "it holds: smoke" in err, err
    assert not (tmp_path / "bad.db").exists()


def test_fit_clips_snaps_and_refuses():
    log_lr = FloatDistribution(1e-4, 1e-2, log=True)
    assert warm_start.fit(log_lr, 1e-3) == (1e-3, None)
    value, how = warm_start.fit(log_lr, 0.5)
    assert value == 1e-2 and "clipped" in how
    stepped = FloatDistribution(0.0, 0.1, step=0.01)
    value, how = warm_start.fit(stepped, 0.033)
    assert value == 0.03 and "rounded" in how
    assert warm_start.fit(IntDistribution(8, 64, step=8), 100)[0] == 64
    assert warm_start.fit(CategoricalDistribution([16, 32]), 64)[0] is None
    assert warm_start.fit(CategoricalDistribution([True, False]), 1)[0] is None  # 1 is not True here
    assert warm_start.contains(IntDistribution(1, 5), 2.0) == (True, 2)
    assert warm_start.contains(FloatDistribution(0.0, 0.1, step=0.01), 0.035)[0] is False


def test_points_go_to_the_scientific_sub_studies_they_name():
    composed = compose_config(["+study=weight_decay_effect", "model=tiny", "study.n_trials=6",
                               "study.enqueue=[{train.learning_rate:1.0e-4},"
                               "{train.weight_decay:0.1,train.learning_rate:2.0e-4}]"])
    cfg = composed.config
    design = plan_design(cfg.study.name, composed.dict_config, cfg.study.space, cfg.study.n_trials,
                         cfg.study.scientific_points, cfg.sampler.seed)
    planned = warm_start.plan(cfg, design.arms)
    for arm in design.arms:
        lrs = [p.params["train.learning_rate"] for p in planned.points[arm.name]]
        assert lrs == ([1.0e-4, 2.0e-4] if arm.scientific["train.weight_decay"] == 0.1 else [1.0e-4])
    bad = compose_config(["+study=weight_decay_effect", "model=tiny", "study.n_trials=6",
                          "study.enqueue=[{train.weight_decay:0.5,train.learning_rate:2.0e-4}]"]).config
    with pytest.raises(ConfigError, match=r"study.enqueue\[0\].train.weight_decay: 0.5 is not one of the scientific"):
        warm_start.plan(bad, design.arms)


def test_a_point_enqueued_twice_at_once_runs_once(tmp_path):
    """Two machines starting the same warm-started study together may both enqueue a point: the
    later trial holding it is the duplicate (the objective refuses it as surplus)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/d.db", study_name="d")
    for _ in range(2):
        study.enqueue_trial({"x": 1.0}, user_attrs={warm_start.ATTR: "config"})
    first, second = study.ask(), study.ask()
    frozen = {t.number: t for t in study.get_trials()}
    assert warm_start.duplicate_of(study, frozen[first.number]) is None
    assert warm_start.duplicate_of(study, frozen[second.number]).number == first.number


def test_two_workers_run_each_enqueued_point_once(tmp_path):
    """Both workers start together on two WAITING trials: each runs once (on SQLite this needs the
    store's BEGIN IMMEDIATE, or both workers popped trial 0)."""
    proc = run_cli(["+study=smoke", *TINY, *store_args(tmp_path), "workers=2", "study.n_trials=3", "pruner=none",
                    "study.enqueue=[{train.learning_rate:1.0e-3},{train.learning_rate:2.0e-3}]"], cwd=tmp_path,
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = load(tmp_path)
    ran = sorted(t.params["train.learning_rate"] for t in study.trials
                 if t.user_attrs.get(warm_start.ATTR) == "config" and t.state == optuna.trial.TrialState.COMPLETE)
    assert ran == [1.0e-3, 2.0e-3]
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3
    assert proc.stdout.count("trial 0 COMPLETE") == 1, proc.stdout  # not run by both workers
    assert proc.stdout.count("enqueued 2 trial(s)") == 1  # the parent enqueues; the workers do not


def test_a_point_a_trial_already_has_is_not_counted_as_enqueued(tmp_path):
    """Optuna's skip_if_exists drops a point some trial (any source) already has: it takes no
    slot and is said as not enqueued, so the point after it still finds room."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    study.enqueue_trial({"x": 1.0})  # a trial with these parameters, from no warm start
    points = [warm_start.Point({"x": 1.0}, "other#3"), warm_start.Point({"x": 2.0}, "config")]
    lines = warm_start.enqueue(study, points, n_trials=2)
    assert [t.params or t.system_attrs["fixed_params"] for t in study.trials] == [{"x": 1.0}, {"x": 2.0}]
    assert any("enqueued 1 trial(s)" in line and "config" in line for line in lines), lines
    assert any("already has the same parameters: other#3" in line for line in lines), lines


def test_a_warm_start_point_of_no_sub_study_is_skipped_with_a_line(tmp_path):
    source = optuna.create_study(study_name="wd", storage=f"sqlite:///{tmp_path}/wd.db")
    for decay, rate, _value in ((0.05, 1e-4, 0.1), (0.1, 2e-4, 0.2), (0.0, 3e-4, 0.3)):
        source.enqueue_trial({"train.weight_decay": decay, "train.learning_rate": rate})
    source.optimize(lambda t: {0.05: 0.1, 0.1: 0.2, 0.0: 0.3}[t.suggest_float("train.weight_decay", 0, 1)]
                    + 0 * t.suggest_float("train.learning_rate", 1e-5, 1e-3, log=True), n_trials=3)
    composed = compose_config(["+study=weight_decay_effect", "model=tiny", "study.warm_start.study_name=wd",
                               f"study.warm_start.storage={tmp_path}/wd.db"])
    cfg = composed.config
    design = plan_design(cfg.study.name, composed.dict_config, cfg.study.space, cfg.study.n_trials,
                         cfg.study.scientific_points, cfg.sampler.seed)
    planned = warm_start.plan(cfg, design.arms)
    by_decay = {arm.scientific["train.weight_decay"]: [p.source for p in planned.points[arm.name]]
                for arm in design.arms}
    assert by_decay == {0.0: ["wd#2"], 0.01: [], 0.1: ["wd#1"]}
    # wd#0 (weight decay 0.05, the best) goes nowhere: one line says so, once for all sub-studies.
    skipped = [note for note in planned.notes if note.startswith("wd#0")]
    assert skipped == ["wd#0 skipped: its train.weight_decay=0.05 is none of this study's scientific values "
                       "[0.0, 0.01, 0.1]"], planned.notes


def test_points_that_repeat_each_other_count_once_against_n_trials(tmp_path, capsys):
    # Two entries alike and n_trials=1: one distinct point fits (it was refused as 2 points).
    enqueue = "study.enqueue=[{train.learning_rate:1.0e-3},{train.learning_rate:1.0e-3}]"
    assert main(["+study=smoke", *TINY, *store_args(tmp_path), enqueue, "study.n_trials=1", "pruner=none"]) == 0
    study = load(tmp_path)
    assert len(study.trials) == 1 and study.trials[0].params == {"train.learning_rate": 1e-3}
    assert "warm start: config skipped: the same point as config, which runs first" in capsys.readouterr().out


@pytest.mark.parametrize(("value", "says"), [("abc", "'abc' is not a number (str)"), ("true", "True is not a number"),
                                             ("2.5", "2.5 is outside the search space")])
def test_a_config_point_of_the_wrong_type_is_not_called_outside_the_space(tmp_path, capsys, value, says):
    code = main(["+study=smoke", *TINY, *store_args(tmp_path), f"study.enqueue=[{{train.learning_rate:{value}}}]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llm_doe: error: study.enqueue[0].train.learning_rate: " + says), err
    assert ("outside" in err) == (value == "2.5")
    assert not list(tmp_path.iterdir())
