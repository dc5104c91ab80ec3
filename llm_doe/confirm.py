"""``python -m llm_doe.confirm +study=NAME [overrides...]``: re-run the best configurations with several seeds.

A search ranks every configuration on one training seed, and the top of that ranking is where
lucky seeds gather (the winner's curse). This command takes the top ``confirm.top_k`` COMPLETE
trials of a finished study (distinct configurations, by value, direction-aware) and re-runs each
with ``confirm.seeds`` fresh training seeds (and, with ``confirm.data_seeds=true``, data-split
seeds) in a linked study ``<name>-confirm`` in the same store. Then it reports, per
configuration, the mean, standard deviation and 95% confidence interval of the objective and
the metrics, and a paired t-test (seed by seed) of each configuration against the best, and
says plainly when the top configurations cannot be told apart.

It resolves config and storage exactly as ``python -m llm_doe.search`` does: run it with the
search's overrides (it refuses settings that differ from the ones the study ran with). Its
runs go through the search's own machinery (:func:`llm_doe.runner.optimize`: the same
objective, heartbeats, checkpoints, Ctrl-C handling), never pruned. It is resumable: the
same command again runs only the (configuration, seed) pairs that have no run yet (failed ones
are retried) and reports again. Bad input stops before anything is written, with one line
``llm_doe: error: <key>: <what is wrong>`` and exit status 2.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from llm_doe import analysis, experiment
from llm_doe.cli import Composed, cli
from llm_doe.formatting import json_safe
from llm_doe.names import CONFIRM_SUFFIX, SEED_PARAMS
from llm_doe.schema import Config, ConfigError, primary_metric, resolved_direction
from llm_doe.validation import validate

log = logging.getLogger("llm_doe")

USAGE = """usage: python -m llm_doe.confirm study.name=NAME [confirm.*|runtime.*|storage.* ...] [--cfg job|hydra|all]
       python -m llm_doe.confirm +study=FILE [the search's overrides ...]

Re-runs the top confirm.top_k configurations of the finished study NAME with confirm.seeds
training seeds each, in the linked study NAME-confirm (same store), and reports per
configuration the mean, standard deviation and 95% CI of the objective and metrics, with a
paired t-test of each against the best. With study.name=NAME the study's config comes from
the store; with +study=FILE pass the overrides the search ran with.
  confirm.top_k=3 confirm.seeds=5 confirm.first_seed=0 confirm.data_seeds=false confirm.alpha=0.05
  confirm.trials=[3,7]  these trials instead of the top_k (needed by a multi-objective study)
  --cfg PART  print the composed config (job), Hydra's settings (hydra) or both (all)
  -h, --help  this help and the config groups
Example:
  python -m llm_doe.confirm study.name=lr_sweep confirm.top_k=3 confirm.seeds=5
"""

#: The seeds' distribution in the confirmation study's space. Every value is set by the
#: confirmation (enqueued), never sampled; a fixed wide integer range (not a categorical over
#: the seeds) keeps the space the same when a later run asks for more seeds, which Optuna's
#: categoricals refuse ("does not support dynamic value space") and the resume check would too.
SEED_SPEC: dict[str, Any] = {"type": "int", "low": 0, "high": 2**31 - 1}
#: States in which a (configuration, seed) pair counts as run or under way.
ACTIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

Pair = tuple[int, int, int]  # (source trial, train.seed, data.seed)


@dataclass
class ConfirmPlan:
    """What a confirmation runs: checked in full before anything is written."""

    parent: optuna.Study
    storage: optuna.storages.BaseStorage
    name: str
    sources: list[FrozenTrial]  # best first
    seeds: list[int]
    pairs: list[Pair]  # seed-major, so partial results are already paired
    composed: Composed  # the confirmation study's config


def open_parent(composed: Composed) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """The study store and the searched study, refusing (ConfigError) a store or study that does
    not exist, so a typo never creates an empty store."""
    from llm_doe.storage import check_storage, open_store, storage_label, store_of

    cfg = composed.config
    name = str(cfg.study.name)
    check_storage(cfg.storage)
    store_of(cfg.storage)
    storage, names = open_store(cfg.storage, lambda store: optuna.get_all_study_names(storage=store))
    if name not in names:
        arms = sorted(n for n in names if n.startswith(f"{name}["))
        if arms:
            raise ConfigError("study.name", f"study {name!r} ran as {len(arms)} scientific sub-studies; pick one, "
                                            f"e.g. \"study.name='{arms[0]}'\" (all: {', '.join(arms)})")
        raise ConfigError("study.name", f"no study {name!r} in {storage_label(cfg.storage)}; it holds: "
                                        f"{', '.join(sorted(names)) or 'no study'}")
    return storage, optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0))


def scientific_values(parent: optuna.Study) -> dict[str, Any]:
    """The scientific values a sub-study of a designed study holds fixed (empty for a plain study)."""
    return experiment.scientific_values(parent.user_attrs)


def experiment_config(composed: Composed, parent: optuna.Study) -> DictConfig:
    """The config the study's trials started from: the composed one, with a sub-study's
    scientific values applied (its trials search only the nuisance parameters)."""
    from llm_doe.space import apply_params

    scientific = scientific_values(parent)
    return apply_params(composed.dict_config, scientific) if scientific else composed.dict_config


def searched_space(composed: Composed, parent: optuna.Study) -> dict[str, Any]:
    """The study's searched distributions, checked against the composed ``study.space``: the
    same overrides as the search must give the same space (less a sub-study's scientific ones)."""
    from llm_doe.space import (
        SearchSpace,
        build_space,
        json_conditions,
        resolve_conditions,
        space_to_json,
    )

    scientific = scientific_values(parent)
    built = build_space(composed.config.study.space)
    space = resolve_conditions(built.subset(k for k in built if k not in scientific),
                               experiment_config(composed, parent))
    stored = parent.user_attrs.get("space")
    if isinstance(stored, dict) and stored:
        if stored != space_to_json(space):
            raise ConfigError("study.space", f"differs from the space study {parent.study_name!r} searched: pass the "
                                             "overrides the search ran with")
        return SearchSpace({k: optuna.distributions.json_to_distribution(v) for k, v in stored.items()},
                           json_conditions(stored))
    return space


def check_same_experiment(composed: Composed, parent: optuna.Study, *, ignore: frozenset[str] = frozenset()) -> None:
    """Refuse a config that differs from the one the study searched with (model, data, training,
    metric, direction): confirming or exporting another experiment under the study's name would
    report numbers nobody measured. The check is the search's own resume check
    (:func:`llm_doe.experiment.check_same_experiment`); only the advice differs."""
    command = (parent.user_attrs.get("provenance") or {}).get("command")
    hint = "pass the overrides the search ran with" + (f"; the search ran: {command}" if command else "")
    experiment.check_same_experiment(composed.dict_config, composed.config, cast(experiment.StoredStudy, parent), hint=hint,
                                     ignore=ignore)


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE feasible trials with distinct parameters, best first (ties: earlier trial)."""
    from llm_doe.study import ranked_trials

    return ranked_trials(study)[:k]


def chosen_trials(study: optuna.Study, numbers: list[int] | None, k: int) -> list[FrozenTrial]:
    """``confirm.trials`` (each a COMPLETE trial of the study), else the ``k`` best; a study with
    several objectives has no "best", so it needs ``confirm.trials``. Raises ConfigError."""
    if numbers is None:
        if len(study.directions) > 1:
            front = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number))
            raise ConfigError("confirm.trials", f"study {study.study_name!r} has several objectives and no single "
                                                f"ranking: list the trials to confirm, e.g. from its Pareto front "
                                                f"(confirm.trials=[{front}])")
        return top_trials(study, k)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in numbers:
        state = trials[number].state.name if number in trials else None
        if state != "COMPLETE":
            raise ConfigError("confirm.trials", f"trial {number} of study {study.study_name!r} is "
                                                f"{state or 'not in the study'}, not COMPLETE")
    return [trials[n] for n in dict.fromkeys(numbers)]


def as_spec(dist: optuna.distributions.BaseDistribution) -> dict[str, Any]:
    """An Optuna distribution as an explicit ``study.space`` spec (no roles, no grammar)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    spec: dict[str, Any] = {"type": kind, "low": dist.low, "high": dist.high}  # type: ignore[attr-defined]
    if dist.log:  # type: ignore[attr-defined]
        spec["log"] = True
    elif dist.step is not None and not (kind == "int" and dist.step == 1):  # type: ignore[attr-defined]
        spec["step"] = dist.step  # type: ignore[attr-defined]
    return spec


def confirm_composed(base: DictConfig, composed: Composed, name: str, space: dict[str, Any],
                     n_trials: int) -> Composed:
    """The confirmation study's config: the study's (``base``), every interpolation resolved
    against the searched study's name first (same store, same artifacts folder, so
    optuna-dashboard shows both), then renamed, its space the study's searched distributions
    plus the seeds, no pruning (every run goes to the end), no compute budget (top_k x seeds is
    the budget), no warm start or enqueued points of the search, one worker, and checkpoints in a folder of its own (trial numbers restart at 0)."""
    resolved = OmegaConf.to_container(base, resolve=True)
    assert isinstance(resolved, dict)
    storage = resolved["storage"]
    storage["checkpoints_dir"] = str(Path(storage["checkpoints_dir"]) / name)
    study = resolved["study"]
    if composed.config.confirm.data_seeds:
        # data.seed re-draws train/val for each run; the test split stays the study's.
        data = resolved["data"]
        data["test_seed"] = data["seed"] if data.get("test_seed") is None else data["test_seed"]
    spec = {k: as_spec(d) for k, d in space.items() if k not in SEED_PARAMS}
    spec.update({k: dict(SEED_SPEC) for k in SEED_PARAMS})
    # One objective, the quality metric: seeds vary what a configuration scores, not what it costs.
    study.update(name=name, n_trials=n_trials, space=spec, max_failures=1, max_train_steps=None, enqueue=[],
                 metric=primary_metric(composed.config), direction=resolved_direction(composed.config))
    # Its runs are the (configuration, seed) pairs, nothing else (a store or count without a
    # study to start from is refused).
    study["warm_start"] = {"study_name": None, "storage": None, "top_k": None}
    resolved["pruner"] = {"name": "none"}
    resolved["sampler"] = {"name": "random", "seed": 0}  # never asked: every run is enqueued
    resolved["workers"] = 1
    dict_config = OmegaConf.merge(OmegaConf.structured(Config), resolved)
    typed: Config = OmegaConf.to_object(dict_config)  # type: ignore[assignment]
    validate(typed)
    return Composed(dict_config, typed, composed.run_dir, composed.overrides)  # type: ignore[arg-type]


def make_plan(composed: Composed) -> ConfirmPlan:
    """Every check of a confirmation, before anything is written. Raises ConfigError."""
    cfg = composed.config
    name = str(cfg.study.name)
    if name.endswith(CONFIRM_SUFFIX):
        raise ConfigError("study.name", f"{name!r} is a confirmation study; confirm the study it confirms, "
                                        f"{name[: -len(CONFIRM_SUFFIX)]!r}")
    storage, parent = open_parent(composed)
    check_same_experiment(composed, parent, ignore=frozenset(SEED_PARAMS))
    space = searched_space(composed, parent)
    sources = chosen_trials(parent, cfg.confirm.trials, cfg.confirm.top_k)
    if not sources:
        feasible = " feasible" if parent.user_attrs.get("constraints") else ""
        raise ConfigError("study", f"study {name!r} has no{feasible} COMPLETE trial to confirm: run (or finish) the "
                                   "search first" + (" or relax study.constraints in a new study" if feasible else ""))
    seeds = list(range(cfg.confirm.first_seed, cfg.confirm.first_seed + cfg.confirm.seeds))
    pairs = [(t.number, s, s if cfg.confirm.data_seeds else cfg.data.seed) for s in seeds for t in sources]
    confirm_name = name + CONFIRM_SUFFIX
    return ConfirmPlan(parent, storage, confirm_name, sources, seeds, pairs,
                       confirm_composed(experiment_config(composed, parent), composed, confirm_name, space, len(pairs)))


def _pair(trial: FrozenTrial) -> tuple[Any, Any, Any]:
    attrs = trial.user_attrs
    return attrs.get("source_trial"), attrs.get("seed"), attrs.get("data_seed")


def enqueue_missing(study: optuna.Study, plan: ConfirmPlan) -> tuple[int, int]:
    """Enqueue the planned pairs that have no run yet (failed ones again). Returns (new, retried)."""
    trials = study.get_trials(deepcopy=False)
    present = {_pair(t) for t in trials if t.state in ACTIVE}
    failed = {_pair(t) for t in trials if t.state == TrialState.FAIL}
    by_number = {t.number: t for t in plan.sources}
    new = retried = 0
    for source, seed, data_seed in plan.pairs:
        if (source, seed, data_seed) in present:
            continue
        params = {**by_number[source].params, "train.seed": seed, "data.seed": data_seed}
        study.enqueue_trial(params, user_attrs={"source_trial": source, "seed": seed, "data_seed": data_seed})
        retried += (source, seed, data_seed) in failed
        new += 1
    return new, retried


def table_records(table: Any) -> list[dict[str, Any]]:
    """A confirmation table as JSON-able records (one per configuration, best first)."""
    return [json_safe(r) for r in table.reset_index().to_dict("records")]


def _note(table: Any) -> str:
    """The confirmation study's optuna-dashboard note: the table and the verdict, in Markdown."""
    shown = analysis.confirmation_display(table)
    lines = [f"## {table.attrs['study_name']}", "",
             f"Confirmation of study `{table.attrs['parent_study']}`: its best configurations re-run with "
             f"{table.attrs['n_seeds']} seeds each (mean, 95% CI, paired t-test against the best).", ""]
    if not shown.empty:
        frame = shown.reset_index()
        lines.append("| " + " | ".join(str(c) for c in frame.columns) + " |")
        lines.append("|" + "---|" * len(frame.columns))
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.to_numpy()]
    lines += ["", f"**{table.attrs['summary']}**", "",
              "_Written by python -m llm_doe.confirm at the end of each run._"]
    return "\n".join(lines) + "\n"


def _provenance(argv: list[str]) -> dict[str, Any]:
    from llm_doe.storage import mask_overrides
    from llm_doe.study import provenance

    record = provenance(argv)
    record["command"] = shlex.join([Path(sys.executable).name, "-m", "llm_doe.confirm", *mask_overrides(argv)])
    return record


def run(composed: Composed) -> int:
    """Plan, run the missing (configuration, seed) pairs, report. Returns the exit status."""
    from llm_doe.runner import optimize, setup_logging, write_run_dir
    from llm_doe.search import prepare
    from llm_doe.storage import masked_config
    from llm_doe.study import make_sampler, open_study

    plan = make_plan(composed)
    design, pruner = prepare(plan.composed)  # the search's own checks and loads, still writing nothing
    space = design.arms[0].space
    write_run_dir(plan.composed)
    setup_logging(plan.composed.run_dir)
    cfg = plan.composed.config
    if cfg.train.seed in plan.seeds and not cfg.confirm.data_seeds:
        log.warning("confirm: seed %d is the search's own train.seed: that run repeats the search trial, luck "
                    "included (set confirm.first_seed to use fresh seeds)", cfg.train.seed)
    created = plan.name not in optuna.get_all_study_names(storage=plan.storage)
    study = open_study(cfg, plan.storage, make_sampler(cfg.sampler, space), pruner, space,
                       masked_config(plan.composed.dict_config), composed.overrides, name=plan.name)
    if created:
        study.set_user_attr("provenance", _provenance(composed.overrides))
    study.set_user_attr("last_run", _provenance(composed.overrides))
    attrs = {"parent_study": plan.parent.study_name, "top_k": cfg.confirm.top_k, "seeds": plan.seeds,
             "data_seeds": cfg.confirm.data_seeds, "alpha": cfg.confirm.alpha,
             "source_trials": [t.number for t in plan.sources],
             "source_values": {str(t.number): t.values[0] for t in plan.sources}, "pairs": [list(p) for p in plan.pairs]}
    for key, value in attrs.items():
        study.set_user_attr(key, json_safe(value))
    if cfg.confirm.trials is None and len(plan.sources) < cfg.confirm.top_k:
        log.info("confirm: study %s has %d distinct COMPLETE configuration(s), fewer than confirm.top_k=%d",
                 plan.parent.study_name, len(plan.sources), cfg.confirm.top_k)
    new, retried = enqueue_missing(study, plan)
    log.info("confirm: " + ("top %d" if cfg.confirm.trials is None else "%d chosen") + " trial(s) of %s (%s) x seeds %s = %d runs in study %s; %d to run now%s",
             len(plan.sources), plan.parent.study_name, ", ".join(f"#{t.number}" for t in plan.sources),
             plan.seeds, len(plan.pairs), plan.name, new, f" ({retried} failed before, retried)" if retried else "")

    code = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        pending = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        if not pending:
            break
        # The total optimize runs to: every run or pending trial of this study, so it runs exactly the
        # enqueued pairs. One failure stops it (study.max_failures=1) instead of letting it fill the
        # gap with a sampled trial; the loop then goes on with the pairs left.
        total = sum(t.state in ACTIVE for t in trials)
        plan.composed.config.study.n_trials = total
        # review=False: a single seed's "best trial" and a boundary check of the confirmation's own
        # (narrowed) space mean nothing here; the verdict below is the review.
        code = optimize(plan.composed, study, space, review=False)
        if code not in (0, 1):
            return code  # interrupted (130/143) or the store went away: the same command resumes

    table = analysis.confirmation_table(plan.storage, plan.name)
    assert table is not None
    log.info("\n%s", analysis.format_confirmation(table))
    failed = int(table.attrs.get("failed_runs", 0))
    summary = {"study": plan.name, "best_trial": table.attrs["best_trial"],
               "distinguishable": table.attrs["distinguishable"], "summary": table.attrs["summary"],
               "seeds": plan.seeds, "top_k": cfg.confirm.top_k, "alpha": cfg.confirm.alpha,
               "runs_complete": int(table["n"].sum()) if len(table) else 0, "runs_planned": len(plan.pairs),
               "table": table_records(table)}
    study.set_user_attr("confirmation", json_safe(summary))
    if table.attrs["best_trial"] is not None:  # what python -m llm_doe.final exports by default
        plan.parent.set_user_attr("confirmation", json_safe(summary))
    try:
        from optuna_dashboard import save_note

        save_note(study, _note(table))
    except Exception as err:
        log.warning("could not write the confirmation note for optuna-dashboard: %s", err)
    if failed:
        log.error("confirm: %d of %d runs failed (see fail_reason on the trials of %s); run the same command to "
                  "retry them", failed, len(plan.pairs), plan.name)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 = bad input, nothing written)."""
    return cli(argv, USAGE, run, from_store=("confirm",))


if __name__ == "__main__":
    sys.exit(main())
