"""``python -m llm_doe.search +study=NAME [overrides...]``: compose, validate, run.

A thin entry point. :mod:`llm_doe.cli` composes ``conf/`` with the command-line overrides
(Hydra's own override grammar) into the typed :class:`~llm_doe.schema.Config`, once.
Every check runs before anything is written: on bad input the command prints one line,
``llm_doe: error: <key or file>: <what is wrong>``, and exits with status 2.

``study.n_trials`` is the study's total: the same command again resumes a crashed or
interrupted study up to that total, and a finished study runs nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, cast

from omegaconf import OmegaConf

from llm_doe.cli import Composed, cli
from llm_doe.schema import Config, ConfigError, PrunerConfig, is_multi_objective, objective_metrics, task_of

USAGE = """usage: python -m llm_doe.search +study=NAME [key=value ...] [--cfg job|hydra|all]

Runs (or resumes, to study.n_trials) the Optuna study NAME from conf/study/NAME.yaml.
  --cfg PART  print the composed config (job), Hydra's settings (hydra) or both (all)
  -h, --help  this help and the config groups
Examples:
  python -m llm_doe.search +study=smoke
  python -m llm_doe.search +study=lr_sweep study.n_trials=12 pruner=hyperband
"""

log = logging.getLogger("llm_doe")


def prepare(composed: Composed) -> tuple[Any, Any]:
    """Every check and every load that can fail on user input, before anything is written.

    Returns the design (the arms to run: the study, or one sub-study per scientific value)
    and the pruner.
    """
    from llm_doe.design import plan
    from llm_doe.finetune.tasks import get_task
    from llm_doe.space import check_space
    from llm_doe.storage import check_storage, check_writable
    from llm_doe.study import check_resume, make_pruner, make_sampler
    from llm_doe.validation import check_files

    cfg = composed.config
    check_files(cfg)  # before anything loads torch (the task's prepare below): a missing file is one line at once
    design = plan(cast(str, cfg.study.name), composed.dict_config, cfg.study.space, cfg.study.n_trials,
                  cfg.study.scientific_points, cfg.sampler.seed)
    if not design.arms[0].space:
        raise ConfigError("study.space", "is empty: nothing to search (pick a study with +study=NAME)")
    for arm in design.arms:
        check_space(arm.config, arm.space)
        make_sampler(cfg.sampler, arm.space)  # refuses, e.g., a continuous space for sampler=grid
    check_storage(cfg.storage)
    check_writable(cfg.storage.artifacts_dir, "storage.artifacts_dir")
    check_writable(composed.run_dir, "hydra.run.dir")
    pruner = make_pruner(cfg.pruner)
    if is_multi_objective(cfg) and design.scientific:
        raise ConfigError("study.metric", "a scientific study compares the best trial of each value: give it one "
                                          "metric, not a list")
    if is_multi_objective(cfg) and cfg.sampler.name == "cmaes":
        raise ConfigError("sampler.name", "cmaes optimises one objective; a multi-objective study.metric needs "
                                          "tpe, gp, random, qmc or grid")
    # Data and weights load now: a missing file or model stops the run here, and the first
    # trial finds them cached.
    prepared = get_task(cfg.task).prepare(cfg.model, cfg.data)
    for arm in design.arms:
        check_peft(arm.config, arm.space, prepared.factory.template)
        check_teachers(arm.config, arm.space, get_task(cfg.task), prepared)
    for arm in design.arms:  # the same experiment, or nothing is written (a sub-study's values applied)
        check_resume(arm.config, cfg, arm.space, arm.name)
    return design, pruner


def check_peft(config: Any, space: Any, template: Any) -> None:
    """Refuse a PEFT method the model cannot take (prefix tuning on an encoder, a target module
    it lacks) for every method and target the study may sample, before anything is written."""
    import dataclasses
    import itertools

    from llm_doe.finetune import peft as peft_methods

    cfg: Config = OmegaConf.to_object(config)  # type: ignore[assignment]
    keys = ("method", "target_modules")
    options = [list(getattr(space.get(f"peft.{k}"), "choices", None) or [getattr(cfg.peft, k)]) for k in keys]
    for method, targets in itertools.product(*options):
        variant = dataclasses.replace(cfg.peft, method=method, target_modules=targets)
        peft_methods.check(variant, template, cfg.task.name)


def check_teachers(config: Any, space: Any, task: Any, prepared: Any) -> None:
    """Refuse a teacher the task cannot learn from (another label set, no tokenizer, not found),
    for every teacher the study may sample, before anything is written."""
    fixed = OmegaConf.select(config, "distill.teacher")
    teachers = list(getattr(space.get("distill.teacher"), "choices", None) or [fixed])
    for teacher in teachers:
        if teacher is not None:
            task.check_teacher(str(teacher), prepared)


def data_identity_keys(cfg: Config) -> frozenset[str]:
    """The settings that choose the data or its labels (the task, and the data keys its
    declaration names): a study that samples one has no single set of classes."""
    return frozenset({"task.name", "task.target", *(f"data.{k}" for k in task_of(cfg).data_keys)})


def data_attrs(arm: Any) -> dict[str, Any]:
    """What a new (sub-)study records of its data for people to read (a classifier's ``classes``),
    from the arm's own config (a scientific value may change the data); nothing when its trials
    sample what chooses the data or its labels."""
    from llm_doe.finetune.tasks import get_task

    cfg: Config = OmegaConf.to_object(arm.config)  # type: ignore[assignment]
    if data_identity_keys(cfg) & set(arm.space):
        return {}
    task = get_task(cfg.task)
    return task.study_attrs(task.prepare(cfg.model, cfg.data))  # the base config's: loaded by prepare(), cached


def run(composed: Composed) -> int:
    """Open (or resume) the study (or its scientific sub-studies) and optimise it to
    ``study.n_trials``. Returns the exit code."""
    from llm_doe import constraints, warm_start
    from llm_doe.notes import write_study_note
    from llm_doe.runner import WORKER_ENV, optimize_arms, run_workers, setup_logging, write_run_dir
    from llm_doe.storage import make_storage, masked_config
    from llm_doe.study import make_pruner, make_sampler, open_study

    cfg = composed.config
    design, _ = prepare(composed)
    worker = os.environ.get(WORKER_ENV) is not None  # a worker process of workers=N: its parent enqueued
    warm = warm_start.plan(cfg, design.arms) if not worker else warm_start.WarmPlan()
    write_run_dir(composed)
    setup_logging(composed.run_dir)
    storage = make_storage(cfg.storage)
    pruner_cfg = cfg.pruner
    if is_multi_objective(cfg):
        log.info("multi-objective study (%s): Optuna's pruners take one objective, so every trial runs to the end "
                 "(pruner.name=%s not used)", ", ".join(objective_metrics(cfg)), cfg.pruner.name)
        pruner_cfg = PrunerConfig(name="none")
    arms = []
    for arm in design.arms:
        attrs = {**data_attrs(arm), **({"design": design.attrs(arm)} if design.scientific or design.caveats else {})}
        study = open_study(cfg, storage, make_sampler(cfg.sampler, arm.space), make_pruner(pruner_cfg), arm.space,
                           masked_config(composed.dict_config), composed.overrides, name=arm.name, attrs=attrs)
        arms.append((arm, study))
    for caveat in design.caveats:
        log.info("caveat: %s", caveat)
    note = constraints.sampler_note(cfg.study.constraints, cfg.sampler.name)
    if note and not worker:
        log.info("constraints: %s", note)
    for line in warm.notes:
        log.info("warm start: %s", line)
    for arm, study in arms:
        for line in warm_start.enqueue(study, warm.points.get(arm.name, []), arm.n_trials):
            log.info(line)
    if cfg.workers > 1 and not worker:
        code = run_workers(composed, [study for _, study in arms])
    else:
        code = optimize_arms(composed, arms)
    for _, study in arms:
        write_study_note(study)  # optuna-dashboard's study note: goal, space, best trial (never fails the run)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 = bad input, nothing written)."""
    return cli(argv, USAGE, run)


if __name__ == "__main__":
    sys.exit(main())
