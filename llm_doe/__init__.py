"""llm_doe: Hydra-composed Optuna searches whose trials fine-tune transformers.

Run a study with ``python -m llm_doe.search +study=NAME``; review it with the analysis API
re-exported here (``import llm_doe as doe; doe.load_trials("sqlite:///studies/lr_sweep.db")``),
with ``python -m llm_doe.report +study=NAME`` or in optuna-dashboard. Importing the package
loads pandas and Optuna only (no torch, no Hydra), so notebooks start fast.
"""

from __future__ import annotations

from llm_doe.analysis import (
    METRICS,
    best_config,
    best_trial,
    boundary_report,
    compare,
    confirmation_display,
    confirmation_name,
    confirmation_stats,
    confirmation_table,
    failure_report,
    figure_png,
    format_confirmation,
    isolation,
    load_artifacts,
    load_confirmation,
    load_curves,
    load_roc,
    load_trials,
    paired_p_value,
    param_importances,
    plot_confirmation,
    plot_importance,
    plot_learning_curves,
    plot_objective_vs_params,
    plot_roc_curves,
    rerun_command,
    space_of,
    study_names,
    study_warnings,
)

__all__ = [
    "METRICS",
    "best_config",
    "best_trial",
    "boundary_report",
    "compare",
    "confirmation_display",
    "confirmation_name",
    "confirmation_stats",
    "confirmation_table",
    "failure_report",
    "figure_png",
    "format_confirmation",
    "isolation",
    "load_artifacts",
    "load_confirmation",
    "load_curves",
    "load_roc",
    "load_trials",
    "paired_p_value",
    "param_importances",
    "plot_confirmation",
    "plot_importance",
    "plot_learning_curves",
    "plot_objective_vs_params",
    "plot_roc_curves",
    "rerun_command",
    "space_of",
    "study_names",
    "study_warnings",
]
