"""The packaged MiniLM, for real, for a few steps (slow: loads 22.7M pretrained parameters)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from llm_doe.finetune.model import resolve
from llm_doe.search import main
from tests.conftest import load, store_args


@pytest.mark.slow
def test_minilm_study_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may reach the hub
    assert resolve("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    code = main(["+study=lr_sweep", *store_args(tmp_path), "study.n_trials=2", "data.train_size=48",
                 "data.val_size=32", "data.max_length=32", "train.num_epochs=1", "train.evals_per_epoch=2",
                 "runtime.progress=false"])
    assert code == 0
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert trial.user_attrs["config.model.name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert len(trial.intermediate_values) == 2
    # pretrained features, not noise: ROC-AUC well above chance after 3 steps
    assert max(t.user_attrs["roc_auc"] for t in study.trials) > 0.6
