"""Studies -> tidy pandas tables, the tuning playbook's checks, and matplotlib figures.

Reviewing a study means comparing trials in Jupyter, in a shared report or next to
optuna-dashboard. Optuna's own ``load_study(...).trials_dataframe()`` builds every
``FrozenTrial`` through the ORM first (seconds on 10,000 trials, minutes on bigger stores:
optuna issues #763 and #4890) and knows nothing of this project's metrics. Here an RDB store
(SQLite, PostgreSQL, MySQL) is read with one SQL query per table and the rows are assembled
into exactly what Optuna's API returns for the same trials (the tests check that); other
storages (journal files) and ``optuna.Study`` objects go through Optuna's public API.

Two kinds of functions, so notebooks hold no logic and plots do no I/O:

* loaders take a study reference (``storage, study_name``) and return DataFrames:
  :func:`load_trials`, :func:`load_curves`, :func:`load_roc`, :func:`load_artifacts`,
  :func:`compare`, :func:`load_confirmation`, :func:`confirmation_table`,
  :func:`scientific_isolation`, :func:`scientific_curves`;
* checks and plots take those DataFrames: :func:`boundary_report`, :func:`failure_report`,
  :func:`constraint_report`,
  :func:`isolation`, :func:`param_importances`, :func:`plot_learning_curves`,
  :func:`plot_roc_curves`, :func:`plot_objective_vs_params`, :func:`plot_importance`,
  :func:`plot_confirmation`, :func:`plot_scientific_isolation`; for a multi-objective study
  :func:`pareto_front` and :func:`plot_pareto` (``load_trials`` marks the front: ``pareto``).
  The study's search space, direction and metric travel with a table in ``DataFrame.attrs``.

The modules, one concern each: ``_source`` (reading a store: SQL or Optuna's API), ``tables``
(the loaders), ``checks`` (the playbook's checks), ``confirmation`` (seeds and paired tests),
``scientific`` (sub-studies per scientific value), ``pareto`` (several objectives), ``feasibility`` (constrained studies) and ``plots`` (figures, no I/O). Everything
public is re-exported here, so ``from llm_doe import analysis; analysis.load_trials(...)`` and
``import llm_doe as doe; doe.load_trials(...)`` read the same.
"""

from __future__ import annotations

from llm_doe.analysis._common import complete_trials, default_param, param_columns, to_python
from llm_doe.analysis._source import StudyRef, study_names
from llm_doe.analysis.checks import (
    best_config,
    best_trial,
    boundary_report,
    competing_trials,
    confirm_command,
    failure_report,
    isolation,
    param_importances,
    rerun_command,
    study_warnings,
    trial_counts_text,
)
from llm_doe.analysis.confirmation import (
    confirm_params,
    confirm_quantities,
    confirmation_display,
    confirmation_name,
    confirmation_stats,
    confirmation_table,
    format_confirmation,
    load_confirmation,
    paired_p_value,
)
from llm_doe.analysis.feasibility import constrained, constraint_report
from llm_doe.analysis.notebook import require_study
from llm_doe.analysis.pareto import (
    is_multi_objective,
    objective_view,
    objectives,
    pareto_front,
    pareto_mask,
    pareto_text,
    plot_pareto,
    ranked_trials,
)
from llm_doe.analysis.plots import (
    figure_png,
    plot_confirmation,
    plot_importance,
    plot_learning_curves,
    plot_objective_vs_params,
    plot_roc_curves,
    plot_scientific_isolation,
    plot_training_loss,
)
from llm_doe.analysis.scientific import scientific_curves, scientific_isolation, scientific_substudies
from llm_doe.analysis.tables import (
    compare,
    load_artifacts,
    load_curves,
    load_generations,
    load_metrics,
    load_roc,
    load_trials,
    space_of,
)
from llm_doe.formatting import fmt
from llm_doe.names import CONFIRM_SUFFIX, METRICS, SEED_PARAMS, study_metrics
from llm_doe.optuna_compat import rdb_backend

__all__ = [
    "CONFIRM_SUFFIX",
    "METRICS",
    "SEED_PARAMS",
    "StudyRef",
    "best_config",
    "best_trial",
    "boundary_report",
    "compare",
    "competing_trials",
    "complete_trials",
    "confirm_command",
    "confirm_params",
    "confirm_quantities",
    "confirmation_display",
    "confirmation_name",
    "confirmation_stats",
    "confirmation_table",
    "constrained",
    "constraint_report",
    "default_param",
    "failure_report",
    "figure_png",
    "fmt",
    "format_confirmation",
    "is_multi_objective",
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
    "param_columns",
    "param_importances",
    "pareto_front",
    "pareto_mask",
    "pareto_text",
    "plot_confirmation",
    "plot_importance",
    "plot_learning_curves",
    "plot_objective_vs_params",
    "plot_pareto",
    "plot_roc_curves",
    "plot_scientific_isolation",
    "plot_training_loss",
    "ranked_trials",
    "rdb_backend",
    "require_study",
    "rerun_command",
    "scientific_curves",
    "scientific_isolation",
    "scientific_substudies",
    "space_of",
    "study_metrics",
    "study_names",
    "study_warnings",
    "to_python",
    "trial_counts_text",
]
