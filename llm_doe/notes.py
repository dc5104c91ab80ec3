"""What optuna-dashboard shows a person about a study: its note (goal, search space, best
trial) and the study attributes written to be read there (goal, best value, each searched range,
the setup), beside the machine-readable ``space`` and ``config`` that the code reads.

The note is written (and refreshed) by the search at the end of every run through
optuna-dashboard's own note API, so whoever opens the dashboard reads what the study asks and
what it found without opening a notebook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna
import pandas as pd

from llm_doe import analysis
from llm_doe.formatting import fmt, shell_lines
from llm_doe.optuna_compat import rdb_backend, study_storage

log = logging.getLogger("llm_doe")


NO_BEST = "no complete trial yet"
#: Why a one-parameter study has no importance worth reading (the dashboard draws one anyway).
ONE_PARAMETER = ("Parameter importance compares searched parameters; with one, its importance is 1.0 by "
                 "definition and says nothing (the dashboard draws it anyway).")


def _cell(value: Any) -> str:
    text = fmt(value) if value is not None and not (isinstance(value, float) and pd.isna(value)) else "-"
    return text.replace("|", "\\|")


def describe_distribution(dist: optuna.distributions.BaseDistribution) -> tuple[str, str]:
    """A searched range for a Markdown table: its kind and its range with its scale (the
    dashboard note and a final export's model card show it alike)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return "categorical", ", ".join(_cell(c) for c in dist.choices)
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    if getattr(dist, "log", False):
        scale = "log"
    else:
        step = getattr(dist, "step", None)
        scale = f"step {_cell(step)}" if step else "linear"
    return kind, f"{_cell(dist.low)} .. {_cell(dist.high)} ({scale})"  # type: ignore[attr-defined]


def setup_line(config: Mapping[str, Any], code: str = "", multi: bool = False) -> str:
    """One sentence on what a study's trials train: model, data, epochs, sampler and pruner
    (names quoted by ``code``: a backtick in Markdown)."""
    model, data, train = config.get("model", {}), config.get("data", {}), config.get("train", {})
    pruner = ("none (Optuna prunes one objective only)" if multi else
              f"{code}{config.get('pruner', {}).get('name')}{code}")
    return (f"Model {code}{model.get('name_or_path')}{code}, data {code}{data.get('source')}{code} "
            f"({data.get('train_size')} train / {data.get('val_size')} val), {train.get('num_epochs')} "
            f"epoch(s); sampler {code}{config.get('sampler', {}).get('name')}{code}, pruner {pruner}.")


def readable_attrs(directions: list[str], metrics: list[str], space: Mapping[str, optuna.distributions.BaseDistribution],
                   config: Mapping[str, Any]) -> dict[str, str]:
    """The study attributes a person reads in the dashboard's table, each short plain text:
    ``goal``, ``best`` (refreshed by :func:`write_study_note`), ``space:<parameter>`` per
    searched parameter and ``setup``. Set before the machine-readable ones, so they come first."""
    goal = ", ".join(f"{d} {m}" for d, m in zip(directions, metrics))
    attrs = {"goal": goal if len(metrics) == 1 else f"trade-off: {goal}", "best": NO_BEST}
    conditions = getattr(space, "conditions", {})
    for param, dist in space.items():
        kind, extent = describe_distribution(dist)
        when = " and ".join(f"{path} in {values}" for path, values in conditions.get(param, {}).items())
        attrs[f"space:{param}"] = f"{kind} {extent}".replace("\\|", "|") + (f", when {when}" if when else "")
    attrs["setup"] = setup_line(config, multi=len(metrics) > 1)
    return attrs


def best_attr(table: pd.DataFrame) -> str:
    """The ``best`` attribute: the metric's best value and its trial, e.g. ``val_loss 0.643 (trial #2)``;
    for a multi-objective study the trials on the Pareto front."""
    if analysis.is_multi_objective(table):
        front = analysis.pareto_front(table)
        return NO_BEST if front.empty else "Pareto front: " + ", ".join(f"#{int(n)}" for n in front["number"])
    try:
        best = analysis.best_trial(table)
    except ValueError:
        return NO_BEST
    return f"{table.attrs.get('metric', 'value')} {fmt(best['value'], 4)} (trial #{int(best['number'])})"


def study_note(table: pd.DataFrame) -> str:
    """The note's Markdown for a table from :func:`llm_doe.analysis.load_trials`."""
    attrs = table.attrs
    name, metric = attrs.get("study_name", "study"), attrs.get("metric", "value")
    config = attrs.get("study_user_attrs", {}).get("config") or {}
    space = analysis.space_of(table)
    lines = [f"## {name}", ""]
    multi = analysis.is_multi_objective(table)
    if multi:
        goal = "**Goal:** the trade-off between " + " and ".join(
            f"{d} `{m}`" for m, d in zip(analysis.objectives(table), attrs["directions"]))
    else:
        goal = f"**Goal:** {attrs.get('direction') or 'optimise'} `{metric}`"
    if metric != "value" and not multi:
        goal += " (its best value over each trial's evaluations)"
    lines.append(goal + f" by searching {', '.join(f'`{p}`' for p in space) or 'nothing'}.")
    if config:
        lines.append(setup_line(config, code="`", multi=multi))
    classes = attrs.get("study_user_attrs", {}).get("classes")
    if classes:
        lines.append(f"Classes (id: name): {classes}.")
    lines += ["", "### Search space", "", "| parameter | type | range |", "|---|---|---|"]
    for param, dist in space.items():
        kind, extent = describe_distribution(dist)
        lines.append(f"| `{param}` | {kind} | {extent} |")
    if len(space) == 1:
        lines += ["", ONE_PARAMETER]
    failures = analysis.failure_report(table)
    lines += ["", "### Trials", "", analysis.trial_counts_text(failures)]
    if multi:
        lines += _pareto_lines(table, list(space))
    else:
        lines += _best_lines(table, list(space), metric)
    warnings = analysis.study_warnings(table)
    if warnings:
        lines += ["", "### Warnings", ""] + [f"- {w}" for w in warnings]
    lines += ["", "_Written by llm_doe at the end of each run; edits here are replaced by the next run._"]
    return "\n".join(lines) + "\n"


def _pareto_lines(table: pd.DataFrame, space: list[str]) -> list[str]:
    """A multi-objective study's section: the trials on the Pareto front, a table."""
    lines = ["", "### Pareto front", ""]
    front = analysis.pareto_front(table)
    if front.empty:
        return lines + ["No trial has completed yet."]
    names = analysis.objectives(table)
    lines += ["No trial beats these in every objective; pick one by what its cost buys "
              "(`final.trial=N`, `confirm.trials=[N,...]`).", "",
              "| trial | " + " | ".join(f"`{n}`" for n in names + [p for p in space if p in front.columns]) + " |",
              "|---" * (1 + len(names) + len([p for p in space if p in front.columns])) + "|"]
    for _, row in front.iterrows():
        cells = [_cell(fmt(row[n], 4)) for n in names] + [_cell(row[p]) for p in space if p in front.columns]
        lines.append(f"| **#{int(row['number'])}** | " + " | ".join(cells) + " |")
    return lines


def _best_lines(table: pd.DataFrame, space: list[str], metric: str) -> list[str]:
    """A single-objective study's section: the best trial, its parameters, its rerun command."""
    lines = ["", "### Best trial", ""]
    try:
        best = analysis.best_trial(table)
    except ValueError:
        lines.append("No trial has completed yet.")
    else:
        metrics = ", ".join(f"{m} {_cell(best[m])}" for m in analysis.study_metrics(table.attrs["study_user_attrs"])
                            if m in best.index and m != metric)
        lines.append(f"Trial **#{int(best['number'])}**: `{metric}` = **{_cell(best['value'])}** ({metrics}).")
        lines += ["", "| parameter | value |", "|---|---|"]
        lines += [f"| `{p}` | {_cell(best[p])} |" for p in space if p in best.index]
        lines += ["", "Rerun it:", "", "```", shell_lines(analysis.rerun_command(table)), "```"]
    return lines


def write_study_note(study: optuna.Study) -> None:
    """Write (or refresh) the study's dashboard note and its ``best`` attribute. Never fails the
    run: a note is a nicety."""
    try:
        from optuna_dashboard import save_note

        # The store's SQL when it is an RDB (fast on big studies), else Optuna's API.
        storage = study_storage(study)
        ref = storage if rdb_backend(storage) is not None else study
        table = analysis.load_trials(ref, study.study_name)
        save_note(study, study_note(table))
        if "best" in study.user_attrs:  # a study made before the readable attributes has none
            study.set_user_attr("best", best_attr(table))
    except Exception as err:
        log.warning("could not write the study note for optuna-dashboard: %s", err)
