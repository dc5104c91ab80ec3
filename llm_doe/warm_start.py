"""Warm starts: configurations a study runs first, before its sampler proposes any.

Two sources, both enqueued with Optuna's own ``study.enqueue_trial``:

* ``study.enqueue``: parameter dicts keyed by config path (``{train.learning_rate: 3.0e-4}``),
  held to the search space strictly: a key the study does not search, or a value outside its
  range (or off its step, or not one of its choices), is refused before anything is written.
  Parameters a dict leaves out are sampled.
* ``study.warm_start: {storage, study_name, top_k}``: the ``top_k`` best COMPLETE (and feasible)
  distinct configurations of another study, maybe in another store: tune on a small model or
  subset, then start the full run from its best points. Its parameters this study does not
  search are dropped, values outside a range are clipped (or snapped to its step), and a point
  whose value is not one of this study's choices is skipped: one log line each, never a crash.

Every enqueued trial records the user attribute ``enqueued_from``: ``config``, or
``<study>#<trial number>``. A point that a trial of the study already holds (same source, same
parameters) is not enqueued again, so a resumed run, or another worker, never enqueues the
same points twice; and if two machines started at the same moment enqueued one point twice,
the objective runs it once (:func:`duplicate_of`: the later trial is refused, as a surplus trial).

With scientific sub-studies a point goes to every sub-study, or, when it names a scientific
parameter, to the sub-study of that value (the other study's points likewise).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from llm_doe import optuna_compat
from llm_doe.formatting import fmt
from llm_doe.schema import Config, ConfigError, StorageConfig

if TYPE_CHECKING:
    from llm_doe.design import Arm

#: The user attribute an enqueued trial records: where its configuration came from.
ATTR = "enqueued_from"
#: ``enqueued_from`` of a point from ``study.enqueue``.
CONFIG_SOURCE = "config"
#: ``study.warm_start.top_k`` when null: how many of the other study's best points run first.
DEFAULT_TOP_K = 3
#: Trials that hold a point: run, running or waiting to run.
_ACTIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Point:
    """One configuration to run first: its parameters and where it came from."""

    params: dict[str, Any]
    source: str


@dataclass
class WarmPlan:
    """The points to enqueue in each arm (by name), best first, and what was dropped or clipped
    on the way (log lines, written once logging is set up)."""

    points: dict[str, list[Point]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# Fitting values to distributions ----------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(dist: CategoricalDistribution, value: Any) -> tuple[bool, Any]:
    """(found, the choice itself): ``1`` is not ``True`` here, though Python says they are equal."""
    for choice in dist.choices:
        if isinstance(choice, bool) == isinstance(value, bool) and choice == value:
            return True, choice
    return False, None


def _on_step(value: float, low: float, step: float) -> bool:
    ratio = (value - low) / step
    return math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9)


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"one of {list(dist.choices)}"
    extent = f"[{dist.low:g}, {dist.high:g}]"  # type: ignore[attr-defined]
    step = getattr(dist, "step", None)
    if step not in (None, 1):
        extent += f" in steps of {step:g}"
    return ("an integer in " if isinstance(dist, IntDistribution) else "a number in ") + extent


def contains(dist: BaseDistribution, value: Any) -> tuple[bool, Any]:
    """(whether ``value`` is a point of ``dist``, the value as the distribution holds it)."""
    if isinstance(dist, CategoricalDistribution):
        return _choice(dist, value)
    if not _is_number(value):
        return False, None
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    if isinstance(dist, IntDistribution):
        if float(value) != int(value):
            return False, None
        value = int(value)
    else:
        value = float(value)
    if not low <= value <= high:
        return False, None
    step = getattr(dist, "step", None)
    if step is not None and not _on_step(value, low, step):
        return False, None
    return True, value


def _why_not(dist: BaseDistribution, value: Any) -> str:
    """Why ``value`` is no point of ``dist``: of the wrong type, or outside the search space."""
    if isinstance(dist, CategoricalDistribution):
        return "is not one of the choices"
    if not _is_number(value):
        return f"is {'not a number' if not isinstance(value, float) else 'not finite'} ({type(value).__name__})"
    if isinstance(dist, IntDistribution) and float(value) != int(value):
        return "is not an integer"
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    return "is outside the search space" if not low <= value <= high else "is off the search space's step"


def fit(dist: BaseDistribution, value: Any) -> tuple[Any, str | None]:
    """``value`` made a point of ``dist``: (value, None) when it is one, (fitted, what was done)
    when it was clipped into the range or snapped to its step; (None, why) when it cannot be."""
    ok, held = contains(dist, value)
    if ok:
        return held, None
    if isinstance(dist, CategoricalDistribution) or not _is_number(value):
        return None, f"{value!r} is not {_describe(dist)}"
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    fitted = min(max(float(value), low), high)
    step = getattr(dist, "step", None)
    if step is not None:
        fitted = min(low + round((fitted - low) / step) * step, high)
    if isinstance(dist, IntDistribution):
        fitted = int(round(fitted))
    else:
        fitted = round(fitted, 12) if step is not None else fitted  # 0.1 * 3 is 0.30000000000000004
    how = "clipped" if not low <= float(value) <= high else "rounded"
    return fitted, f"{value!r} {how} to {fitted!r} ({_describe(dist)})"


# Planning: every check, no writes ----------------------------------------------------------


def plan(cfg: Config, arms: Sequence[Arm]) -> WarmPlan:
    """The points each arm runs first. Raises ConfigError (one line) on a bad ``study.enqueue``
    entry, a warm-start study that cannot be read, or more points than the study has trials.
    Reads the other study's store; writes nothing."""
    result = WarmPlan({arm.name: [] for arm in arms})
    for index, entry in enumerate(_entries(cfg.study.enqueue)):
        for arm in arms:
            point = _config_point(arm, arms, entry, index)
            if point is not None:
                result.points[arm.name].append(point)
    warm = cfg.study.warm_start
    if warm.study_name:
        source = open_source(cfg)
        label = source.study_name
        trials = _ranked(source)
        if not trials:
            result.notes.append(f"study {label} has no COMPLETE (feasible) trial: nothing to start from")
        dropped: set[str] = set()
        scientific = _scientific_values(arms)
        for arm in arms:
            result.points[arm.name] += _warm_points(arm, trials, label, warm.top_k or DEFAULT_TOP_K, result.notes,
                                                     dropped, scientific)
    for arm in arms:
        result.points[arm.name] = _distinct(result.points[arm.name], arm.name if len(arms) > 1 else None,
                                            result.notes)
        n = len(result.points[arm.name])
        if n > arm.n_trials:
            key = "study.warm_start.top_k" if not cfg.study.enqueue else "study.enqueue"
            raise ConfigError(key, f"{n} points to run first, but {arm.name} runs study.n_trials={arm.n_trials} "
                                   "trials: enqueue fewer points or raise study.n_trials")
    return result


def _scientific_values(arms: Sequence[Arm]) -> dict[str, list[Any]]:
    """Each scientific parameter with the values its sub-studies take."""
    values: dict[str, list[Any]] = {}
    for arm in arms:
        for key, value in arm.scientific.items():
            values.setdefault(key, []).append(value)
    return values


def _distinct(points: list[Point], arm: str | None, notes: list[str]) -> list[Point]:
    """The points with the parameters of an earlier one left out (a ``study.enqueue`` entry that a
    warm-start point repeats, or two entries alike), one note each: only distinct points count
    against ``study.n_trials``."""
    kept: dict[str, Point] = {}
    for point in points:
        key = _key(point.params)
        if key in kept:
            where = f" in {arm}" if arm else ""
            notes.append(f"{point.source} skipped{where}: the same point as {kept[key].source}, which runs first")
            continue
        kept[key] = point
    return list(kept.values())


def _entries(enqueue: Any) -> list[dict[str, Any]]:
    """``study.enqueue`` as a list of flat ``{config path: value}`` dicts (nested maps, as
    OmegaConf may give a dotted key, are flattened). Raises ConfigError."""
    if not enqueue:
        return []
    if not isinstance(enqueue, (list, tuple)):
        raise ConfigError("study.enqueue", f"must be a list of parameter maps, got {enqueue!r}")
    entries = []
    for index, entry in enumerate(enqueue):
        if not isinstance(entry, Mapping) or not entry:
            raise ConfigError(f"study.enqueue[{index}]", f"must be a non-empty map {{config path: value}}, got {entry!r}")
        entries.append(_flat(entry))
    return entries


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_point(arm: Arm, arms: Sequence[Arm], entry: dict[str, Any], index: int) -> Point | None:
    """``study.enqueue[index]`` as a point of ``arm``, or None when it names another sub-study's
    scientific value. Raises ConfigError naming the entry and key."""
    scientific_values = _scientific_values(arms)
    params: dict[str, Any] = {}
    mine = True
    for key, value in entry.items():
        name = f"study.enqueue[{index}].{key}"
        if key in scientific_values:
            if value not in scientific_values[key]:
                raise ConfigError(name, f"{value!r} is not one of the scientific values {scientific_values[key]}")
            mine = mine and arm.scientific.get(key) == value
            continue
        dist = arm.space.get(key)
        if dist is None:
            searched = ", ".join(sorted(arm.space)) or "nothing"
            raise ConfigError(name, f"is not a searched parameter (study.space searches {searched})")
        ok, held = contains(dist, value)
        if not ok:
            raise ConfigError(name, f"{value!r} {_why_not(dist, value)}: must be {_describe(dist)}")
        params[key] = held
    if not params:
        raise ConfigError(f"study.enqueue[{index}]", "names no searched parameter to set")
    return Point(params, CONFIG_SOURCE) if mine else None


def source_storage(text: str | None, own: StorageConfig) -> StorageConfig:
    """The storage config of ``study.warm_start.storage``: this study's store when null; a
    storage URL; a ``.journal`` file; or a path to a SQLite file. Read only: no heartbeats."""
    if not text:
        return dataclasses.replace(own, heartbeat_interval=None)
    if "://" in text:
        return dataclasses.replace(own, kind="rdb", url=text, heartbeat_interval=None)
    if text.endswith(".journal"):
        return dataclasses.replace(own, kind="journal", journal_path=text, heartbeat_interval=None)
    return dataclasses.replace(own, kind="rdb", url=f"sqlite:///{text}", heartbeat_interval=None)


def open_source(cfg: Config) -> optuna.Study:
    """The warm start's study, refusing (ConfigError) a store or study that does not exist, this
    study itself, or a study with several objectives."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from llm_doe.storage import open_store, storage_label, store_of

    warm = cfg.study.warm_start
    source = source_storage(warm.storage, cfg.storage)
    try:
        if source.kind == "rdb":
            make_url(source.url)
        store_of(source)
        storage, names = open_store(source, lambda store: optuna.get_all_study_names(storage=store), read_only=True)
    except ArgumentError:
        raise ConfigError("study.warm_start.storage", f"{warm.storage!r} is neither a storage URL nor a .db or "
                                                      ".journal file") from None
    except ConfigError as err:
        raise ConfigError("study.warm_start.storage", err.message) from None
    if warm.study_name not in names:
        raise ConfigError("study.warm_start.study_name", f"no study {warm.study_name!r} in {storage_label(source)}; "
                                                         f"it holds: {', '.join(sorted(names)) or 'no study'}")
    same_store = warm.storage is None or source_storage(None, cfg.storage) == source
    if same_store and warm.study_name == cfg.study.name:
        raise ConfigError("study.warm_start.study_name", f"is this study ({cfg.study.name!r}): a resume already "
                                                         "continues from its trials")
    study = optuna.load_study(study_name=warm.study_name, storage=storage, sampler=optuna.samplers.RandomSampler(0))
    if len(study.directions) > 1:
        raise ConfigError("study.warm_start.study_name", f"study {warm.study_name!r} has {len(study.directions)} "
                                                         "objectives: a warm start takes a single-objective study")
    return study


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    from llm_doe.study import ranked_trials

    return ranked_trials(study)


def _warm_points(arm: Arm, trials: list[FrozenTrial], label: str, top_k: int, notes: list[str],
                 dropped: set[str], scientific: Mapping[str, list[Any]]) -> list[Point]:
    """Up to ``top_k`` distinct points of ``arm`` from the other study's ranked trials. A point
    whose scientific value no sub-study takes is skipped with a note (once, whichever arm meets
    it); one of another sub-study's values is that sub-study's, without a note."""
    points: list[Point] = []
    seen: set[str] = set()
    for trial in trials:
        if len(points) == top_k:
            break
        source = f"{label}#{trial.number}"
        params: dict[str, Any] = {}
        skip = None
        for key, value in trial.params.items():
            if key in arm.scientific:
                if arm.scientific[key] != value:
                    known = value in scientific.get(key, [])
                    skip = "" if known or source in dropped else (
                        f"{source} skipped: its {key}={value!r} is none of this study's scientific values "
                        f"{scientific.get(key, [])}")
                    dropped.add(source)
                    break
                continue
            dist = arm.space.get(key)
            if dist is None:
                if key not in dropped:
                    dropped.add(key)
                    notes.append(f"{key} of study {label} is not searched here: dropped")
                continue
            fitted, how = fit(dist, value)
            if fitted is None:
                skip = f"{source} skipped: {key} {how}"
                break
            if how:
                notes.append(f"{source}: {key} {how}")
            params[key] = fitted
        if skip is not None:
            if skip:
                notes.append(skip)
            continue
        if not params:
            notes.append(f"{source} skipped: it searched none of this study's parameters")
            continue
        key = _key(params)
        if key in seen:
            notes.append(f"{source} skipped: the same point here as a better trial of {label}")
            continue
        seen.add(key)
        points.append(Point(params, source))
    return points


# Writing: enqueue what is not there yet ----------------------------------------------------


def _key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


def _held(trial: FrozenTrial) -> tuple[Any, str]:
    """(source, parameters) of the point an enqueued trial holds."""
    return trial.user_attrs.get(ATTR), _key(optuna_compat.enqueued_params(trial) or trial.params)


def enqueue(study: optuna.Study, points: Sequence[Point], n_trials: int) -> list[str]:
    """Enqueue the points no trial of ``study`` holds yet, as many as the study has trials left
    for; returns what it did, as log lines."""
    trials = study.get_trials(deepcopy=False)
    held = {_held(t) for t in trials if t.user_attrs.get(ATTR)}
    under_way = sum(t.state in _ACTIVE and not t.user_attrs.get("surplus") for t in trials)
    room = n_trials - under_way
    added: list[Point] = []
    left: list[Point] = []
    same: list[Point] = []
    count = len(trials)
    for point in points:
        if (point.source, _key(point.params)) in held:
            continue
        if room <= 0:
            left.append(point)
            continue
        study.enqueue_trial(dict(point.params), user_attrs={ATTR: point.source}, skip_if_exists=True)
        now = len(study.get_trials(deepcopy=False))
        if now == count:  # Optuna skipped it: a trial (any state, any source) has these parameters
            same.append(point)
            continue
        count = now
        added.append(point)
        room -= 1
    lines = []
    if same:
        lines.append(f"{study.study_name}: {len(same)} point(s) not enqueued: a trial of the study already has the "
                     f"same parameters: {', '.join(p.source for p in same)}")
    if added:
        listed = "; ".join(f"{p.source} {', '.join(f'{k}={fmt(v, 4)}' for k, v in p.params.items())}" for p in added)
        lines.append(f"{study.study_name}: enqueued {len(added)} trial(s) to run first: {listed}")
    if left:
        lines.append(f"{study.study_name}: {len(left)} point(s) not enqueued: its {n_trials} trials are all run or "
                     f"under way (raise study.n_trials to run them): {', '.join(p.source for p in left)}")
    return lines


def duplicate_of(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """An earlier trial holding the point that ``trial`` was enqueued with (two processes that
    enqueued the same point at once): the later trial is the one not to run. None otherwise."""
    if not trial.user_attrs.get(ATTR):
        return None
    mine = _held(trial)
    for other in study.get_trials(deepcopy=False, states=_ACTIVE):
        if (other.number < trial.number and not other.user_attrs.get("surplus") and other.user_attrs.get(ATTR)
                and _held(other) == mine):
            return other
    return None
