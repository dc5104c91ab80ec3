"""Confirmation statistics on known small cases: means, intervals, seed pairing, the verdict.
(``python -m llm_doe.confirm`` writing and reading real runs: tests/test_confirm.py.)"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from llm_doe import analysis

SPACE = {"train.learning_rate": optuna.distributions.distribution_to_json(
    optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True))}


def _runs(values: dict[int, list[float]], direction: str = "minimize") -> pd.DataFrame:
    """A hand-built confirmation: {source trial: objective per seed 0, 1, ...}."""
    rows = []
    for source, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append({"number": len(rows), "state": "COMPLETE", "value": value, "source_trial": source,
                         "seed": seed, "data_seed": 1234, "train.learning_rate": source * 1e-4,
                         "val_loss": value, "accuracy": 1 - value / 10, "f1": np.nan, "roc_auc": 0.5})
    frame = pd.DataFrame(rows)
    frame.attrs.update(direction=direction, metric="val_loss", space=SPACE)
    return frame


# ---------------------------------------------------------------------------------------------
# The statistics on known small cases
# ---------------------------------------------------------------------------------------------


def test_identical_configurations_are_not_distinguishable():
    same = [0.52, 0.48, 0.55, 0.50]
    table = analysis.confirmation_stats(_runs({3: same, 7: list(same)}))
    assert list(table.index) == [3, 7]  # equal means: the earlier trial first
    assert math.isnan(table.loc[7, "p_value"]) and not table.loc[7, "significant"]
    assert table.attrs["distinguishable"] is False
    assert table.attrs["summary"].startswith(
        "The top configurations are not distinguishable at the 5% level with 4 seeds")


def test_mean_std_and_interval_on_known_numbers():
    table = analysis.confirmation_stats(_runs({5: [1.0, 2.0, 3.0, 4.0]}))
    row = table.loc[5]
    half = 3.182446305284263 * 1.2909944487358056 / 2  # t(0.975, df=3) * s / sqrt(n)
    assert row["n"] == 4 and row["value_mean"] == pytest.approx(2.5)
    assert row["value_std"] == pytest.approx(1.2909944487358056)
    assert (row["value_ci_low"], row["value_ci_high"]) == pytest.approx((2.5 - half, 2.5 + half))
    assert row["accuracy_mean"] == pytest.approx(0.75) and math.isnan(row["f1_mean"])  # NaN metrics: no numbers
    assert table.attrs["summary"].startswith("Only one configuration was confirmed (4 seeds)")


def test_pairing_by_seed_finds_a_small_consistent_difference():
    """Seeds move both configurations together (big spread); the paired test sees through it,
    a two-sample test would not."""
    best = [1.0, 2.0, 3.0, 4.0]
    worse = [1.1, 2.12, 3.09, 4.11]
    table = analysis.confirmation_stats(_runs({2: worse, 9: best}))
    assert table.attrs["best_trial"] == 9 and list(table["rank"]) == [1, 2]
    assert table.loc[2, "p_value"] == pytest.approx(stats.ttest_rel(worse, best).pvalue)
    assert table.loc[2, "p_value"] < 0.05 and stats.ttest_ind(worse, best).pvalue > 0.5
    assert table.loc[2, "diff_vs_best"] == pytest.approx(0.105)
    assert table.attrs["distinguishable"] is True
    assert "is better than #2 at the 5% level" in table.attrs["summary"]


def test_direction_decides_the_best():
    table = analysis.confirmation_stats(_runs({1: [0.80, 0.82, 0.81], 4: [0.60, 0.61, 0.59]}), direction="maximize")
    assert table.attrs["best_trial"] == 1 and table.loc[4, "p_value"] < 0.05


def test_paired_p_value_edge_cases():
    assert math.isnan(analysis.paired_p_value([1.0], [2.0]))  # one pair: no test
    assert math.isnan(analysis.paired_p_value([1.0, 2.0], [1.0, 2.0]))  # identical samples
    assert analysis.paired_p_value([1.5, 2.5, 3.5], [1.0, 2.0, 3.0]) == 0.0  # a difference with no noise at all


def test_pairs_missing_a_seed_are_paired_on_the_seeds_both_have():
    runs = _runs({1: [0.50, 0.60, 0.55], 2: [0.70, 0.80, 0.78]})
    runs = runs[~((runs["source_trial"] == 2) & (runs["seed"] == 1))]
    table = analysis.confirmation_stats(runs)
    assert table.loc[2, "n"] == 2 and table.loc[2, "n_paired"] == 2
    assert table.loc[2, "p_value"] == pytest.approx(stats.ttest_rel([0.70, 0.78], [0.50, 0.55]).pvalue)


def test_failed_runs_do_not_let_a_configuration_win_on_easier_seeds():
    """#1 lost its two hardest seeds to failures: its mean over the rest (0.45) beats #2's mean over
    all five (0.62), yet on the seeds both completed #2 is better on every one. The best is the
    configuration that completed the most seeds, and no "better than" goes against the paired sign."""
    runs = _runs({1: [0.40, 0.50, 0.45, 0.95, 0.97], 2: [0.35, 0.46, 0.40, 0.90, 0.99]})
    runs = runs[~((runs["source_trial"] == 1) & runs["seed"].isin([3, 4]))]
    table = analysis.confirmation_stats(runs)
    assert table.loc[1, "value_mean"] < table.loc[2, "value_mean"]  # the unpaired means favour #1
    assert table.attrs["best_trial"] == 2 and list(table.index) == [2, 1]
    assert "most completed runs" in table.attrs["ranked_on"] and "Some runs failed" in table.attrs["summary"]
    assert table.loc[1, "significant"] and "is better than #1" in table.attrs["summary"]  # paired: 3 of 3 seeds


def test_a_significant_difference_against_the_best_is_not_called_better():
    """#2 failed on two seeds, so #1 (all five) is the best; on the three seeds both completed #2
    is significantly better. The verdict says so and never calls #1 better than #2."""
    runs = _runs({1: [0.50, 0.60, 0.70, 0.80, 0.90], 2: [0.40, 0.51, 0.59, 0.0, 0.0]})
    runs = runs[~((runs["source_trial"] == 2) & runs["seed"].isin([3, 4]))]
    table = analysis.confirmation_stats(runs)
    assert table.attrs["best_trial"] == 1
    assert table.loc[2, "diff_vs_best"] < 0 and table.loc[2, "p_value"] < 0.05
    assert not table.loc[2, "significant"] and table.loc[2, "beats_best"]
    assert table.attrs["distinguishable"] is False
    summary = table.attrs["summary"]
    assert "is better than #2" not in summary and "#2 did significantly better than #1" in summary
