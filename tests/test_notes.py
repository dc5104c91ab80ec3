"""The optuna-dashboard study note, written through optuna-dashboard's own note API on a real
SQLite study (the synthetic one: every trial state); served end to end in test_dashboard."""

from __future__ import annotations

import logging
import shlex

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna_dashboard import get_note

from llm_doe.notes import describe_distribution, write_study_note
from tests.conftest import build_synthetic


@pytest.fixture
def study(tmp_path):
    return build_synthetic(f"sqlite:///{tmp_path}/syn.db")


def test_the_note_states_the_goal_the_space_and_the_best_trial(study):
    write_study_note(study)
    note = get_note(study)
    assert note.startswith("## syn\n")
    assert "**Goal:** minimize `val_loss` (its best value over each trial's evaluations)" in note
    assert "| `train.learning_rate` | float | 1e-05 .. 0.01 (log) |" in note
    assert "| `train.weight_decay` | float | 0 .. 0.1 (step 0.01) |" in note
    # trial 6 (0.3) beats trial 0 (0.5); its other metrics, its parameters and how to rerun it
    assert "Trial **#6**: `val_loss` = **0.3** (accuracy 0.9, f1 0.88, roc_auc 0.93)." in note
    assert "| `train.batch_size` | 32 |" in note
    # The rerun command one argument a line (a long command ran off the page's right edge)
    rerun = note.split("Rerun it:\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert rerun.startswith("python -m llm_doe.search \\\n    ")
    # (an argument longer than a line, here study.space, continues on the next: issue 22 A9)
    words = shlex.split(rerun.replace("\\\n", ""))
    assert len(words) - 2 <= len(rerun.splitlines()) and max(len(line) for line in rerun.splitlines()) <= 100
    assert words[-1].startswith("study.space={") and words[-1].endswith("}")
    write_study_note(study)  # refreshed, not appended
    assert get_note(study) == note


def test_a_study_without_a_finished_trial_says_so(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/empty.db", study_name="empty")
    write_study_note(study)
    assert "No trial has completed yet." in get_note(study)


def test_a_note_that_cannot_be_written_never_fails_the_run(study, monkeypatch, caplog):
    import optuna_dashboard

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(optuna_dashboard, "save_note", broken)
    with caplog.at_level(logging.WARNING, logger="llm_doe"):
        write_study_note(study)
    assert "could not write the study note for optuna-dashboard: disk full" in caplog.text


@pytest.mark.parametrize(("dist", "expected"), [
    (FloatDistribution(1e-5, 1e-2, log=True), ("float", "1e-05 .. 0.01 (log)")),
    (IntDistribution(1, 5), ("int", "1 .. 5 (step 1)")),
    (FloatDistribution(0.0, 0.5), ("float", "0 .. 0.5 (linear)")),
    (CategoricalDistribution([16, None, "a|b"]), ("categorical", "16, -, a\\|b")),  # table-safe
])
def test_describe_distribution(dist, expected):
    assert describe_distribution(dist) == expected


def test_the_note_counts_interrupted_trials_apart_from_failures(tmp_path):
    from llm_doe import analysis
    from llm_doe.notes import study_note
    from tests.conftest import build_interrupted

    url = f"sqlite:///{tmp_path}/i.db"
    build_interrupted(url)
    note = study_note(analysis.load_trials(url, "i"))
    assert "1 failed (0 diverged), 3 interrupted (re-queued)" in note
