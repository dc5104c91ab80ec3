"""Constrained studies' tables: which trials may compete, the per-constraint report and the warnings.

The frames are built the way ``load_trials`` gives a constrained study's table (``feasible``,
``violated``, ``constraint.<name>``, the bounds in ``attrs['study_user_attrs']['constraints']``);
tests/test_constraints.py covers the same through real trials.
"""

from __future__ import annotations

import math

import pandas as pd

from llm_doe.analysis import feasibility

BOUNDS = {"peak_memory_mb": {"max": 8000.0}, "accuracy": {"min": 0.7}}


def _table(rows: list[tuple[str, float | None, float | None]]) -> pd.DataFrame:
    """One row per trial: (state, peak_memory_mb.max value, accuracy.min value); None: no values."""
    states = [r[0] for r in rows]
    memory = [math.nan if r[1] is None else r[1] for r in rows]
    accuracy = [math.nan if r[2] is None else r[2] for r in rows]
    feasible = [None if r[1] is None else (r[1] <= 0 and r[2] <= 0) for r in rows]
    table = pd.DataFrame({"number": range(len(rows)), "state": states,
                          "feasible": pd.Series(feasible, dtype="boolean"),
                          "constraint.accuracy.min": accuracy, "constraint.peak_memory_mb.max": memory})
    table.attrs["study_user_attrs"] = {"constraints": BOUNDS}
    return table


def test_an_unconstrained_table_lets_every_trial_compete_and_reports_nothing():
    table = pd.DataFrame({"number": [0, 1], "state": ["COMPLETE", "PRUNED"]})
    assert not feasibility.constrained(table)
    assert feasibility.feasible_mask(table).tolist() == [True, True]
    assert feasibility.constraint_report(table).empty
    assert feasibility.infeasible_count(table) == (0, 0)
    assert feasibility.constraint_warnings(table) == []


def test_feasible_mask_keeps_trials_without_values_and_drops_violators():
    table = _table([("COMPLETE", -100.0, -0.1), ("COMPLETE", 500.0, -0.1), ("FAIL", None, None)])
    assert feasibility.constrained(table)
    assert feasibility.feasible_mask(table).tolist() == [True, False, True]  # a failed trial has no values


def test_report_counts_violations_per_bound_and_the_worst_value():
    table = _table([("COMPLETE", -100.0, -0.1), ("COMPLETE", 500.0, -0.05), ("PRUNED", 1200.0, 0.2),
                    ("FAIL", None, None), ("RUNNING", None, None)])
    report = feasibility.constraint_report(table)
    memory = report.loc["peak_memory_mb.max"]
    assert memory["attribute"] == "peak_memory_mb" and memory["bound"] == "<= 8000"
    assert (memory["violated"], memory["of"]) == (2, 3) and memory["fraction"] == 2 / 3
    assert memory["worst"] == 9200.0  # the bound plus the largest excess: the attribute's recorded value
    accuracy = report.loc["accuracy.min"]
    assert accuracy["bound"] == ">= 0.7" and (accuracy["violated"], accuracy["of"]) == (1, 3)
    assert math.isclose(accuracy["worst"], 0.5)  # min bound: the bound minus the largest shortfall
    assert feasibility.infeasible_count(table) == (2, 3)


def test_warnings_name_the_failed_bound_and_say_when_nothing_is_feasible():
    some = _table([("COMPLETE", -100.0, -0.1), ("COMPLETE", 500.0, -0.05)])
    lines = feasibility.constraint_warnings(some)
    assert len(lines) == 1
    assert lines[0].startswith("1 of 2 finished trials are infeasible (50%)")
    assert "peak_memory_mb <= 8000 (1 trial, worst 8500)" in lines[0] and "accuracy" not in lines[0]

    none = _table([("COMPLETE", 500.0, -0.05), ("PRUNED", -1.0, -0.1)])  # the feasible one was pruned
    assert any(line.startswith("no COMPLETE trial is feasible") for line in feasibility.constraint_warnings(none))


def test_a_constraint_without_a_recorded_bound_says_optunas_convention():
    table = _table([("COMPLETE", 3.0, -0.1)])
    table.attrs["study_user_attrs"] = {}
    assert feasibility.constraint_report(table).loc["peak_memory_mb.max", "bound"] == "<= 0 (Optuna's constraint value)"
