"""The analysis API: equal to what Optuna's own API returns, fast on big stores, and its checks
and plots on real studies (tiny fine-tuning trials) and on studies built through Optuna's API
with every state and awkward value."""

from __future__ import annotations

import importlib.util
import math
import shlex
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState, create_trial  # noqa: E402

import llm_doe as doe  # noqa: E402
from llm_doe.search import main  # noqa: E402
from tests.conftest import REPO, TINY, store_args  # noqa: E402

LR = FloatDistribution(1e-5, 1e-2, log=True)
BATCH = CategoricalDistribution([16, 32, "auto", None, True])
EPOCHS = IntDistribution(1, 5)
DECAY = FloatDistribution(0.0, 0.1, step=0.01)
SPACE = {"train.learning_rate": LR, "train.batch_size": BATCH, "train.num_epochs": EPOCHS,
         "train.weight_decay": DECAY}


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    """A real lr_sweep on the tiny model: the study the notebook and report are written for."""
    tmp = tmp_path_factory.mktemp("tiny")
    args = ["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "study.n_trials=5", "train.evals_per_epoch=3"]
    assert main(args) == 0
    return {"tmp": tmp, "url": f"sqlite:///{tmp}/lr.db", "db": tmp / "lr.db", "name": "lr", "art": tmp / "art",
            "args": args}


def _build_synthetic(storage: Any, name: str = "syn") -> optuna.Study:
    """Every state, a conditional parameter, mixed-type choices (incl. None), inf/nan values,
    nested user attributes: what a hand-written SQL reader is most likely to get wrong."""
    _quiet()
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.set_user_attr("space", {k: distribution_to_json(d) for k, d in sorted(SPACE.items())})
    study.set_user_attr("metric", "val_loss")
    study.set_user_attr("provenance", {"command": "python -m llm_doe.search +study=syn model=tiny study.n_trials=9"})
    study.set_user_attr("config", {"train": {"learning_rate": 1e-4, "batch_size": 16, "num_epochs": 1,
                                             "weight_decay": 0.0, "seed": 42}, "model": {"kind": "tiny"}})

    def params(lr: float, batch: Any, epochs: int, decay: float | None = None) -> dict[str, Any]:
        out = {"train.learning_rate": lr, "train.batch_size": batch, "train.num_epochs": epochs}
        if decay is not None:
            out["train.weight_decay"] = decay
        return out

    def trial(state: TrialState, p: dict[str, Any], value: float | None = None, steps: dict[int, float] | None = None,
              **attrs: Any) -> optuna.trial.FrozenTrial:
        return create_trial(state=state, value=value, params=p, distributions={k: SPACE[k] for k in p},
                            intermediate_values=steps or {}, user_attrs=attrs)

    study.add_trials([
        trial(TrialState.COMPLETE, params(1e-4, 16, 2, 0.05), 0.5, {1: 0.7, 2: 0.6, 3: 0.5}, val_loss=0.5,
              accuracy=0.8, f1=0.75, roc_auc=0.85, best_step=3, duration_s=12.5, stop_reason="completed",
              **{"config.train.seed": 42, "config.data.labels": "['negative', 'positive']", "nested": {"a": [1, 2]},
                 "flag": True, "nothing": None}),
        trial(TrialState.COMPLETE, params(3e-4, None, 1, 0.0), math.inf, {1: math.nan, 2: math.inf, 3: -math.inf},
              val_loss=None, stop_reason="completed"),
        trial(TrialState.PRUNED, params(2e-5, "auto", 3, 0.02), 0.8, {1: 0.9, 2: 0.8}, pruned_at_step=2,
              stop_reason="stopped_by_report"),
        trial(TrialState.PRUNED, params(5e-5, True, 4, 0.07), None, {1: 0.95, 2: 0.9, 3: 0.85}),  # no attr: last step
        trial(TrialState.FAIL, params(9e-3, 32, 5), None, {1: 2.5}, fail_reason="diverged: non-finite loss at step 7"),
        trial(TrialState.FAIL, params(1e-5, 16, 1), None, fail_reason="RuntimeError: boom"),
        trial(TrialState.COMPLETE, params(9.5e-3, 32, 2, 0.05), 0.3, {1: 0.5, 2: 0.3}, val_loss=0.3, accuracy=0.9,
              f1=0.88, roc_auc=0.93, best_step=2, duration_s=8.0),
    ])
    running = study.ask()  # RUNNING: no params, one intermediate value
    running.report(0.66, 1)
    running.set_user_attr("note", "still going")
    study.enqueue_trial({"train.learning_rate": 1e-3})  # WAITING
    return study


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("syn")
    url = f"sqlite:///{tmp}/syn.db"
    study = _build_synthetic(url)
    return {"url": url, "db": tmp / "syn.db", "name": "syn", "study": study, "tmp": tmp}


# --------------------------------------------------------------------------------------------
# Equality with Optuna's own API
# --------------------------------------------------------------------------------------------


def _same(actual: Any, expected: Any, numeric_column: bool) -> bool:
    if expected is None:
        # A number stored as None reads as NaN in a numeric column; elsewhere it stays None.
        return actual is None or (numeric_column and isinstance(actual, float) and math.isnan(actual))
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    if isinstance(expected, bool) or isinstance(actual, (bool, np.bool_)):
        return type(_py(actual)) is type(expected) and actual == expected
    return _py(actual) == expected


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _missing(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, list, str)) and pd.isna(value)


def assert_matches_optuna(table: pd.DataFrame, curves: pd.DataFrame, study: optuna.Study) -> None:
    """Every trial's state, values, params, user attrs, times and intermediate values, as Optuna returns them."""
    frozen = study.get_trials(deepcopy=False)
    assert table["number"].tolist() == [t.number for t in frozen]
    params = {p for t in frozen for p in t.params}
    assert params <= set(table.columns)
    for i, t in enumerate(frozen):
        row = table.iloc[i]  # not to_dict("records"): that turns a missing integer (pd.NA) into None
        where = f"trial {t.number}"
        assert row["state"] == t.state.name, where
        if len(study.directions) == 1:
            assert _same(row["value"], t.value if t.value is not None else math.nan, True), where
        else:
            for i, expected in enumerate(t.values or [math.nan] * len(study.directions)):
                assert _same(row[f"values_{i}"], expected, True), where
        for name in params:
            if name in t.params:
                numeric = pd.api.types.is_numeric_dtype(table[name])
                assert _same(row[name], t.params[name], numeric), (where, name, row[name], t.params[name])
            else:
                assert _missing(row[name]), (where, name, row[name])
        for key, expected in t.user_attrs.items():
            if key in table.columns:
                numeric = pd.api.types.is_numeric_dtype(table[key])
                assert _same(row[key], expected, numeric), (where, key, row[key], expected)
        assert (pd.isna(row["datetime_start"]) if t.datetime_start is None
                else row["datetime_start"] == t.datetime_start), where
        assert (pd.isna(row["datetime_complete"]) if t.datetime_complete is None
                else row["datetime_complete"] == t.datetime_complete), where
        duration = t.user_attrs.get("duration_s", t.duration.total_seconds() if t.duration is not None else None)
        assert _same(row["duration_s"], duration, True), where
        pruned_at = t.user_attrs.get("pruned_at_step", t.last_step if t.state == TrialState.PRUNED else None)
        assert (pd.isna(row["pruned_at_step"]) if pruned_at is None else row["pruned_at_step"] == pruned_at), where
        for name in ("fail_reason", "stop_reason", "val_loss", "accuracy", "f1", "roc_auc"):
            expected = t.user_attrs.get(name)
            assert (_missing(row[name]) if expected is None else _same(row[name], expected, True)), (where, name)
    got = {int(n): dict(zip(g["step"].tolist(), g["value"].tolist())) for n, g in curves.groupby("trial")}
    for t in frozen:
        expected = t.intermediate_values
        assert sorted(got.get(t.number, {})) == sorted(expected), t.number
        for step, value in expected.items():
            assert _same(got[t.number][step], value, True), (t.number, step)


def test_sql_reader_equals_optuna_on_every_state_and_value(synthetic):
    study = optuna.load_study(study_name="syn", storage=synthetic["url"])
    table = doe.load_trials(synthetic["url"], "syn", user_attrs=True)
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "FAIL", "FAIL", "COMPLETE",
                                       "RUNNING", "WAITING"]
    assert_matches_optuna(table, doe.load_curves(synthetic["url"], "syn"), study)
    # the awkward ones, spelled out
    assert table.loc[1, "value"] == math.inf
    assert table.loc[1, "train.batch_size"] is None  # a choice of None, not "not sampled"
    assert _missing(table.loc[4, "train.weight_decay"])  # not sampled
    assert table.loc[3, "pruned_at_step"] == 3 and table.loc[2, "pruned_at_step"] == 2
    assert table.loc[0, "nested"] == {"a": [1, 2]}
    assert table.loc[6, "train.num_epochs"] == 2 and pd.api.types.is_integer_dtype(table["train.num_epochs"])
    assert table.attrs["direction"] == "minimize" and table.attrs["metric"] == "val_loss"


def test_sql_reader_and_optuna_api_path_give_identical_frames(synthetic, tiny):
    for url, name in ((synthetic["url"], "syn"), (tiny["url"], tiny["name"])):
        study = optuna.load_study(study_name=name, storage=url)
        for user_attrs in (False, True):
            fast = doe.load_trials(url, name, user_attrs=user_attrs)
            slow = doe.load_trials(study, user_attrs=user_attrs)  # a Study goes through Optuna's API
            pd.testing.assert_frame_equal(fast, slow)
        pd.testing.assert_frame_equal(doe.load_curves(url, name), doe.load_curves(study))
        pd.testing.assert_frame_equal(doe.load_artifacts(url, name), doe.load_artifacts(study))


def test_real_study_matches_optuna_and_trials_dataframe(tiny):
    study = optuna.load_study(study_name=tiny["name"], storage=tiny["url"])
    table = doe.load_trials(tiny["url"], tiny["name"], user_attrs=True)
    assert_matches_optuna(table, doe.load_curves(tiny["url"], tiny["name"]), study)
    frame = study.trials_dataframe()
    assert table["state"].tolist() == frame["state"].tolist()
    assert table["value"].tolist() == frame["value"].tolist()
    assert table["train.learning_rate"].tolist() == frame["params_train.learning_rate"].tolist()
    assert table["val_loss"].tolist() == frame["user_attrs_val_loss"].tolist()


def test_accepts_url_db_path_study_and_storage_objects(tiny):
    by_url = doe.load_trials(tiny["url"], tiny["name"])
    assert len(by_url) == 5 and "train.learning_rate" in by_url.columns
    for ref in (tiny["db"], str(tiny["db"]), optuna.storages.RDBStorage(tiny["url"])):
        pd.testing.assert_frame_equal(doe.load_trials(ref, tiny["name"]), by_url)
        pd.testing.assert_frame_equal(doe.load_trials(ref), by_url)  # one study in the store: no name needed
    assert doe.load_trials(optuna.load_study(study_name=tiny["name"], storage=tiny["url"])).equals(by_url)
    done = by_url[by_url["state"] == "COMPLETE"]
    assert done[["val_loss", "accuracy", "f1", "roc_auc", "duration_s"]].notna().all().all()
    assert (done["value"] == done["val_loss"]).all()  # the objective is the best val loss


def test_journal_storage_goes_through_optuna(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "syn.journal"
    journal = JournalStorage(JournalFileBackend(str(path)))
    study = _build_synthetic(journal, "jsyn")
    table = doe.load_trials(path, "jsyn", user_attrs=True)
    assert_matches_optuna(table, doe.load_curves(path, "jsyn"), study)


def test_several_objectives_get_one_column_each(tmp_path):
    _quiet()
    url = f"sqlite:///{tmp_path}/mo.db"
    study = optuna.create_study(storage=url, study_name="mo", directions=["minimize", "maximize"])
    study.add_trials([create_trial(values=[0.1 * i, 1.0 - 0.1 * i], params={"x": float(i)},
                                   distributions={"x": FloatDistribution(0, 10)}) for i in range(3)])
    table = doe.load_trials(url)
    assert {"values_0", "values_1"} <= set(table.columns) and "value" not in table.columns
    assert_matches_optuna(table, doe.load_curves(url), optuna.load_study(study_name="mo", storage=url))


def test_bad_references_say_what_is_wrong(tmp_path, synthetic):
    with pytest.raises(FileNotFoundError, match="no study store"):
        doe.load_trials(f"sqlite:///{tmp_path}/missing.db", "x")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
    with pytest.raises(ValueError, match="no study 'nope'.*syn"):
        doe.load_trials(synthetic["url"], "nope")
    _quiet()
    optuna.create_study(storage=synthetic["url"], study_name="other")
    try:
        with pytest.raises(ValueError, match="pass study_name"):
            doe.load_trials(synthetic["url"])
        assert sorted(doe.study_names(synthetic["url"])) == ["other", "syn"]
    finally:
        optuna.delete_study(study_name="other", storage=synthetic["url"])


def test_large_store_loads_fast_and_equals_optuna(tmp_path):
    """A bulk-built store (the benchmark's builder): the loaders stay on the SQL path."""
    spec = importlib.util.spec_from_file_location("bench_load_trials", REPO / "bench" / "load_trials.py")
    bench = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(bench)
    url = bench.build_store(tmp_path / "big.db", n_trials=300, n_steps=20)
    started = time.perf_counter()
    table = doe.load_trials(url, "bench")
    curves = doe.load_curves(url, "bench")
    elapsed = time.perf_counter() - started
    assert len(table) == 300 and len(curves) == 300 * 20
    # Optuna's API takes ~1.5 s on these 300 trials; the SQL path a few hundredths.
    assert elapsed < 1.0, elapsed
    study = optuna.load_study(study_name="bench", storage=url)
    assert_matches_optuna(doe.load_trials(url, "bench", user_attrs=True), curves, study)


# --------------------------------------------------------------------------------------------
# Curves, ROC, artifacts, compare
# --------------------------------------------------------------------------------------------


def test_curves_are_long_form_with_params(tiny):
    curves = doe.load_curves(tiny["url"], tiny["name"])
    assert list(curves.columns[:5]) == ["trial", "step", "value", "state", "train.learning_rate"]
    trials = doe.load_trials(tiny["url"], tiny["name"])
    for number, group in curves.groupby("trial"):
        assert group["step"].tolist() == list(range(1, len(group) + 1))
        row = trials.set_index("number").loc[number]
        assert (group["train.learning_rate"] == row["train.learning_rate"]).all()
        if row["state"] == "COMPLETE":
            assert group["value"].min() == pytest.approx(row["value"])


def test_artifacts_and_roc_curves_come_from_the_artifact_store(tiny):
    study = optuna.load_study(study_name=tiny["name"], storage=tiny["url"])
    metas = doe.load_artifacts(tiny["url"], tiny["name"])
    for trial in study.trials:
        expected = {(m.filename, m.artifact_id) for m in optuna.artifacts.get_all_artifact_meta(trial,
                                                                                                 storage=study._storage)}
        got = metas[metas["trial"] == trial.number]
        assert set(zip(got["filename"], got["artifact_id"])) == expected
        assert set(got["trial_id"]) == {trial._trial_id}
    roc = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tiny["art"])
    trials = doe.load_trials(tiny["url"], tiny["name"]).set_index("number")
    assert sorted(roc["trial"].unique()) == sorted(trials.index)
    for number, group in roc.groupby("trial"):
        assert group["fpr"].iloc[0] == 0 and group["tpr"].iloc[-1] == 1
        # the AUC of the stored curve is the roc_auc the trial recorded at the same evaluation
        assert group["auc"].iloc[0] == pytest.approx(trials.loc[number, "roc_auc"], abs=1e-9)
        assert (group["train.learning_rate"] == trials.loc[number, "train.learning_rate"]).all()
    only = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tiny["art"], numbers=[0])
    assert set(only["trial"]) == {0}



def test_roc_falls_back_to_the_artifacts_dir_the_study_recorded(tiny, tmp_path):
    given = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tiny["art"])
    pd.testing.assert_frame_equal(doe.load_roc(tiny["url"], tiny["name"]), given)  # recorded by the search
    with pytest.warns(UserWarning, match="using the storage.artifacts_dir the study recorded"):
        wrong = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tmp_path)  # exists, not this study's
    pd.testing.assert_frame_equal(wrong, given)
    # A copy of the store whose recorded folder is gone: nothing to fall back to.
    copy = tmp_path / "copy.db"
    with closing(sqlite3.connect(tiny["db"])) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)  # the store may be in WAL mode: copy through SQLite, not the file
    study = optuna.load_study(study_name=tiny["name"], storage=f"sqlite:///{copy}")
    config = dict(study.user_attrs["config"])
    config["storage"] = {**config["storage"], "artifacts_dir": str(tmp_path / "gone")}
    study.set_user_attr("config", config)
    with pytest.raises(FileNotFoundError, match="pass artifacts_dir"):
        doe.load_roc(copy, tiny["name"], artifacts_dir=tmp_path / "nowhere")


def test_compare_stacks_studies_with_a_study_column(tiny, synthetic):
    table = doe.compare([(tiny["url"], tiny["name"]), (synthetic["url"], "syn")])
    assert table.columns[0] == "study"
    assert table["study"].value_counts().to_dict() == {"syn": 9, tiny["name"]: 5}
    assert table[table["study"] == "syn"]["train.num_epochs"].notna().any()
    assert table[table["study"] == tiny["name"]]["train.num_epochs"].isna().all()  # not searched there
    by_name = doe.compare(["syn"], storage=synthetic["url"])
    assert len(by_name) == 9


# --------------------------------------------------------------------------------------------
# The playbook's checks
# --------------------------------------------------------------------------------------------


def test_failure_report_counts_failed_and_diverged(synthetic):
    report = doe.failure_report(doe.load_trials(synthetic["url"], "syn"))
    assert report[["trials", "complete", "pruned", "failed", "diverged", "running"]].tolist() == [9, 3, 2, 2, 1, 2]
    assert report["failed_fraction"] == pytest.approx(2 / 9)
    assert report["diverged_fraction"] == pytest.approx(1 / 9)


def _interrupted_study(storage: Any) -> optuna.Study:
    """Five finished trials, one genuine failure, and three FAIL trials that went on as others:
    one interrupted and marked ``requeued``, one interrupted before the mark existed (only its
    fail_reason says so), one heartbeat-stale (only Optuna's retry chain on its successor says so)."""
    study = optuna.create_study(storage=storage, study_name="i")
    x = FloatDistribution(0.0, 1.0)
    for i in range(5):
        study.add_trial(create_trial(value=0.5 + i / 10, params={"x": i / 5}, distributions={"x": x}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "RuntimeError: boom"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "requeued": True, "fail_reason": "interrupted at optimizer step 7; re-queued to resume from its checkpoint"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "interrupted at optimizer step 3; re-queued to resume from its checkpoint"}))
    study.add_trial(create_trial(state=TrialState.FAIL))  # #8: stale, re-queued as #9 by Optuna
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 8, "retry_history": [8]}))
    return study


@pytest.mark.parametrize("path", ["sql", "api"])
def test_interrupted_and_requeued_trials_are_not_failures(tmp_path, path):
    """Ctrl-C and dead workers re-queue their trial: counted apart, never as a failure of the space."""
    url = f"sqlite:///{tmp_path}/i.db"
    study = _interrupted_study(url)
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
    _quiet()
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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _png_ok(fig: Figure) -> None:
    assert doe.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_one_line_per_trial_coloured_by_learning_rate(synthetic):
    curves = doe.load_curves(synthetic["url"], "syn")
    fig = doe.plot_learning_curves(curves)
    assert isinstance(fig, Figure)
    ax, colorbar = fig.axes
    lines = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    assert lines == curves["trial"].nunique()
    assert colorbar.get_ylabel() == "train.learning_rate" and colorbar.get_yscale() == "log"
    assert ax.get_ylabel() == "val_loss"
    _png_ok(fig)


def test_roc_curves_are_labelled_by_learning_rate(tiny):
    roc = doe.load_roc(tiny["url"], tiny["name"], artifacts_dir=tiny["art"])
    fig = doe.plot_roc_curves(roc)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[-1] == "chance" and len(labels) == roc["trial"].nunique() + 1
    rates = roc.groupby("trial")["train.learning_rate"].first().sort_values()
    for label, (number, rate) in zip(labels, rates.items()):
        assert label.startswith(f"learning_rate={rate:.3g}") and f"(#{number})" in label
    _png_ok(fig)


def test_objective_vs_params_uses_log_axes_where_the_space_is_log(synthetic):
    table = doe.load_trials(synthetic["url"], "syn")
    fig = doe.plot_objective_vs_params(table)
    axes = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == set(SPACE)
    assert axes["train.learning_rate"].get_xscale() == "log"
    assert axes["train.weight_decay"].get_xscale() == "linear"
    assert [t.get_text() for t in axes["train.batch_size"].get_xticklabels()] == ["16", "32", "auto", "None", "True"]
    _png_ok(fig)


def test_importance_bars():
    importances = pd.Series({"train.learning_rate": 0.7, "train.num_epochs": 0.3})
    fig = doe.plot_importance(importances)
    assert len(fig.axes[0].patches) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["train.num_epochs", "train.learning_rate"]
    _png_ok(fig)


def test_importing_the_package_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, llm_doe; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(REPO), timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
