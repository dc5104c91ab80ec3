"""``python -m llm_doe.confirm``: the top configurations re-run with several seeds, end to end
(the statistics on known small cases: tests/analysis/test_confirmation.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from llm_doe import analysis
from llm_doe.cli import compose_config
from llm_doe.confirm import main as confirm
from llm_doe.finetune.data import load_splits
from llm_doe.search import main as search
from tests.conftest import REPO, TINY, searched_lr_study, store_args

# ---------------------------------------------------------------------------------------------
# End to end: a tiny study confirmed with real runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> dict[str, Any]:
    return searched_lr_study(tmp_path_factory.mktemp("confirm"))


def test_confirm_runs_top_k_times_seeds_and_reports(confirmed, capsys):
    args = confirmed["args"]
    capsys.readouterr()
    assert confirm([*args, "confirm.top_k=2", "confirm.seeds=3"]) == 0
    out = capsys.readouterr().out
    assert "val_loss mean" in out and "95% CI" in out and "p vs best" in out
    # No search review before the verdict: one seed's "best trial" and a boundary check of a
    # space nothing searched mean nothing in a confirmation.
    assert "best trial #" not in out and "boundary check" not in out
    assert "boundary" not in optuna.load_study(study_name="lr-confirm", storage=confirmed["url"]).user_attrs

    url = confirmed["url"]
    parent = optuna.load_study(study_name="lr", storage=url)
    linked = optuna.load_study(study_name="lr-confirm", storage=url)
    trials = linked.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    top = sorted(parent.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))[:2]
    assert linked.user_attrs["parent_study"] == "lr" and linked.user_attrs["top_k"] == 2
    assert linked.user_attrs["seeds"] == [0, 1, 2]
    assert linked.user_attrs["source_trials"] == [t.number for t in top]
    assert linked.user_attrs["provenance"]["command"].split()[1:3] == ["-m", "llm_doe.confirm"]
    by_number = {t.number: t for t in top}
    pairs = set()
    for trial in trials:
        source, seed = trial.user_attrs["source_trial"], trial.user_attrs["seed"]
        pairs.add((source, seed))
        assert trial.params == {**by_number[source].params, "train.seed": seed, "data.seed": 1234}
        assert trial.user_attrs["config.train.seed"] == seed  # the seed really reached the training config
    assert pairs == {(t.number, s) for t in top for s in (0, 1, 2)}
    # Different seeds give different results (so the statistics have something to measure).
    assert len({t.value for t in trials}) > 2

    # The table equals a recomputation from the stored trial values with scipy.
    table = analysis.confirmation_table(url, "lr")
    for source in by_number:
        values = np.array([t.value for t in sorted(trials, key=lambda t: t.user_attrs["seed"])
                           if t.user_attrs["source_trial"] == source])
        mean, sem = values.mean(), stats.sem(values)
        low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        row = table.loc[source]
        assert row["n"] == 3 and row["value_mean"] == pytest.approx(mean)
        assert row["value_std"] == pytest.approx(values.std(ddof=1))
        assert (row["value_ci_low"], row["value_ci_high"]) == pytest.approx((low, high))
        accuracy = [t.user_attrs["accuracy"] for t in trials if t.user_attrs["source_trial"] == source]
        assert row["accuracy_mean"] == pytest.approx(np.mean(accuracy))
        assert row["search_value"] == pytest.approx(by_number[source].value)
    best = table.attrs["best_trial"]
    other = next(s for s in by_number if s != best)
    seeded = {s: [t.value for t in sorted(trials, key=lambda t: t.user_attrs["seed"])
                  if t.user_attrs["source_trial"] == s] for s in by_number}
    p = stats.ttest_rel(seeded[other], seeded[best]).pvalue
    assert table.loc[other, "p_value"] == pytest.approx(p, nan_ok=True)
    assert table.attrs["summary"] in out
    # Stored for the parent (python -m llm_doe.final reads it) and on the linked study.
    assert parent.user_attrs["confirmation"]["best_trial"] == best
    assert parent.user_attrs["confirmation"]["study"] == "lr-confirm"
    assert linked.user_attrs["confirmation"]["summary"] == table.attrs["summary"]

    # The search and the confirmation never touched the test split.
    assert load_splits(compose_config(args).config.data).test_reads == 0


def test_data_seeds_redraw_train_and_val_but_keep_the_study_test_split(tmp_path):
    args = ["+study=lr_sweep", *TINY, *store_args(tmp_path, "ds"), "pruner=none"]
    assert search([*args, "study.n_trials=2"]) == 0
    assert confirm([*args, "confirm.top_k=1", "confirm.seeds=2", "confirm.data_seeds=true"]) == 0
    runs = optuna.load_study(study_name="ds-confirm", storage=f"sqlite:///{tmp_path}/ds.db").get_trials()
    assert [t.state for t in runs] == [TrialState.COMPLETE] * 2
    study_data = compose_config(args).config.data
    held_out = load_splits(study_data)._test.texts
    for run in runs:
        assert run.user_attrs["config.data.seed"] == run.params["data.seed"] == run.user_attrs["seed"]
        assert run.user_attrs["config.data.test_seed"] == study_data.seed  # pinned to the study's split
        used = load_splits(dataclasses.replace(study_data, seed=run.params["data.seed"], test_seed=study_data.seed))
        assert used._test.texts == held_out and not set(used.train.texts) & set(held_out)


def test_rerunning_adds_nothing_and_reports_again(confirmed, capsys):
    args = [*confirmed["args"], "confirm.top_k=2", "confirm.seeds=3"]
    assert confirm(args) == 0  # no-op when the previous test already ran it; runs it otherwise
    capsys.readouterr()
    assert confirm(args) == 0
    out = capsys.readouterr().out
    assert "0 to run now" in out and "p vs best" in out
    assert len(optuna.load_study(study_name="lr-confirm", storage=confirmed["url"]).trials) == 6


def test_more_seeds_later_adds_only_the_new_pairs(confirmed):
    args = [*confirmed["args"], "confirm.top_k=2"]
    assert confirm([*args, "confirm.seeds=3"]) == 0
    assert confirm([*args, "confirm.seeds=4"]) == 0
    linked = optuna.load_study(study_name="lr-confirm", storage=confirmed["url"])
    assert len(linked.trials) == 8 and all(t.state == TrialState.COMPLETE for t in linked.trials)
    table = analysis.confirmation_table(confirmed["url"], "lr")
    assert list(table["n"]) == [4, 4] and table.attrs["n_seeds"] == 4


def test_report_and_notebook_show_the_confirmation(confirmed, tmp_path, kernel):
    import html

    import nbformat
    import papermill

    from llm_doe.report import render_report

    assert confirm([*confirmed["args"], "confirm.top_k=2", "confirm.seeds=3"]) == 0
    table = analysis.confirmation_table(confirmed["url"], "lr")
    text = render_report(confirmed["url"], "lr", artifacts_dir=confirmed["tmp"] / "art")
    assert "<h2>Confirmation</h2>" in text and html.escape(table.attrs["summary"]) in text

    notebook = REPO / "notebooks" / "compare_trials.ipynb"
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(notebook), str(out), kernel_name=kernel, cwd=str(notebook.parent),
                               progress_bar=False, execution_timeout=300,
                               parameters={"storage": confirmed["url"], "study_name": "lr",
                                           "artifacts_dir": str(confirmed["tmp"] / "art")})
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    printed = "\n".join(str(o.get("text", "")) for c in cells for o in c.outputs)
    assert table.attrs["summary"] in printed
    assert any("image/png" in o.get("data", {}) for o in cells[-1].outputs)  # the confirmation figure


# ---------------------------------------------------------------------------------------------
# Bad input and failing runs
# ---------------------------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm_doe: error: ") and "\n" not in err, err
    return err


def test_no_such_store_or_study_exits_2_and_writes_nothing(tmp_path, capsys):
    args = ["+study=lr_sweep", *TINY, *store_args(tmp_path, "nope")]
    assert confirm(args) == 2
    assert "no study store" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_config_that_differs_from_the_search_exits_2(confirmed, capsys):
    before = len(optuna.get_all_study_names(confirmed["url"]))
    assert confirm([*confirmed["args"], "data.max_length=32"]) == 2
    err = _one_line_error(capsys)
    assert "data.max_length: is 32 here but 64 in study 'lr'" in err and "llm_doe.search" in err
    assert len(optuna.get_all_study_names(confirmed["url"])) == before


def test_a_study_without_complete_trials_exits_2(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/e.db"
    study = optuna.create_study(study_name="e", storage=url)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    assert confirm(["+study=lr_sweep", *TINY, *store_args(tmp_path, "e")]) == 2
    assert "has no COMPLETE trial to confirm" in _one_line_error(capsys)
    assert optuna.get_all_study_names(url) == ["e"]


DIVERGE_STUDY = """# @package _global_
defaults:
  - override /model: tiny
study:
  name: diverge
  n_trials: 2
  space:
    train.learning_rate: {type: categorical, choices: [3.0e-3, 1.0e+6]}
"""


def test_a_configuration_that_fails_on_every_seed_is_reported_not_replaced(tmp_path, capsys):
    """A lucky search trial whose configuration diverges on other seeds: its runs fail, the others
    run, no sampled trial fills the gap, and the table says so."""
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "diverge.yaml").write_text(DIVERGE_STUDY)
    args = ["+study=diverge", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *TINY, *store_args(tmp_path, "d"),
            "sampler=grid"]
    assert search(args) == 0  # a diverged trial is a FAIL with its reason; the study itself succeeds
    url = f"sqlite:///{tmp_path}/d.db"
    study = optuna.load_study(study_name="d", storage=url)
    dist = optuna.distributions.CategoricalDistribution([3.0e-3, 1.0e6])
    # As if the diverging learning rate had once completed with a lucky, best value.
    study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 1.0e6},
                                              distributions={"train.learning_rate": dist}, value=0.01,
                                              user_attrs={"best_step": 1}))
    capsys.readouterr()
    assert confirm([*args, "confirm.top_k=2", "confirm.seeds=2"]) == 1
    out = capsys.readouterr().out
    linked = optuna.load_study(study_name="d-confirm", storage=url)
    states = [(t.params["train.learning_rate"], t.state) for t in linked.trials]
    assert sorted(states, key=str) == sorted([(1.0e6, TrialState.FAIL)] * 2 + [(3.0e-3, TrialState.COMPLETE)] * 2,
                                             key=str)
    table = analysis.confirmation_table(url, "d")
    lucky = linked.user_attrs["source_trials"][0]
    assert table.loc[lucky, "n"] == 0 and table.loc[lucky, "failed"] == 2
    assert table.attrs["best_trial"] != lucky
    assert "2 of 4 planned runs failed" in table.attrs["summary"] and "2 of 4 planned runs failed" in out
    assert study.user_attrs["confirmation"]["best_trial"] == table.attrs["best_trial"]
    reasons = [t.user_attrs.get("fail_reason", "") for t in linked.trials if t.state == TrialState.FAIL]
    assert len(reasons) == 2 and all(r.startswith("diverged: non-finite") for r in reasons), reasons
