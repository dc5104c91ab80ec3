"""Per-trial files through Optuna's artifact store, read back through Optuna's public API."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta

from llm_doe.artifacts import artifact_store, read_metrics, upload_trial_artifacts
from llm_doe.finetune.tasks import get_task
from llm_doe.schema import TaskConfig

HISTORY = [{"step": 1, "val_loss": 0.7, "accuracy": 0.5}, {"step": 2, "val_loss": math.nan, "accuracy": math.inf}]
PAYLOAD = {"labels": np.array([0, 0, 1, 1]), "probs": np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])}


def _files(store, trial, trial_storage, tmp_path):
    """{file name: its bytes}, as optuna-dashboard would list and download them."""
    out = {}
    (tmp_path / "down").mkdir(exist_ok=True)
    for meta in get_all_artifact_meta(trial, storage=trial_storage):
        path = tmp_path / "down" / meta.artifact_id
        download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(path))
        out[meta.filename] = path.read_bytes()
    return out


def test_a_trial_gets_its_config_its_evaluations_and_its_tasks_roc(tmp_path):
    store = artifact_store(tmp_path / "art")  # created on first use
    assert (tmp_path / "art").is_dir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/a.db")
    study = optuna.create_study(storage=storage, study_name="a")
    trial = study.ask()
    ids = upload_trial_artifacts(store, trial, "train:\n  seed: 42\n", HISTORY, get_task(TaskConfig()), PAYLOAD)
    assert sorted(ids) == ["config.yaml", "metrics.jsonl", "roc.csv", "roc.png"]
    files = _files(store, study.trials[0], storage, tmp_path)
    assert {name: files[name] for name in ids} == files and len(set(ids.values())) == 4
    assert files["config.yaml"] == b"train:\n  seed: 42\n"
    # JSON Lines (one evaluation a line; optuna-dashboard previews it as a table) that every
    # reader parses: non-finite values are written as null
    lines = files["metrics.jsonl"].decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "val_loss": 0.7, "accuracy": 0.5},
                                                    {"step": 2, "val_loss": None, "accuracy": None}]
    assert read_metrics(files["metrics.jsonl"].decode(), "metrics.jsonl") == [json.loads(line) for line in lines]
    assert files["roc.csv"].splitlines()[0] == b"fpr,tpr,threshold"
    assert files["roc.png"][:4] == b"\x89PNG"


def test_metrics_of_a_study_from_before_json_lines_still_read():
    assert read_metrics('[{"step": 1, "val_loss": 0.7}]', "metrics.json") == [{"step": 1, "val_loss": 0.7}]
    assert read_metrics('{"not": "a list"}', "metrics.json") == []


def test_a_failed_trial_keeps_its_config_and_evaluations_so_far(tmp_path):
    store = artifact_store(tmp_path / "art")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/a.db")
    study = optuna.create_study(storage=storage, study_name="a")
    trial = study.ask()
    ids = upload_trial_artifacts(store, trial, "x: 1\n", HISTORY[:1], get_task(TaskConfig()), None)
    assert sorted(ids) == ["config.yaml", "metrics.jsonl"]
    assert sorted(_files(store, study.trials[0], storage, tmp_path)) == ["config.yaml", "metrics.jsonl"]
