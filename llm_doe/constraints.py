"""Constraints: bounds a trial must respect on what it records (peak memory, optimizer steps, ...).

``study.constraints`` maps a recorded trial attribute to ``{max: X}``, ``{min: Y}`` or both.
Every finished trial (COMPLETE or PRUNED) records one Optuna constraint per bound through
Optuna's own ``trial.set_constraint`` (the objective calls it): ``<attribute>.max`` is
``value - max`` and ``<attribute>.min`` is ``min - value``, so a trial is feasible when every
constraint is <= 0, Optuna's convention. The samplers read them from the store: TPE and GP model
the infeasible region and steer away from it; ``study.best_trial`` (and with it the progress
lines, the note, the report, ``confirm`` and ``final``) takes only feasible trials.

This module holds the names and the arithmetic; it imports nothing heavy (no torch, no Optuna
at import time), so config validation can call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llm_doe.schema import ConfigError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

#: Numbers every finished trial records as user attributes, whatever its task (the loop's cost
#: figures, the parameter counts, the objective's timing): what a constraint may bound, besides
#: the task's metrics. tests/test_constraints.py checks a real trial records each of them.
RECORDED = ("peak_memory_mb", "optimizer_steps", "examples_seen", "train_time_s", "eval_time_s", "duration_s",
            "train_samples_per_second", "train_tokens_per_second", "time_to_first_step_s", "trainable_params",
            "total_params", "oom_retries", "micro_batch_size", "best_step")
#: Samplers that model the infeasible region (Optuna's TPESampler and GPSampler read the trials'
#: constraints); samplers that model nothing (random, qmc, grid) cannot steer either way, and
#: infeasible trials are only kept out of the best trial.
MODELLING = ("tpe", "gp")
NON_MODELLING = ("random", "qmc", "grid")
#: The study attribute that records the bounds a study was created with.
STUDY_ATTR = "constraints"
#: The constraint value of a bound whose attribute a trial did not record (say a metric that was
#: not finite): violated, by a finite amount (GP standardises the values; inf would break it).
UNRECORDED = 1.0


def recordable(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """What a constraint may bound in a study whose task has ``metrics``: those and :data:`RECORDED`."""
    return (*metrics, *RECORDED)


def normalise(constraints: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{attribute: {"max": x, "min": y}}`` with only the bounds given, as floats, sorted (the
    form recorded on the study and compared on resume). Assumes :func:`check` passed."""
    out: dict[str, dict[str, float]] = {}
    for attr in sorted(constraints or {}):
        spec = constraints[attr]  # type: ignore[index]
        out[attr] = {k: float(spec[k]) for k in ("max", "min") if spec.get(k) is not None}
    return out


def check(constraints: Mapping[str, Any] | None, metrics: tuple[str, ...], sampler: str) -> None:
    """Refuse (ConfigError, one line) a bound on an attribute no trial records, a bound that is not
    a number, an empty range, or a sampler that ignores constraints."""
    if not constraints:
        return
    known = recordable(metrics)
    for attr, spec in constraints.items():
        key = f"study.constraints.{attr}"
        if attr not in known:
            raise ConfigError(key, f"no trial records {attr!r}; a constraint may bound one of: {', '.join(known)}")
        if not isinstance(spec, Mapping):
            raise ConfigError(key, f"must be a map {{max: X, min: Y}} (either or both), got {spec!r}")
        unknown = sorted(set(spec) - {"max", "min"})
        if unknown:
            raise ConfigError(key, f"unknown field(s) {unknown}; a bound is max, min or both")
        for name in ("max", "min"):
            value = spec.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ConfigError(f"{key}.{name}", f"must be a finite number, got {value!r}")
        if spec.get("max") is None and spec.get("min") is None:
            raise ConfigError(key, "needs max, min or both")
        if spec.get("max") is not None and spec.get("min") is not None and spec["min"] > spec["max"]:
            raise ConfigError(key, f"min {spec['min']} is above max {spec['max']}: no trial could be feasible")
    if sampler not in MODELLING + NON_MODELLING:
        raise ConfigError("study.constraints", f"sampler={sampler} ignores constraints (Optuna's {sampler} sampler "
                                               f"does not read them); use sampler={' or '.join(MODELLING)}, which avoid "
                                               "infeasible regions, or one of " + ", ".join(NON_MODELLING))


def sampler_note(constraints: Mapping[str, Any] | None, sampler: str) -> str | None:
    """A line for a constrained study whose sampler models nothing (random, qmc, grid)."""
    if not constraints or sampler not in NON_MODELLING:
        return None
    return (f"sampler={sampler} does not model them: infeasible trials are kept out of the best trial, but the "
            f"search does not steer away from them (sampler={' or '.join(MODELLING)} does)")


def values(constraints: Mapping[str, Mapping[str, float]], attrs: Mapping[str, Any]) -> dict[str, float]:
    """The Optuna constraint values of a trial that recorded ``attrs``: ``<attr>.max`` = value -
    max, ``<attr>.min`` = min - value (feasible when <= 0), in a fixed order (GP needs every
    trial to carry the same constraints)."""
    out: dict[str, float] = {}
    for attr, bounds in normalise(constraints).items():
        value = attrs.get(attr)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        for name in ("max", "min"):
            if name not in bounds:
                continue
            if not math.isfinite(number):
                out[f"{attr}.{name}"] = UNRECORDED
            else:
                out[f"{attr}.{name}"] = number - bounds[name] if name == "max" else bounds[name] - number
    return out


def violated(constraint_values: Mapping[str, float]) -> list[str]:
    """The names of the violated constraints (value > 0)."""
    return [name for name, value in constraint_values.items() if value > 0]


def trial_attrs(constraints: Mapping[str, Mapping[str, float]], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """User attributes that say it in words, for optuna-dashboard (which does not show Optuna 5's
    named constraints): ``feasible`` and, when not, ``constraint_violations`` ("peak_memory_mb
    9123 > max 8000")."""
    bounds = normalise(constraints)
    failed = violated(values(bounds, attrs))
    out: dict[str, Any] = {"feasible": not failed}
    if failed:
        words = []
        for name in failed:
            attr, _, side = name.rpartition(".")
            value = attrs.get(attr)
            shown = "not recorded" if not isinstance(value, (int, float)) else f"{value:.6g}"
            words.append(f"{attr} {shown} {'>' if side == 'max' else '<'} {side} {bounds[attr][side]:g}")
        out["constraint_violations"] = "; ".join(words)
    return out


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether a trial meets every constraint it recorded (one without constraints does)."""
    return all(value <= 0 for value in trial.constraints.values())


def describe(trial: FrozenTrial) -> str:
    """`` infeasible (peak_memory_mb.max)`` for a trial that violated a constraint, else ``""``:
    what a progress line adds."""
    failed = violated(trial.constraints)
    return f" infeasible ({', '.join(failed)})" if failed else ""


def diff(constraints: Mapping[str, Any] | None, stored_attrs: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(here, stored) when this run's constraints differ from the ones the study was created with
    (a study created without any recorded none). A resume may not change them: the stored trials
    carry the old constraint values, and GP needs every trial to carry the same ones."""
    here = normalise(constraints)
    stored = stored_attrs.get(STUDY_ATTR) or {}
    return None if here == stored else (here, stored)
