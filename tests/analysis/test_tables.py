"""The loaders: equal to what Optuna's own API returns (SQL path and API path alike), fast on big
stores; curves, ROC curves, artifacts and compare on real and synthetic studies.

``llm_doe/analysis/_source.py`` (the private reader behind the loaders: which path a reference
takes, the SQL queries) and ``_common.py`` are tested here, through the public loaders.
"""

from __future__ import annotations

import importlib.util
import math
import sqlite3
from contextlib import closing
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import llm_doe as doe
from tests.conftest import REPO, build_synthetic, quiet_optuna

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
    assert study.metric_names == ["val_loss"]  # named for optuna-dashboard, so Optuna names the column too
    assert table["state"].tolist() == frame["state"].tolist()
    assert table["value"].tolist() == frame["value_val_loss"].tolist()
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
    study = build_synthetic(journal, "jsyn")
    table = doe.load_trials(path, "jsyn", user_attrs=True)
    assert_matches_optuna(table, doe.load_curves(path, "jsyn"), study)


def test_several_objectives_get_one_column_each(tmp_path):
    quiet_optuna()
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
    quiet_optuna()
    optuna.create_study(storage=synthetic["url"], study_name="other")
    try:
        with pytest.raises(ValueError, match="pass study_name"):
            doe.load_trials(synthetic["url"])
        assert sorted(doe.study_names(synthetic["url"])) == ["other", "syn"]
    finally:
        optuna.delete_study(study_name="other", storage=synthetic["url"])


def test_large_store_loads_on_the_sql_path_and_equals_optuna(tmp_path, monkeypatch):
    """A bulk-built store (the benchmark's builder): the loaders stay on the SQL path, never
    Optuna's per-trial API (how fast that is, bench/load_trials.py measures; no timing here)."""
    spec = importlib.util.spec_from_file_location("bench_load_trials", REPO / "bench" / "load_trials.py")
    bench = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(bench)
    url = bench.build_store(tmp_path / "big.db", n_trials=300, n_steps=20)
    with monkeypatch.context() as patch:
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("load_trials/load_curves went through Optuna's get_all_trials")

        patch.setattr(optuna.study.Study, "get_trials", refuse)
        patch.setattr(optuna.storages.RDBStorage, "get_all_trials", refuse)
        table = doe.load_trials(url, "bench")
        curves = doe.load_curves(url, "bench")
    assert len(table) == 300 and len(curves) == 300 * 20
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
