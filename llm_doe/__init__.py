"""llm_doe: Hydra-composed Optuna searches whose trials fine-tune transformers.

Run a study with ``python -m llm_doe.search +study=NAME``; review it with the analysis API
re-exported here (``import llm_doe as doe; doe.load_trials("sqlite:///studies/lr_sweep.db")``),
with ``python -m llm_doe.report +study=NAME`` or in optuna-dashboard. Importing the package
loads nothing: the analysis API (pandas and Optuna, no torch, no Hydra) is imported on first
use (PEP 562), so ``import llm_doe.finetune`` (the training code) loads neither Optuna nor Hydra,
and notebooks start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__ below
    from llm_doe.analysis import (
        METRICS,
        best_config,
        best_trial,
        boundary_report,
        compare,
        confirm_command,
        confirmation_display,
        confirmation_name,
        confirmation_stats,
        confirmation_table,
        constraint_report,
        failure_report,
        figure_png,
        format_confirmation,
        isolation,
        load_artifacts,
        load_confirmation,
        load_curves,
        load_generations,
        load_metrics,
        load_roc,
        load_trials,
        objective_view,
        objectives,
        paired_p_value,
        param_importances,
        pareto_front,
        plot_confirmation,
        plot_importance,
        plot_learning_curves,
        plot_objective_vs_params,
        plot_pareto,
        plot_roc_curves,
        plot_scientific_isolation,
        plot_training_loss,
        require_study,
        rerun_command,
        scientific_curves,
        scientific_isolation,
        scientific_substudies,
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
    "confirm_command",
    "confirmation_display",
    "confirmation_name",
    "confirmation_stats",
    "confirmation_table",
    "constraint_report",
    "failure_report",
    "figure_png",
    "format_confirmation",
    "isolation",
    "load_artifacts",
    "load_confirmation",
    "load_curves",
    "load_generations",
    "load_metrics",
    "load_roc",
    "load_trials",
    "objective_view",
    "objectives",
    "paired_p_value",
    "param_importances",
    "pareto_front",
    "plot_confirmation",
    "plot_importance",
    "plot_learning_curves",
    "plot_objective_vs_params",
    "plot_pareto",
    "plot_roc_curves",
    "plot_scientific_isolation",
    "plot_training_loss",
    "require_study",
    "rerun_command",
    "scientific_curves",
    "scientific_isolation",
    "scientific_substudies",
    "space_of",
    "study_names",
    "study_warnings",
]


def __getattr__(name: str) -> Any:
    """``llm_doe.load_trials`` and ``from llm_doe import load_trials``: the analysis API, loaded
    on first use (PEP 562) so that importing a submodule does not import Optuna."""
    if name in __all__:
        from llm_doe import analysis

        value = getattr(analysis, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
