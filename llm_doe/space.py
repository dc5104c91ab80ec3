"""The search space: ``study.space`` -> Optuna distributions, and sampled values -> a config.

Two spellings give the same distributions:

* an explicit spec: ``{type: float|int|categorical, low, high, log, step, choices}``;
* the hydra-optuna-sweeper grammar (``interval(a, b)``, ``int(interval(a, b))``,
  ``range(a, b, step)``, ``choice(...)``, ``tag(log, interval(a, b))``), parsed by Hydra's own
  override parser, so spaces written for that plugin port over unchanged.

An explicit spec may add a condition, ``when: {path: value or [values]}``: the parameter is
sampled only on trials whose config has ``path`` at one of those values, and is not recorded on
the others (define-by-run, as Optuna samples conditional spaces)::

    train.optimizer: {type: categorical, choices: [adamw, sgd]}
    train.momentum: {type: float, low: 0.0, high: 0.99, when: {train.optimizer: sgd}}

``path`` is a parameter searched without a condition (drawn first on each trial) or a config key
held fixed (decided once for the whole study, or for each scientific sub-study). A grammar string
takes a condition as ``{sweep: "interval(0, 0.99)", when: {...}}``.

The space is data, built once per study; the objective turns it into ``trial.suggest_*``
calls in one place (convention 3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_doe.schema import ConfigError
from llm_doe.validation import validate

Distribution = optuna.distributions.BaseDistribution
#: A parameter's condition: {config path: the values that let it be sampled}.
Condition = dict[str, list[Any]]


class SearchSpace(dict[str, Distribution]):
    """The searched distributions keyed by dotted config path, and ``conditions``: for each
    conditional parameter, the config values it is sampled under (``when:``)."""

    def __init__(self, items: Mapping[str, Distribution] | Iterable[tuple[str, Distribution]] = (),
                 conditions: Mapping[str, Condition] | None = None) -> None:
        super().__init__(items)
        self.conditions: dict[str, Condition] = {k: dict(v) for k, v in (conditions or {}).items() if k in self}

    def subset(self, keys: Iterable[str]) -> SearchSpace:
        """These parameters, with their conditions."""
        wanted = set(keys)
        return SearchSpace({k: d for k, d in self.items() if k in wanted}, self.conditions)


def conditions_of(space: Mapping[str, Distribution]) -> dict[str, Condition]:
    """The conditions of a space (none for a plain mapping of distributions)."""
    return getattr(space, "conditions", {})


_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "role", "sweep", "when"}
ROLES = ("scientific", "nuisance", "fixed")


def _flatten(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Accept both ``{train.lr: spec}`` and nested ``{train: {lr: spec}}`` (CLI overrides)."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and "type" not in value and value and not set(value) & _SPEC_KEYS:
            flat.update(_flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def _num(key: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"study.space.{key}", f"{field} must be a number, got {value!r}")
    return value


def _from_spec(key: str, spec: Mapping[str, Any]) -> Distribution:
    name = f"study.space.{key}"
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(name, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    if "sweep" in spec:
        extra = set(spec) - {"sweep", "role", "when"}
        if extra:
            raise ConfigError(name, f"'sweep' takes the whole range; drop {sorted(extra)}")
        if not isinstance(spec["sweep"], str):
            raise ConfigError(name, f"sweep must be a sweep string such as interval(0, 1), got {spec['sweep']!r}")
        return _from_grammar(key, spec["sweep"])
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or len(choices) == 0:
            raise ConfigError(name, "categorical needs a non-empty list of choices")
        return _categorical(key, list(choices))
    if kind not in ("float", "int"):
        raise ConfigError(name, f"type must be float, int or categorical, got {kind!r}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(name, f"{kind} needs low and high")
    low, high = _num(key, "low", spec["low"]), _num(key, "high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(name, f"log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _num(key, "step", step)
    return _numeric(key, kind, low, high, log, step)


def _numeric(key: str, kind: str, low: float, high: float, log: bool, step: float | None) -> Distribution:
    name = f"study.space.{key}"
    if not low < high:
        raise ConfigError(name, f"low must be < high, got low={low} high={high}")
    if log and low <= 0:
        raise ConfigError(name, f"a log scale needs low > 0, got low={low}")
    if step is not None and step <= 0:
        raise ConfigError(name, f"step must be > 0, got {step}")
    if log and step is not None and step != 1:
        raise ConfigError(name, "log scale and step cannot be combined")
    if kind == "int":
        for field, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise ConfigError(name, f"int needs whole numbers, {field}={value}")
        return optuna.distributions.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log,
                                                  step=None if step is None else float(step))


def _categorical(key: str, choices: list[Any]) -> Distribution:
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool)) and choice is not None:
            raise ConfigError(f"study.space.{key}", f"choices must be str, int, float, bool or null, got {choice!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"study.space.{key}", f"choices repeat a value: {choices}")
    return optuna.distributions.CategoricalDistribution(choices)


_PARSER: OverridesParser | None = None


def _from_grammar(key: str, text: str) -> Distribution:
    """Parse hydra-optuna-sweeper's grammar with Hydra's parser (as that plugin does)."""
    global _PARSER
    name = f"study.space.{key}"
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    try:
        override = _PARSER.parse_override(f"{key}={text}")
    except HydraException as err:
        raise ConfigError(name, f"cannot parse {text!r}: {str(err).splitlines()[0]}") from None
    if not override.is_sweep_override():
        raise ConfigError(name, f"{text!r} is a single value, not a range: use interval(), range(), choice() or a spec")
    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        if log:
            raise ConfigError(name, "tag(log, ...) applies to interval(), not choice()")
        if len(value.list) == 0:
            raise ConfigError(name, "choice() needs at least one value")
        return _categorical(key, list(value.list))
    if isinstance(value, RangeSweep):
        if value.start is None or value.stop is None:
            raise ConfigError(name, "range() needs start and stop")
        step = 1 if value.step is None else value.step
        is_int = all(isinstance(v, int) for v in (value.start, value.stop, step))
        if step <= 0:
            raise ConfigError(name, f"range() step must be > 0, got {step}")
        # Hydra's range() excludes stop (as Python's does); Optuna's high is inclusive.
        n = math.ceil((value.stop - value.start) / step)
        if n < 2:
            raise ConfigError(name, f"{text!r} holds fewer than two values")
        high = value.start + (n - 1) * step
        if not is_int:
            high = round(high, 12)  # 0.1 * 3 is 0.30000000000000004
        return _numeric(key, "int" if is_int else "float", value.start, high, log, step)
    if isinstance(value, IntervalSweep):
        is_int = isinstance(value.start, int) and isinstance(value.end, int)
        return _numeric(key, "int" if is_int else "float", cast(float, value.start), cast(float, value.end), log, None)
    raise ConfigError(name, f"unsupported sweep {text!r}")


#: A command-line override of one parameter: ``study.space.<config path>=...`` (``+``/``++``/``~`` too).
SPACE_PREFIX = "study.space."
#: What ``~study.space.KEY`` asks for: the entry removed.
REMOVE = object()


def split_space_overrides(overrides: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """Take the overrides of single space entries out of ``overrides``: (the rest, for Hydra;
    [(parameter, its spec or sweep string, or :data:`REMOVE`)]).

    A parameter's key is itself a dotted config path (``train.learning_rate``), which Hydra
    would read as nested keys ("Key 'train' is not in struct", or a nested copy beside the
    dotted entry), and Hydra would read an unquoted ``interval(...)`` as a sweep of the whole
    run. So ``study.space.train.learning_rate={type: float, ...}``, ``...=tag(log, interval(a, b))``
    and their ``+``/``++`` forms are parsed here with Hydra's own override parser and set by
    :func:`edit_space`; ``~study.space.KEY`` removes the entry.
    """
    global _PARSER
    if _PARSER is None:
        _PARSER = OverridesParser.create()
    rest, edits = [], []
    for text in overrides:
        if not text.lstrip("+~").startswith(SPACE_PREFIX):
            rest.append(text)
            continue
        try:
            override = _PARSER.parse_override(text)
        except HydraException:
            rest.append(text)  # Hydra says what is wrong with it
            continue
        key = override.key_or_group[len(SPACE_PREFIX):]
        if override.is_delete():
            edits.append((key, REMOVE))
        elif override.is_sweep_override():
            edits.append((key, text.split("=", 1)[1].strip()))  # the grammar, as written
        else:
            edits.append((key, override.value()))
    return rest, edits


def edit_space(space: Mapping[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
    """``space`` with the command line's entries set (or removed), one entry per parameter."""
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=False)  # type: ignore[assignment]
    flat = _flatten(space)
    for key, value in edits:
        if value is REMOVE:
            if key not in flat:
                raise ConfigError(f"{SPACE_PREFIX}{key}", f"is not in the space (it has {', '.join(flat) or 'none'})")
            del flat[key]
        else:
            entry = next((k for k in flat if key.startswith(f"{k}.")), None)
            if entry is not None:  # study.space.train.learning_rate.high=...: a field, not a parameter
                raise ConfigError(f"{SPACE_PREFIX}{key}", f"sets one field of the entry {entry}: give the whole entry, "
                                                          f"e.g. '{SPACE_PREFIX}{entry}={{type: float, low: ..., high: ...}}'")
            flat[key] = value
    return flat


def build_space(space: Mapping[str, Any]) -> SearchSpace:
    """Turn ``study.space`` into Optuna distributions keyed by dotted config path, with the
    conditions of the entries that have ``when:``."""
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)  # type: ignore[assignment]
    result: dict[str, Distribution] = {}
    conditions: dict[str, Condition] = {}
    for key, value in _flatten(space).items():
        if isinstance(value, str):
            result[key] = _from_grammar(key, value)
        elif isinstance(value, Mapping):
            if value.get("role") == "fixed":
                continue  # held at its config value; listed as a caveat, not searched
            result[key] = _from_spec(key, value)
            if "when" in value:
                conditions[key] = _condition(key, value["when"])
        else:
            raise ConfigError(f"study.space.{key}", f"expected a spec mapping or a sweep string, got {value!r}")
    for key, condition in conditions.items():
        for path, values in condition.items():
            name = f"study.space.{key}.when"
            if path == key:
                raise ConfigError(name, "a parameter cannot be conditioned on itself")
            if path in conditions:
                raise ConfigError(name, f"{path} is itself conditional: a condition names a parameter searched "
                                        "without one, or a fixed config key")
            dist = result.get(path)
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                never = [v for v in values if v not in dist.choices]
                if never:
                    raise ConfigError(name, f"{path} is never {never} (its choices: {list(dist.choices)})")
            elif dist is not None:
                raise ConfigError(name, f"{path} is searched over a range: a condition names a categorical "
                                        "parameter or a fixed config key")
    return SearchSpace(result, conditions)


def _condition(key: str, when: Any) -> Condition:
    """``when: {path: value or [values]}`` as {path: [values]}."""
    name = f"study.space.{key}.when"
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(name, f"must be a map {{config path: value or [values]}}, got {when!r}")
    condition = {}
    for path, values in when.items():
        listed = list(values) if isinstance(values, (list, tuple)) else [values]
        if not listed or not all(v is None or isinstance(v, (str, int, float, bool)) for v in listed):
            raise ConfigError(name, f"{path}: give a value or a non-empty list of values, got {values!r}")
        condition[str(path)] = listed
    return condition


def resolve_conditions(space: SearchSpace, config: DictConfig) -> SearchSpace:
    """The space of a study (or a scientific sub-study) whose config is ``config``: a condition on
    a config key that is not searched is decided here, once: met, the parameter is searched
    without it; not met, it is not searched at all. Raises ConfigError for a path that is no
    config key."""
    kept: dict[str, Distribution] = {}
    conditions: dict[str, Condition] = {}
    for key, dist in space.items():
        condition = conditions_of(space).get(key)
        if condition is None:
            kept[key] = dist
            continue
        left, met = {}, True
        for path, values in condition.items():
            if path in space:
                left[path] = values
                continue
            value = OmegaConf.select(config, path, default=_MISSING)
            if value is _MISSING:
                raise ConfigError(f"study.space.{key}.when", f"{path} is not a config path (no such key)")
            met = met and value in values
        if met:
            kept[key] = dist
            if left:
                conditions[key] = left
    return SearchSpace(kept, conditions)


def condition_met(condition: Condition, params: Mapping[str, Any]) -> bool:
    """Whether a trial that drew ``params`` samples a parameter with this (resolved) condition."""
    return all(path in params and params[path] in values for path, values in condition.items())


def space_roles(space: Mapping[str, Any]) -> dict[str, str]:
    """The role of every entry: scientific (what the study measures), nuisance (tuned anew for
    each scientific value; the default) or fixed (held, and reported as a caveat)."""
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)  # type: ignore[assignment]
    roles = {}
    for key, value in _flatten(space).items():
        role = value.get("role", "nuisance") if isinstance(value, Mapping) else "nuisance"
        if role not in ROLES:
            raise ConfigError(f"study.space.{key}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        roles[key] = role
    return roles


def apply_params(base: DictConfig, params: Mapping[str, Any]) -> DictConfig:
    """Overlay sampled values on a copy of the composed (structured) config.

    The copy keeps the schema, so a value that does not fit the field's type is refused here.
    """
    cfg = base.copy()
    for key, value in params.items():
        if key.startswith("study."):
            raise ConfigError(f"study.space.{key}", "the study section cannot be searched")
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"study.space.{key}", "is not a config path (no such key)")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as err:
            msg = str(err).splitlines()[0]
            raise ConfigError(f"study.space.{key}", f"value {value!r} does not fit the config field: {msg}") from None
    return cfg


_MISSING = object()


def check_space(base: DictConfig, space: SearchSpace) -> None:
    """Refuse a space that cannot produce valid trial configs: unknown paths, wrong types,
    out-of-range ends. Applies both ends of every range (and every choice) to the config."""
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            candidates = list(dist.choices)
        else:
            candidates = [dist.low, dist.high]  # type: ignore[attr-defined]
        # A conditional parameter is checked on a config that meets its condition.
        context = {path: values[0] for path, values in conditions_of(space).get(key, {}).items()}
        for value in candidates:
            cfg = apply_params(base, {**context, key: value})
            try:
                validate(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
            except ConfigError as err:
                raise ConfigError(f"study.space.{key}", f"value {value!r} is out of range: {err.message}") from None


def suggest(trial: optuna.Trial, space: Mapping[str, Distribution]) -> dict[str, Any]:
    """Sample the space on an Optuna trial: every unconditional parameter, then each conditional
    one whose condition the drawn values meet (the others are not sampled, so not recorded)."""
    params: dict[str, Any] = {}
    conditions = conditions_of(space)
    for key in [k for k in space if k not in conditions] + [k for k in space if k in conditions]:
        if key in conditions and not condition_met(conditions[key], params):
            continue
        dist = space[key]
        if isinstance(dist, optuna.distributions.FloatDistribution):
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        else:  # pragma: no cover - build_space makes only the three above
            raise TypeError(f"unsupported distribution {dist!r}")
    return params


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The full factorial for sampler=grid; a continuous range has no grid."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            grid[key] = [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
        else:
            raise ConfigError(f"study.space.{key}",
                              "sampler=grid needs a discrete space: give choices or a step (e.g. range(a, b, step))")
    return grid


def space_to_json(space: Mapping[str, Distribution]) -> dict[str, Any]:
    """A JSON-able form, stored on the study so a resumed run can check it searches the same space.

    A conditional parameter's entry adds its condition (``"when"``) to Optuna's JSON, which
    ``json_to_distribution`` reads past."""
    out = {}
    for key, dist in sorted(space.items()):
        text = optuna.distributions.distribution_to_json(dist)
        condition = conditions_of(space).get(key)
        if condition:
            text = json.dumps({**json.loads(text), "when": condition})
        out[key] = text
    return out


def json_conditions(stored: Mapping[str, str]) -> dict[str, Condition]:
    """The conditions recorded in a stored space (:func:`space_to_json`)."""
    out = {}
    for key, text in stored.items():
        try:
            when = json.loads(text).get("when")
        except (TypeError, ValueError, AttributeError):
            continue
        if isinstance(when, dict):
            out[key] = when
    return out
