"""Sampler and pruner factories; opening (or resuming) a study; provenance; trial counts,
bulk attributes and grid bookkeeping. Dead workers on journal stores are :mod:`llm_doe.liveness`'s.

Stores themselves (checking, opening, masking their URLs) are :mod:`llm_doe.storage`'s; the
private Optuna API this module needs is :mod:`llm_doe.optuna_compat`'s.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import itertools
import platform
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import optuna
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution

from llm_doe import constraints
from llm_doe import optuna_compat as compat
from llm_doe.experiment import NEW_STUDY_HINT, StoredStudy, check_same_experiment
from llm_doe.liveness import fail_and_requeue  # noqa: F401 - re-exported: the README's lost-host command
from llm_doe.schema import (
    Config,
    ConfigError,
    PrunerConfig,
    SamplerConfig,
    applicable,
    objective_metrics,
    primary_metric,
    resolved_directions,
    task_of,
)
from llm_doe.space import SearchSpace, conditions_of, grid_values, space_to_json
from llm_doe.storage import mask_overrides, open_store, store_exists

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def derived_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a study seeded ``seed``: a fixed function of both."""
    digest = hashlib.sha256(f"llm_doe:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler rebuilt for each trial, seeded from (``sampler.seed``, trial number).

    A sampler seeded once per process replays its random stream in every process: a resumed
    study proposed the parameters of its first trials again, and ``workers=N`` ran N copies of
    one stream. Trial numbers are unique in a study (the store hands them out), so every trial
    gets its own stream, in any process on any host, and a study run in one go, or stopped and
    resumed, draws the same parameters for the same trial numbers. Whatever the samplers learn
    lives in the study (TPE, GP and CMA-ES read their history, and CMA-ES its state, from the
    store), so rebuilding loses only GP's warm start of its kernel fit.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._build, self._seed = build, seed
        self.inner = build(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.inner = self._build(derived_seed(self._seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: optuna.trial.FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


#: The samplers that sample a conditional space as it is drawn (define-by-run): TPE models each
#: parameter on the trials that have it; random needs no model. GP, CMA-ES and QMC model only the
#: parameters every trial has (others fall back to random draws), and a grid would enumerate a
#: conditional parameter on trials that never use it.
BY_RUN_SAMPLERS = ("tpe", "random")


def make_sampler(cfg: SamplerConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded per trial from ``sampler.seed`` (:class:`TrialSeeded`).

    QMC keeps its one seed: it scrambles the one low-discrepancy sequence, which the sampler
    indexes by a counter kept in the study (so resumes and workers continue it). So does the
    grid: its seed shuffles the grid that the ``grid_id`` of every trial indexes, and it only
    ever offers configurations no trial has run. Without a seed every process draws fresh
    entropy, so nothing to replay either.
    """
    conditional = sorted(conditions_of(space))
    if conditional and cfg.name not in BY_RUN_SAMPLERS:
        raise ConfigError("sampler.name", f"{cfg.name} cannot sample conditional parameters "
                                          f"({', '.join(conditional)} have when:): it models or enumerates only the "
                                          f"parameters every trial has; use {' or '.join(BY_RUN_SAMPLERS)}")
    if cfg.name in ("qmc", "grid") or cfg.seed is None:
        return base_sampler(cfg, space, cfg.seed)
    return TrialSeeded(lambda seed: base_sampler(cfg, space, seed), cfg.seed)


def base_sampler(cfg: SamplerConfig, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    """The configured sampler with ``seed``."""
    samplers = optuna.samplers
    if cfg.name == "tpe":
        return samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if cfg.name == "random":
        return samplers.RandomSampler(seed=seed)
    if cfg.name == "qmc":
        return samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    if cfg.name == "grid":
        return samplers.GridSampler(grid_values(space), seed=seed)
    if cfg.name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if cfg.name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    raise ConfigError("sampler.name", f"unknown sampler {cfg.name!r}")


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    """The configured pruner; steps are evaluation indices (1, 2, ...).

    ``pruner.n_warmup_steps: N`` (median, percentile) and ``pruner.n_startup_steps: N``
    (wilcoxon) both mean: the first N evaluations of a trial are never pruned. Optuna's own
    arguments count differently (it protects steps ``< n_warmup_steps``; Wilcoxon prunes once
    ``n_startup_steps`` evaluations exist), and our steps start at 1, so both get N + 1. After
    the warm-up the pruner looks at evaluation N + 1, then every ``interval_steps``-th one.
    """
    for key, least in (("n_warmup_steps", 0), ("n_startup_steps", 0), ("interval_steps", 1)):
        if getattr(cfg, key) < least:
            raise ConfigError(f"pruner.{key}", f"must be >= {least}, got {getattr(cfg, key)}")
    pruners = optuna.pruners
    warmup = cfg.n_warmup_steps + 1  # Optuna protects steps < this: evaluations 1..N
    if cfg.name == "median":
        return pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=warmup,
                                    interval_steps=cfg.interval_steps)
    if cfg.name == "percentile":
        return pruners.PercentilePruner(cfg.percentile, n_startup_trials=cfg.n_startup_trials,
                                        n_warmup_steps=warmup, interval_steps=cfg.interval_steps)
    if cfg.name == "successive_halving":
        return pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor,
                                               min_early_stopping_rate=cfg.min_early_stopping_rate)
    if cfg.name == "hyperband":
        return pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=cfg.max_resource,
                                       reduction_factor=cfg.reduction_factor)
    if cfg.name == "wilcoxon":  # Optuna prunes once this many evaluations exist: N + 1 protects 1..N
        return pruners.WilcoxonPruner(p_threshold=cfg.p_threshold, n_startup_steps=cfg.n_startup_steps + 1)
    if cfg.name == "none":
        return pruners.NopPruner()
    raise ConfigError("pruner.name", f"unknown pruner {cfg.name!r}")


def _git_commit() -> str | None:
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(argv: list[str]) -> dict[str, Any]:
    """Where this run came from: command, commit, versions, host (passwords masked)."""
    return {
        "command": shlex.join([Path(sys.executable).name, "-m", "llm_doe.search", *mask_overrides(argv)]),
        "git_commit": _git_commit(),
        "versions": {name: _version(name) for name in
                     ("llm_doe", "torch", "transformers", "optuna", "datasets", "hydra-core", "scikit-learn")},
        "python": platform.python_version(),
        "host": platform.node(),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def existing_study(cfg: Config, name: str) -> optuna.study.StudySummary | None:
    """The stored study ``name`` (attributes, direction), read without creating anything: None
    when the store or the study does not exist yet."""
    if not store_exists(cfg.storage):
        return None
    _, summaries = open_store(cfg.storage, lambda storage: optuna.get_all_study_summaries(
        storage=storage, include_best_trial=False))
    return next((summary for summary in summaries if summary.study_name == name), None)


def check_resume(config: DictConfig, cfg: Config, space: SearchSpace, name: str | None = None) -> None:
    """Resuming is only honest on the same experiment: the same direction, metric, search
    space and non-searched settings (:mod:`llm_doe.experiment`), else the new trials answer
    another question under the old name, and the pruner and the best trial compare the two.

    ``config`` is the run's composed config (a sub-study's, its scientific values applied).
    Raises ConfigError naming the first key that differs; reads the store, writes nothing.
    """
    stored = existing_study(cfg, cast(str, name or cfg.study.name))  # validated: set
    if stored is not None:
        check_same_experiment(config, cfg, cast(StoredStudy, stored), hint=NEW_STUDY_HINT, space=space_to_json(space))


def open_study(cfg: Config, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, space: SearchSpace, resolved: Mapping[str, Any],
               argv: list[str], name: str | None = None, attrs: Mapping[str, Any] | None = None) -> optuna.Study:
    """Create the study (``name``, default ``study.name``) or load it to resume; record
    provenance (and ``attrs``) on first creation, and each run's command."""
    study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=name or cfg.study.name,
                                directions=cast(list[Any], resolved_directions(cfg)), load_if_exists=True)
    if "space" not in study.user_attrs:
        from llm_doe.notes import readable_attrs

        # First what a person reads in optuna-dashboard's attribute table (it lists them in the
        # order they were first set): the goal, the best value, each range, the setup. Then the
        # machine-readable copies the code reads ("config", "space": JSON, not for reading).
        for key, value in readable_attrs(resolved_directions(cfg), objective_metrics(cfg), space, resolved).items():
            study.set_user_attr(key, value)
        for key, value in (attrs or {}).items():
            study.set_user_attr(key, value)
        study.set_user_attr("metric", primary_metric(cfg))  # the quality metric: what readers plot
        study.set_user_attr("objectives", objective_metrics(cfg))  # every objective, in order
        # What the trials report, for readers that must not guess (the analysis, the report):
        # the task and each of its metrics with its direction.
        study.set_user_attr("task", cfg.task.name)
        study.set_user_attr("metric_directions", dict(task_of(cfg).metrics))
        study.set_metric_names(objective_metrics(cfg))  # optuna-dashboard names the objectives
        # The bounds every trial is held to (compared on resume: trials carry their constraint values).
        study.set_user_attr(constraints.STUDY_ATTR, constraints.normalise(cfg.study.constraints))
        # Tells this study from an earlier one of the same name (a deleted store, recreated):
        # a trial's checkpoint records it and is resumed only by a trial of this study.
        study.set_user_attr("uuid", uuid.uuid4().hex)
        # Without the keys that do not apply (the dashboard shows it; the check compares the rest).
        study.set_user_attr("config", applicable(resolved, searched=space))
        study.set_user_attr("provenance", provenance(argv))
        # Last: "space" marks a study whose creation completed (a creator killed halfway leaves
        # none, and the next run writes everything again).
        study.set_user_attr("space", space_to_json(space))
    study.set_user_attr("last_run", provenance(argv))
    return study


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE feasible trials with a finite value and distinct parameters, best first (ties:
    the earlier trial): what ``confirm`` re-runs and what a warm start takes from a study."""
    import json
    import math

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value) and constraints.is_feasible(t)]
    done.sort(key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]
    seen: set[str] = set()
    top: list[optuna.trial.FrozenTrial] = []
    for trial in done:
        key = json.dumps(trial.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            top.append(trial)
    return top


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards ``study.n_trials``: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_counts(study: optuna.Study) -> dict[optuna.trial.TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(optuna.trial.TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set many user attributes of a running trial, in one storage write where possible.

    ``trial.set_user_attr`` is one transaction per key (~0.7 ms on SQLite: ~40 ms for the ~60
    attributes a trial records). On SQLite and PostgreSQL this is one multi-row upsert of the
    same rows, in one transaction (Optuna has no bulk API: optuna/optuna#5665 was closed
    unmerged). Other storages, or an Optuna whose RDB internals moved, get one call per key.
    """
    attrs = dict(attrs)
    if not attrs:
        return
    if _rdb_bulk_upsert(trial, attrs):
        # What Trial.set_user_attr does after writing: the live trial sees its attributes.
        cached = compat.cached_frozen_trial(trial)
        if cached is not None:
            cached.user_attrs.update(attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _rdb_bulk_upsert(trial: optuna.Trial, attrs: dict[str, Any]) -> bool:
    """Upsert ``attrs`` into an RDB storage's trial_user_attributes; False if not possible."""
    import json
    import sqlite3

    storage = compat.rdb_backend(trial.storage)
    if storage is None:
        return False
    dialect = storage.engine.name
    if dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 24, 0):  # no ON CONFLICT before 3.24
        return False
    try:
        models = compat.rdb_models()
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]  # same call, another dialect
        else:
            return False
        model = models.TrialUserAttributeModel
        trial_id = compat.trial_id(trial)
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
        # PostgreSQL: one multi-row INSERT, one round trip to the server. SQLite (in-process):
        # executemany of a one-row statement, compiled once per engine instead of per row count.
        many = dialect == "sqlite"
        stmt = insert(model) if many else insert(model).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                          set_={"value_json": stmt.excluded.value_json})
        scope = compat.rdb_session(storage)
    except (ImportError, AttributeError, TypeError):  # Optuna's internals moved: the public way
        return False
    with scope as session:
        try:  # Optuna internals that may move between versions: fall back while nothing is written
            state = compat.trial_state_row(session, trial_id)
            check = storage.check_trial_is_updatable
        except (TypeError, AttributeError):
            return False
        check(trial_id, state)  # what Optuna's own setter checks first: the trial is still running
        if many:
            session.execute(stmt, rows)
        else:
            session.execute(stmt)
    return True


COST_ATTRS = ("optimizer_steps", "examples_seen", "train_time_s", "eval_time_s", "duration_s")


def study_totals(study: optuna.Study) -> dict[str, float]:
    """The study's compute so far: every trial's cost attributes summed, failed ones included."""
    totals: dict[str, float] = dict.fromkeys(COST_ATTRS, 0)
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        for key in COST_ATTRS:
            value = trial.user_attrs.get(key)
            if isinstance(value, (int, float)):
                totals[key] += value
    totals["trials"] = len(trials)
    return totals


def record_totals(study: optuna.Study) -> dict[str, float]:
    """:func:`study_totals`, stored as the study's ``totals`` attribute."""
    totals = study_totals(study)
    study.set_user_attr("totals", totals)
    return totals


# Grid studies: each configuration runs once. ---------------------------------------------

def _origin(trial: optuna.trial.FrozenTrial) -> int:
    """The first trial of a retry chain (re-queued trials repeat its configuration on purpose)."""
    origin = compat.retried_trial_number(trial)  # what RetryHeartbeatStaleTrialCallback records
    return trial.number if origin is None else origin


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that ran, runs or will run: every trial but those the objective refused
    (``surplus``: over the study total, or a grid configuration that already ran)."""
    return not trial.user_attrs.get("surplus")


def grid_names(space: SearchSpace) -> list[str]:
    """The parameters of a grid, in the order of :func:`grid_points`' tuples."""
    return sorted(grid_values(space))


def grid_points(space: SearchSpace) -> list[tuple[Any, ...]]:
    """Every configuration of the grid, as values in :func:`grid_names` order."""
    grid = grid_values(space)
    return list(itertools.product(*(grid[name] for name in sorted(grid))))


def grid_point(study: optuna.Study, trial: optuna.trial.FrozenTrial, space: SearchSpace) -> tuple[Any, ...] | None:
    """The grid configuration of a trial: its parameters, else those it was enqueued with,
    else what ``study.sampler`` (a GridSampler) draws for its ``grid_id``, which GridSampler
    sets before the parameters are suggested. None if unknown."""
    names = grid_names(space)
    for source in (trial.params, compat.enqueued_params(trial)):
        if all(name in source for name in names):
            return tuple(source[name] for name in names)
    grid = grid_values(space)
    sampler = study.sampler
    if (not isinstance(sampler, optuna.samplers.GridSampler)
            or compat.grid_search_space(trial) != {name: grid[name] for name in names}):
        return None
    return tuple(sampler.sample_independent(study, trial, name, space[name]) for name in names)


def grid_left(study: optuna.Study, space: SearchSpace) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The grid configurations no counted trial has run, runs or waits to run; and those of
    them that a refused trial held (GridSampler counts these as visited and never offers
    them again, so they must be enqueued)."""
    held: set[Any] = set()
    refused: set[Any] = set()
    for trial in study.get_trials(deepcopy=False):
        (held if counted(trial) else refused).add(grid_point(study, trial, space))
    left = [point for point in grid_points(space) if point not in held]
    return left, [point for point in left if point in refused]


def grid_duplicate(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   space: SearchSpace) -> optuna.trial.FrozenTrial | None:
    """An earlier counted trial with ``trial``'s grid configuration (its own retries aside).

    GridSampler may hand two workers the same configuration when few are left, and offers
    visited ones again once the grid is exhausted; the later trial is the one to refuse.
    """
    point = grid_point(study, trial, space)
    if point is None:
        return None
    for other in study.get_trials(deepcopy=False):
        if (other.number < trial.number and counted(other) and _origin(other) != _origin(trial)
                and grid_point(study, other, space) == point):
            return other
    return None
