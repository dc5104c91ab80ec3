"""What makes two runs the same experiment: the one check that a study's trials stay comparable.

A study's trials are comparable only if they learned the same thing the same way: the same
model, data and training settings, scored by the same metric in the same direction, over
the same search space. Resuming a study (``llm_doe.search``), confirming it
(``llm_doe.confirm``) or exporting from it (``llm_doe.final``) with any of these changed
would mix experiments under one name, so all three refuse it here, before anything is
written, naming the first key that differs.

Experiment settings (compared): every ``task.*``, ``model.*``, ``data.*``, ``train.*``, ``peft.*``, ``augment.*``
and ``distill.*`` key except the
searched parameters, a sub-study's scientific values and :data:`RUNTIME_KEYS`; and
``study.metric``, ``study.direction``, ``study.constraints`` and, where given, ``study.space``.

Runtime settings (free to differ): :data:`RUNTIME_KEYS`, ``runtime.*`` (device, threads,
progress, checkpoints), ``workers``, ``storage.*`` (where the study lives, retry and
heartbeat figures), ``study.n_trials``, ``study.timeout``, ``study.max_train_steps``,
``study.max_failures``, ``study.scientific_points``, and the search strategy, ``sampler.*``
and ``pruner.*`` (seeds included): they change which trials run or finish, not what a
trial's value means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from llm_doe import constraints
from llm_doe.schema import Config, ConfigError, objective_metrics, primary_metric, resolved_directions

#: Settings that say where and how fast a run goes, not what it learns: they may differ
#: between runs of one experiment (say, a GPU box after a laptop).
RUNTIME_KEYS = frozenset({"train.precision", "train.compile", "train.micro_batch_size", "train.eval_batch_size",
                          "train.gradient_checkpointing", "task.sample_prompts", "task.sample_max_new_tokens",
                          "distill.cache_dir", "task.packing"})
#: Experiment keys added after studies were first recorded, each with what every earlier study
#: ran as (the older code's behaviour): a stored config without the key is compared with this
#: value, so a resume cannot change it unseen. Other keys one side lacks are not compared.
ADDED_KEYS: dict[str, Any] = {"data.truncation": "keep", "train.optimizer": "adamw", "train.momentum": None,
                              "model.keep_layers": None, "peft.lora_plus_ratio": None}
#: The config sections whose every key (but the runtime ones) defines the experiment.
SECTIONS = ("task", "model", "data", "train", "peft", "augment", "distill")
#: What ``llm_doe.search`` tells a user whose resume would change the experiment.
NEW_STUDY_HINT = "use another study.name to run a different experiment"


class StoredStudy(Protocol):
    """What the check reads of a stored study: an ``optuna.Study`` or a ``StudySummary``."""

    study_name: str
    user_attrs: dict[str, Any]
    directions: list[Any]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}, for user attributes and comparisons."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def scientific_values(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The scientific values a sub-study of a designed study holds fixed (empty for a plain study)."""
    design = user_attrs.get("design")
    values = design.get("scientific") if isinstance(design, dict) else None
    return dict(values) if isinstance(values, dict) else {}


def experiment_diffs(config: DictConfig, cfg: Config, stored: StoredStudy,
                     ignore: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """(key, value here, value stored) for every experiment setting that differs; keys one
    side lacks (a config written by an older version, or by other code) are not compared,
    but for :data:`ADDED_KEYS`, compared with what the older version did."""
    attrs = stored.user_attrs
    recorded = attrs.get("config")
    recorded = recorded if isinstance(recorded, dict) else {}
    diffs = []
    if recorded:
        current = OmegaConf.to_container(config, resolve=True)
        assert isinstance(current, dict)
        skip = set(attrs.get("space") or {}) | set(scientific_values(attrs)) | RUNTIME_KEYS | ignore
        # A section a study recorded no config for (written before it existed: task, peft) held
        # its defaults then: compare with those, or e.g. peft=lora would resume a full-FT study.
        defaults = OmegaConf.to_container(OmegaConf.structured(Config))
        assert isinstance(defaults, dict)
        before = {**ADDED_KEYS, **flatten({k: recorded.get(k) or (defaults[k] if k not in recorded else {})
                                           for k in SECTIONS})}
        now = flatten({k: current.get(k) or {} for k in SECTIONS})
        diffs = [(k, now[k], before[k]) for k in now if k in before and k not in skip and now[k] != before[k]]
    head = []  # what the study optimises first: a changed metric also changes the direction
    metric = attrs.get("metric", (recorded.get("study") or {}).get("metric", primary_metric(cfg)))
    # Every objective, in order: a study written before multi-objective studies had one.
    stored_metrics = attrs.get("objectives") or [metric]
    here = objective_metrics(cfg)
    if here != list(stored_metrics):
        head.append(("study.metric", here if len(here) > 1 else here[0],
                     stored_metrics if len(stored_metrics) > 1 else stored_metrics[0]))
    directions = [d.name.lower() for d in stored.directions]
    if directions and resolved_directions(cfg) != directions:
        mine = resolved_directions(cfg)
        head.append(("study.direction", mine if len(mine) > 1 else mine[0],
                     directions if len(directions) > 1 else directions[0]))
    bounds = constraints.diff(cfg.study.constraints, attrs)  # which trials may be the best
    if bounds is not None:
        head.append(("study.constraints", *bounds))
    return head + diffs


def check_same_experiment(config: DictConfig, cfg: Config, stored: StoredStudy, *, hint: str,
                          space: Mapping[str, str] | None = None, ignore: frozenset[str] = frozenset()) -> None:
    """Refuse (ConfigError, one line) a config that would make ``stored`` another experiment.

    Args:
        config: the composed config of this run (a sub-study's, scientific values applied).
        cfg: its typed form (metric, direction).
        stored: the study as stored.
        hint: what the user should do instead (ends the message).
        space: this run's searched space as JSON (``space_to_json``), checked against the
            recorded one when given.
        ignore: more keys that may differ (the seeds a confirmation varies).
    """
    name = stored.study_name
    recorded_space = stored.user_attrs.get("space")
    if space is not None and isinstance(recorded_space, dict) and recorded_space and recorded_space != dict(space):
        changed = sorted(set(space) ^ set(recorded_space)
                         | {k for k in set(space) & set(recorded_space) if space[k] != recorded_space[k]})
        raise ConfigError("study.space", f"differs from the space study {name!r} was created with (in "
                                         f"{', '.join(changed)}): {hint}")
    diffs = experiment_diffs(config, cfg, stored, ignore)
    if diffs:
        key, here, there = diffs[0]
        more = ""
        if len(diffs) > 1:
            listed = ", ".join(d[0] for d in diffs[1:4]) + (", ..." if len(diffs) > 4 else "")
            more = f" (and {len(diffs) - 1} more: {listed})"
        raise ConfigError(key, f"is {here!r} here but {there!r} in study {name!r}{more}: {hint}")
