"""The real optuna-dashboard server, on 127.0.0.1 and a free port, serving a study made by a tiny run:
the study and its note, every trial with its intermediate values and metrics, every artifact's bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import get_note

from llm_doe.notes import ONE_PARAMETER
from llm_doe.search import main
from tests.conftest import TINY, http_get, serve_dashboard, store_args


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dash")
    assert main(["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "study.n_trials=3"]) == 0
    return {"url": f"sqlite:///{tmp}/lr.db", "art": tmp / "art", "name": "lr"}


@pytest.fixture(scope="module")
def dashboard(study) -> Iterator[str]:
    with serve_dashboard(study["url"], study["art"]) as base:
        yield base


def test_dashboard_serves_study_trials_curves_and_every_artifact(study, dashboard):
    optuna_study = optuna.load_study(study_name=study["name"], storage=study["url"])
    summaries = json.loads(http_get(f"{dashboard}/api/studies"))["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == study["name"]]
    assert summary["directions"] == ["minimize"]
    study_id = summary["study_id"]

    detail = json.loads(http_get(f"{dashboard}/api/studies/{study_id}?after=0"))
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in optuna_study.trials] == [0, 1, 2]
    for trial in optuna_study.trials:
        got = served[trial.number]
        assert got["state"].upper() == trial.state.name
        curve = {p["step"]: p["value"] for p in got["intermediate_values"]}
        assert sorted(curve) == sorted(trial.intermediate_values) and curve
        for step, value in trial.intermediate_values.items():
            assert curve[step] == pytest.approx(value, rel=1e-12)
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
        for metric in ("val_loss", "accuracy", "f1", "roc_auc"):
            assert float(attrs[metric]) == pytest.approx(trial.user_attrs[metric])
        served_artifacts = {a["artifact_id"]: a["filename"] for a in got["artifacts"]}
        stored = {m.artifact_id: m.filename for m in get_all_artifact_meta(trial, storage=optuna_study._storage)}
        assert served_artifacts == stored
        assert set(stored.values()) == {"config.yaml", "metrics.jsonl", "roc.csv", "roc.png"}
        for artifact_id in stored:
            body = http_get(f"{dashboard}/artifacts/{study_id}/{got['trial_id']}/{artifact_id}")
            assert body == (study["art"] / artifact_id).read_bytes()

    # The study note the search wrote at the end of its run, as the dashboard shows it.
    note = detail["note"]["body"]
    assert note == get_note(optuna_study) and note
    best = optuna_study.best_trial
    assert f"## {study['name']}" in note and "**Goal:** minimize `val_loss`" in note
    assert "| `train.learning_rate` | float | 1e-05 .. 0.001 (log) |" in note
    assert f"Trial **#{best.number}**" in note and "python -m llm_doe.search" in note
    assert ONE_PARAMETER in note  # the dashboard's importance of 1.0 for the one parameter says nothing
