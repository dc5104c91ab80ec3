"""Experiment design: scientific, nuisance and fixed hyperparameters (Google's tuning playbook).

A study whose space marks parameters ``role: scientific`` answers a question about them
("does weight decay help at this data size?"). Each scientific value (or combination) gets
its own sub-study, named ``<study>[path=value,...]`` and linked to the study by its ``design``
attribute, in which only the nuisance parameters are searched, with the same number of
trials for every value. Sub-studies rather than one mixed study, because a sampler shared
across scientific values would tune the nuisance parameters for whichever value did well
early; separate studies tune them anew, and the same budget each, so the comparison is fair.
Fixed parameters are held at their config value and reported as caveats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from llm_doe.schema import ConfigError
from llm_doe.space import (
    SearchSpace,
    apply_params,
    build_space,
    conditions_of,
    grid_values,
    resolve_conditions,
    space_roles,
)


@dataclass
class Arm:
    """One study to run: the whole study, or one scientific value's sub-study."""

    name: str
    config: DictConfig  # the composed config with the scientific values applied
    space: SearchSpace  # what is searched in this arm (the nuisance parameters)
    n_trials: int
    scientific: dict[str, Any] = field(default_factory=dict)


@dataclass
class Design:
    """How a study is run: its arms, the roles of its parameters, and its caveats."""

    study_name: str
    roles: dict[str, str]
    arms: list[Arm]
    caveats: list[str]

    @property
    def scientific(self) -> bool:
        return any(arm.scientific for arm in self.arms)

    def attrs(self, arm: Arm) -> dict[str, Any]:
        """The ``design`` study attribute that links a sub-study to its study."""
        return {"study": self.study_name, "roles": self.roles, "scientific": arm.scientific,
                "arms": [a.name for a in self.arms], "trials_per_arm": arm.n_trials, "caveats": self.caveats}


def scientific_values(key: str, dist: optuna.distributions.BaseDistribution, points: int, seed: int) -> list[Any]:
    """The values a scientific parameter takes: its choices, its grid, or a few quasi-random
    (scrambled Halton: any count, unlike Sobol's powers of two) points of a continuous range,
    on a log scale where the range is."""
    try:
        return grid_values(SearchSpace({key: dist}))[key]
    except ConfigError:
        pass
    from scipy.stats import qmc

    unit = sorted(qmc.Halton(d=1, scramble=True, seed=seed).random(points)[:, 0])
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    if dist.log:  # type: ignore[attr-defined]
        values = [math.exp(math.log(low) + u * (math.log(high) - math.log(low))) for u in unit]
    else:
        values = [low + u * (high - low) for u in unit]
    if isinstance(dist, optuna.distributions.IntDistribution):
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.6g}") for v in values]


def _label(values: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def plan(name: str, base: DictConfig, space_cfg: Mapping[str, Any], n_trials: int, points: int,
         seed: int | None) -> Design:
    """Split a study into arms by its scientific parameters. Raises ConfigError."""
    roles = space_roles(space_cfg)
    space = build_space(space_cfg)
    caveats = []
    for key, role in roles.items():
        if role != "fixed":
            continue
        value = OmegaConf.select(base, key, default=None)
        if value is None and OmegaConf.select(base, key, default="<missing>") == "<missing>":
            raise ConfigError(f"study.space.{key}", "is not a config path (no such key)")
        caveats.append(f"{key} is fixed at {value}: the conclusions hold at this value only")
    scientific = [k for k, r in roles.items() if r == "scientific"]
    for key in scientific:
        if key in conditions_of(space):
            raise ConfigError(f"study.space.{key}.when", "a scientific parameter takes every value in every "
                                                         "sub-study: it cannot have a condition")
    nuisance = space.subset(k for k in space if roles.get(k) != "scientific")
    if not scientific:
        return Design(name, roles, [Arm(name, base, resolve_conditions(space, base), n_trials)], caveats)
    if not nuisance:
        raise ConfigError("study.space", "a study with scientific parameters needs nuisance parameters to tune "
                                         "for each value (or use sampler=grid to enumerate the values)")
    values = {k: scientific_values(k, space[k], points, seed or 0) for k in scientific}
    combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    if n_trials % len(combos):
        raise ConfigError("study.n_trials", f"{n_trials} trials cannot be shared equally by the {len(combos)} "
                                            f"scientific values ({'; '.join(_label(c) for c in combos)})")
    per_arm = n_trials // len(combos)
    arms = []
    for combo in combos:
        config = apply_params(base, combo)
        # A condition on a scientific parameter is decided per sub-study (momentum only where sgd).
        arms.append(Arm(f"{name}[{_label(combo)}]", config, resolve_conditions(nuisance, config), per_arm, combo))
    return Design(name, roles, arms, caveats)
