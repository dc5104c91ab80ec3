"""Names that the commands which write studies and the analysis which reads them must agree on.

``confirm`` and ``final`` write a confirmation study and seed parameters; the analysis reads
them back. Both sides import these constants from here, so neither depends on the other and
this module stays free of heavy imports (it is loaded by ``import llm_doe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_doe.plugins import task_spec, task_specs  # plain data: no torch

#: The final metrics of the default task's trials (classification), at their best evaluation:
#: what a study written before studies recorded their task's metrics holds.
METRICS = tuple(task_spec("classification").metrics)
#: Every metric a built-in task records: what the analysis reads of the trials' attributes
#: (a study also records its own task's, ``metric_directions``: a user's task's too).
ALL_METRICS = tuple(dict.fromkeys(m for spec in task_specs() for m in spec.metrics))
#: Trial attributes that measure what a trial cost, with the direction that is better: what
#: a multi-objective ``study.metric`` may trade quality against ([val_loss, trainable_params]).
COST_METRICS: dict[str, str] = {
    "trainable_params": "minimize", "total_params": "minimize", "train_time_s": "minimize",
    "eval_time_s": "minimize", "duration_s": "minimize", "peak_memory_mb": "minimize",
    "optimizer_steps": "minimize", "examples_seen": "minimize",
}
#: Seeds: searched as nuisance parameters or set by the confirmation; labels, not quantities.
SEED_PARAMS = ("train.seed", "data.seed")
#: ``python -m llm_doe.confirm`` writes its runs to this linked study, in the same store.
CONFIRM_SUFFIX = "-confirm"


def study_metrics(study_attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics a study's trials record: its task's, as the study recorded them
    (``metric_directions``); a study written before tasks existed is a classification study."""
    directions = study_attrs.get("metric_directions")
    return tuple(directions) if isinstance(directions, Mapping) and directions else METRICS
