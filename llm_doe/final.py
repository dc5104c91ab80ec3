"""``python -m llm_doe.final +study=NAME [overrides...]``: train the chosen configuration, test it once, export it.

The end of a study, done the way the seed document meant and its code did not: the held-out
test split is read once, here, after every decision is made. The configuration is
``final.trial`` if given, else the confirmed best (``python -m llm_doe.confirm``), else the
study's best trial. It is trained on the train split up to the optimizer step of the trial's best
evaluation (so, with the same seed, it is the model the trial selected), or with
``final.use_val=true`` on train+val for the same number of steps, replaying the trial's
learning-rate schedule step for step (its total and warmup steps sized on the trial's train
split) with batches drawn from the larger pool; then evaluated once on the test split and
exported to ``final.output_dir`` (default ``studies/<name>/final/``):

* ``config.json``, ``model.safetensors``, tokenizer files: ``save_pretrained``, with the label
  names in ``id2label``, so ``AutoModelForSequenceClassification.from_pretrained(folder)`` and
  ``pipeline("text-classification", model=folder)`` work offline;
* ``config.yaml`` (the resolved config it was trained with), ``test_metrics.json``, ``roc.csv``
  and ``roc.png`` (test split);
* ``README.md``: the model card (data, split sizes, search space, trials, confirmation, the
  chosen trial, test metrics, how to load it).

Config and storage resolve as in ``python -m llm_doe.search``: run it with the search's overrides
(it refuses settings that differ from the study's). Bad input (no such study, no completed
trial, ``final.trial`` not a completed trial, an existing export without ``final.overwrite``)
stops before anything is written, with one line ``llm_doe: error: <key>: <what is wrong>`` and
exit status 2.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from llm_doe import analysis, constraints
from llm_doe.artifacts import read_metrics
from llm_doe.cli import Composed, cli
from llm_doe.formatting import json_safe
from llm_doe.names import CONFIRM_SUFFIX
from llm_doe.plugins import peft_method
from llm_doe.schema import Config, ConfigError, primary_metric, task_of
from llm_doe.storage import masked_config

if TYPE_CHECKING:
    from llm_doe.finetune.tasks.base import CardText

log = logging.getLogger("llm_doe")

USAGE = """usage: python -m llm_doe.final study.name=NAME [final.*|runtime.*|storage.* ...] [--cfg job|hydra|all]
       python -m llm_doe.final +study=FILE [the search's overrides ...]

Trains the chosen configuration of study NAME (final.trial, else the confirmed best, else the
best trial), evaluates it ONCE on the held-out test split and exports it to final.output_dir
(default studies/NAME/final/): save_pretrained model and tokenizer, config.yaml,
test_metrics.json, roc.csv, roc.png and a model card (README.md). With study.name=NAME the
study's config comes from the store; with +study=FILE pass the search's overrides.
  final.trial=N          export trial N (a COMPLETE trial) instead
  final.use_val=true     train on train+val (the trial's optimizer steps and learning rates)
  final.overwrite=true   replace an existing export (a second look at the test split)
  --cfg PART             print the composed config (job), Hydra's settings (hydra) or both (all)
  -h, --help             this help and the config groups
"""

MODEL_CARD = "README.md"


@dataclass
class FinalPlan:
    """The export to make: checked in full before anything is written."""

    parent: optuna.Study
    storage: optuna.storages.BaseStorage
    trial: FrozenTrial
    chosen_by: str
    trial_config: DictConfig
    config: Config
    output_dir: Path
    max_steps: int
    steps_source: str
    schedule_steps: int  # the trial's learning-rate schedule: its total steps, on its train split
    confirmation: Any  # the confirmation table (pandas) or None


def choose_trial(parent: optuna.Study, wanted: int | None) -> tuple[FrozenTrial, str]:
    """``final.trial``, else the confirmed best, else the best trial. Raises ConfigError."""
    trials = {t.number: t for t in parent.get_trials(deepcopy=False)}
    complete = sorted(n for n, t in trials.items() if t.state == TrialState.COMPLETE and t.values
                      and all(math.isfinite(v) for v in t.values))
    if not complete:
        raise ConfigError("study", f"study {parent.study_name!r} has no COMPLETE trial: nothing to train and test "
                                   "(run or finish the search first)")
    feasible = [n for n in complete if constraints.is_feasible(trials[n])]
    if not feasible and wanted is None:
        raise ConfigError("study", f"study {parent.study_name!r} has no feasible COMPLETE trial (every one violates "
                                   "study.constraints): pick one with final.trial, or search again with other bounds")
    if wanted is not None:
        listed = ", ".join(map(str, complete[:20])) + (", ..." if len(complete) > 20 else "")
        if wanted not in trials:
            raise ConfigError("final.trial", f"study {parent.study_name!r} has no trial {wanted} "
                                             f"(COMPLETE trials: {listed})")
        if wanted not in complete:
            raise ConfigError("final.trial", f"trial {wanted} of study {parent.study_name!r} is "
                                             f"{trials[wanted].state.name}, not COMPLETE (COMPLETE trials: {listed})")
        failed = constraints.violated(trials[wanted].constraints)  # the user's choice: said, not refused
        return trials[wanted], "set by final.trial" + (f" (infeasible: it violates {', '.join(failed)})"
                                                       if failed else "")
    if len(parent.directions) > 1:  # no single best: the user picks what the cost buys
        front = ", ".join(str(t.number) for t in sorted(parent.best_trials, key=lambda t: t.number))
        raise ConfigError("final.trial", f"study {parent.study_name!r} has several objectives and no single best "
                                         f"trial: set final.trial to one of its Pareto front ({front})")
    confirmation = parent.user_attrs.get("confirmation")
    if isinstance(confirmation, dict) and confirmation.get("best_trial") in feasible:
        return trials[int(confirmation["best_trial"])], f"the confirmed best, study {confirmation.get('study')}"
    best = parent.best_trial  # Optuna's best trial is the best feasible one
    return best, "the best trial of the search" + (" (feasible)" if best.constraints else "")


def _trial_history(trial: FrozenTrial, storage: optuna.storages.BaseStorage, artifacts_dir: str) -> list[dict[str, Any]]:
    """The trial's ``metrics.jsonl`` (``metrics.json`` in older studies: every evaluation), or []
    when its artifacts are not at hand."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

    if not Path(artifacts_dir).is_dir():
        return []
    try:
        metas = [m for m in get_all_artifact_meta(trial, storage=storage)
                 if m.filename in ("metrics.jsonl", "metrics.json")]
        if not metas:
            return []
        with FileSystemArtifactStore(artifacts_dir).open_reader(metas[-1].artifact_id) as reader:
            return read_metrics(reader.read().decode("utf-8"), metas[-1].filename)
    except Exception:
        return []


def schedule_steps(cfg: Config, n_train: int) -> int:
    """The trial's learning-rate schedule length: ``train.num_epochs`` epochs of its train split."""
    return math.ceil(n_train / cfg.train.batch_size) * cfg.train.num_epochs


def best_optimizer_step(trial: FrozenTrial, cfg: Config, n_train: int, storage: optuna.storages.BaseStorage
                        ) -> tuple[int, str]:
    """The optimizer step of the trial's best evaluation, and where the number comes from.

    From the trial's ``metrics.jsonl`` when its artifacts are at hand, else computed the way the
    training loop places evaluations (:func:`~llm_doe.finetune.batching.eval_points`); the trial's
    full step count when it recorded no best evaluation.
    """
    from llm_doe.finetune.batching import eval_points

    best = trial.user_attrs.get("best_step")
    if not isinstance(best, int) or best < 1:
        return schedule_steps(cfg, n_train), "the trial recorded no best evaluation: the full run"
    for record in _trial_history(trial, storage, cfg.storage.artifacts_dir):
        if record.get("step") == best and isinstance(record.get("optimizer_step"), int):
            return int(record["optimizer_step"]), f"evaluation {best} in the trial's metrics.jsonl"
    steps_per_epoch = math.ceil(n_train / cfg.train.batch_size)
    points = eval_points(steps_per_epoch, cfg.train.evals_per_epoch)
    epoch, index = divmod(best - 1, len(points))
    return epoch * steps_per_epoch + points[index], f"evaluation {best}, placed as the training loop places it"


def make_plan(composed: Composed) -> FinalPlan:
    """Every check of the export, and the loads that can fail, before anything is written."""
    from llm_doe.confirm import check_same_experiment, experiment_config, open_parent
    from llm_doe.finetune.tasks import get_task
    from llm_doe.space import apply_params
    from llm_doe.storage import check_writable

    cfg = composed.config
    if str(cfg.study.name).endswith(CONFIRM_SUFFIX):
        raise ConfigError("study.name", f"{cfg.study.name!r} is a confirmation study; export from the study it "
                                        f"confirms, {str(cfg.study.name)[: -len(CONFIRM_SUFFIX)]!r}")
    storage, parent = open_parent(composed)
    trial, chosen_by = choose_trial(parent, cfg.final.trial)
    check_same_experiment(composed, parent)
    trial_dc = apply_params(experiment_config(composed, parent), trial.params)
    trial_cfg: Config = OmegaConf.to_object(trial_dc)  # type: ignore[assignment]
    if not peft_method(trial_cfg.peft.method).mergeable:
        raise ConfigError("peft.method", f"is {trial_cfg.peft.method!r} in trial {trial.number}: its learned "
                                         "tokens cannot be merged into weights that from_pretrained and pipeline load "
                                         f"(export a {_mergeable_methods()} trial)")
    if trial_cfg.data.test_size == 0:
        raise ConfigError("data.test_size", f"is 0 in study {parent.study_name!r}: it held out no test split, so "
                                            "there is nothing to test the final model on once (run a study with a "
                                            "test split, data.test_size > 0)")
    out = Path(cfg.final.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.final.overwrite:
        raise ConfigError("final.output_dir", f"{out} already holds an export tested on the test split, which is "
                                              "read once: pass final.overwrite=true to replace it (a second look at "
                                              "the test split; the model card will say so)")
    if out.exists() and not out.is_dir():
        raise ConfigError("final.output_dir", f"{out} is a file")
    check_writable(out, "final.output_dir")
    check_writable(composed.run_dir, "hydra.run.dir")
    task = get_task(trial_cfg.task)
    prepared = task.prepare(trial_cfg.model, trial_cfg.data)
    # What the trial trained on: its augmented copies too (they set its steps per epoch).
    _, train_data = task.training_data(prepared, prepared.splits.train, trial_cfg.data, trial_cfg.augment,
                                       trial_cfg.train.seed)
    max_steps, source = best_optimizer_step(trial, trial_cfg, len(train_data), storage)
    confirmation = None
    try:
        confirmation = analysis.confirmation_table(storage, parent.study_name, missing_ok=True)
    except Exception as err:
        log.warning("could not read the confirmation of %s: %s", parent.study_name, err)
    return FinalPlan(parent, storage, trial, chosen_by, trial_dc, trial_cfg, out, max_steps, source,
                     schedule_steps(trial_cfg, len(train_data)), confirmation)




def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = "-" if not math.isfinite(value) else f"{value:.4g}"
        else:
            text = "-" if value is None else str(value)
        return text.replace("|", "\\|")

    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _mergeable_methods() -> str:
    """``lora, ia3 or full fine-tuning``: the PEFT methods an export can merge into its weights."""
    from llm_doe.plugins import peft_method_names

    names = [n if peft_method(n).adapters else "full fine-tuning" for n in peft_method_names()
             if peft_method(n).mergeable]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def model_card(plan: FinalPlan, *, sizes: dict[str, int], card: CardText, metrics: dict[str, Any],
               trained_on: str, evaluations: int, metric_names: list[str] | None = None) -> str:
    """The model card (Hugging Face's convention: README.md in the model folder); ``metric_names``:
    the test metrics to show, the task's own by default."""
    cfg, parent, trial = plan.config, plan.parent, plan.trial
    task = task_of(cfg)
    name = parent.study_name
    m, t = cfg.model, cfg.train
    metric = parent.user_attrs.get("metric", cfg.study.metric)
    random_init = {"tiny": "BERT", "tiny_llama": "Llama"}.get(m.kind)
    base = m.name_or_path if random_init is None else \
        f"random-init {random_init} ({m.num_layers} layers, hidden {m.hidden_size})"
    front = ["---", "library_name: transformers", f"pipeline_tag: {task.pipeline_tag}",
             f"tags: [{task.pipeline_tag}, llm_doe, optuna]"]
    if random_init is None:
        front.append(f"base_model: {m.name_or_path}")
    front.append("---")
    lines = [*front, "", f"# {name}: {card.title}", "",
             f"Fine-tuned from {base} on {trained_on} with the configuration the llm_doe study `{name}` chose "
             f"(trial #{trial.number}: {plan.chosen_by}), then evaluated **once** on a held-out test split that no "
             "earlier step of the study read.", ""]
    if evaluations > 1:
        lines += [f"> **Note:** this is export number {evaluations} of this study, so the test split has been looked at "
                  f"{evaluations} times; the test metrics are optimistic to the extent earlier looks informed "
                  "this choice.", ""]
    lines += ["## Test metrics", ""]
    names = [k for k in (metric_names or task.test_metrics) if k != "test_loss"]
    lines += _md_table(["metric", "value"], [[k, metrics[k]] for k in (*names, "test_loss")])
    lines += ["", f"{sizes['test']} test examples; {card.files_note}all figures in `test_metrics.json`.", "",
              *card.extra, "## Data", "", *card.data_lines, "", "## Search", ""]
    lines += _card_search(parent, metric)
    lines += ["## Confirmation", ""]
    lines += _card_confirmation(plan.confirmation)
    lines += ["## The chosen configuration", "",
              f"Trial #{trial.number} ({plan.chosen_by}): {_trial_values(parent, trial)} on validation "
              f"(best evaluation {trial.user_attrs.get('best_step', '-')}).", ""]
    lines += _md_table(["parameter", "value"], [[f"`{k}`", v] for k, v in trial.params.items()])
    steps = metrics["optimizer_steps"]
    lines += ["", f"Trained on {trained_on}: {steps} optimizer steps ({plan.steps_source}), "
              f"{metrics['examples_seen']} examples seen; learning rate {t.learning_rate:.4g}, batch size {t.batch_size}, "
              f"{t.num_epochs} epoch(s) of schedule ({t.lr_scheduler}, warmup {t.warmup_ratio}), weight decay "
              f"{t.weight_decay}, seed {t.seed}, {metrics['train_precision']} "
              f"{'autocast (weights kept in fp32)' if metrics['train_precision'] != 'fp32' else 'arithmetic'}; "
              "test metrics computed in fp32. The full resolved config is in `config.yaml`.", "",
              _schedule_sentence(plan, metrics), "",
              "## How to use it", "", "```python", *card.usage, "```", "",
              "Everything loads from this folder; no network access is needed.", "", "## Provenance", ""]
    prov = parent.user_attrs.get("provenance") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v)
    lines += [f"- Search command: `{prov.get('command', '-')}`",
              f"- Git commit: `{prov.get('git_commit') or '-'}`",
              f"- Versions: {versions or '-'}",
              f"- Exported {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by "
              "`python -m llm_doe.final`."]
    return "\n".join(lines) + "\n"


def _card_search(parent: optuna.Study, metric: str) -> list[str]:
    """The model card's search section, after its heading: the space, a sub-study's scientific
    values, the objective and the trial counts."""
    from llm_doe.confirm import scientific_values
    from llm_doe.notes import describe_distribution

    space = parent.user_attrs.get("space") or {}
    rows = []
    for param, text in space.items():
        kind, extent = describe_distribution(optuna.distributions.json_to_distribution(text))
        rows.append([f"`{param}`", kind, extent])
    lines = _md_table(["parameter", "type", "range"], rows) if rows else ["(no search space recorded)"]
    scientific = scientific_values(parent)
    if scientific:
        lines += ["", "A scientific sub-study: " + ", ".join(f"`{k}` = {v}" for k, v in scientific.items())
                  + " held for all its trials."]
    counts: dict[str, int] = {}
    for tr in parent.get_trials(deepcopy=False):
        counts[tr.state.name] = counts.get(tr.state.name, 0) + 1
    objectives = parent.user_attrs.get("objectives") or [metric]
    direction = " and ".join(f"{d.name.lower()} `{m}`" for m, d in zip(objectives, parent.directions))
    its = "its" if len(objectives) == 1 else f"`{metric}` at its"
    lines += ["", f"Objective: {direction} ({its} best value over each trial's evaluations on the "
              f"validation split). {sum(counts.values())} trials: "
              + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) + ".", ""]
    return lines


def _trial_values(parent: optuna.Study, trial: FrozenTrial) -> str:
    """The trial's value in words, each objective of a multi-objective study named:
    ``val_loss = 1.234, trainable_params = 4096`` (in backquotes)."""
    objectives = parent.user_attrs.get("objectives") or [parent.user_attrs.get("metric", "value")]
    return ", ".join(f"`{m}` = {v:.4g}" for m, v in zip(objectives, trial.values))


def _card_confirmation(table: Any) -> list[str]:
    """The model card's confirmation section, after its heading: the seeds' table and verdict,
    or that none was run."""
    if table is not None and len(table):
        shown = analysis.confirmation_display(table).reset_index()
        lines = [f"The best configurations re-run with {table.attrs['n_seeds']} seeds each (study "
                 f"`{table.attrs['study_name']}`):", ""]
        lines += _md_table([str(c) for c in shown.columns], shown.to_numpy().tolist())
        return lines + ["", f"**{table.attrs['summary']}**", ""]
    return ["No confirmation with several seeds was run (`python -m llm_doe.confirm`): the choice rests on "
            "one training seed per configuration.", ""]


def _schedule_sentence(plan: FinalPlan, metrics: dict[str, Any]) -> str:
    """The card's statement of the learning-rate rule: the trial's schedule, replayed."""
    from llm_doe.finetune.loop import warmup_steps

    t = plan.config.train
    return (f"Learning-rate schedule: the trial's own, {plan.schedule_steps} steps long, "
            f"{warmup_steps(t.warmup_ratio, plan.schedule_steps)} of them warmup (sized on the trial's train split), stopped "
            f"at step {metrics['optimizer_steps']} with the rate at {metrics['last_learning_rate']:.4g}. The final "
            "run replays it step for step whatever it trains on: on train+val the batches come from the larger "
            "pool, but every step has the rate it had in the trial, so no rate is used that no trial validated.")


def run(composed: Composed) -> int:
    """Check, train, test once, export. Returns the exit status."""
    import torch

    from llm_doe.runner import setup_logging, write_run_dir
    from llm_doe.study import FINISHED

    plan = make_plan(composed)
    cfg = plan.config
    write_run_dir(composed)
    setup_logging(composed.run_dir)
    if cfg.runtime.num_threads is not None:
        torch.set_num_threads(cfg.runtime.num_threads)
    trained = _train(plan)
    metrics = trained.metrics
    previous = plan.parent.user_attrs.get("final_exports") or []
    files = _export(plan, trained, evaluations=len(previous) + 1)
    tested = [k for k in trained.metric_names if k != "test_loss"] + ["test_loss"]
    record = {"trial": plan.trial.number, "chosen_by": plan.chosen_by, "output_dir": str(plan.output_dir.absolute()),
              "trained_on": metrics["trained_on"], "optimizer_steps": metrics["optimizer_steps"],
              "test": {k: metrics[k] for k in (*tested, "n_test")},
              "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    plan.parent.set_user_attr("final_exports", json_safe([*previous, record]))
    finished = len(plan.parent.get_trials(deepcopy=False, states=FINISHED))
    figures = " ".join(f"{'loss' if k == 'test_loss' else k}={metrics[k]:.4f}" for k in tested)
    log.info("final: test split (%d examples, read once): %s (trial #%d of %d finished trials)", metrics["n_test"],
             figures, plan.trial.number, finished)
    log.info("final: wrote %s (model, tokenizer, config.yaml, test_metrics.json, %sREADME.md)", plan.output_dir,
             "".join(f"{name}, " for name in files))
    return 0


@dataclass
class _Trained:
    """The final model, what it was trained and tested on, and its test figures."""

    model: Any
    task: Any
    prepared: Any
    payload: Any  # the task's evaluation payload on the test split
    metrics: dict[str, Any]
    metric_names: list[str]  # the task's metrics, val_loss as test_loss
    sizes: dict[str, int]
    trained_on: str


def _train(plan: FinalPlan) -> _Trained:
    """Train the chosen configuration as the trial did (or on train+val, replaying the trial's
    schedule), then evaluate it once on the test split."""
    from llm_doe.finetune import peft as peft_methods
    from llm_doe.finetune.loop import Budget, Hooks, Selection, TrainData, evaluate, train
    from llm_doe.finetune.runtime import resolve_runtime
    from llm_doe.finetune.tasks import get_task
    from llm_doe.objective import distill_teacher

    cfg = plan.config
    task = get_task(cfg.task)
    prepared = task.prepare(cfg.model, cfg.data)
    splits = prepared.splits
    sizes = {"train": len(splits.train), "val": len(splits.val)}
    # Augmented as the trial's training examples were (augment.*, the trial's seed): train+val too.
    source = task.join(splits.train, splits.val) if cfg.final.use_val else splits.train
    examples, train_data = task.training_data(prepared, source, cfg.data, cfg.augment, cfg.train.seed)
    trained_on = f"train+val ({len(source)} examples)" if cfg.final.use_val else \
        f"the train split ({len(source)} examples)"
    if len(train_data) != len(source):
        trained_on += f" and their augmented copies ({len(train_data)} in all)"
    log.info("final: study %s, trial #%d (%s): %s; training on %s for %s", plan.parent.study_name,
             plan.trial.number, plan.chosen_by, " ".join(f"{k}={v}" for k, v in plan.trial.params.items()),
             trained_on, f"{plan.max_steps} of the trial's {plan.schedule_steps} scheduled optimizer steps "
             f"({plan.steps_source})")
    # As the trial did: the adapters (if any) drawn from the trial's seed after the build.
    model = peft_methods.wrap(prepared.factory.build(cfg.train.seed, cfg.model.dropout), cfg.peft, task.name)
    runtime = resolve_runtime(cfg.runtime.device, cfg.train.precision, cfg.runtime.log_every_steps, cfg.runtime.progress,
                              cfg.runtime.log_every_s)
    started = time.perf_counter()
    teacher = distill_teacher(task, examples, cfg, runtime.device)  # as the trial did (distill.*)
    result = train(model, task, TrainData(train_data, None, prepared.pad_id, teacher), cfg.train, runtime,
                   select=Selection(primary_metric(cfg)), hooks=Hooks(desc="final"),
                   budget=Budget(plan.max_steps, plan.schedule_steps), lr_scales=peft_methods.lr_scales(model, cfg.peft))
    test = splits.test  # the one read of the held-out split in the whole study
    sizes["test"] = len(test)
    # In fp32 whatever the training ran in: the figures are those of the exported fp32 weights
    # as anyone loading the folder computes them (bf16 could flip a near-tie prediction).
    test_data = task.encode(test, prepared, cfg.data)
    fp32 = replace(runtime, dtype=None)
    test_metrics, payload = evaluate(model, task, test_data, cfg.train.eval_batch_size, prepared.pad_id, fp32)
    payload = task.finish(model, test_data, prepared.pad_id, fp32, payload)  # sample generations on the test split
    names = ["test_loss" if k == "val_loss" else k for k in task.metrics]
    metrics: dict[str, Any] = {
        **{("test_loss" if k == "val_loss" else k): test_metrics[k] for k in task.metrics},
        "n_test": len(test), "study": plan.parent.study_name,
        "trial": plan.trial.number, "chosen_by": plan.chosen_by, "params": plan.trial.params,
        "trained_on": "train+val" if cfg.final.use_val else "train", "n_train": len(train_data),
        "optimizer_steps": int(result.cost["optimizer_steps"]), "examples_seen": int(result.cost["examples_seen"]),
        "train_precision": result.cost["train_precision"], "max_steps": plan.max_steps,
        "steps_source": plan.steps_source,
        "schedule_steps": plan.schedule_steps, "last_learning_rate": result.last_learning_rate,
        "train_time_s": time.perf_counter() - started,
        "label_names": list(getattr(splits, "label_names", []) or []) or None, "split_sizes": sizes,
        "test_split_reads_in_this_process": splits.test_reads,
    }
    return _Trained(model, task, prepared, payload, metrics, names, sizes, trained_on)


def _save_model(model: Any, staging: Path, method: str) -> Any:
    """The model to save as plain transformers weights; a PEFT model's adapter is saved first to
    ``adapter/`` (loads with ``PeftModel.from_pretrained(base, folder / "adapter")``), and LoRA or
    IA3 is merged into the base weights (loads with ``from_pretrained(folder)`` and ``pipeline``).
    Prefix and prompt tuning cannot merge: :func:`make_plan` refuses them."""
    model = model.to("cpu").eval()
    if not peft_method(method).adapters:
        return model
    model.save_pretrained(staging / "adapter")
    return model.merge_and_unload()


def _export(plan: FinalPlan, trained: _Trained, evaluations: int) -> list[str]:
    """Write the export to a temporary folder next to the target, then move it: an export is
    whole or absent. Returns the names of the task's files in it (``roc.csv``, ...)."""
    cfg, model, metrics = plan.config, trained.model, trained.metrics
    out = plan.output_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the export private to this user
        model = _save_model(model, staging, cfg.peft.method)
        trained.task.prepare_export(model, trained.prepared)
        model.save_pretrained(staging)
        saved_tokenizer = trained.prepared.tokenizer.__class__.from_pretrained(trained.prepared.tokenizer_key)
        saved_tokenizer.model_max_length = cfg.data.max_length  # truncation=True then cuts where training did
        trained.task.prepare_export_tokenizer(saved_tokenizer)
        saved_tokenizer.save_pretrained(staging)
        (staging / "config.yaml").write_text(OmegaConf.to_yaml(masked_config(plan.trial_config)), encoding="utf-8")
        files = [p.name for p in trained.task.write_artifacts(
            trained.payload, staging, f"{plan.parent.study_name} trial {plan.trial.number}", "on the test split")]
        metrics["roc_curve"] = "roc.csv" if "roc.csv" in files else None
        (staging / "test_metrics.json").write_text(json.dumps(json_safe(metrics), indent=1), encoding="utf-8")
        card_text = trained.task.card(cfg.data, trained.prepared, trained.sizes, trained.payload)
        card = model_card(plan, sizes=trained.sizes, card=card_text,
                          metrics=metrics, trained_on=trained.trained_on, evaluations=evaluations,
                          metric_names=trained.metric_names)
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")
        for path in staging.rglob("*"):  # some writers (safetensors) leave their files private (0600)
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _swap_in(staging: Path, out: Path) -> None:
    """Put the complete export in ``staging`` at ``out``. An earlier export there
    (``final.overwrite=true``) is renamed aside first and removed only once the new one is in
    place: at every moment one whole export is on disk (a crash between the two renames leaves
    the old one in ``.<name>-old-*`` beside it), and a failed move puts the old one back."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    old.rmdir()  # a free name beside the export, on the same file system (a rename, not a copy)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)




def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 = bad input, nothing written)."""
    return cli(argv, USAGE, run, from_store=("final",))


if __name__ == "__main__":
    sys.exit(main())
